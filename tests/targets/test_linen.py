"""from_linen: outputs equal module.apply, abstract params, init, paths, counts, batch_stats refused or threaded."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hyperjax as hj

X = jnp.linspace(-1.0, 1.0, 10, dtype=jnp.float32).reshape(2, 5)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(7, name="hidden")(x))
        return nn.Dense(3, name="out", param_dtype=jnp.bfloat16, dtype=jnp.float32)(x)


class BNNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Dense(4)(x)
        return nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)


@pytest.fixture(scope="module")
def spec():
    return hj.targets.from_linen(MLP(), X)


def test_structure_paths_and_count(spec):
    assert spec.framework == "linen" and spec.layout == "in_out"
    assert spec.paths == ("hidden/bias", "hidden/kernel", "out/bias", "out/kernel")
    assert spec.shapes == {"hidden/bias": (7,), "hidden/kernel": (5, 7), "out/bias": (3,), "out/kernel": (7, 3)}
    assert spec.size == 5 * 7 + 7 + 7 * 3 + 3 and not hasattr(spec, "num_params")   # one name per thing
    assert spec.leaves["out/kernel"].dtype == jnp.bfloat16 and spec.leaves["hidden/kernel"].dtype == jnp.float32
    leaves = jax.tree.leaves(spec.abstract_params)
    assert leaves and all(type(l) is jax.ShapeDtypeStruct for l in leaves)


def test_abstract_example_input_allocates_nothing():
    """A 1024 x 1024 layer built from a ShapeDtypeStruct input: no parameter buffer stays alive."""
    class Big(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(1024)(x)

    before = sum(a.nbytes for a in jax.live_arrays())
    big = hj.targets.from_linen(Big(), jax.ShapeDtypeStruct((1, 1024), jnp.float32))
    after = sum(a.nbytes for a in jax.live_arrays())
    assert big.size == 1024 * 1024 + 1024
    assert after - before < 1024 * 1024          # the kernel alone would be 4 MiB
    assert all(type(l) is jax.ShapeDtypeStruct for l in jax.tree.leaves(big.abstract_params))


def test_apply_equals_module_apply(spec, key, maybe_jit):
    params = spec.init(key)
    want = MLP().apply({"params": params}, X)
    got = maybe_jit(spec.apply)(params, X)
    chex.assert_trees_all_close(got, want, rtol=1e-6)
    assert got.shape == (2, 3)


def test_init_matches_spec_and_module_init(spec, key):
    params = spec.init(key)
    chex.assert_trees_all_equal_shapes_and_dtypes(params, spec.zeros())
    spec.check(params)
    chex.assert_trees_all_equal(params, MLP().init(key, X)["params"])
    other = spec.init(jax.random.key(1))
    assert not np.allclose(other["hidden"]["kernel"], params["hidden"]["kernel"])


def test_kwargs_reach_the_module(key):
    class Scaled(nn.Module):
        @nn.compact
        def __call__(self, x, scale: float = 1.0):
            return nn.Dense(2)(x) * scale

    s = hj.targets.from_linen(Scaled(), X)
    p = s.init(key)
    chex.assert_trees_all_close(s.apply(p, X, scale=2.0), 2.0 * s.apply(p, X))


def test_batch_stats_refused_with_clear_error():
    with pytest.raises(ValueError, match=r"from_linen: .*non-parameter state \(batch_stats\).*with_state=True"):
        hj.targets.from_linen(BNNet(), X)


def test_with_state_threads_batch_stats(key, maybe_jit):
    spec = hj.targets.from_linen(BNNet(), X, with_state=True)
    assert spec.paths == ("BatchNorm_0/bias", "BatchNorm_0/scale", "Dense_0/bias", "Dense_0/kernel")
    params, state = spec.init(key), spec.init_state(key)
    assert set(state) == {"batch_stats"}
    y, new_state = maybe_jit(spec.apply)(params, state, X)
    want_y, want_state = BNNet().apply({"params": params, **state}, X, mutable=["batch_stats"])
    chex.assert_trees_all_close(y, want_y, rtol=1e-6)
    chex.assert_trees_all_close(new_state, dict(want_state), rtol=1e-6)
    moved = new_state["batch_stats"]["BatchNorm_0"]["mean"] - state["batch_stats"]["BatchNorm_0"]["mean"]
    assert float(jnp.max(jnp.abs(moved))) > 1e-3        # the running mean was updated, not dropped
    y_eval, same_state = spec.apply(params, new_state, X, train=False)
    chex.assert_trees_all_close(same_state, new_state)
    chex.assert_trees_all_close(y_eval, BNNet().apply({"params": params, **new_state}, X, train=False))


def test_with_state_apply_checks_the_state(key):
    spec = hj.targets.from_linen(BNNet(), X, with_state=True)
    params = spec.init(key)
    with pytest.raises(ValueError, match=r"TargetSpec.apply: state tree does not match the target \(missing: "
                                         r"batch_stats/BatchNorm_0/mean.*init_state"):
        spec.apply(params, X)
    with pytest.raises(ValueError, match="threads state; call apply"):
        spec.apply(params)


def test_without_state_there_is_no_init_state(spec, key):
    with pytest.raises(ValueError, match="no non-parameter state"):
        spec.init_state(key)


def test_not_a_linen_module():
    with pytest.raises(TypeError, match="expected a flax.linen.Module, got function"):
        hj.targets.from_linen(lambda x: x, X)
