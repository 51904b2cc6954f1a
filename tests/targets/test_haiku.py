"""from_haiku: outputs equal transformed.apply, abstract params, init, paths, state refused or threaded, lazy import."""

import builtins
import sys

import chex
import haiku as hk
import jax
import jax.numpy as jnp
import pytest

import hyperjax as hj

X = jnp.linspace(-1.0, 1.0, 10, dtype=jnp.float32).reshape(2, 5)


def mlp(x):
    return hk.nets.MLP([7, 3])(x)


def dropout_mlp(x):
    return hk.dropout(hk.next_rng_key(), 0.5, hk.Linear(7)(x))


def bn_net(x, is_training=True):
    x = hk.Linear(4)(x)
    return hk.BatchNorm(create_scale=True, create_offset=True, decay_rate=0.5)(x, is_training)


@pytest.fixture(scope="module")
def transformed():
    return hk.transform(mlp)


@pytest.fixture(scope="module")
def spec(transformed):
    return hj.targets.from_haiku(transformed, X)


def test_structure_paths_and_count(spec):
    assert spec.framework == "haiku" and spec.layout == "in_out"
    assert spec.paths == ("mlp/~/linear_0/b", "mlp/~/linear_0/w", "mlp/~/linear_1/b", "mlp/~/linear_1/w")
    assert spec.size == 5 * 7 + 7 + 7 * 3 + 3
    assert all(type(l) is jax.ShapeDtypeStruct for l in jax.tree.leaves(spec.abstract_params))


@pytest.mark.parametrize("no_rng", [False, True], ids=["transform", "without_apply_rng"])
def test_apply_equals_haiku_apply(no_rng, key, maybe_jit):
    t = hk.without_apply_rng(hk.transform(mlp)) if no_rng else hk.transform(mlp)
    spec = hj.targets.from_haiku(t, X)
    params = spec.init(key)
    chex.assert_trees_all_equal(params, t.init(key, X))
    want = t.apply(params, X) if no_rng else t.apply(params, None, X)
    chex.assert_trees_all_close(maybe_jit(spec.apply)(params, X), want, rtol=1e-6)


def test_rng_keyword_reaches_haiku(key):
    t = hk.transform(dropout_mlp)
    k = jax.random.key(7)
    with jax.numpy_dtype_promotion("standard"):          # hk.dropout mixes bool and float32
        spec = hj.targets.from_haiku(t, X)
        params = spec.init(key)
        got = spec.apply(params, X, rng=k)
        chex.assert_trees_all_close(got, t.apply(params, k, X))
    assert float(jnp.mean(got == 0.0)) > 0.2                 # dropout ran with the given key


def test_state_refused_with_clear_error():
    with jax.numpy_dtype_promotion("standard"):          # haiku's moving averages mix int32 and float32
        with pytest.raises(ValueError, match=r"from_haiku: .*non-parameter state \(batch_norm/~/mean_ema, "
                                             r"batch_norm/~/var_ema\).*with_state=True"):
            hj.targets.from_haiku(hk.transform_with_state(bn_net), X)


def test_with_state_threads_haiku_state(key, maybe_jit):
    t = hk.transform_with_state(bn_net)
    with jax.numpy_dtype_promotion("standard"):
        spec = hj.targets.from_haiku(t, X, with_state=True)
        params, state = spec.init(key), spec.init_state(key)
        want_params, want_state = t.init(key, X)
        chex.assert_trees_all_equal(params, want_params)
        chex.assert_trees_all_equal(state, want_state)
        y, new_state = maybe_jit(spec.apply)(params, state, X)
        want_y, want_new = t.apply(params, state, None, X)
    chex.assert_trees_all_close(y, want_y, rtol=1e-6)
    chex.assert_trees_all_close(new_state, want_new, rtol=1e-6)
    ema = new_state["batch_norm/~/mean_ema"]
    assert int(ema["counter"]) == 1 and float(jnp.max(jnp.abs(ema["hidden"]))) > 1e-3   # updated, not dropped


def test_not_transformed():
    with pytest.raises(TypeError, match="expected the result of hk.transform, got function"):
        hj.targets.from_haiku(mlp, X)


def test_missing_haiku_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def no_haiku(name, *args, **kwargs):
        if name == "haiku" or name.startswith("haiku."):
            raise ImportError("No module named 'haiku'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "haiku")
    monkeypatch.setattr(builtins, "__import__", no_haiku)
    with pytest.raises(ImportError, match=r"from_haiku: needs dm-haiku.*pip install 'hyperjax\[haiku\]'"):
        hj.targets.from_haiku(object(), X)
