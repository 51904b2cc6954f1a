"""hj.generators.rowwise: Diet-style row generation of a D x H kernel from per-feature embeddings."""

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import hyperjax as hj

D, H, E = 12, 5, 4


class AutoEncoderMLP(nn.Module):
    """x f[B, D] -> (logits f[B, 3], reconstruction f[B, D]); kernels enc (D, H), out (H, 3), dec (H, D)."""

    hidden: int = H

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(self.hidden, name="enc")(x))
        return nn.Dense(3, name="out")(h), nn.Dense(x.shape[-1], use_bias=False, name="dec")(h)


@pytest.fixture(scope="module")
def spec():
    return hj.targets.from_linen(AutoEncoderMLP(), jnp.ones((1, D), jnp.float32))


@pytest.fixture(scope="module")
def emb():
    return jax.random.uniform(jax.random.key(7), (D, E), jnp.float32, 0.0, 3.0)


def out_in_spec(d=D, h=H):
    """A plain-function target with PyTorch/Equinox layout: kernel (H, D), features along axis 1."""
    params = {"lin": {"weight": jnp.zeros((h, d)), "bias": jnp.zeros((h,))}, "head": {"weight": jnp.zeros((2, h))}}

    def apply(p, x):
        return jax.nn.relu(x @ p["lin"]["weight"].T + p["lin"]["bias"][None, :]) @ p["head"]["weight"].T

    return hj.targets.from_fn(apply, params, layout="out_in")


# name -> (kwargs for rowwise besides where, cond for apply or None)
CONFIGS = {
    "fixed-decoder": (lambda emb: {"feature_emb": emb, "decoder": "dec/kernel", "hidden": (6, 3)}, None),
    "learned-linear": (lambda emb: {"emb_dim": 3, "num_features": D, "hidden": ()}, None),
    "cond-no-normalize": (lambda emb: {"feature_emb": emb, "cond_dim": 2, "normalize": False, "standardize": False},
                          jnp.array([0.5, -1.0])),
    "cond-id-decoder": (lambda emb: {"emb_dim": 3, "cond_dim": 2, "num_conds": 4, "decoder": "dec/kernel"},
                        jnp.array(3)),
}


@pytest.fixture(scope="module")
def built(spec, emb):
    """name -> (generator, hparams from one jitted init): shared by the tests below."""
    out = {}
    for name, (kwargs, cond) in CONFIGS.items():
        gen = hj.generators.rowwise(spec, where="enc/kernel", **kwargs(emb))
        out[name] = (gen, gen.init(jax.random.key(0)), cond)
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_output_matches_spec_and_jit_agrees(name, spec, emb, built, maybe_jit):
    gen, hp, cond = built[name]
    params = maybe_jit(gen.apply)(hp, cond)
    chex.assert_trees_all_equal_shapes_and_dtypes(params, spec.zeros())
    chex.assert_trees_all_close(params, jax.jit(gen.apply)(hp, cond), rtol=1e-5, atol=1e-6)
    # the other leaves are the ordinary params in hparams["direct"], returned unchanged
    np.testing.assert_array_equal(params["out"]["kernel"], hp["direct"]["out"]["kernel"])
    generated = {"enc/kernel"} | ({"dec/kernel"} if "decoder" in CONFIGS[name][0](emb) else set())
    direct = {p for p, _ in jax.tree_util.tree_flatten_with_path(hp["direct"])[0]}
    assert len(direct) == len(spec.paths) - len(generated)


def test_rows_are_one_function_of_their_embedding(spec, emb, key):
    """Row i depends on e_i only (through g and the row statistics): equal embeddings give equal rows, and
    permuting the features permutes the rows."""
    gen = hj.generators.rowwise(spec, where="enc/kernel", feature_emb=emb, hidden=(8,))
    hp = gen.init(key)
    same = emb.at[3].set(emb[7])
    w = gen.apply(hp, feature_emb=same)["enc"]["kernel"]
    np.testing.assert_allclose(w[3], w[7], rtol=1e-6)
    perm = np.random.default_rng(0).permutation(D)
    np.testing.assert_allclose(gen.apply(hp, feature_emb=emb[perm])["enc"]["kernel"],
                               gen.apply(hp, feature_emb=emb)["enc"]["kernel"][perm], rtol=1e-5, atol=1e-6)


