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
