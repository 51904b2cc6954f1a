"""hj.generators.codebook: soft weight sharing through K shared values, regularisers and hard export."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import hyperjax as hj


@pytest.fixture(scope="module")
def spec():
    """Plain-function ReLU MLP 5 -> 7 -> 3; params {"l0": {"kernel", "bias"}, "l1": ...}, in_out kernels."""
    return hj.testing.fn_mlp_spec((5, 7, 3))


N_KERNEL = 5 * 7 + 7 * 3   # 56 shared scalars with where="*/kernel"
CONFIGS = {
    "shared": {"num_values": 4, "where": "*/kernel"},
    "per-leaf": {"num_values": 3, "where": "*/kernel", "shared": False},
    "all-leaves": {"num_values": 6},
    "k1-fanout": {"num_values": 1, "where": "l1/kernel", "init": "hyperfan_out", "tau": 0.3},
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_output_matches_spec_and_jit_agrees(name, spec, key, maybe_jit):
    gen = hj.generators.codebook(spec, **CONFIGS[name])
    hp = gen.init(key)
    params = maybe_jit(gen.apply)(hp, None)
    chex.assert_trees_all_equal_shapes_and_dtypes(params, spec.zeros())
    chex.assert_trees_all_close(params, jax.jit(gen.apply)(hp), rtol=1e-5, atol=1e-7)
    tau = jnp.float32(0.5)
    chex.assert_trees_all_close(maybe_jit(gen.apply)(hp, tau=tau), jax.jit(gen.apply)(hp, tau=tau), rtol=1e-5,
                                atol=1e-7)


def test_hparams_layout_and_param_count(spec, key):
    hp = hj.generators.codebook(spec, num_values=4, where="*/kernel").init(key)
    assert hp["hyper"]["logits"]["l0"]["kernel"].shape == (5, 7, 4)
    assert hp["hyper"]["values"].shape == (4,)
    assert hj.training.count_params(hp["hyper"]) == N_KERNEL * 4 + 4
    assert set(hp["direct"]) == {"l0", "l1"} and set(hp["direct"]["l0"]) == {"bias"}
    per_leaf = hj.generators.codebook(spec, num_values=4, where="*/kernel", shared=False).init(key)
    assert hj.training.count_params(per_leaf["hyper"]) == N_KERNEL * 4 + 4 * 2
    assert set(jax.tree.leaves(hj.training.labels(hp)["hyper"])) == {"hyper"}


def test_weight_is_softmax_over_shared_values(spec, key):
    gen = hj.generators.codebook(spec, num_values=4, where="*/kernel")
    hp = gen.init(key)
    tau = 0.7
    a, v = hp["hyper"]["logits"]["l1"]["kernel"], hp["hyper"]["values"]
    want = np.einsum("ijk,k->ij", np.asarray(jax.nn.softmax(a / tau, axis=-1)), np.asarray(v))
    np.testing.assert_allclose(gen.apply(hp, tau=jnp.float32(tau))["l1"]["kernel"], want, rtol=1e-5, atol=1e-7)


def test_init_approximates_an_ordinary_init(key):
    """Soft weights at tau=1 keep most of a LeCun init's spread; codebook values span its quantiles."""
    spec = hj.testing.fn_mlp_spec((64, 128))
    gen = hj.generators.codebook(spec, num_values=16, where="*/kernel")
    hp = gen.init(key)
    w = gen.apply(hp)["l0"]["kernel"]
    assert 0.6 / 8 < float(jnp.std(w)) < 1.1 / 8          # LeCun std 1/sqrt(64)
    v = np.asarray(hp["hyper"]["values"])
    assert (np.diff(v) > 0).all() and v[0] < -1.5 / 8 and v[-1] > 1.5 / 8


def test_temperature_is_traced_no_recompile_and_sharpens(spec, key):
    gen = hj.generators.codebook(spec, num_values=4, where="*/kernel")
    hp = gen.init(key)
    traces = []

    @jax.jit
    def kernel(p, tau):
        traces.append(1)
        return gen.apply(p, tau=tau)["l0"]["kernel"]

    soft, sharp = kernel(hp, jnp.float32(1.0)), kernel(hp, jnp.float32(1e-4))
    assert len(traces) == 1 and not np.allclose(soft, sharp)
    hard, _ = hj.generators.codebook_export(gen, hp)
    np.testing.assert_allclose(sharp, hard["l0"]["kernel"], rtol=1e-5, atol=1e-6)


