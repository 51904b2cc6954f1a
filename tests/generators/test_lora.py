"""generators.lora: W0 + (alpha/r) A(c) B(c) on a frozen pretrained base, over kernels as real models write them
(DenseGeneral attention kernels, nn.scan stacks, conv): exact W0 at init, the formula and its rank, frozen-base
training, errors. The factorised per-example path and export: test_lora_factorised.py."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

import hyperjax as hj

from lora_case import ATTN, CONDS, G, LM, MODES, SPEC, TOKENS, VARIABLES, build, cond_of, factor_at, nudge


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

    loss = jax.jit(loss)
    g = jax.jit(jax.grad(loss))(hp, TOKENS)
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
    g = jax.jit(jax.grad(lambda h: jnp.sum(SPEC.apply(gen.apply(h, CONDS[0]), TOKENS) ** 2)))(hp)
    assert float(jnp.abs(hj.testing.leaf_at(g["base"], "layers/attention/query/kernel")).max()) > 0


def test_layer_shared_generator_does_not_grow_with_depth():
    def counts(layers):
        lm = hj.testing.Transformer(vocab=11, width=16, heads=2, mlp=24, layers=layers, max_len=8)
        spec = hj.targets.from_linen(lm, TOKENS)
        hp = G.lora(spec, rank=2, cond_dim=5, share="layers", where=ATTN, hidden=(12,)).init(jax.random.key(0))
        return hj.training.count_params(hp["hyper"]), hp["embedding"]["layer_emb"].shape
    (h2, e2), (h4, e4) = counts(2), counts(4)
    assert h2 == h4 and e2 == (8, 16) and e4 == (16, 16)


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


