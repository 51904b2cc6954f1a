"""benchmarks.overhead: the hand-written step is the library's function, the --quick JSON schema, and the two
make_step options the benchmark relies on (grad_norm=False, step keys by fold_in). No timing asserts."""

import json
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hyperjax as hj
from benchmarks import overhead

TINY = [
    pytest.param({"widths": (5, 7, 3), "cond_dim": 2, "hidden": 4}, id="dense"),
    pytest.param({"widths": (4, 6, 6, 2), "cond_dim": 3, "hidden": 5, "chunk_size": 9, "chunk_emb_dim": 2},
                 id="chunked-ragged"),
]


def batch(n_in, n_out, n=6, seed=0):
    x = jax.random.normal(jax.random.key(seed), (n, n_in), jnp.float32)
    return x, (jnp.arange(n, dtype=jnp.int32) + seed) % n_out


@pytest.mark.parametrize("case", TINY)
def test_handwritten_step_is_the_library_step(case):
    """Same loss and same updated hparams after two steps: the benchmark compares one function, twice."""
    opt = optax.adam(1e-2)
    hparams, steps, spec = overhead.library(case, opt)
    assert spec.size == sum((a + 1) * b for a, b in zip(case["widths"][:-1], case["widths"][1:]))
    hw = overhead.handwritten(case, opt)
    state = hj.training.init_state(hparams, opt, jax.random.key(1))
    p, s = jax.tree.map(jnp.copy, hparams), opt.init(hparams)
    for i in range(2):
        x, y = batch(case["widths"][0], case["widths"][-1], seed=i)
        state, metrics = steps["hyperjax"](state, (x, y))
        p, s, loss = hw(p, s, x, y)
        np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
    chex.assert_trees_all_close(state.params, p, rtol=1e-5, atol=1e-6)


@pytest.mark.slow   # a benchmark run (HYPERJAX_SLOW=1)
def test_quick_run_writes_json_and_markdown(tmp_path):
    payload = overhead.main(["--quick", "--results-dir", str(tmp_path)])
    record = json.loads((tmp_path / "overhead.json").read_text())
    assert record["benchmark"] == "overhead" and record["goal_ratio"] == 1.05 and record["quick"] is True
    assert record["cases"] == json.loads(json.dumps(payload["cases"]))
    want = {"dense": (7_510, (8 + 1) * 100 + (100 + 1) * 7_510 + 8),
            "chunked": (1_076_010, 263 * 8 + (16 + 1) * 100 + (100 + 1) * 4_096 + 8)}
    assert set(record["cases"]) == set(want)
    for name, (n_target, n_hnet) in want.items():
        c = record["cases"][name]
        assert (c["target_params"], c["hnet_trainable_params"]) == (n_target, n_hnet)
        for key in ("hyperjax_ms", "handwritten_ms", "hyperjax_default_ms"):
            assert c[key] > 0
        assert c["ratio"] == pytest.approx(c["hyperjax_ms"] / c["handwritten_ms"])
        assert c["ratio_default"] == pytest.approx(c["hyperjax_default_ms"] / c["handwritten_ms"])
        assert c["repeats"] >= 2 and set(c["compile_s"]) == {"hyperjax", "hyperjax_default", "handwritten"}
        for diff in c["first_step_diff"].values():
            assert diff["loss_abs"] < 1e-4 and diff["params_max_abs"] < 1e-5
    assert record["worst_ratio"] == max(c["ratio"] for c in record["cases"].values())
    md = (tmp_path / "overhead.md").read_text()
    assert "| dense | 7510 | 759418 |" in md and "| chunked | 1076010 | 417508 |" in md


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_make_step_grad_norm_flag(jit, tiny_mlp_spec, key):
    gen = hj.generators.dense(tiny_mlp_spec, cond_dim=2, hidden=4, num_conds=1)
    x, y = batch(5, 3)

    def loss_fn(hp, b, rng):
        return optax.softmax_cross_entropy_with_integer_labels(tiny_mlp_spec.apply(gen.apply(hp, 0), b[0]),
                                                               b[1]).mean()

    hparams, opt = gen.init(key), optax.sgd(1e-2)
    with_norm, m1 = hj.training.make_step(loss_fn, opt, jit=jit)(hj.training.init_state(hparams, opt, key), (x, y))
    without, m2 = hj.training.make_step(loss_fn, opt, jit=jit, grad_norm=False)(
        hj.training.init_state(hparams, opt, key), (x, y))
    assert set(m1) == {"loss", "grad_norm"} and set(m2) == {"loss"}
    grads = jax.grad(loss_fn)(hparams, (x, y), None)
    np.testing.assert_allclose(m1["grad_norm"], optax.global_norm(grads), rtol=1e-5)
    chex.assert_trees_all_close((with_norm.params, with_norm.opt_state), (without.params, without.opt_state))


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_step_key_is_fold_in_of_the_step_count(jit):
    """Step t gets fold_in(state.rng, t): distinct per step, reproducible, and state.rng itself stays put."""
    def loss_fn(w, batch, rng):
        return jnp.sum(w ** 2), {"u": jax.random.uniform(rng)}

    base = jax.random.key(7)
    step = hj.training.make_step(loss_fn, optax.sgd(0.1), has_aux=True, jit=jit)
    state = hj.training.init_state(jnp.ones(3), optax.sgd(0.1), base)
    us = []
    for _ in range(3):
        state, metrics = step(state, None)
        us.append(float(metrics["u"]))
    want = [float(jax.random.uniform(jax.random.fold_in(base, t))) for t in range(3)]
    np.testing.assert_allclose(us, want, rtol=1e-6)
    assert len(set(us)) == 3 and int(state.step) == 3
    np.testing.assert_array_equal(jax.random.key_data(state.rng), jax.random.key_data(base))
    assert math.isclose(float(jnp.sum(state.params)), 3 * 0.8 ** 3, rel_tol=1e-5)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_state_without_key_passes_rng_none(jit):
    seen = []

    def loss_fn(w, batch, rng):
        seen.append(rng)
        return jnp.sum(w ** 2)

    state = hj.training.init_state(jnp.ones(3), optax.sgd(0.1))
    assert state.rng is None and jax.tree.leaves(state.rng) == []
    state, _ = hj.training.make_step(loss_fn, optax.sgd(0.1), jit=jit)(state, None)
    assert seen and all(r is None for r in seen) and state.rng is None
    np.testing.assert_allclose(state.params, 0.8 * np.ones(3), rtol=1e-6)