def test_vmap_over_temperatures(spec, key):
    gen = hj.generators.codebook(spec, num_values=4, where="*/kernel")
    hp = gen.init(key)
    taus = jnp.array([0.2, 1.0, 3.0])
    batch = jax.vmap(lambda t: gen.apply(hp, tau=t))(taus)
    assert batch["l0"]["kernel"].shape == (3, 5, 7)
    for i in range(3):
        chex.assert_trees_all_close(jax.tree.map(lambda a: a[i], batch), gen.apply(hp, tau=taus[i]), rtol=1e-5,
                                    atol=1e-7)
    with pytest.raises(ValueError, match=r"built without conditioning \(cond_dim=None\), so `cond` must be None"):
        hj.generate_batch(gen, hp, taus)          # the temperature is not a conditioning input


@pytest.mark.parametrize("shared", [True, False])
def test_numeric_gradients(shared, spec, key):
    gen = hj.generators.codebook(spec, num_values=3, where="*/kernel", shared=shared)
    hp = gen.init(key)
    probe = jax.tree.map(lambda s: jax.random.normal(jax.random.key(3), s.shape, s.dtype), spec.abstract_params)

    def f(p):
        out = gen.apply(p, tau=jnp.float32(0.8))
        return sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(probe)))

    check_grads(jax.jit(f), (hp,), order=1, modes=["rev"], atol=5e-2, rtol=5e-2, eps=1e-3)
    check_grads(jax.jit(lambda p: hj.generators.codebook_entropy(p, 0.8) + hj.generators.codebook_usage_kl(p, 0.8)),
                (hp,), order=1, modes=["rev"], atol=5e-2, rtol=5e-2, eps=1e-3)


def hand_hparams(tau_logits):
    """Two slots, K = 2: logits [0, 0] and [log 3, 0]."""
    return {"hyper": {"logits": {"w": jnp.array([[0.0, 0.0], [math.log(3.0), 0.0]]) * tau_logits},
                      "values": jnp.array([-1.0, 1.0])}}


def test_regularisers_match_hand_computed_values():
    hp = hand_hparams(1.0)
    h2 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))          # slot 2: p = [3/4, 1/4]
    assert float(hj.generators.codebook_entropy(hp)) == pytest.approx((math.log(2) + h2) / 2, rel=1e-5)
    q = np.array([(0.5 + 0.75) / 2, (0.5 + 0.25) / 2])             # mean assignment [0.625, 0.375]
    np.testing.assert_allclose(hj.generators.codebook_usage(hp), q, rtol=1e-6)
    kl_uniform = 0.625 * math.log(0.625 / 0.5) + 0.375 * math.log(0.375 / 0.5)
    assert float(hj.generators.codebook_usage_kl(hp)) == pytest.approx(kl_uniform, rel=1e-4)
    kl_prior = 0.625 * math.log(0.625 / 0.25) + 0.375 * math.log(0.375 / 0.75)
    assert float(hj.generators.codebook_usage_kl(hp, prior=jnp.array([0.25, 0.75]))) == pytest.approx(kl_prior, rel=1e-4)
    # tau = 0.5 squares the odds: slot 2 -> [9/10, 1/10]
    h2_sharp = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    assert float(hj.generators.codebook_entropy(hp, 0.5)) == pytest.approx((math.log(2) + h2_sharp) / 2, rel=1e-5)
    assert float(hj.generators.codebook_entropy(hp, jnp.float32(0.5))) == pytest.approx((math.log(2) + h2_sharp) / 2,
                                                                                         rel=1e-5)
    # one-hot slots: zero entropy; all K values used equally: zero KL
    onehot = {"hyper": {"logits": {"w": jnp.array([[50.0, 0.0], [0.0, 50.0]])}, "values": jnp.zeros(2)}}
    assert float(hj.generators.codebook_entropy(onehot)) == pytest.approx(0.0, abs=1e-6)
    assert float(hj.generators.codebook_usage_kl(onehot)) == pytest.approx(0.0, abs=1e-6)


