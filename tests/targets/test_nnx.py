"""from_nnx: outputs equal the module's own call, abstract params, init, paths, BatchStat refused, RNG purity."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import hyperjax as hj

X = jnp.linspace(-1.0, 1.0, 10, dtype=jnp.float32).reshape(2, 5)


class MLP(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(5, 7, rngs=rngs)
        self.l2 = nnx.Linear(7, 3, rngs=rngs)

    def __call__(self, x):
        return self.l2(jax.nn.relu(self.l1(x)))


class WithBN(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(5, 4, rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)

    def __call__(self, x):
        return self.bn(self.l1(x))


class WithDropout(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(5, 7, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x, rngs=None):
        return self.drop(self.l1(x), rngs=rngs)


@pytest.fixture(scope="module")
def module():
    return MLP(nnx.Rngs(0))


@pytest.fixture(scope="module")
def spec(module):
    return hj.targets.from_nnx(module, factory=MLP)


def test_structure_paths_and_count(spec):
    assert spec.framework == "nnx" and spec.layout == "in_out"
    assert spec.paths == ("l1/bias", "l1/kernel", "l2/bias", "l2/kernel")
    assert spec.shapes["l1/kernel"] == (5, 7) and spec.shapes["l2/bias"] == (3,)
    assert spec.size == 5 * 7 + 7 + 7 * 3 + 3
    assert all(type(l) is jax.ShapeDtypeStruct for l in jax.tree.leaves(spec.abstract_params))


def test_apply_equals_module_call(spec, key, maybe_jit):
    params = spec.init(key)
    model = MLP(nnx.Rngs(0))
    graphdef, state = nnx.split(model, nnx.Param)
    state.replace_by_pure_dict(params)
    want = nnx.merge(graphdef, state)(X)
    chex.assert_trees_all_close(maybe_jit(spec.apply)(params, X), want, rtol=1e-6)


def test_apply_leaves_the_module_untouched(module, spec, key):
    before = nnx.state(module, nnx.Param).to_pure_dict()
    spec.apply(spec.init(key), X)
    chex.assert_trees_all_equal(nnx.state(module, nnx.Param).to_pure_dict(), before)


def test_init_uses_factory_and_matches_spec(spec, key):
    params = spec.init(key)
    chex.assert_trees_all_equal_shapes_and_dtypes(params, spec.zeros())
    want = nnx.state(MLP(nnx.Rngs(key)), nnx.Param).to_pure_dict()
    chex.assert_trees_all_equal(params, want)


def test_init_without_factory_is_the_modules_own_init(module):
    """NNX initialised the module at construction; without a factory init returns copies of those weights."""
    spec = hj.targets.from_nnx(module)
    params = spec.init(jax.random.key(3))
    chex.assert_trees_all_equal(params, nnx.state(module, nnx.Param).to_pure_dict())
    chex.assert_trees_all_equal(spec.params, params)


def test_batch_stat_refused_with_clear_error():
    with pytest.raises(ValueError, match=r"from_nnx: .*non-parameter state \(bn/mean \(BatchStat\), "
                                         r"bn/var \(BatchStat\)\)"):
        hj.targets.from_nnx(WithBN(nnx.Rngs(0)))


def test_stored_rng_streams_keep_apply_pure_and_jittable(key):
    module = WithDropout(nnx.Rngs(0))
    spec = hj.targets.from_nnx(module)
    params = spec.init(key)
    x = jnp.ones((4, 5), jnp.float32)
    first = spec.apply(params, x)
    chex.assert_trees_all_equal(spec.apply(params, x), first)        # no hidden counter advanced
    chex.assert_trees_all_equal(jax.jit(spec.apply)(params, x), first)
    assert float(jnp.mean(first == 0.0)) > 0.2                       # dropout is active
    fresh = jax.jit(lambda p, k: spec.apply(p, x, rngs=nnx.Rngs(k)))
    assert not np.array_equal(fresh(params, jax.random.key(1)), fresh(params, jax.random.key(2)))


def test_not_an_nnx_module():
    with pytest.raises(TypeError, match="expected a flax.nnx.Module, got dict"):
        hj.targets.from_nnx({})
