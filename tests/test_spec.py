"""TargetSpec: structure, selection, checks, flatten/unflatten, from_leaves, fans and init moments."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hyperjax as hj

TREE = {
    "conv": {"kernel": jax.ShapeDtypeStruct((3, 3, 2, 4), jnp.float32), "bias": jax.ShapeDtypeStruct((4,), jnp.float32)},
    "dense": {"kernel": jax.ShapeDtypeStruct((36, 5), jnp.bfloat16), "bias": jax.ShapeDtypeStruct((5,), jnp.float32)},
    "norm": {"scale": jax.ShapeDtypeStruct((5,), jnp.float32)},
    "temperature": jax.ShapeDtypeStruct((), jnp.float32),
}


@pytest.fixture(scope="module")
def spec():
    return hj.targets.from_fn(lambda p, x: x, TREE)


@pytest.fixture(scope="module")
def params(spec):
    return spec.init(jax.random.key(0))


def test_paths_shapes_size(spec):
    assert spec.paths == ("conv/bias", "conv/kernel", "dense/bias", "dense/kernel", "norm/scale", "temperature")
    assert spec.shapes["conv/kernel"] == (3, 3, 2, 4) and spec.shapes["temperature"] == ()
    assert spec.size == 4 + 72 + 5 + 180 + 5 + 1
    assert "TargetSpec(function, 267 params" in repr(spec) and "dense/kernel: (36, 5) bfloat16" in repr(spec)


@pytest.mark.parametrize("where,want", [
    ("*/kernel", ("conv/kernel", "dense/kernel")),
    (["conv/*", "norm/*"], ("conv/bias", "conv/kernel", "norm/scale")),
    (lambda p, leaf: leaf.dtype == jnp.bfloat16, ("dense/kernel",)),
    (hj.select("temp*"), ("temperature",)),
])
def test_select(spec, where, want):
    assert spec.select(where) == want


def test_select_nothing_lists_available_paths(spec):
    with pytest.raises(ValueError, match=r"`where`='\*/w' matches no leaf of the target. Available paths: "
                                         r"conv/bias, conv/kernel, dense/bias, dense/kernel, norm/scale, temperature"):
        spec.select("*/w")


def test_zeros_and_init_follow_the_spec(spec, params):
    chex.assert_trees_all_equal_shapes_and_dtypes(params, spec.zeros())
    assert float(jnp.sum(jnp.abs(spec.zeros()["conv"]["kernel"]))) == 0.0
    spec.check(params)


def test_leaf_dict_from_leaves_round_trip(spec, params):
    leaves = spec.leaf_dict(params)
    assert list(leaves) == list(spec.paths)
    chex.assert_trees_all_equal(spec.from_leaves(leaves), params)
    chex.assert_trees_all_equal(spec.from_leaves(dict(reversed(list(leaves.items())))), params)


def test_from_leaves_errors(spec, params):
    leaves = spec.leaf_dict(params)
    with pytest.raises(ValueError, match=r"from_leaves: missing: temperature; unexpected: extra/w"):
        spec.from_leaves({**{k: v for k, v in leaves.items() if k != "temperature"}, "extra/w": jnp.ones(2)})
    with pytest.raises(ValueError, match=r"from_leaves: leaf 'dense/kernel' expected \(36, 5\) bfloat16, "
                                         r"got \(36, 5\) float32"):
        spec.from_leaves({**leaves, "dense/kernel": leaves["dense/kernel"].astype(jnp.float32)})


def test_flatten_unflatten_round_trip(spec, params, maybe_jit):
    flat = maybe_jit(spec.flatten)(params)
    assert flat.shape == (spec.size,) and flat.dtype == jnp.float32
    back = maybe_jit(spec.unflatten)(flat)
    chex.assert_trees_all_equal_shapes_and_dtypes(back, params)
    chex.assert_trees_all_close(back, params)


def test_unflatten_subset_of_paths(spec):
    sub = spec.unflatten(jnp.arange(9, dtype=jnp.float32), paths=("conv/bias", "dense/bias"))
    assert set(sub) == {"conv/bias", "dense/bias"}
    np.testing.assert_array_equal(sub["dense/bias"], np.arange(4, 9))
    with pytest.raises(ValueError, match=r"unflatten: expected a vector of 9 values for 2 leaves, got shape \(10,\)"):
        spec.unflatten(jnp.zeros(10), paths=("conv/bias", "dense/bias"))
    with pytest.raises(ValueError, match=r"expected a vector of 267 values for 6 leaves, got shape \(1, 267\)"):
        spec.unflatten(jnp.zeros((1, 267)))


@pytest.mark.parametrize("path,layout,fans", [
    ("conv/kernel", "in_out", (18, 36)),       # receptive field 3x3 times channels
    ("conv/kernel", "out_in", (3 * 2 * 4, 3 * 2 * 4)),
    ("dense/kernel", "in_out", (36, 5)),
    ("dense/kernel", "out_in", (5, 36)),
    ("dense/bias", "in_out", (36, 5)),          # from the kernel beside it
    ("norm/scale", "in_out", (5, 5)),           # no kernel beside it: its own length
    ("temperature", "in_out", (1, 1)),
])
def test_fans(path, layout, fans):
    assert hj.targets.from_fn(lambda p, x: x, TREE, layout=layout).fans(path) == fans


@pytest.mark.parametrize("path,mode,want", [
    ("dense/kernel", "fan_in", (0.0, 1 / 36)),
    ("dense/kernel", "fan_out", (0.0, 1 / 5)),
    ("conv/kernel", "fan_out", (0.0, 1 / 36)),
    ("dense/bias", "fan_in", (0.0, 1 / (3 * 36))),
    ("norm/scale", "fan_in", (1.0, 1 / 15)),
])
def test_init_moments(spec, path, mode, want):
    np.testing.assert_allclose(spec.init_moments(path, mode), want)


def test_init_moments_unknown_mode(spec):
    with pytest.raises(ValueError, match=r"unknown `mode`='he'; valid options are 'fan_in', 'fan_out'"):
        spec.init_moments("dense/kernel", "he")


@pytest.mark.parametrize("mutate,match", [
    (lambda p: {k: v for k, v in p.items() if k != "norm"}, r"params tree does not match the target \(missing: "
                                                              r"norm/scale\)"),
    (lambda p: {**p, "head": {"w": jnp.ones(2)}}, r"\(unexpected: head/w\)"),
    (lambda p: {**p, "conv": {"kernel": p["conv"]["kernel"]}, "cnv": {"bias": p["conv"]["bias"]}},
     r"missing: conv/bias; unexpected: cnv/bias"),
    (lambda p: {**p, "dense": {**p["dense"], "kernel": jnp.zeros((35, 5), jnp.bfloat16)}},
     r"leaf 'dense/kernel' expected \(36, 5\) bfloat16, got \(35, 5\) bfloat16"),
    (lambda p: {**p, "temperature": jnp.zeros((), jnp.float16)},
     r"leaf 'temperature' expected \(\) float32, got \(\) float16"),
])
def test_check_names_the_leaf(spec, params, mutate, match, maybe_jit):
    bad = mutate(params)
    with pytest.raises(ValueError, match=r"TargetSpec.check: .*" + match):
        maybe_jit(spec.check)(bad)


# ------------------------------------------------------------------------------------------------ construction
def test_spec_is_an_immutable_value_with_one_name_per_thing(spec):
    import dataclasses
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.layout = "out_in"
    with pytest.raises(TypeError):
        spec.leaves["conv/bias"] = jax.ShapeDtypeStruct((1,), jnp.float32)   # a read-only mapping
    assert not hasattr(spec, "num_params")
    assert spec.init_fn is None                                          # from_fn without init_fn: init_moments
    assert jax.tree.structure(spec.abstract_params) == spec.treedef
    assert list(spec.leaves.values()) == jax.tree.leaves(spec.abstract_params)


def test_public_methods_take_no_who(spec, params):
    with pytest.raises(TypeError, match="who"):
        spec.select("*/kernel", who="x")
    with pytest.raises(TypeError, match="who"):
        spec.check(params, who="x")


def test_select_and_check_errors_name_the_public_caller(spec, params):
    """The selection and tree checks behind spec.select / spec.check name whoever called them."""
    with pytest.raises(ValueError, match=r"^hyperjax.generators.dense: `where`='\*/w' matches no leaf"):
        hj.generators.dense(spec, cond_dim=3, where="*/w")
    with pytest.raises(TypeError, match=r"^hyperjax.generators.dense: `where` must be a glob string"):
        hj.generators.dense(spec, cond_dim=3, where=3)
    tied = hj.tie(spec, source="norm/scale", dest="dense/bias")
    tied.expand(tied.collapse(params))
    with pytest.raises(ValueError, match=r"^hyperjax.Tied.expand: params tree does not match the target "
                                         r"\(missing: temperature\)"):
        tied.expand({k: v for k, v in tied.collapse(params).items() if k != "temperature"})
    with pytest.raises(ValueError, match=r"^hyperjax.TargetSpec.check: "):
        spec.check({k: v for k, v in params.items() if k != "temperature"})


@pytest.mark.parametrize("make,err,match", [
    (lambda l, t: hj.TargetSpec(None, l, jax.tree.structure([0, 0])), ValueError,
     r"TargetSpec: `treedef` has 2 leaves but `leaves` has 6"),
    (lambda l, t: hj.TargetSpec(None, {**l, "conv/bias": np.zeros(4)}, t), TypeError,
     r"leaf 'conv/bias' must be a jax.ShapeDtypeStruct, got ndarray"),
    (lambda l, t: hj.TargetSpec(3, l, t), TypeError, r"`apply_fn` must be callable or None, got int"),
    (lambda l, t: hj.TargetSpec(None, l, t, layout="nchw"), ValueError, r"unknown `layout`='nchw'"),
    (lambda l, t: hj.targets.from_fn(lambda p, x: x, {"a": jnp.zeros(2, jnp.int32)}), ValueError,
     r"leaf 'a' has dtype int32; only floating point"),
    (lambda l, t: hj.targets.from_fn(lambda p, x: x, {}), ValueError, r"the function target has no parameters"),
])
def test_construction_errors(spec, make, err, match):
    with pytest.raises(err, match=match):
        make(dict(spec.leaves), spec.treedef)


# ------------------------------------------------------------------------------------------------ ravel_pytree
def test_flatten_is_ravel_pytree_under_standard_promotion(spec, params, maybe_jit):
    from jax.flatten_util import ravel_pytree
    with jax.numpy_dtype_promotion("standard"):
        want, unravel = ravel_pytree(params)
    np.testing.assert_array_equal(maybe_jit(spec.flatten)(params), want)     # strict promotion is on in tests
    chex.assert_trees_all_equal(maybe_jit(spec.unflatten)(want), unravel(want))


@pytest.mark.parametrize("dtypes,flat_dtype,want_flat", [
    ((jnp.bfloat16, jnp.bfloat16), jnp.float32, jnp.bfloat16),   # one dtype: a float32 vector is cast to it
    ((jnp.float16, jnp.bfloat16), jnp.float32, jnp.float32),     # f16 + bf16 promote to f32
    ((jnp.float32, jnp.float32), jnp.bfloat16, jnp.float32),     # a narrower vector is widened
])
def test_unflatten_casts_every_leaf_to_its_dtype(dtypes, flat_dtype, want_flat, maybe_jit):
    tree = {"a": jax.ShapeDtypeStruct((2, 3), dtypes[0]), "b": jax.ShapeDtypeStruct((3,), dtypes[1])}
    s = hj.targets.from_fn(lambda p, x: x, tree)
    flat = jnp.arange(9, dtype=flat_dtype)
    out = maybe_jit(s.unflatten)(flat)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, s.zeros())
    np.testing.assert_array_equal(np.asarray(out["a"], np.float32), np.arange(6, dtype=np.float32).reshape(2, 3))
    assert maybe_jit(s.flatten)(out).dtype == want_flat
    sub = maybe_jit(lambda f: s.unflatten(f, paths=("b",)))(flat[:3])
    assert list(sub) == ["b"] and sub["b"].dtype == dtypes[1]


def test_unflatten_subset_follows_the_order_given(spec):
    sub = spec.unflatten(jnp.arange(9, dtype=jnp.float32), paths=("dense/bias", "conv/bias"))
    assert list(sub) == ["dense/bias", "conv/bias"]
    np.testing.assert_array_equal(sub["dense/bias"], np.arange(5))
    np.testing.assert_array_equal(sub["conv/bias"], np.arange(5, 9))
