"""low_rank / scale_modulation on kernels as real models write them: DenseGeneral and conv kernels through their
2-D view, init_scale=0 (exactly the base at init), a pretrained base taken from the spec, stacked layers refused."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hyperjax as hj


class Heads(nn.Module):
    """x f[B, 16] -> DenseGeneral (16, 4, 8) -> DenseGeneral (4, 8, 16) -> conv (3, 3, 1, 3) -> f[B, 4, 4, 3]."""

    @nn.compact
    def __call__(self, x):
        h = nn.DenseGeneral((4, 8), name="query")(x)
        h = nn.DenseGeneral(16, axis=(-2, -1), name="out")(jax.nn.relu(h))
        return nn.Conv(3, (3, 3), name="conv")(h.reshape(h.shape[0], 4, 4, 1))


X = jnp.linspace(-1.0, 1.0, 32).reshape(2, 16)
SPEC = hj.targets.from_linen(Heads(), X)
KERNELS = ("query/kernel", "out/kernel", "conv/kernel")


def make(kind, spec=SPEC, **kw):
    if kind == "low_rank":
        return hj.generators.low_rank(spec, rank=2, cond_dim=3, where="**/kernel", **kw)
    return hj.generators.scale_modulation(spec, cond_dim=3, where="**/kernel", **kw)


def leaf(tree, path):
    for part in path.split("/"):
        tree = tree[part]
    return tree


@pytest.mark.parametrize("kind", ["low_rank", "scale_modulation"])
@pytest.mark.parametrize("jit", [False, True])
def test_init_scale_zero_is_the_base_exactly(kind, jit):
    gen = make(kind, init_scale=0.0)
    hp = gen.init(jax.random.key(0))
    apply = jax.jit(gen.apply) if jit else gen.apply
    for c in (jnp.ones(3), jnp.array([3.0, -2.0, 0.5])):
        params = apply(hp, c)
        for p in KERNELS:
            np.testing.assert_array_equal(leaf(params, p), leaf(hp["base"], p))


@pytest.mark.parametrize("kind", ["low_rank", "scale_modulation"])
def test_init_scale_zero_still_trains_the_generator(kind):
    gen = make(kind, init_scale=0.0)
    hp = gen.init(jax.random.key(0))
    grads = jax.grad(lambda h: jnp.sum(SPEC.apply(gen.apply(h, jnp.ones(3)), X) ** 2))(hp)
    out_layer = grads["hyper"]["mlp"][-1]
    assert float(jnp.abs(out_layer["w"]).max()) > 0 and float(jnp.abs(out_layer["b"]).max()) > 0


@pytest.mark.parametrize("kind", ["low_rank", "scale_modulation"])
def test_view_kernels_keep_their_shape_and_factors_match(kind):
    gen = make(kind, init_scale=0.3)
    hp = gen.init(jax.random.key(1))
    conds = jax.random.normal(jax.random.key(2), (5, 3))
    factors = gen.factors(hp, conds)
    x = jax.random.normal(jax.random.key(3), (5, 16))
    for i in range(5):
        params = gen.apply(hp, conds[i])
        for p in ("query/kernel", "out/kernel"):
            k = leaf(params, p)
            assert k.shape == SPEC.leaves[p].shape
            w = hj.targets.as_matrix(SPEC, p, k)                    # (n_in, n_out)
            f = leaf(factors, p)
            one = jax.tree.map(lambda a: a[i] if a is not None and a.ndim == 2 and a.shape[0] == 5 else a, f)
            xi = x[i, : w.shape[0]] if w.shape[0] <= 16 else jnp.tile(x[i], 2)[: w.shape[0]]
            np.testing.assert_allclose(hj.generators.modulated_matmul(xi, one), xi @ w, rtol=1e-5, atol=1e-5)
    y = jax.vmap(lambda c: SPEC.apply(gen.apply(hp, c), X))(conds)
    assert y.shape == (5, 2, 4, 4, 3) and bool(jnp.all(jnp.isfinite(y)))


def test_view_base_has_the_layer_init_variance():
    gen = make("low_rank", init_scale=0.0)
    var = [float(jnp.var(leaf(gen.init(jax.random.key(s))["base"], "query/kernel"))) for s in range(4)]
    assert abs(np.mean(var) * 16 - 1.0) < 0.2          # fan_in of a (16, 4, 8) query kernel is 16, not 16*4


@pytest.mark.parametrize("kind", ["low_rank", "scale_modulation"])
def test_pretrained_base_is_kept(kind):
    variables = Heads().init(jax.random.key(7), X)
    spec = hj.targets.from_linen(Heads(), X, params=variables)
    gen = make(kind, spec=spec, init_scale=0.0)
    hp = gen.init(jax.random.key(0))
    for p in KERNELS:
        np.testing.assert_array_equal(leaf(hp["base"], p), leaf(variables["params"], p))
    np.testing.assert_array_equal(hp["direct"]["query"]["bias"], variables["params"]["query"]["bias"])
    np.testing.assert_allclose(spec.apply(gen.apply(hp, jnp.ones(3)), X), Heads().apply(variables, X), rtol=1e-6)


def test_stacked_kernels_are_refused_with_the_path():
    spec = hj.targets.from_linen(hj.testing.Transformer(), jnp.zeros((1, 8), jnp.int32))
    with pytest.raises(ValueError, match=r"layers/.*query/kernel.*per_layer"):
        hj.generators.low_rank(spec, rank=2, cond_dim=3, where="layers/**/query/kernel")


@pytest.mark.parametrize("bad", [-0.1, float("nan")])
def test_negative_init_scale_is_refused(bad):
    with pytest.raises(ValueError, match="init_scale"):
        make("low_rank", init_scale=bad)
    with pytest.raises(ValueError, match="init_scale"):
        make("scale_modulation", init_scale=bad)


def test_a_norm_scale_is_refused_with_its_path():
    with pytest.raises(ValueError, match=r"'query/bias'"):
        hj.generators.low_rank(SPEC, rank=2, cond_dim=3, where="query/bias")