def test_linear_generator_is_embedding_times_matrix(spec, emb, key):
    """hidden=(), no standardisation: W = emb @ A + b exactly (the paper's degenerate case)."""
    gen = hj.generators.rowwise(spec, where="enc/kernel", feature_emb=emb, hidden=(), standardize=False)
    hp = gen.init(key)
    want = emb @ hp["hyper"]["head"]["w"] + hp["hyper"]["head"]["b"][None, :]
    np.testing.assert_allclose(gen.apply(hp)["enc"]["kernel"], want, rtol=1e-5, atol=1e-6)


def test_decoder_is_generated_transposed_from_the_same_hidden_features(spec, emb, key):
    gen = hj.generators.rowwise(spec, where="enc/kernel", feature_emb=emb, decoder="dec/kernel", hidden=())
    hp = gen.init(key)
    x = (emb - emb.mean(0, keepdims=True)) / emb.std(0, keepdims=True)
    params = gen.apply(hp)
    np.testing.assert_allclose(params["dec"]["kernel"], (x @ hp["hyper"]["decoder_head"]["w"] + hp["hyper"]["decoder_head"]["b"][None, :]).T,
                               rtol=1e-4, atol=1e-5)
    assert params["dec"]["kernel"].shape == (H, D)


def test_out_in_layout_puts_features_on_axis_1(key):
    spec = out_in_spec()
    emb = jnp.arange(D * 2, dtype=jnp.float32).reshape(D, 2)
    gen = hj.generators.rowwise(spec, where="lin/weight", feature_emb=emb, hidden=(4,))
    hp = gen.init(key)
    assert gen.apply(hp)["lin"]["weight"].shape == (H, D)
    same = emb.at[2].set(emb[5])
    w = gen.apply(hp, feature_emb=same)["lin"]["weight"]
    np.testing.assert_allclose(w[:, 2], w[:, 5], rtol=1e-6)


def test_init_matches_hyperfan_in_variance(key):
    """Generated kernels start with variance ~1/fan_in = 1/D; the decoder's with 1/H."""
    d, h = 3000, 32
    spec = hj.targets.from_linen(AutoEncoderMLP(hidden=h), jnp.ones((1, d), jnp.float32))
    emb = jax.random.uniform(jax.random.key(1), (d, 6), jnp.float32)
    gen = hj.generators.rowwise(spec, where="enc/kernel", feature_emb=emb, decoder="dec/kernel", hidden=(16,))
    variances = []
    make = jax.jit(lambda k: gen.apply(gen.init(k)))
    for i in range(4):
        p = make(jax.random.fold_in(key, i))
        variances.append((float(jnp.var(p["enc"]["kernel"])) * d, float(jnp.var(p["dec"]["kernel"])) * h))
    enc, dec = np.mean(variances, axis=0)
    assert 0.6 < enc < 1.5 and 0.6 < dec < 1.5, variances


def test_param_count_formula(spec, emb, key):
    for kwargs, want in [
        ({"feature_emb": emb, "hidden": (6,)}, hj.generators.rowwise_param_count(emb_dim=E, units=H, hidden=(6,))),
        ({"feature_emb": emb, "hidden": (6, 3), "decoder": "dec/kernel"},
         hj.generators.rowwise_param_count(emb_dim=E, units=H, hidden=(6, 3), decoder_units=H)),
        ({"emb_dim": 3, "cond_dim": 2, "num_conds": 4, "hidden": ()},
         hj.generators.rowwise_param_count(emb_dim=3, units=H, hidden=(), cond_dim=2, num_features=D, num_conds=4)),
    ]:
        hp = jax.eval_shape(hj.generators.rowwise(spec, where="enc/kernel", **kwargs).init, key)
        own = {k: v for k, v in hp.items() if k != "direct"}
        assert sum(math.prod(x.shape) for x in jax.tree.leaves(own)) == want, kwargs
    # by hand: (E + 1) * 6 + (6 + 1) * H
    assert hj.generators.rowwise_param_count(emb_dim=E, units=H, hidden=(6,)) == (E + 1) * 6 + 7 * H


