"""from_equinox: outputs equal the module's own call, abstract modules, init, paths, State refused, lazy import."""

import sys

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hyperjax as hj

X = jnp.linspace(-1.0, 1.0, 5, dtype=jnp.float32)


def make_mlp(key):
    return eqx.nn.MLP(5, 3, 7, 2, key=key)


@pytest.fixture(scope="module")
def module():
    return make_mlp(jax.random.key(0))


@pytest.fixture(scope="module")
def spec(module):
    return hj.targets.from_equinox(module)


def test_structure_paths_and_count(spec):
    assert spec.framework == "equinox" and spec.layout == "out_in"
    assert spec.paths == ("layers/0/weight", "layers/0/bias", "layers/1/weight", "layers/1/bias",
                          "layers/2/weight", "layers/2/bias")
    assert spec.shapes["layers/0/weight"] == (7, 5)
    assert spec.size == 7 * 5 + 7 + 7 * 7 + 7 + 3 * 7 + 3
    assert spec.fans("layers/0/weight") == (5, 7)          # (out, in) kernels
    assert all(type(l) is jax.ShapeDtypeStruct for l in jax.tree.leaves(spec.abstract_params))


def test_apply_equals_module_call(module, spec, key, maybe_jit):
    params = spec.init(key)
    _, static = eqx.partition(module, eqx.is_inexact_array)
    want = eqx.combine(params, static)(X)
    chex.assert_trees_all_close(maybe_jit(spec.apply)(params, X), want, rtol=1e-6)
    # the module's own weights through the spec give the module's own output
    own, _ = eqx.partition(module, eqx.is_inexact_array)
    chex.assert_trees_all_close(spec.apply(own, X), module(X), rtol=1e-6)


def test_abstract_module_and_factory_init(key):
    abstract = eqx.filter_eval_shape(make_mlp, jax.random.key(0))
    spec = hj.targets.from_equinox(abstract, factory=make_mlp)
    params = spec.init(key)
    chex.assert_trees_all_equal_shapes_and_dtypes(params, spec.zeros())
    own, _ = eqx.partition(make_mlp(key), eqx.is_inexact_array)
    chex.assert_trees_all_equal(params, own)
    chex.assert_trees_all_close(spec.apply(params, X), make_mlp(key)(X), rtol=1e-6)


def test_init_without_factory_is_the_modules_own_init(spec, module):
    """Equinox initialised the module at construction; without a factory init returns copies of those weights."""
    params = spec.init(jax.random.key(1))
    spec.check(params)
    own, _ = eqx.partition(module, eqx.is_inexact_array)
    chex.assert_trees_all_equal(params, own)
    chex.assert_trees_all_equal(spec.params, own)
    abstract = hj.targets.from_equinox(eqx.filter_eval_shape(make_mlp, jax.random.key(0)))
    w = abstract.init(jax.random.key(1)).layers[1].weight          # abstract module: fan-in moments
    assert 0.5 / 7 < float(jnp.var(w)) < 2.0 / 7


def test_state_refused_with_clear_error():
    class WithBN(eqx.Module):
        lin: eqx.nn.Linear
        bn: eqx.nn.BatchNorm

        def __init__(self, key):
            self.lin = eqx.nn.Linear(5, 4, key=key)
            self.bn = eqx.nn.BatchNorm(4, axis_name="batch", mode="batch")

    model, _ = eqx.nn.make_with_state(WithBN)(jax.random.key(0))
    with pytest.raises(ValueError, match=r"from_equinox: .*non-parameter state \(eqx.nn.State\).*BatchNorm"):
        hj.targets.from_equinox(model)


def test_not_an_equinox_module():
    with pytest.raises(TypeError, match="expected an equinox.Module, got dict"):
        hj.targets.from_equinox({"w": np.zeros(3)})


def test_missing_equinox_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "equinox", None)        # `import equinox` now raises ImportError
    with pytest.raises(ImportError, match=r"from_equinox: needs equinox.*pip install 'hyperjax\[equinox\]'"):
        hj.targets.from_equinox(object())
