"""generators.factorised_apply: per-example LoRA / low-rank / scale factors through the unmodified linen model
(nn.intercept_methods, nn.scan stacks, DenseGeneral) and NNX model (swapped layers), equal to the materialised
per-example path with its gradients; export of merged LoRA weights for the model's own apply (plain Orbax)."""

import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hyperjax as hj
from lora_case import ATTN, CONDS, G, MODES, SPEC, TOKENS, build, conds_of, nudge

# ---------------------------------------------------------------- factorised per-example path
def materialised(gen, hp, mode, tokens=TOKENS):
    if mode == "static":
        return SPEC.apply(gen.apply(hp), tokens)
    return jax.vmap(lambda c, t: SPEC.apply(gen.apply(hp, c), t[None])[0])(conds_of(mode), tokens)


@pytest.mark.parametrize("mode, jit", [(m, True) for m in MODES] + [("leaf", False)])
def test_factorised_apply_equals_materialised_per_example(mode, jit):
    gen = build(mode)
    hp = nudge(gen.init(jax.random.key(0)), scale=0.1)
    fac = lambda h, t: G.factorised_apply(SPEC, gen.factors(h, conds_of(mode)), t)
    fac = jax.jit(fac) if jit else fac
    want = materialised(gen, hp, mode)
    got = fac(hp, TOKENS)
    assert float(jnp.abs(want - SPEC.apply(SPEC.params, TOKENS)).max()) > 1e-2     # the adapters matter
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_factorised_gradient_equals_materialised_gradient():
    gen = build("layers", where=ATTN)
    hp = nudge(gen.init(jax.random.key(0)), scale=0.1)
    y = jax.random.randint(jax.random.key(9), TOKENS.shape, 0, 11)

    def ce(logits):
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    g_fac = jax.jit(jax.grad(lambda h: ce(G.factorised_apply(SPEC, gen.factors(h, CONDS), TOKENS))))(hp)
    g_mat = jax.jit(jax.grad(lambda h: ce(materialised(gen, h, "layers"))))(hp)
    for (p, a), b in zip(hj.testing.leaves_with_paths(g_fac["hyper"]), jax.tree.leaves(g_mat["hyper"])):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5, err_msg=p)


class Dense64(nn.Module):
    """x f64[B, 3] -> Dense(4) -> relu -> DenseGeneral((2, 2)) in float64 (for central differences)."""

    @nn.compact
    def __call__(self, x):
        h = jax.nn.relu(nn.Dense(4, dtype=jnp.float64, param_dtype=jnp.float64)(x))
        return nn.DenseGeneral((2, 2), dtype=jnp.float64, param_dtype=jnp.float64)(h)


def test_factorised_gradient_matches_central_differences():
    with jax.enable_x64(True):                   # float64: central differences are exact to ~1e-8 here
        x = jnp.linspace(-1.0, 1.0, 6, dtype=jnp.float64).reshape(2, 3)
        spec = hj.targets.from_linen(Dense64(), x)
        gen = G.lora(spec, rank=2, cond_dim=2, hidden=(3,), dtype=jnp.float64)
        hp = nudge(gen.init(jax.random.key(0)))
        conds = jnp.array([[0.5, -1.0], [1.5, 0.25]], jnp.float64)

        def f(hyper):
            return G.factorised_apply(spec, gen.factors({**hp, "hyper": hyper}, conds), x)
        jax.test_util.check_grads(f, (hp["hyper"],), order=1, modes=["rev"], atol=1e-7, rtol=1e-7, eps=1e-6)


HEADS_X = jnp.linspace(-1.0, 1.0, 2 * 4 * 16).reshape(2, 4, 16)


class Heads(nn.Module):
    """Unstacked DenseGeneral q (16, 4, 8) and out (4, 8, 16) kernels and a Dense, with biases."""

    @nn.compact
    def __call__(self, x):
        h = nn.DenseGeneral((4, 8), name="query")(x)
        h = nn.DenseGeneral(16, axis=(-2, -1), name="out")(jax.nn.relu(h))
        return nn.Dense(3, name="head")(h)


@pytest.mark.parametrize("kind", ["low_rank", "scale_modulation", "lora"])
def test_factorised_apply_takes_low_rank_and_scale_factors_too(kind):
    spec = hj.targets.from_linen(Heads(), HEADS_X)
    where = "**/kernel"
    gen = {"low_rank": lambda: G.low_rank(spec, rank=2, cond_dim=3, where=where),
           "scale_modulation": lambda: G.scale_modulation(spec, cond_dim=3, where=where, init_scale=0.3),
           "lora": lambda: G.lora(spec, rank=2, cond_dim=3, where=where)}[kind]()
    hp = nudge(gen.init(jax.random.key(0)), scale=0.2)
    conds = jnp.array([[1.0, -0.5, 2.0], [0.0, 1.0, -1.0]])
    want = jax.vmap(lambda c, xi: spec.apply(gen.apply(hp, c), xi[None])[0])(conds, HEADS_X)
    got = jax.jit(lambda h: G.factorised_apply(spec, gen.factors(h, conds), HEADS_X))(hp)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- export for the model's own apply