def test_fixed_embeddings_are_not_trainable(spec, emb, built, key):
    """Fixed embeddings never enter hparams or the optimizer state (no leaf of shape (D, E)) and training
    leaves them as given; learned ones are an 'embedding'-labelled hparams leaf (gradient: next test)."""
    gen, hp, _ = built["fixed-decoder"]
    x, y = jax.random.normal(key, (16, D)), jnp.arange(16) % 3

    def loss(p, batch, rng):
        logits, rec = spec.apply(gen.apply(p), batch[0])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()

    opt = optax.adam(3e-2)
    step = hj.training.make_step(loss, opt)
    state = hj.training.init_state(hp, opt)
    assert all(x.shape != (D, E) for x in jax.tree.leaves((state.params, state.opt_state)))
    emb_before = np.array(emb)
    losses = []
    for _ in range(8):
        state, m = step(state, (x, y))
        losses.append(float(m["loss"]))
    assert losses[-1] < losses[0]
    np.testing.assert_array_equal(np.asarray(emb), emb_before)
    # the embeddings are used: changing them changes the kernel
    assert not np.allclose(gen.apply(state.params)["enc"]["kernel"],
                           gen.apply(state.params, feature_emb=emb[::-1])["enc"]["kernel"])
    learned_hp = built["learned-linear"][1]
    assert learned_hp["embedding"]["feature_emb"].shape == (D, 3)
    assert hj.training.labels(learned_hp)["embedding"]["feature_emb"] == "embedding"


def test_gradient_reaches_every_generator_leaf(spec, built, key):
    """cond-id-decoder: learned embeddings, id conditioning, trunk, both heads, direct params all get gradients."""
    gen, hp, cond = built["cond-id-decoder"]
    x = jax.random.normal(key, (8, D))

    @jax.jit
    def grads(p):
        def loss(p):
            logits, rec = spec.apply(gen.apply(p, cond), x)
            return jnp.sum(jnp.square(logits)) + jnp.sum(jnp.square(rec - x))
        return jax.grad(loss)(p)

    g = grads(hp)
    assert {"feature_emb", "cond_emb"} <= set(g["embedding"]) and set(g["hyper"]) == {"trunk", "head", "decoder_head"}
    assert "direct" in g
    for path, leaf in jax.tree_util.tree_flatten_with_path(g)[0]:
        if jax.tree_util.keystr(path).startswith("['embedding']['cond_emb']"):
            leaf = leaf[3]                                      # only the used id's embedding learns
        assert float(jnp.abs(leaf).sum()) > 0, jax.tree_util.keystr(path)


@pytest.mark.parametrize("name", ["cond-id-decoder", "cond-no-normalize"])
def test_numeric_gradients(name, spec, built):
    gen, hp, cond = built[name]
    probe = jax.tree.map(lambda s: jax.random.normal(jax.random.key(3), s.shape, s.dtype), spec.abstract_params)

    def f(p):
        out = gen.apply(p, cond)
        return sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(probe)))

    check_grads(jax.jit(f), (hp,), order=1, modes=["rev"], atol=5e-2, rtol=5e-2, eps=1e-3)


def test_per_sample_vmap_with_cond(spec, emb, key):
    gen = hj.generators.rowwise(spec, cond_dim=2, where="enc/kernel", feature_emb=emb, hidden=(6,))
    hp = gen.init(key)
    conds = jax.random.normal(key, (3, 2))
    xs = jax.random.normal(jax.random.key(1), (3, D))
    ys = jax.jit(hj.per_sample(gen, spec))(hp, conds, xs)
    for i in range(3):
        want = spec.apply(gen.apply(hp, conds[i]), xs[i:i + 1])
        chex.assert_trees_all_close(jax.tree.map(lambda a: a[i], ys), jax.tree.map(lambda a: a[0], want),
                                    rtol=1e-4, atol=1e-5)
    batch = hj.generate_batch(gen, hp, conds)
    assert batch["enc"]["kernel"].shape == (3, D, H)
    assert not np.allclose(batch["enc"]["kernel"][0], batch["enc"]["kernel"][1])