def test_hard_export_counts_distinct_values_and_bits(spec, key):
    k = 8
    gen = hj.generators.codebook(spec, num_values=k, where="*/kernel")
    rng = np.random.default_rng(0)
    v = np.sort(rng.normal(size=k)).astype(np.float32)
    # every slot prefers one of the values 1, 4, 6 (logit 3 above noise of scale 0.1)
    choice = {p: rng.choice([1, 4, 6], size=shape) for p, shape in (("l0", (5, 7)), ("l1", (7, 3)))}
    logits = {p: {"kernel": jnp.asarray(np.eye(k)[c] * 3.0 + 0.1 * rng.normal(size=(*c.shape, k)), jnp.float32)}
              for p, c in choice.items()}
    direct = {p: {"bias": jnp.asarray(rng.normal(size=(n,)), jnp.float32)} for p, n in (("l0", 7), ("l1", 3))}
    hp = {"hyper": {"logits": logits, "values": jnp.asarray(v)}, "direct": direct}
    params, info = hj.generators.codebook_export(gen, hp)
    for p, c in choice.items():
        np.testing.assert_array_equal(params[p]["kernel"], v[c])
        np.testing.assert_array_equal(params[p]["bias"], direct[p]["bias"])
    assert info["distinct_values"] == info["used_values"] == 3
    assert info["slots"] == N_KERNEL and sum(info["usage"]) == N_KERNEL
    assert [i for i, c in enumerate(info["usage"]) if c] == [1, 4, 6]
    assert info["bits_dense"] == 32 * N_KERNEL
    assert info["bits_indexed"] == N_KERNEL * 3 + k * 32           # 3-bit indices + the table
    assert info["compression"] == pytest.approx(32 * N_KERNEL / (3 * N_KERNEL + 256))
    counts = np.array([c for c in info["usage"] if c])
    ideal = -(counts * np.log2(counts / N_KERNEL)).sum() + 3 * 32
    assert info["bits_entropy"] == pytest.approx(ideal, rel=1e-6)


def test_export_per_leaf_codebooks(spec, key):
    gen = hj.generators.codebook(spec, num_values=4, where="*/kernel", shared=False)
    params, info = hj.generators.codebook_export(gen, gen.init(key))
    for p in ("l0", "l1"):
        assert set(np.unique(params[p]["kernel"])) <= set(np.asarray(gen.init(key)["hyper"]["values"][p]["kernel"]))
        assert len(np.unique(params[p]["kernel"])) <= 4
    assert info["num_codebooks"] == 2 and info["distinct_values"] <= 8 and info["usage"] is None


def test_memory_does_not_grow_with_batch(key):
    """The n x K soft assignment is built once per step; no intermediate scales as n * K * batch."""
    spec = hj.testing.fn_mlp_spec((8, 16, 4))
    gen = hj.generators.codebook(spec, num_values=4, where="*/kernel")
    hp = jax.eval_shape(gen.init, key)                      # tracing only: no compile
    x = jnp.ones((64, 8))

    def loss(p):
        return jnp.mean(jnp.square(spec.apply(gen.apply(p, tau=jnp.float32(0.5)), x)))

    jaxpr = jax.make_jaxpr(jax.value_and_grad(loss))(hp)
    sizes = [math.prod(v.aval.shape) for eqn in jaxpr.jaxpr.eqns for v in eqn.outvars if hasattr(v.aval, "shape")]
    assert max(sizes) <= max(8 * 16 * 4, 64 * 16), max(sizes)


def test_training_with_regularisers_lowers_loss_and_entropy(spec, key):
    gen = hj.generators.codebook(spec, num_values=4, where="*/kernel")
    hp = gen.init(key)
    x = jax.random.normal(key, (32, 5))
    y = jnp.arange(32) % 3

    def loss_fn(p, batch, rng):
        logits = spec.apply(gen.apply(p, tau=batch[2]), batch[0])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()
        ent = hj.generators.codebook_entropy(p, batch[2])
        return ce + 0.5 * ent + 0.1 * hj.generators.codebook_usage_kl(p, batch[2]), {"ce": ce, "ent": ent}

    opt = optax.adam(3e-2)
    step = hj.training.make_step(loss_fn, opt, has_aux=True)
    state = hj.training.init_state(hp, opt)
    hist = []
    for t in range(25):
        tau = jnp.float32(1.0 - 0.03 * t)                   # annealed, one compiled step
        state, m = step(state, (x, y, tau))
        hist.append((float(m["ce"]), float(m["ent"])))
    assert hist[-1][0] < hist[0][0] and hist[-1][1] < hist[0][1]
    assert step._cache_size() == 1


@settings(max_examples=8, deadline=None)
@given(widths=st.lists(st.integers(1, 6), min_size=2, max_size=4), k=st.integers(1, 9), shared=st.booleans(),
       seed=st.integers(0, 2**16))