MODEL_SRC = textwrap.dedent('''
    import flax.linen as nn

    def logical(init, names):
        return nn.with_logical_partitioning(init, names)

    class Tiny(nn.Module):
        """lm1b style: logical partitioning, nn.SelfAttention (DenseGeneral kernels), a Dense head."""
        @nn.compact
        def __call__(self, tokens):
            x = nn.Embed(7, 8, embedding_init=logical(nn.initializers.normal(1.0), ("vocab", "embed")))(tokens)
            x = x + nn.SelfAttention(num_heads=2, kernel_init=logical(nn.initializers.xavier_uniform(),
                                                                       ("embed", "heads", "kv")),
                                     use_bias=False, deterministic=True)(x)
            return nn.Dense(7, kernel_init=logical(nn.initializers.lecun_normal(), ("embed", "vocab")))(x)
''')


def test_export_restores_with_plain_orbax_and_runs_the_unmodified_model(tmp_path):
    (tmp_path / "tiny_model.py").write_text(MODEL_SRC)
    sys.path.insert(0, str(tmp_path))
    try:
        import tiny_model
    finally:
        sys.path.remove(str(tmp_path))
    model, tokens = tiny_model.Tiny(), jnp.arange(10).reshape(2, 5) % 7
    variables = model.init(jax.random.key(0), tokens)
    assert isinstance(variables["params"]["Dense_0"]["kernel"], nn.Partitioned)
    spec = hj.targets.from_linen(model, tokens, params=variables)
    gen = G.lora(spec, rank=2, cond_dim=3, where="**/kernel")
    hp = nudge(gen.init(jax.random.key(1)))
    merged = gen.apply(hp, jnp.array([1.0, 0.0, -1.0]))
    want = model.apply({"params": spec.rebox(merged)}, tokens)          # the boxes put back
    np.testing.assert_allclose(want, spec.apply(merged, tokens), rtol=1e-6, atol=1e-6)
    paths = [hj.checkpoint.export(tmp_path / f"merged_{name}", tree)
             for name, tree in (("plain", merged), ("boxed", spec.rebox(merged)))]
    np.save(tmp_path / "want.npy", np.asarray(want))
    code = textwrap.dedent(f'''
        import sys; sys.path.insert(0, {str(tmp_path)!r})
        import jax.numpy as jnp, numpy as np, orbax.checkpoint as ocp
        import tiny_model
        for path in {paths!r}:
            params = ocp.StandardCheckpointer().restore(path)
            y = tiny_model.Tiny().apply({{"params": params}}, jnp.arange(10).reshape(2, 5) % 7)
            np.testing.assert_allclose(y, np.load({str(tmp_path / "want.npy")!r}), rtol=1e-5, atol=1e-6)
        assert "hyperjax" not in sys.modules
        print("ok")
    ''')
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


# ---------------------------------------------------------------- NNX: the adapted layers swapped
def nnx_case():
    from flax import nnx

    class Net(nnx.Module):
        """nnx.MultiHeadAttention (LinearGeneral q/k/v/out) and an nnx.List of Linear layers."""

        def __init__(self, rngs):
            self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=8, qkv_features=8, decode=False, rngs=rngs)
            self.layers = nnx.List([nnx.Linear(8, 8, rngs=rngs), nnx.Linear(8, 4, rngs=rngs)])

        def __call__(self, x):
            h = x + self.attn(x)
            return self.layers[1](jax.nn.relu(self.layers[0](h)))
    return hj.targets.from_nnx(Net(nnx.Rngs(0)))


@pytest.mark.parametrize("kind", ["lora", "low_rank", "scale_modulation"])
def test_nnx_factorised_apply_swaps_the_layers_and_equals_materialised(kind):
    spec = nnx_case()
    x = jax.random.normal(jax.random.key(1), (3, 5, 8))
    conds = jax.random.normal(jax.random.key(2), (3, 4))
    where = ["attn/*/kernel", "layers/*/kernel"]
    gen = {"lora": lambda: G.lora(spec, rank=2, cond_dim=4, where=where),
           "low_rank": lambda: G.low_rank(spec, rank=2, cond_dim=4, where=where),
           "scale_modulation": lambda: G.scale_modulation(spec, cond_dim=4, where=where, init_scale=0.3)}[kind]()
    hp = nudge(gen.init(jax.random.key(0)), scale=0.05)
    want = jax.vmap(lambda c, xi: spec.apply(gen.apply(hp, c), xi[None])[0])(conds, x)
    got = jax.jit(lambda h: G.factorised_apply(spec, gen.factors(h, conds), x))(hp)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert float(jnp.abs(want - spec.apply(spec.params, x)).max()) > 1e-3
    np.testing.assert_array_equal(spec.apply(spec.params, x), spec.apply(spec.params, x))   # the module untouched