def test_shape_only_embeddings_are_given_at_apply_time_with_one_compile(spec, emb, key):
    gen = hj.generators.rowwise(spec, where="enc/kernel", feature_emb=jax.ShapeDtypeStruct((D, E), jnp.float32))
    hp = gen.init(key)
    traces = []

    @jax.jit
    def kernel(p, e):
        traces.append(1)
        return gen.apply(p, feature_emb=e)["enc"]["kernel"]

    a, b = kernel(hp, emb), kernel(hp, emb * 2.0 + 1.0)    # new data, same shapes: no retrace
    assert len(traces) == 1 and a.shape == (D, H) and not np.allclose(a, kernel(hp, emb[::-1]))
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)   # standardize=True: affine rescaling is invisible
    with pytest.raises(ValueError, match=r"shape of the feature embeddings only; pass them at apply time"):
        gen.apply(hp)


def test_memory_has_no_intermediate_larger_than_rows(key):
    """Every intermediate of apply (and its gradient) is at most D x max(H, hidden): g runs as batched matmuls,
    never as a D x E x hidden broadcast."""
    d, e, h, hid = 500, 7, 6, 9
    spec = hj.targets.from_linen(AutoEncoderMLP(hidden=h), jnp.ones((1, d), jnp.float32))
    emb = jnp.ones((d, e))
    gen = hj.generators.rowwise(spec, cond_dim=3, where="enc/kernel", feature_emb=emb, hidden=(hid, hid))
    hp = jax.eval_shape(gen.init, key)                      # tracing only: no compile

    def loss(p):
        return jnp.sum(gen.apply(p, jnp.ones(3))["enc"]["kernel"] ** 2)

    jaxpr = jax.make_jaxpr(jax.value_and_grad(loss))(hp)
    sizes = [math.prod(v.aval.shape) for eqn in jaxpr.jaxpr.eqns for v in eqn.outvars if hasattr(v.aval, "shape")]
    assert max(sizes) <= d * max(h, hid), max(sizes)


def autoencoder_fn_spec(d, h):
    """Plain-function twin of AutoEncoderMLP (cheaper to build than a linen spec in a property test)."""
    params = {"enc": {"kernel": jnp.zeros((d, h)), "bias": jnp.zeros((h,))}, "dec": {"kernel": jnp.zeros((h, d))}}
    return hj.targets.from_fn(lambda p, x: x @ p["enc"]["kernel"] @ p["dec"]["kernel"], params)


@settings(max_examples=12, deadline=None)
@given(d=st.integers(2, 40), h=st.integers(1, 9), e=st.integers(1, 5),
       hidden=st.lists(st.integers(1, 8), max_size=2), learned=st.booleans())
def test_shapes_and_param_count_property(d, h, e, hidden, learned):
    spec = autoencoder_fn_spec(d, h)
    kwargs = {"emb_dim": e} if learned else {"feature_emb": jnp.linspace(0.0, 1.0, d * e).reshape(d, e) ** 2}
    gen = hj.generators.rowwise(spec, where="enc/kernel", hidden=tuple(hidden), decoder="dec/kernel", **kwargs)
    hp, params = jax.eval_shape(lambda k: (lambda hp: (hp, gen.apply(hp)))(gen.init(k)), jax.random.key(d))
    chex.assert_trees_all_equal_shapes_and_dtypes(params, spec.abstract_params)
    own = {k: v for k, v in hp.items() if k != "direct"}
    assert sum(math.prod(x.shape) for x in jax.tree.leaves(own)) == hj.generators.rowwise_param_count(
        emb_dim=e, units=h, hidden=tuple(hidden), decoder_units=h, num_features=d if learned else 0)