def test_export_property(widths, k, shared, seed):
    """Random logits and values in the layout init makes: export keeps the tree, every shared scalar is the value
    of its argmax, and the distinct-value count is exact and at most K per codebook."""
    spec = hj.testing.fn_mlp_spec(tuple(widths))
    gen = hj.generators.codebook(spec, num_values=k, where="*/kernel", shared=shared)
    abstract = jax.eval_shape(gen.init, jax.random.key(0))            # tracing only
    assert sum(math.prod(x.shape) for x in jax.tree.leaves(abstract["hyper"])) == \
        sum(a * b for a, b in zip(widths[:-1], widths[1:])) * k + k * (1 if shared else len(widths) - 1)
    rng = np.random.default_rng(seed)
    hp = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), s.dtype), abstract)
    params, info = hj.generators.codebook_export(gen, hp)
    chex.assert_trees_all_equal_shapes_and_dtypes(params, spec.zeros())
    kernels = []
    for i in range(len(widths) - 1):
        a = np.asarray(hp["hyper"]["logits"][f"l{i}"]["kernel"])
        v = np.asarray(hp["hyper"]["values"] if shared else hp["hyper"]["values"][f"l{i}"]["kernel"])
        np.testing.assert_array_equal(params[f"l{i}"]["kernel"], v[a.argmax(-1)])
        kernels.append(np.asarray(params[f"l{i}"]["kernel"]).ravel())
    kernels = np.concatenate(kernels)
    assert info["slots"] == kernels.size
    assert info["distinct_values"] == len(np.unique(kernels)) <= k * info["num_codebooks"]


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs,exc,match", [
    ({"num_values": 0}, ValueError, r"`num_values` must be a positive int, got 0"),
    ({"num_values": -3}, ValueError, r"`num_values` must be a positive int, got -3"),
    ({"num_values": 2.5}, TypeError, r"`num_values` must be a positive int, got 2.5 \(float\)"),
    ({"num_values": True}, TypeError, r"`num_values` must be a positive int, got True \(bool\)"),
    ({"num_values": 4, "tau": 0.0}, ValueError, r"`tau` must be a positive finite number, got 0.0"),
    ({"num_values": 4, "tau": -1}, ValueError, r"`tau` must be a positive finite number, got -1"),
    ({"num_values": 4, "tau": float("inf")}, ValueError, r"`tau` must be a positive finite number, got inf"),
    ({"num_values": 4, "tau": "1"}, TypeError, r"`tau` must be a positive finite number, got '1' \(str\)"),
    ({"num_values": 4, "init_spread": 0}, ValueError, r"`init_spread` must be a positive finite number, got 0"),
    ({"num_values": 4, "where": "*/gamma"}, ValueError,
     r"`where`='\*/gamma' matches no leaf of the target. Available paths: l0/bias"),
    ({"num_values": 4, "init": "glorot"}, ValueError,
     r"unknown `init`='glorot'; valid options are 'hyperfan_in', 'hyperfan_out'"),
])
def test_bad_options_raise(kwargs, exc, match, spec):
    with pytest.raises(exc, match=r"^hyperjax.generators.codebook: .*" + match):
        hj.generators.codebook(spec, **kwargs)


def test_bad_temperatures_and_hparams_raise(spec, key):
    gen = hj.generators.codebook(spec, num_values=4, where="*/kernel")
    hp = gen.init(key)
    with pytest.raises(ValueError, match=r"the temperature `tau` must be > 0, got -0.5"):
        gen.apply(hp, tau=jnp.float32(-0.5))
    with pytest.raises(ValueError, match=r"must be a floating scalar of shape \(\), got shape \(2,\)"):
        gen.apply(hp, tau=jnp.ones(2))
    with pytest.raises(TypeError, match=r"must be a floating scalar of shape \(\), got shape \(\) dtype int32"):
        gen.apply(hp, tau=jnp.int32(1))
    with pytest.raises(ValueError, match=r"codebook_entropy: `tau` must be a positive finite number, got 0"):
        hj.generators.codebook_entropy(hp, 0)
    with pytest.raises(ValueError, match=r"hparams has no 'hyper' entry; pass the hparams made by "
                                         r"hyperjax.generators.codebook"):
        hj.generators.codebook_usage_kl({"mlp": []})
    with pytest.raises(ValueError, match=r"hparams\['hyper'\] has no codebook 'logits' and 'values'"):
        hj.generators.codebook_entropy({"hyper": {"mlp": []}})
    with pytest.raises(ValueError, match=r"hparams tree does not match the target \(missing: hyper/logits"):
        gen.apply({"direct": hp["direct"]})
    with pytest.raises(ValueError, match=r"codebook has no conditioned form \(cond_dim=3"):
        hj.generators.codebook(spec, num_values=4, cond_dim=3)
    with pytest.raises(ValueError, match=r"`prior` must have shape \(4,\) \(num_values\), got \(3,\)"):
        hj.generators.codebook_usage_kl(hp, prior=jnp.ones(3) / 3)
    with pytest.raises(ValueError, match=r"`prior` must be positive and sum to 1, got sum 2"):
        hj.generators.codebook_usage_kl(hp, prior=jnp.full((4,), 0.5))
