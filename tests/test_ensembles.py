"""hyperjax.ensembles: trees and shapes, the factorised ensemble forward equal to materialised members,
determinism for a seed, the repulsion term and the uncertainty metrics against reference computations."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import hyperjax as hj

E = hj.ensembles
WIDTHS = (5, 7, 6, 3)
M, B = 4, 6


def forward(p, x):
    n = len(p)
    for i in range(n):
        layer = p[f"Dense_{i}"]
        x = hj.generators.modulated_matmul(x, layer["kernel"]) + layer["bias"][None, :]
        x = jax.nn.relu(x) if i < n - 1 else x
    return x


@pytest.fixture(scope="module")
def spec():
    return hj.testing.mlp_spec(WIDTHS)


@pytest.fixture(scope="module")
def x():
    return jax.random.normal(jax.random.key(7), (B, WIDTHS[0]))


@pytest.fixture(scope="module")
def be(spec):
    return E.batch_ensemble(spec, members=M)


@pytest.fixture(scope="module")
def be_hparams(be):
    return be.init(jax.random.key(0))


@pytest.fixture(scope="module")
def st(spec):
    return E.stochastic(hj.generators.scale_modulation(spec, cond_dim=3, hidden=8), noise_dim=3)


def test_forward_equals_the_linen_apply(spec, x):
    p = spec.init(jax.random.key(1))
    chex.assert_trees_all_close(forward(p, x), spec.apply(p, x), atol=1e-6)


def test_batch_ensemble_trees_and_param_count(spec, be, be_hparams):
    f = be.factors(be_hparams)
    assert be.members == M
    for i, (n_in, n_out) in enumerate(zip(WIDTHS[:-1], WIDTHS[1:])):
        k = f[f"Dense_{i}"]["kernel"]
        assert isinstance(k, hj.generators.ScaleFactors)
        assert k.base.shape == (n_in, n_out) and k.scale_in.shape == (M, n_in) and k.scale_out.shape == (M, n_out)
        assert f[f"Dense_{i}"]["bias"].shape == (n_out,)                        # biases shared
    chex.assert_trees_all_equal_shapes_and_dtypes(be.apply(be_hparams, 2), spec.zeros())
    kernels = sum(a * b for a, b in zip(WIDTHS[:-1], WIDTHS[1:]))
    biases = sum(WIDTHS[1:])
    k_scales = sum(a + b for a, b in zip(WIDTHS[:-1], WIDTHS[1:]))
    assert hj.training.count_params(be_hparams) == kernels + biases + M * M + (M + 1) * k_scales
    # members start apart: scales ~ N(1, 0.5^2)
    s = np.asarray(f["Dense_0"]["kernel"].scale_in)
    assert 0.3 < s.std() < 0.8 and abs(s.mean() - 1) < 0.3 and np.abs(np.diff(s, axis=0)).min() > 0


def test_factorised_equals_materialised_batch_ensemble(spec, be, be_hparams, x, maybe_jit):
    out = maybe_jit(lambda hp, x: E.members_apply(forward, be.factors(hp), x))(be_hparams, x)
    ref = jnp.stack([spec.apply(be.apply(be_hparams, m), x) for m in range(M)])
    assert out.shape == (M, B, WIDTHS[-1])
    chex.assert_trees_all_close(out, ref, atol=1e-5, rtol=1e-5)
    assert float(jnp.max(jnp.abs(out[0] - out[1]))) > 1e-3                      # members differ
    probs = maybe_jit(lambda hp, x: be.predict(hp, forward, x))(be_hparams, x)
    chex.assert_trees_all_close(probs, jax.nn.softmax(ref, -1).mean(0), atol=1e-6)


def test_factorised_gradient_equals_materialised(spec, be, be_hparams, x):
    y = jnp.arange(B) % WIDTHS[-1]

    def loss(hp, fac):
        logits = E.members_apply(forward, be.factors(hp), x) if fac else \
            jax.vmap(lambda m: spec.apply(be.apply(hp, m), x))(jnp.arange(M))
        return jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.broadcast_to(y[None, :, None], (M, B, 1)), -1))
    grad = jax.jit(jax.grad(loss), static_argnums=1)          # one compile per path, not op-by-op dispatch
    chex.assert_trees_all_close(grad(be_hparams, True), grad(be_hparams, False), atol=1e-5)


def test_stochastic_factorised_equals_sampled(spec, st, x):
    hp = st.init(jax.random.key(3))
    key = jax.random.key(4)
    z = st.noise(key, 5)
    assert z.shape == (5, 3)
    out = jax.jit(lambda hp, z, x: E.members_apply(forward, st.factors(hp, z), x))(hp, z, x)
    sampled = st.sample(hp, key, 5)
    chex.assert_trees_all_equal_shapes(sampled, jax.tree.map(lambda l: jnp.zeros((5, *l.shape)), spec.zeros()))
    ref = jax.vmap(spec.apply, in_axes=(0, None))(sampled, x)
    chex.assert_trees_all_close(out, ref, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(st.predict(hp, key, forward, x, 5), jax.nn.softmax(ref, -1).mean(0), atol=1e-6)
    # a generator without a factorised path: predict samples and vmaps
    dense = E.stochastic(hj.generators.dense(spec, cond_dim=3, hidden=4), noise_dim=3)
    assert dense.factors is None
    hd = dense.init(jax.random.key(5))
    ref_d = jax.vmap(spec.apply, in_axes=(0, None))(dense.sample(hd, key, 5), x)
    chex.assert_trees_all_close(dense.predict(hd, key, spec.apply, x, 5), jax.nn.softmax(ref_d, -1).mean(0),
                                atol=1e-6)


def test_deep_ensemble_stacks_independent_members(spec, x):
    de = E.deep_ensemble(spec, members=3)
    p = de.init(jax.random.key(0))
    chex.assert_trees_all_equal_shapes(p, jax.tree.map(lambda l: jnp.zeros((3, *l.shape)), spec.zeros()))
    member1 = jax.tree.map(lambda l: l[1], p)
    chex.assert_trees_all_close(de.apply(p, x)[1], spec.apply(member1, x), atol=1e-6)
    xs = jnp.stack([x, 2 * x, -x])
    chex.assert_trees_all_close(de.apply(p, xs, per_member=True)[2], spec.apply(jax.tree.map(lambda l: l[2], p), -x),
                                atol=1e-6)
    assert float(jnp.max(jnp.abs(p["Dense_0"]["kernel"][0] - p["Dense_0"]["kernel"][1]))) > 0.01
    assert de.predict(p, x).shape == (B, WIDTHS[-1])
    with pytest.raises(ValueError, match="leading member axis of 3"):
        de.apply(spec.init(jax.random.key(0)), x)


def test_determinism_for_a_seed(spec, be, st, x):
    a, b = be.init(jax.random.key(11)), be.init(jax.random.key(11))
    chex.assert_trees_all_equal(a, b)
    assert not np.allclose(a["base"]["Dense_0"]["kernel"], be.init(jax.random.key(12))["base"]["Dense_0"]["kernel"])
    hp = st.init(jax.random.key(1))
    chex.assert_trees_all_equal(st.sample(hp, jax.random.key(2), 3), st.sample(hp, jax.random.key(2), 3))
    p1, p2 = st.predict(hp, jax.random.key(2), forward, x, 3), st.predict(hp, jax.random.key(9), forward, x, 3)
    assert not np.allclose(p1, p2)
    de = E.deep_ensemble(spec, members=2)
    chex.assert_trees_all_equal(de.init(jax.random.key(3)), de.init(jax.random.key(3)))


def test_kde_repulsion_values_and_gradient():
    w = jax.random.normal(jax.random.key(0), (6, 10))
    assert float(E.kde_repulsion(jnp.tile(w[:1], (6, 1)))) == pytest.approx(0.0, abs=1e-6)      # collapsed
    assert float(E.kde_repulsion(100.0 * w, bandwidth=1.0)) == pytest.approx(-np.log(6), abs=1e-5)  # far apart
    v = float(E.kde_repulsion(w))
    assert -np.log(6) < v < 0
    # a gradient step on the term moves every sample away from the others
    g = jax.grad(E.kde_repulsion)(w)
    d = lambda a: np.asarray(jnp.sum(jnp.square(a[:, None] - a[None]), -1))
    assert (d(w - 0.05 * g) > d(w) - 1e-9).all() and (d(w - 0.05 * g).sum() > d(w).sum())
    with pytest.raises(ValueError, match="K >= 2"):
        E.kde_repulsion(w[:1])


def test_flatten_members_is_per_member_ravel(spec):
    p = E.deep_ensemble(spec, members=2).init(jax.random.key(0))
    flat = E.flatten_members(p)
    assert flat.shape == (2, spec.size)
    np.testing.assert_array_equal(flat[1], jax.flatten_util.ravel_pytree(jax.tree.map(lambda l: l[1], p))[0])


def test_metrics_against_references():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 200, 4)).astype(np.float32)
    probs = E.mean_probs(jnp.asarray(logits))
    ref = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(probs, ref.mean(0), rtol=1e-5)
    y = rng.integers(0, 4, 200)
    np.testing.assert_allclose(E.nll(probs, jnp.asarray(y)), -np.mean(np.log(ref.mean(0)[np.arange(200), y])),
                               rtol=1e-5)
    np.testing.assert_allclose(E.entropy(probs), -(ref.mean(0) * np.log(ref.mean(0))).sum(-1), rtol=1e-5)
    # ECE by hand, 15 bins
    p = np.asarray(probs)
    conf, correct = p.max(1), (p.argmax(1) == y)
    idx = np.clip(np.ceil(conf * 15).astype(int) - 1, 0, 14)
    hand = sum(abs(correct[idx == b].mean() - conf[idx == b].mean()) * (idx == b).sum() for b in range(15)
               if (idx == b).any()) / 200
    assert float(E.ece(probs, jnp.asarray(y))) == pytest.approx(hand, abs=1e-6)
    r = E.reliability(probs, jnp.asarray(y))
    assert int(r.count.sum()) == 200 and r.count.shape == (15,)
    # a confident, always-right predictor is perfectly calibrated; a confident, always-wrong one is not
    onehot = jax.nn.one_hot(jnp.asarray(y), 4)
    assert float(E.ece(onehot, jnp.asarray(y))) == pytest.approx(0.0, abs=1e-6)
    assert float(E.ece(onehot, jnp.asarray((y + 1) % 4))) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"probs f\[N, C\]"):
        E.nll(probs[0], jnp.asarray(y))


def test_auroc_equals_sklearn_with_ties():
    rng = np.random.default_rng(1)
    s_in, s_out = rng.integers(0, 5, 40).astype(np.float32), rng.integers(1, 7, 25).astype(np.float32)
    want = roc_auc_score(np.r_[np.zeros(40), np.ones(25)], np.r_[s_in, s_out])
    assert float(E.auroc(jnp.asarray(s_in), jnp.asarray(s_out))) == pytest.approx(want, abs=1e-6)
    assert float(E.auroc(jnp.zeros(3), jnp.ones(4))) == 1.0 and float(E.auroc(jnp.ones(3), jnp.ones(4))) == 0.5
    with pytest.raises(ValueError, match="non-empty score vectors"):
        E.auroc(jnp.zeros((2, 2)), jnp.ones(3))


def test_errors_name_the_argument(spec, be_hparams, x):
    with pytest.raises(ValueError, match="`members` must be a positive int"):
        E.batch_ensemble(spec, members=0)
    with pytest.raises(TypeError, match="`members` must be a positive int"):
        E.deep_ensemble(spec, members=2.0)
    with pytest.raises(TypeError, match="must be a TargetSpec"):
        E.deep_ensemble({"w": 1}, members=2)
    with pytest.raises(ValueError, match=r"noise vector cond f\[4\].*cond_dim=4"):
        E.stochastic(hj.generators.scale_modulation(spec, cond_dim=3), noise_dim=4)
    with pytest.raises(ValueError, match=r"noise vector cond f\[3\]"):
        E.stochastic(hj.generators.dense(spec, cond_dim=3, num_conds=2), noise_dim=3)
    with pytest.raises(TypeError, match="must be a hypernetwork"):
        E.stochastic(spec, noise_dim=3)
    with pytest.raises(ValueError, match="holds no LowRankFactors / ScaleFactors"):
        E.members_apply(forward, spec.init(jax.random.key(0)), x)
    one = hj.generators.scale_modulation(spec, cond_dim=3).factors
    with pytest.raises(ValueError, match=r"f\[M, k\] with one M"):
        E.members_apply(forward, one(hj.generators.scale_modulation(spec, cond_dim=3).init(jax.random.key(0)),
                                     jnp.ones(3)), x)
    with pytest.raises(ValueError, match="one leading batch axis B"):
        E.members_apply(forward, E.batch_ensemble(spec, members=M).factors(be_hparams), jnp.float32(1.0))


@pytest.mark.slow   # a benchmark run (HYPERJAX_SLOW=1)
def test_benchmark_quick_schema(tmp_path):
    from benchmarks import ensembles as bench

    bench.main(["--quick", "--results-dir", str(tmp_path)])
    import json
    rec = json.loads((tmp_path / "ensembles.json").read_text())
    c = rec["cases"]["8-6-3"]
    assert rec["benchmark"] == "ensembles" and rec["quick"] is True and set(c["forward_ms"]) == set(bench.VARIANTS)
    assert c["ratio_to_factorised"]["python_loop"] == pytest.approx(c["forward_ms"]["python_loop"]
                                                                    / c["forward_ms"]["factorised"])
    assert max(c["max_abs_diff_to_materialised"].values()) < 1e-5
    assert c["deep_ensemble_params"] == 3 * (8 * 6 + 6 + 6 * 3 + 3)
    assert c["hparams"] == 8 * 6 + 6 + 6 * 3 + 3 + 9 + 4 * (14 + 9)
    assert "| case |" in (tmp_path / "ensembles.md").read_text()
