"""generators.lora: W0 + (alpha/r) A(c) B(c) on a frozen pretrained base, over kernels as real models write them
(DenseGeneral attention kernels, nn.scan stacks, conv), the factorised per-example path through the unmodified
linen model (`factorised_apply`), frozen-base training and export for the model's own apply."""

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
from hypothesis import given, settings, strategies as st

import hyperjax as hj

G = hj.generators
LM = hj.testing.Transformer(vocab=11, width=16, heads=2, mlp=24, layers=2, max_len=8)
TOKENS = jax.random.randint(jax.random.key(4), (3, 6), 0, 11)
VARIABLES = LM.init(jax.random.key(1), TOKENS)
SPEC = hj.targets.from_linen(LM, TOKENS, params=VARIABLES)
CONDS = jax.random.normal(jax.random.key(2), (3, 5))
ATTN = "layers/attention/*/kernel"


def build(mode, spec=SPEC, **kw):
    if mode == "static":
        return G.lora(spec, rank=2, **kw)
    if mode == "ids":
        return G.lora(spec, rank=2, cond_dim=5, num_conds=4, **kw)
    return G.lora(spec, rank=2, cond_dim=5, share=mode, hidden=(12,), **kw)


def cond_of(mode, i=0):
    return {"static": None, "ids": jnp.int32(i)}.get(mode, CONDS[i])


def conds_of(mode):
    return {"static": None, "ids": jnp.arange(3)}.get(mode, CONDS)


def nudge(hp, scale=0.3, seed=7):
    """Move every trainable leaf off its init (B = 0 at init would make every adapter vanish)."""
    keys = iter(jax.random.split(jax.random.key(seed), 64))
    train = {r: jax.tree.map(lambda a: a + scale * jax.random.normal(next(keys), a.shape, a.dtype), v)
             for r, v in hp.items() if r != "frozen"}
    return {**hp, **train}


MODES = ["static", "leaf", "layers", "ids"]


def factor_at(spec, factors, path):
    """The leaf at `path` of a factors tree (LoRAFactors are pytrees: flatten with them as leaves)."""
    flat = jax.tree.leaves(factors, is_leaf=lambda x: isinstance(x, G.LoRAFactors))
    return dict(zip(spec.paths, flat))[path]


# ---------------------------------------------------------------- init: W(c) = W0 exactly
@pytest.mark.parametrize("mode, jit", [(m, True) for m in MODES] + [("layers", False)])
def test_init_is_the_pretrained_model_exactly(mode, jit):
    gen = build(mode)
    hp = gen.init(jax.random.key(0))
    apply = jax.jit(gen.apply) if jit else gen.apply
    for i in range(2):
        params = apply(hp, cond_of(mode, i))
        for p, a, b in zip(SPEC.paths, jax.tree.leaves(params), jax.tree.leaves(SPEC.params)):
            np.testing.assert_array_equal(a, b, err_msg=p)
    np.testing.assert_array_equal(SPEC.apply(params, TOKENS), LM.apply(VARIABLES, TOKENS))


def test_default_adapts_every_layer_kernel_not_raw_params():
    gen = build("static")
    hp = gen.init(jax.random.key(0))
    adapted = {p for p, _ in hj.testing.leaves_with_paths(hp["hyper"]["a"])}
    assert adapted == {p for p in SPEC.paths if p.endswith("/kernel")}
    assert "pos_embedding" not in adapted and "embed/embedding" not in adapted


# ---------------------------------------------------------------- the formula
@pytest.mark.parametrize("mode", ["static", "leaf", "layers"])
def test_merged_weight_is_w0_plus_scaled_ab_in_the_2d_view(mode):
    gen = build(mode, where=ATTN, alpha=6.0)
    hp = nudge(gen.init(jax.random.key(0)))
    params = gen.apply(hp, cond_of(mode))
    factors = gen.factors(hp, cond_of(mode))
    for p in ("layers/attention/query/kernel", "layers/attention/out/kernel"):
        f = factor_at(SPEC, factors, p)
        assert isinstance(f, G.LoRAFactors) and f.scale == 3.0
        assert f.a.shape == (2, 16, 2) and f.b.shape == (2, 2, 16)        # one adapter per scanned layer
        want = hj.targets.as_matrix(SPEC, p, hj.testing.leaf_at(SPEC.params, p)) + 3.0 * f.a @ f.b
        np.testing.assert_allclose(hj.targets.as_matrix(SPEC, p, hj.testing.leaf_at(params, p)), want,
                                   rtol=1e-5, atol=1e-6)
        delta = np.asarray(want - hj.targets.as_matrix(SPEC, p, hj.testing.leaf_at(SPEC.params, p)))
        assert np.linalg.matrix_rank(delta[0], tol=1e-5) == 2                # rank r per layer
        assert not np.allclose(delta[0], delta[1])                          # each layer its own adapter
    for p in ("layers/mlp_in/kernel", "logits/kernel", "layers/attention/query/bias"):
        np.testing.assert_array_equal(hj.testing.leaf_at(params, p), hj.testing.leaf_at(SPEC.params, p))


