"""Base (e.g. pretrained) weights: spec.params from a module's current weights, and spec.init the framework's
own initialiser (NNX and Equinox re-use the module's weights, or a factory per key)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import hyperjax as hj
import hyperjax.testing as ht


def test_nnx_spec_keeps_the_modules_weights_and_inits_like_nnx():
    module = nnx.Linear(3, 4, rngs=nnx.Rngs(7))
    spec = hj.targets.from_nnx(module)
    np.testing.assert_array_equal(spec.params["kernel"], module.kernel[...])
    for k in (0, 1):                                           # without a factory: the module's own init
        np.testing.assert_array_equal(spec.init(jax.random.key(k))["kernel"], module.kernel[...])
    assert np.asarray(module.bias[...]).std() == 0             # nnx zero-inits the bias; moments init would not
    fresh = hj.targets.from_nnx(module, factory=lambda rngs: nnx.Linear(3, 4, rngs=rngs))
    a, b = fresh.init(jax.random.key(1)), fresh.init(jax.random.key(2))
    assert not np.allclose(a["kernel"], b["kernel"])
    abstract = hj.targets.from_nnx(nnx.eval_shape(lambda: nnx.Linear(3, 4, rngs=nnx.Rngs(0))))
    assert abstract.params is None and abstract.init(jax.random.key(0))["kernel"].shape == (3, 4)


def test_equinox_spec_keeps_the_modules_weights():
    module = eqx.nn.MLP(3, 2, 5, 1, key=jax.random.key(4))
    spec = hj.targets.from_equinox(module)
    np.testing.assert_array_equal(spec.params.layers[1].weight, module.layers[1].weight)
    np.testing.assert_array_equal(spec.init(jax.random.key(9)).layers[0].bias, module.layers[0].bias)
    x = jnp.ones(3)
    np.testing.assert_allclose(spec.apply(spec.params, x), module(x), rtol=1e-6)


def test_linen_spec_takes_pretrained_variables():
    model = ht.MLP((4, 2))
    variables = model.init(jax.random.key(3), jnp.ones((1, 3)))
    for given in (variables, variables["params"]):
        spec = hj.targets.from_linen(model, jnp.ones((1, 3)), params=given)
        np.testing.assert_array_equal(spec.params["Dense_0"]["kernel"], variables["params"]["Dense_0"]["kernel"])
    assert hj.targets.from_linen(model, jnp.ones((1, 3))).params is None
    with pytest.raises(ValueError, match=r"targets\.from_linen: `params` \(the base weights\): leaf 'Dense_0/kernel' "
                                         r"expected \(5, 4\) float32, got \(3, 4\) float32"):
        hj.targets.from_linen(model, jnp.ones((1, 5)), params=variables)


def test_generated_params_from_a_donated_state_fail_clearly():
    import optax
    spec = ht.mlp_spec()
    hnet = hj.generators.dense(spec, cond_dim=2, hidden=4, where="*/kernel")
    opt = optax.sgd(0.1)
    state = hj.training.init_state(hnet.init(jax.random.key(0)), opt)
    params = hnet.apply(state.params, jnp.ones(2))             # biases alias state.params["direct"]
    step = hj.training.make_step(lambda hp, b, r: jnp.sum(spec.apply(hnet.apply(hp, jnp.ones(2)), b)), opt)
    step(state, jnp.ones((2, 5)))                              # donates state
    with pytest.raises(ValueError, match=r"TargetSpec.apply: leaf 'Dense_0/bias' is a deleted \(donated\) buffer.*"
                                         r"make_step\(\.\.\., donate=False\)"):
        spec.apply(params, jnp.ones((2, 5)))
