"""hyperjax.continual: the output regulariser against its formula written out by hand (every id-conditioned
generator, eager and jit), its zero gradient at the snapshot, one compile for every number of earlier tasks,
masking, errors; the diagonal Fisher of a softmax regression by hand, online EWC, entropy task inference; the
task-sequence runner (scores, contexts, resume after a crash bitwise, checkpoint mismatch); joint training
runs in tests/test_cl_experiments.py."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hyperjax as hj
import hyperjax.continual as cl

M = 4   # task slots

GENERATORS = [
    pytest.param((hj.generators.dense, {"hidden": 6}), id="dense"),
    pytest.param((hj.generators.chunked, {"chunk_size": 7, "hidden": 6}), id="chunked"),
    pytest.param((hj.generators.per_layer, {}), id="per_layer"),
    pytest.param((hj.generators.low_rank, {"rank": 2, "hidden": 6}), id="low_rank"),
]


@pytest.fixture(scope="module")
def spec():
    return hj.testing.mlp_spec((3, 5, 2))


@jax.jit
def perturbed(tree, key, scale=0.05):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


def by_hand(hnet, snapshot, hparams, ids, mask, beta):
    """beta / n * sum_{t masked in} ||f(e_t, snapshot) - f(e_t, hparams)||^2, one task at a time in NumPy."""
    flat = jax.jit(lambda h, t: jax.flatten_util.ravel_pytree(hnet.apply(h, t))[0])
    total, n = 0.0, 0
    for t, on in zip(np.asarray(ids), np.asarray(mask)):
        if not on:
            continue
        a, b = flat(snapshot, jnp.int32(t)), flat(hparams, jnp.int32(t))
        total += float(np.sum((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
        n += 1
    return beta * total / max(n, 1)


@pytest.fixture(scope="module", params=GENERATORS)
def case(request, spec):
    factory, kwargs = request.param
    hnet = factory(spec, cond_dim=3, num_conds=M, **kwargs)
    snap = hnet.init(jax.random.key(0))
    return hnet, snap, perturbed(snap, jax.random.key(1))


def test_regularizer_equals_the_formula_by_hand_and_its_gradient_vanishes_at_the_snapshot(case):
    hnet, snap, hp = case
    ids = jnp.arange(M, dtype=jnp.int32)
    value_and_grad = jax.jit(jax.value_and_grad(
        lambda h, s, mask: cl.output_regularizer(hnet, s, ids, 0.3, h, mask=mask)))
    for num_prev in (0, 1, 3):
        _, mask = cl.earlier_tasks(num_prev, M)
        got, away = value_and_grad(hp, snap, mask)
        want = by_hand(hnet, snap, hp, ids, mask, 0.3)
        assert got.dtype == jnp.float32 and got.shape == ()
        np.testing.assert_allclose(float(got), want, rtol=2e-5, atol=1e-9)
        assert (want > 0) == (num_prev > 0)
        biggest = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(away))
        assert (biggest > 1e-4) == (num_prev > 0)
        _, at_snapshot = value_and_grad(snap, snap, mask)
        # under jit XLA may round the two generations differently (~1e-8); eagerly it is exactly 0 (test below)
        chex.assert_trees_all_close(at_snapshot, jax.tree.map(jnp.zeros_like, snap), atol=1e-6, rtol=0)
    assert value_and_grad._cache_size() == 1


@pytest.fixture(scope="module")
def dense_case(spec):
    hnet = hj.generators.dense(spec, hidden=6, cond_dim=3, num_conds=M)
    snap = hnet.init(jax.random.key(0))
    return hnet, snap, perturbed(snap, jax.random.key(1))


def test_eager_and_precomputed_targets_agree_and_the_gradient_is_exactly_zero(dense_case):
    hnet, snap, hp = dense_case
    ids, mask = cl.earlier_tasks(2, M)
    f = lambda h, s: cl.output_regularizer(hnet, s, ids, 0.3, h, mask=mask)
    eager = float(f(hp, snap))
    np.testing.assert_allclose(eager, float(jax.jit(f)(hp, snap)), rtol=1e-6)
    np.testing.assert_allclose(eager, by_hand(hnet, snap, hp, ids, mask, 0.3), rtol=2e-5)
    chex.assert_trees_all_equal(jax.grad(f)(snap, snap), jax.tree.map(jnp.zeros_like, snap))
    targets = jax.jit(cl.regularizer_targets, static_argnums=0)(hnet, snap, ids)
    pre = jax.jit(lambda h: cl.output_regularizer(hnet, None, ids, 0.3, h, mask=mask, targets=targets))(hp)
    np.testing.assert_allclose(float(pre), eager, rtol=1e-6)


def test_look_ahead_evaluates_theta_plus_delta(dense_case):
    hnet, snap, hp = dense_case
    ids = jnp.arange(M, dtype=jnp.int32)
    delta = jax.tree.map(lambda a, b: b - a, snap, hp)                      # Theta = snap, Theta + delta = hp
    f = jax.jit(jax.value_and_grad(lambda d: cl.output_regularizer(hnet, snap, ids, 2.0, snap, delta=d)))
    value, g = f(delta)
    np.testing.assert_allclose(float(value), by_hand(hnet, snap, hp, ids, np.ones(M, bool), 2.0), rtol=2e-5)
    chex.assert_trees_all_equal(g, jax.tree.map(jnp.zeros_like, delta))    # dTheta is gradient-stopped


def test_one_compile_for_every_number_of_earlier_tasks(dense_case):
    hnet, snap, hp = dense_case

    @jax.jit
    def reg(h, task):
        ids, mask = cl.earlier_tasks(task, M)
        return cl.output_regularizer(hnet, snap, ids, 1.0, h, mask=mask)

    values = [float(reg(hp, jnp.int32(t))) for t in range(M + 1)]
    assert reg._cache_size() == 1
    assert values[0] == 0.0 and len(set(values)) == M + 1
    naive = jax.jit(lambda h, ids: cl.output_regularizer(hnet, snap, ids, 1.0, h))   # ids of growing length
    for t in (1, 2):
        naive(hp, jnp.arange(t, dtype=jnp.int32))
    assert naive._cache_size() == 2                                    # what the mask avoids


def test_masked_slots_never_give_nan(dense_case):
    hnet, snap, hp = dense_case
    ids, mask = cl.earlier_tasks(2, M)
    targets = jax.jit(cl.regularizer_targets, static_argnums=0)(hnet, snap, ids)
    targets = jax.tree.map(lambda t: t.at[3].set(jnp.nan), targets)     # padding slot holds garbage
    f = lambda h: cl.output_regularizer(hnet, None, ids, 1.0, h, mask=mask, targets=targets)
    value, grads = jax.jit(jax.value_and_grad(f))(hp)
    np.testing.assert_allclose(float(value), by_hand(hnet, snap, hp, ids, mask, 1.0), rtol=2e-5)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
    far = jnp.array([0, 1, 99, -5], jnp.int32)                          # out-of-range ids, masked out
    assert np.isfinite(float(cl.output_regularizer(hnet, snap, far, 1.0, hp, mask=mask)))


@pytest.mark.slow
def test_vector_conditioned_generator(spec):
    hnet = hj.generators.dense(spec, hidden=6, cond_dim=3)
    snap = hnet.init(jax.random.key(0))
    hp = perturbed(snap, jax.random.key(1))
    conds = jax.random.normal(jax.random.key(2), (2, 3))
    got = cl.output_regularizer(hnet, snap, conds, 1.0, hp)
    flat = jax.jit(lambda h, c: jax.flatten_util.ravel_pytree(hnet.apply(h, c))[0])
    want = sum(float(jnp.sum(jnp.square(flat(snap, c) - flat(hp, c)))) for c in conds) / 2
    np.testing.assert_allclose(float(got), want, rtol=2e-5)


def test_regularizer_errors(spec, dense_case):
    hnet, hp, _ = dense_case
    ids = jnp.arange(M, dtype=jnp.int32)
    with pytest.raises(ValueError, match="exactly one of `snapshot`.*neither"):
        cl.output_regularizer(hnet, None, ids, 1.0, hp)
    with pytest.raises(ValueError, match=r"`mask` must be bool\[4\].*\(3,\)"):
        cl.output_regularizer(hnet, hp, ids, 1.0, hp, mask=jnp.ones(3, bool))
    with pytest.raises(ValueError, match=r"task_ids\[2\] = 7 is out of range \[0, 4\).*num_conds"):
        cl.output_regularizer(hnet, hp, jnp.array([0, 1, 7], jnp.int32), 1.0, hp)
    with pytest.raises(ValueError, match=r"`task_ids` must be integer ids of shape \(M,\)"):
        cl.output_regularizer(hnet, hp, jnp.zeros((2, 2), jnp.int32), 1.0, hp)
    with pytest.raises(ValueError, match="`beta` must be >= 0"):
        cl.output_regularizer(hnet, hp, ids, -1.0, hp)
    targets = cl.regularizer_targets(hnet, hp, ids[:2])
    with pytest.raises(ValueError, match=r"`targets` leaf 'Dense_0/bias' expected \(4, 5\) float32.*got \(2, 5\)"):
        cl.output_regularizer(hnet, None, ids, 1.0, hp, targets=targets)
    with pytest.raises(TypeError, match="`hnet` must be a hypernetwork"):
        cl.output_regularizer(object(), hp, ids, 1.0, hp)
    with pytest.raises(ValueError, match="must be conditioned on task ids"):
        cl.hypernet_method(hj.generators.dense(spec, hidden=6, cond_dim=3), spec.apply, lambda o, y: 0.0, max_tasks=2)
    with pytest.raises(ValueError, match="has 4 task embeddings.*max_tasks=5"):
        cl.hypernet_method(hnet, spec.apply, lambda o, y: 0.0, max_tasks=5)
    with pytest.raises(ValueError, match="no id embeddings"):
        cl.freeze_other_embeddings({"hyper": {}}, 0)


def test_freeze_other_embeddings_trains_only_the_current_row(spec, dense_case):
    hnet, hp, _ = dense_case
    x = jnp.ones((2, 3))
    f = lambda h: jnp.sum(spec.apply(hnet.apply(cl.freeze_other_embeddings(h, 2), jnp.int32(1)), x) ** 2) \
        + jnp.sum(spec.apply(hnet.apply(cl.freeze_other_embeddings(h, 2), jnp.int32(2)), x) ** 2)
    g = np.asarray(jax.jit(jax.grad(f))(hp)["embedding"]["cond_emb"])
    assert np.abs(g[2]).sum() > 0
    np.testing.assert_array_equal(g[[0, 1, 3]], 0.0)
    chex.assert_trees_all_equal(cl.freeze_other_embeddings(hp, 2), hp)


# ------------------------------------------------------------------------------------------------ EWC
def softmax_regression(p, x):
    return x @ p["w"] + p["b"][None]


@pytest.fixture(scope="module")
def tiny_classifier():
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), "b": jnp.asarray(rng.normal(size=4), jnp.float32)}
    x = jnp.asarray(rng.normal(size=(7, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 4, 7), jnp.int32)
    return params, x, y


def fisher_by_hand(params, x, y=None, w=None):
    """d log p_k / dW[i, c] = x_i (1[k = c] - p_c), d/db[c] = 1[k = c] - p_c; F = mean_n sum_k p_k g^2
    (or g at k = y_n for the empirical Fisher)."""
    W, b, x = (np.asarray(a, np.float64) for a in (params["w"], params["b"], x))
    w = np.ones(len(x)) if w is None else np.asarray(w, np.float64)
    fw, fb = np.zeros_like(W), np.zeros_like(b)
    for n in range(len(x)):
        z = x[n] @ W + b
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        ks = range(len(b)) if y is None else [int(y[n])]
        for k in ks:
            weight = p[k] if y is None else 1.0
            e = -p.copy()
            e[k] += 1
            fw += w[n] * weight * np.outer(x[n], e) ** 2
            fb += w[n] * weight * e ** 2
    return {"w": fw / w.sum(), "b": fb / w.sum()}


@pytest.mark.parametrize("empirical", [False, True], ids=["exact", "empirical"])
def test_fisher_matches_the_hand_computation(tiny_classifier, empirical, maybe_jit):
    params, x, y = tiny_classifier
    labels = y if empirical else None
    got = maybe_jit(lambda p, xx: cl.fisher_diagonal(softmax_regression, p, xx, labels=labels, batch_size=3))(params, x)
    want = fisher_by_hand(params, x, y if empirical else None)
    chex.assert_trees_all_close(got, jax.tree.map(lambda a: a.astype(np.float32), want), rtol=1e-5, atol=1e-7)


def test_fisher_weights_drop_padding(tiny_classifier):
    params, x, y = tiny_classifier
    xp = jnp.concatenate([x, 100 * jnp.ones((3, 3))])
    w = jnp.concatenate([jnp.ones(7), jnp.zeros(3)])
    chex.assert_trees_all_close(cl.fisher_diagonal(softmax_regression, params, xp, weights=w),
                                cl.fisher_diagonal(softmax_regression, params, x), rtol=1e-5)
    with pytest.raises(ValueError, match=r"`weights` must have shape \(10,\)"):
        cl.fisher_diagonal(softmax_regression, params, xp, weights=w[:7])


def test_online_fisher_and_ewc_penalty_by_hand():
    f1, f2 = {"a": jnp.array([1.0, 2.0])}, {"a": jnp.array([0.5, 0.0])}
    chex.assert_trees_all_close(cl.online_fisher(f1, f2, 0.9), {"a": jnp.array([1.4, 1.8])})
    p, anchor = {"a": jnp.array([1.0, -1.0])}, {"a": jnp.array([0.0, 1.0])}
    np.testing.assert_allclose(float(cl.ewc_penalty(p, anchor, f1, 3.0)), 1.5 * (1 * 1 + 2 * 4))
    grad = jax.grad(lambda q: cl.ewc_penalty(q, anchor, f1, 3.0))(anchor)
    chex.assert_trees_all_equal(grad, {"a": jnp.zeros(2)})


def test_infer_task_picks_the_lowest_entropy():
    logits = jnp.array([[[0.0, 0.0], [5.0, 0.0], [1.0, 0.0]],      # task 0: confident on example 1
                        [[3.0, 0.0], [0.1, 0.0], [1.0, 0.0]],      # task 1: confident on example 0
                        [[0.0, 0.2], [0.0, 0.2], [0.0, 4.0]]])     # task 2: confident on example 2
    task, ent, out = cl.infer_task(lambda p, x, t: p[t][x], logits, jnp.arange(3), 3)
    np.testing.assert_array_equal(np.asarray(task), [1, 0, 2])
    p = np.exp(np.asarray(logits)) / np.exp(np.asarray(logits)).sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(ent), -(p * np.log(p)).sum(-1), rtol=1e-5)
    chex.assert_trees_all_close(out, logits)


# ------------------------------------------------------------------------------------------------ runner
def ce(o, y):
    return optax.softmax_cross_entropy_with_integer_labels(o, y).mean()


@pytest.fixture(scope="module")
def tasks():
    rng = np.random.default_rng(0)
    out = []
    for t in range(3):
        x = rng.normal(size=(40, 3)).astype(np.float32)
        y = (x[:, t] > 0).astype(np.int32)
        out.append(cl.Task(x[:32 - 2 * t], y[:32 - 2 * t], x[32:], y[32:]))    # different train sizes
    return out


@pytest.fixture(scope="module")
def hyper(spec, dense_case):
    hnet = dense_case[0]                                      # 4 task embeddings, 3 tasks
    return hnet, cl.hypernet_method(hnet, spec.apply, ce, max_tasks=3, beta=0.1)


RUN = dict(steps=8, batch_size=8, key=jax.random.key(3))


@pytest.fixture(scope="module")
def uninterrupted(hyper, tasks):
    return cl.train_sequence(hyper[1], tasks, optax.adam(1e-2), **RUN)


def test_sequence_scores_and_contexts(hyper, tasks, uninterrupted):
    hnet, method = hyper
    r = uninterrupted
    assert [len(row) for row in r.scores] == [1, 2, 3] and r.resumed_from == 0 and len(r.seconds) == 3
    assert all(0.0 <= s <= 1.0 for row in r.scores for s in row) and r.final == r.scores[-1]
    assert int(r.context["num_prev"]) == 3
    chex.assert_trees_all_close(r.context["targets"], cl.regularizer_targets(hnet, r.params, jnp.arange(3)),
                                atol=1e-6)
    acc = [float(jnp.mean(jnp.argmax(method.apply(r.params, t.x_test, jnp.int32(i)), -1) == t.y_test))
           for i, t in enumerate(tasks)]
    np.testing.assert_allclose(r.final, acc, rtol=1e-6)


def test_resume_after_a_crash_is_bitwise_the_same(hyper, tasks, uninterrupted, tmp_path):
    class Crash(Exception):
        pass

    def crash_after_task_1(t, partial):
        if t == 1:
            raise Crash

    with pytest.raises(Crash):
        cl.train_sequence(hyper[1], tasks, optax.adam(1e-2), checkpoint_dir=str(tmp_path), **RUN,
                          on_task_end=crash_after_task_1)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["1", "2"]
    seen = []
    resumed = cl.train_sequence(hyper[1], tasks, optax.adam(1e-2), checkpoint_dir=str(tmp_path), **RUN,
                                on_task_end=lambda t, partial: seen.append(t))
    assert resumed.resumed_from == 2 and seen == [2]
    assert resumed.scores == uninterrupted.scores
    chex.assert_trees_all_equal(resumed.params, uninterrupted.params)
    chex.assert_trees_all_equal(resumed.context, uninterrupted.context)
    with pytest.raises(ValueError, match="written by a run with steps=8, this run has steps=9"):
        cl.train_sequence(hyper[1], tasks, optax.adam(1e-2), checkpoint_dir=str(tmp_path),
                          **{**RUN, "steps": 9})


@pytest.mark.slow
def test_ewc_context_and_runner_errors(tasks):
    def init(k):
        return {"w": jax.random.normal(k, (3, 6)) * 0.5, "h": jnp.zeros((3, 6, 2))}

    def apply(p, x, t):
        return jnp.tanh(x @ p["w"]) @ p["h"][t]

    ewc = cl.ewc_method(init, apply, ce, lam=5.0)
    r = cl.train_sequence(ewc, tasks, optax.adam(1e-2), **RUN)
    assert float(jnp.sum(r.context["fisher"]["w"])) > 0
    chex.assert_trees_all_equal(r.context["anchor"], r.params)
    with pytest.raises(TypeError, match="`method` must be a hyperjax.continual.Method"):
        cl.train_sequence(object(), tasks, optax.adam(1e-2), **RUN)
    with pytest.raises(ValueError, match=r"tasks\[2\] has 28 training examples, fewer than batch_size=30"):
        cl.train_sequence(ewc, tasks, optax.adam(1e-2), **{**RUN, "batch_size": 30})