@settings(max_examples=5, deadline=None)
@given(n_in=st.integers(1, 6), n_out=st.integers(1, 6), rank=st.integers(1, 4))
def test_update_has_rank_at_most_r_on_any_dense_shape(n_in, n_out, rank):
    spec = hj.testing.mlp_spec((n_in, n_out))
    gen = G.lora(spec, rank=rank, cond_dim=2, hidden=())
    hp = nudge(gen.init(jax.random.key(n_in * 7 + n_out)))
    w = hj.testing.leaf_at(gen.apply(hp, jnp.array([0.5, -1.0])), "Dense_0/kernel")
    w0 = hj.testing.leaf_at(hp["frozen"], "Dense_0/kernel")
    assert w.shape == (n_in, n_out)
    assert np.linalg.matrix_rank(np.asarray(w - w0), tol=1e-5) <= min(rank, n_in, n_out)


def test_conv_kernels_are_adapted_through_their_2d_view():
    spec = hj.testing.cnn_spec((3,))
    conv = next(p for p in spec.paths if p.endswith("kernel") and len(spec.leaves[p].shape) == 4)
    gen = G.lora(spec, rank=2, cond_dim=3, where=conv)
    hp = nudge(gen.init(jax.random.key(0)))
    params = gen.apply(hp, jnp.ones(3))
    f = factor_at(spec, gen.factors(hp, jnp.ones(3)), conv)
    kh, kw, c_in, c_out = spec.leaves[conv].shape
    assert f.a.shape == (kh * kw * c_in, 2) and f.b.shape == (2, c_out)
    np.testing.assert_allclose(hj.targets.as_matrix(spec, conv, hj.testing.leaf_at(params, conv)),
                               f.base + f.a @ f.b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- frozen base, training
def test_frozen_base_gets_zero_gradient_and_adam_leaves_it_bitwise():
    gen = build("leaf", where=ATTN)
    hp = gen.init(jax.random.key(0))
    labels = hj.training.labels(hp)
    assert set(jax.tree.leaves(labels["frozen"])) == {"frozen"} and set(hp) == {"hyper", "frozen"}

    def loss(h, tokens, rng=None):
        logits = jax.vmap(lambda c, t: SPEC.apply(gen.apply(h, c), t[None])[0])(CONDS, tokens)
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens).mean()

    g = jax.grad(loss)(hp, TOKENS)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(g["frozen"]))
    head = g["hyper"]["mlp"][-1]
    assert float(jnp.abs(head["w"]).max()) > 0        # B's head gets gradient through A at init
    opt = optax.adam(1e-2)                      # a plain optimizer: the zero gradient leaves the base as it is
    step = hj.training.make_step(loss, opt, donate=False)
    state = hj.training.init_state(hp, opt)
    for _ in range(3):
        state, _ = step(state, TOKENS)
    for a, b in zip(jax.tree.leaves(state.params["frozen"]), jax.tree.leaves(hp["frozen"])):
        np.testing.assert_array_equal(a, b)
    assert float(loss(state.params, TOKENS)) < float(loss(hp, TOKENS))
    # multi_optimizer keeps no Adam moments for the frozen base (optax.set_to_zero), and updates it by 0
    opt = hj.training.multi_optimizer({"hyper": optax.adam(1e-2)})
    opt_state = opt.init(hp)
    n_state = sum(x.size for x in jax.tree.leaves(opt_state) if hasattr(x, "size"))
    n_hyper = sum(x.size for x in jax.tree.leaves(hp["hyper"]))
    assert n_state <= 2 * n_hyper + 8
    with jax.numpy_dtype_promotion("standard"):      # optax's own step-count arithmetic
        updates, _ = opt.update(g, opt_state, hp)
    assert all(float(jnp.abs(u).max()) == 0.0 for u in jax.tree.leaves(updates["frozen"]))


