"""from_module: a user's linen, NNX or Equinox module as the body of a generator."""

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import hyperjax as hj
import hyperjax.testing as ht

SPEC = ht.mlp_spec((5, 7, 3))
N = hj.generators.num_outputs(SPEC)


class LinenBody(nn.Module):
    n_out: int

    @nn.compact
    def __call__(self, c):
        return nn.Dense(self.n_out)(jnp.tanh(nn.Dense(16)(c)))


class NNXBody(nnx.Module):
    def __init__(self, d_in, n_out, rngs):
        self.l1 = nnx.Linear(d_in, 16, rngs=rngs)
        self.l2 = nnx.Linear(16, n_out, rngs=rngs)

    def __call__(self, c):
        return self.l2(jnp.tanh(self.l1(c)))


def bodies(d_in, n_out):
    k = jax.random.key(3)
    return {"linen": LinenBody(n_out), "nnx": NNXBody(d_in, n_out, nnx.Rngs(3)),
            "equinox": eqx.nn.MLP(d_in, n_out, 16, 1, activation=jnp.tanh, key=k)}


@pytest.mark.parametrize("kind", ["linen", "nnx", "equinox"])
@pytest.mark.parametrize("cond", ["vector", "ids", "static"])
def test_body_generates_the_target(kind, cond, key):
    kw = {"vector": {"cond_dim": 4}, "ids": {"cond_dim": 4, "num_conds": 3}, "static": {}}[cond]
    gen = hj.generators.from_module(bodies(kw.get("cond_dim", 8), N)[kind], SPEC, **kw)
    c = {"vector": jnp.linspace(-1, 1, 4), "ids": jnp.int32(2), "static": None}[cond]
    ht.assert_generates(gen, SPEC, c)


@pytest.mark.parametrize("kind", ["linen", "nnx", "equinox"])
def test_output_is_the_body_split_into_leaves_with_hyperfan_scaling(kind, key, maybe_jit):
    """leaf_l = std_l * gain * body(c)[slice_l] (mean 0 for kernels and biases), as dense splits its MLP."""
    body = bodies(4, N)[kind]
    gen = hj.generators.from_module(body, SPEC, cond_dim=4)
    hp = jax.jit(gen.init)(key)
    c = jnp.linspace(-1.0, 1.0, 4)
    params = maybe_jit(gen.apply)(hp, c)
    raw = {"linen": lambda: body.apply({"params": hp["hyper"]["body"]}, c),
           "nnx": lambda: nnx.merge(nnx.graphdef(body), nnx.State(hp["hyper"]["body"]))(c),
           "equinox": lambda: eqx.combine(hp["hyper"]["body"], eqx.partition(body, eqx.is_inexact_array)[1])(c)}[kind]()
    raw = np.asarray(raw) * float(hp["hyper"]["gain"])
    offset = 0
    for path in SPEC.paths:
        n = int(np.prod(SPEC.leaves[path].shape))
        _, var = SPEC.init_moments(path)
        want = raw[offset:offset + n].reshape(SPEC.leaves[path].shape) * np.sqrt(var)
        np.testing.assert_allclose(ht.leaf_at(params, path), want, rtol=1e-4, atol=1e-6)
        offset += n


def test_nnx_and_equinox_bodies_start_from_their_own_weights(key):
    body = bodies(4, N)["equinox"]
    gen = hj.generators.from_module(body, SPEC, cond_dim=4)
    hp = gen.init(key)
    np.testing.assert_array_equal(hp["hyper"]["body"].layers[0].weight, body.layers[0].weight)
    nbody = bodies(4, N)["nnx"]
    nhp = hj.generators.from_module(nbody, SPEC, cond_dim=4).init(key)
    np.testing.assert_array_equal(nhp["hyper"]["body"]["l1"]["kernel"], nbody.l1.kernel[...])


def test_init_variance_matches_hyperfan_in(key):
    """Over 24 conds, generated kernels of a 64 -> 32 layer have variance ~ 1/64 (the gain calibration)."""
    spec = ht.mlp_spec((64, 32, 3))
    gen = hj.generators.from_module(LinenBody(hj.generators.num_outputs(spec, where="Dense_0/kernel")), spec,
                                    cond_dim=8, where="Dense_0/kernel")
    conds = jax.random.normal(jax.random.key(5), (24, 8))
    ks = jax.jit(lambda key: hj.generate_batch(gen, gen.init(key), conds))(key)["Dense_0"]["kernel"]
    np.testing.assert_allclose(float(jnp.var(ks)), 1.0 / 64, rtol=0.2)


def test_partial_generation_and_labels(key):
    gen = hj.generators.from_module(LinenBody(hj.generators.num_outputs(SPEC, where="*/kernel")), SPEC, cond_dim=4,
                                    where="*/kernel")
    hp = jax.eval_shape(gen.init, key)
    labels = hj.training.labels(hp)
    assert set(hp) == {"hyper", "direct"}
    assert set(jax.tree.leaves(labels["hyper"])) == {"hyper"} and set(jax.tree.leaves(labels["direct"])) == {"direct"}


def test_bad_bodies_raise():
    with pytest.raises(ValueError, match=r"from_module: the module maps a cond of shape \(4,\) to \(9,\) float32, but "
                                         r"the 4 generated leaves need one floating vector of \(66,\)"):
        hj.generators.from_module(LinenBody(9), SPEC, cond_dim=4)
    with pytest.raises(TypeError, match=r"from_module: `module` must be a flax.linen.Module, a flax.nnx.Module, an "
                                        r"equinox.Module or a TargetSpec, got function"):
        hj.generators.from_module(lambda c: c, SPEC, cond_dim=4)
    with pytest.raises(ValueError, match=r"`num_conds` needs `cond_dim`"):
        hj.generators.from_module(LinenBody(N), SPEC, num_conds=3)