# ---------------------------------------------------------------- errors
ERRORS = [
    ({"where": "*/kernel", "feature_emb": "E"}, ValueError, r"must select exactly one leaf .* matched 3: dec/kernel, enc/kernel, out/kernel"),
    ({"where": "enc/bias", "feature_emb": "E"}, ValueError, r"leaf 'enc/bias' has shape \(5,\), but rowwise needs a 2-D kernel"),
    ({"where": "enc/kernel", "feature_emb": "E9"}, ValueError, r"`feature_emb` gives 9 features but leaf 'enc/kernel' \(12, 5\) has D=12"),
    ({"where": "enc/kernel", "feature_emb": "E1d"}, ValueError, r"`feature_emb` must be a floating 2-D array f\[D, E\].*got shape \(12,\)"),
    ({"where": "enc/kernel", "feature_emb": "Eint"}, TypeError, r"`feature_emb` must be a floating 2-D array.*int32"),
    ({"where": "enc/kernel", "feature_emb": "E", "emb_dim": 3}, ValueError, r"exactly one of `feature_emb` or `emb_dim`, got `feature_emb`, `emb_dim`"),
    ({"where": "enc/kernel"}, ValueError, r"exactly one of `feature_emb` or `emb_dim`, got neither"),
    ({"where": "enc/kernel", "emb_dim": 0}, ValueError, r"`emb_dim` must be a positive int, got 0"),
    ({"where": "enc/kernel", "emb_dim": 3, "num_features": 11}, ValueError, r"`num_features` gives 11 features but leaf 'enc/kernel'"),
    ({"where": "enc/kernel", "emb_dim": 3, "num_conds": 4}, ValueError, r"`num_conds` needs `cond_dim`"),
    ({"where": "enc/kernel", "emb_dim": 3, "hidden": (4, 0)}, ValueError, r"`hidden` must be a positive int, got 0"),
    ({"where": "enc/kernel", "emb_dim": 3, "init": "xavier"}, ValueError, r"unknown `init`='xavier'; valid options are 'hyperfan_in', 'hyperfan_out'"),
    ({"where": "enc/kernel", "emb_dim": 3, "decoder": "out/kernel"}, ValueError, r"`decoder` leaf 'out/kernel' \(5, 3\) must have D=12 features \(one per row of 'enc/kernel'\) along axis 1, got 3"),
    ({"where": "enc/kernel", "emb_dim": 3, "decoder": "enc/kernel"}, ValueError, r"`decoder` and `where` both select 'enc/kernel'"),
    ({"where": "enc/kernel", "emb_dim": 3, "decoder": "nope/*"}, ValueError, r"`where`='nope/\*' matches no leaf"),
    ({"where": "Dense_9/kernel", "emb_dim": 3}, ValueError, r"matches no leaf of the target. Available paths: dec/kernel, enc/bias"),
]


@pytest.mark.parametrize("kwargs,exc,match", ERRORS)
def test_bad_options_raise_naming_the_leaf_or_option(kwargs, exc, match, spec, emb):
    values = {"E": emb, "E9": emb[:9], "E1d": emb[:, 0], "Eint": jnp.ones((D, E), jnp.int32)}
    kwargs = {k: values.get(v, v) if isinstance(v, str) and k == "feature_emb" else v for k, v in kwargs.items()}
    with pytest.raises(exc, match=r"^hyperjax.generators.rowwise: .*" + match):
        hj.generators.rowwise(spec, **kwargs)


def test_bad_apply_inputs_raise(built, emb):
    static, hp, _ = built["fixed-decoder"]
    with pytest.raises(ValueError, match=r"built without conditioning \(cond_dim=None\), so `cond` must be None"):
        static.apply(hp, jnp.ones(2))
    with pytest.raises(ValueError, match=r"`feature_emb` must be a floating array of shape \(12, 4\).*got \(12, 3\)"):
        static.apply(hp, feature_emb=emb[:, :3])
    conditioned, chp, _ = built["cond-no-normalize"]
    with pytest.raises(ValueError, match=r"this generator is conditioned \(cond_dim=2\): call apply\(hparams, cond\)"):
        conditioned.apply(chp)
    learned, lhp, _ = built["learned-linear"]
    with pytest.raises(ValueError, match=r"learns its feature embeddings .* cannot be given to apply"):
        learned.apply(lhp, feature_emb=emb)
    with pytest.raises(ValueError, match=r"hparams tree does not match the target \(missing: embedding/feature_emb"):
        learned.apply({"hyper": lhp["hyper"], "direct": lhp["direct"]})
