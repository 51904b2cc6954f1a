"""from_fn: plain apply functions, arrays or ShapeDtypeStructs, default init statistics, layouts, bad params."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hyperjax as hj

X = jnp.linspace(-1.0, 1.0, 10, dtype=jnp.float32).reshape(2, 5)


def apply(p, x):
    h = jnp.tanh(x @ p["l1"]["w"].astype(jnp.float32) + p["l1"]["b"][None])
    return h @ p["l2"]["w"] + p["l2"]["b"][None]


EXAMPLE = {"l1": {"w": jax.ShapeDtypeStruct((5, 4), jnp.bfloat16), "b": jax.ShapeDtypeStruct((4,), jnp.float32)},
           "l2": {"w": jax.ShapeDtypeStruct((4, 3), jnp.float32), "b": jax.ShapeDtypeStruct((3,), jnp.float32)}}


@pytest.fixture(scope="module")
def spec():
    return hj.targets.from_fn(apply, EXAMPLE)


def test_structure_from_shape_dtype_structs(spec):
    assert spec.framework == "function"
    assert spec.paths == ("l1/b", "l1/w", "l2/b", "l2/w")
    assert spec.leaves["l1/w"] == jax.ShapeDtypeStruct((5, 4), jnp.bfloat16)
    assert spec.size == 20 + 4 + 12 + 3


def test_arrays_become_abstract():
    params = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), EXAMPLE)
    spec = hj.targets.from_fn(apply, params)
    assert all(type(l) is jax.ShapeDtypeStruct for l in jax.tree.leaves(spec.abstract_params))
    chex.assert_trees_all_equal_shapes_and_dtypes(spec.zeros(), params)


def test_apply_equals_the_function(spec, key, maybe_jit):
    params = spec.init(key)
    chex.assert_trees_all_equal_shapes_and_dtypes(params, spec.zeros())
    chex.assert_trees_all_close(maybe_jit(spec.apply)(params, X), apply(params, X), rtol=1e-6)


def test_default_init_moments():
    """Kernels: N(0, 1/fan_in); biases: U(+-1/sqrt(fan_in)); norm scales: mean 1."""
    ex = {"dense": {"kernel": jnp.zeros((64, 32)), "bias": jnp.zeros((32,))},
          "norm": {"scale": jnp.zeros((4096,))}}
    spec = hj.targets.from_fn(lambda p, x: x, ex)
    p = spec.init(jax.random.key(0))
    assert abs(float(jnp.var(p["dense"]["kernel"])) * 64 - 1.0) < 0.1
    assert abs(float(jnp.mean(p["dense"]["kernel"]))) < 0.02
    assert float(jnp.max(jnp.abs(p["dense"]["bias"]))) <= 1 / 8 and float(jnp.std(p["dense"]["bias"])) > 0.03
    assert abs(float(jnp.mean(p["norm"]["scale"])) - 1.0) < 0.01
    assert not np.array_equal(spec.init(jax.random.key(1))["dense"]["kernel"], p["dense"]["kernel"])


def test_init_fn_is_used(spec, key):
    custom = hj.targets.from_fn(apply, EXAMPLE, init_fn=lambda k: jax.tree.map(
        lambda s: jnp.full(s.shape, 0.5, s.dtype), EXAMPLE))
    chex.assert_trees_all_equal(custom.init(key), jax.tree.map(lambda s: jnp.full(s.shape, 0.5, s.dtype), EXAMPLE))


@pytest.mark.parametrize("layout,fans", [("in_out", (5, 4)), ("out_in", (4, 5))])
def test_layout_sets_fans(layout, fans):
    spec = hj.targets.from_fn(apply, EXAMPLE, layout=layout)
    assert spec.fans("l1/w") == fans
    assert spec.fans("l1/b") == fans                    # a bias takes its kernel's fans


def test_tuples_lists_and_custom_nodes_keep_their_containers(key):
    ex = [(jnp.zeros((2, 3)), jnp.zeros((3,))), {"head": jnp.zeros((3, 1))}]
    spec = hj.targets.from_fn(lambda p, x: x, ex)
    assert spec.paths == ("0/0", "0/1", "1/head")
    params = spec.init(key)
    assert isinstance(params, list) and isinstance(params[0], tuple)
    with pytest.raises(ValueError, match="different containers"):
        spec.check([list(params[0]), params[1]])


@pytest.mark.parametrize("bad,match", [
    ({"w": jnp.zeros((2, 2), jnp.int32)}, r"leaf 'w' has dtype int32; only floating point"),
    ({}, "has no parameters"),
    ({"a/b": jnp.zeros(2), "a": {"b": jnp.zeros(2)}}, "two leaves have the same path string"),
])
def test_bad_example_params(bad, match):
    with pytest.raises(ValueError, match=match):
        hj.targets.from_fn(lambda p, x: x, bad)


def test_bad_layout():
    with pytest.raises(ValueError, match=r"unknown `layout`='nchw'; valid options are 'in_out', 'out_in'"):
        hj.targets.from_fn(apply, EXAMPLE, layout="nchw")