def test_train_base_true_trains_w0_as_base_and_the_rest_as_direct():
    gen = build("leaf", where=ATTN, train_base=True)
    hp = gen.init(jax.random.key(0))
    assert set(hp) == {"hyper", "base", "direct"}
    assert {p for p, _ in hj.testing.leaves_with_paths(hp["base"])} == {
        p for p in SPEC.paths if p.startswith("layers/attention/") and p.endswith("kernel")}
    g = jax.grad(lambda h: jnp.sum(SPEC.apply(gen.apply(h, CONDS[0]), TOKENS) ** 2))(hp)
    assert float(jnp.abs(hj.testing.leaf_at(g["base"], "layers/attention/query/kernel")).max()) > 0


def test_layer_shared_generator_does_not_grow_with_depth():
    def counts(layers):
        lm = hj.testing.Transformer(vocab=11, width=16, heads=2, mlp=24, layers=layers, max_len=8)
        spec = hj.targets.from_linen(lm, TOKENS)
        hp = G.lora(spec, rank=2, cond_dim=5, share="layers", where=ATTN, hidden=(12,)).init(jax.random.key(0))
        return hj.training.count_params(hp["hyper"]), hp["embedding"]["layer_emb"].shape
    (h2, e2), (h4, e4) = counts(2), counts(4)
    assert h2 == h4 and e2 == (8, 16) and e4 == (16, 16)


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
    g_fac = jax.grad(lambda h: ce(G.factorised_apply(SPEC, gen.factors(h, CONDS), TOKENS)))(hp)
    g_mat = jax.grad(lambda h: ce(materialised(gen, h, "layers")))(hp)
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


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("kw, err, match", [
    (dict(rank=0), ValueError, "rank"),
    (dict(rank=2, share="tree"), ValueError, "share"),
    (dict(rank=2, share="layers"), ValueError, "share='layers'"),
    (dict(rank=2, alpha=-1.0), ValueError, "alpha"),
    (dict(rank=2, train_base="no"), TypeError, "train_base"),
    (dict(rank=2, where="layers/attention/query/bias"), ValueError, "'layers/attention/query/bias'.*not a kernel"),
    (dict(rank=2, where="nothing/*"), ValueError, "nothing"),
    (dict(rank=2, num_conds=3), ValueError, "num_conds"),
])
def test_bad_options_raise_naming_them(kw, err, match):
    with pytest.raises(err, match=match):
        G.lora(SPEC, **kw)


def test_factorised_apply_errors_name_the_leaf():
    gen = build("leaf")
    hp = gen.init(jax.random.key(0))
    with pytest.raises(ValueError, match="leading axes .* batch axes"):
        G.factorised_apply(SPEC, gen.factors(hp, CONDS[:2]), TOKENS)        # 2 conds for 3 examples
    with pytest.raises(TypeError, match="no LoRAFactors"):
        G.factorised_apply(SPEC, SPEC.params, TOKENS)
    with pytest.raises(TypeError, match="linen"):
        spec = hj.testing.fn_mlp_spec()
        G.factorised_apply(spec, G.lora(spec, rank=1).factors(G.lora(spec, rank=1).init(jax.random.key(0))),
                           jnp.ones((2, 5)))
    cnn = hj.testing.cnn_spec((3,))
    conv = next(p for p in cnn.paths if p.endswith("kernel") and len(cnn.leaves[p].shape) == 4)
    lg = G.lora(cnn, rank=1, where=conv)
    with pytest.raises(ValueError, match=f"'{conv}'.*Conv.*per_sample"):
        G.factorised_apply(cnn, lg.factors(lg.init(jax.random.key(0))), jnp.ones((2, *cnn_input_shape(cnn))))
    with pytest.raises(ValueError, match="hparams"):
        gen.apply({**hp, "hyper": {}}, CONDS[0])


def cnn_input_shape(spec):
    """The example input shape of hj.testing.cnn_spec (its first conv's spatial size and channels)."""
    return (4, 4, 1)


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
