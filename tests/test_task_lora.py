"""experiments.task_lora: the task family by hand (each operation's answers, the sampler against the NumPy
reference, descriptors, the held-out split), the fixed codes' rotation property, and a tiny end-to-end run
(the JSON keys the issue names, value ranges, gap_closed from the means, adapters equal to the base at init)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hyperjax as hj
from experiments import task_lora as tl

TINY = ["--seeds", "2", "--steps", "4", "--pretrain-steps", "4", "--per-task-steps", "4", "--eval-every", "2",
        "--steps-per-call", "2", "--n-test", "8", "--width", "16", "--heads", "2", "--mlp", "16", "--rank", "2",
        "--batch-size", "16", "--tasks-per-step", "4", "--per-task-batch", "8", "--no-progress"]


@pytest.mark.parametrize("task,expected", [
    (tl.Task("rotate", 0, 0), [3, 1, 4, 1, 5, 9, 2, 6]),
    (tl.Task("rotate", 2, 0), [4, 1, 5, 9, 2, 6, 3, 1]),
    (tl.Task("rotate", 7, 0), [6, 3, 1, 4, 1, 5, 9, 2]),
    (tl.Task("reverse", 7, 0), [6, 2, 9, 5, 1, 4, 1, 3]),          # plain reversal
    (tl.Task("reverse", 1, 0), [1, 3, 6, 2, 9, 5, 1, 4]),          # y_i = x_{(1 - i) mod 8}
    (tl.Task("rotate", 0, 3), [6, 4, 7, 4, 8, 2, 5, 9]),           # add 3 mod 10
    (tl.Task("reverse", 7, 1), [7, 3, 0, 6, 2, 5, 2, 4]),          # reversed, add 1 mod 10
])
def test_each_operation_by_hand(task, expected):
    x = np.array([3, 1, 4, 1, 5, 9, 2, 6])
    np.testing.assert_array_equal(tl.apply_task(task, x, 10), expected)


def test_sampler_matches_the_reference_and_the_token_layout():
    tasks = [tl.Task("rotate", 3, 1), tl.Task("reverse", 2, 0), tl.Task("reverse", 6, 4)]
    tab = tl.table(tasks, 8, 10)
    ids = jnp.array([0, 1, 2, 2, 0, 1], jnp.int32)
    tokens, y = tl.sample(jax.random.key(3), tab, ids, 10)
    tokens, y = np.asarray(tokens), np.asarray(y)
    assert tokens.shape == (6, 17) and y.shape == (6, 8) and tokens.dtype == y.dtype == np.int32
    assert (tokens[:, 8] == 10).all() and (tokens[:, 9:] == 11).all() and (tokens[:, :8] < 10).all()
    for row, t in enumerate(np.asarray(ids)):
        np.testing.assert_array_equal(y[row], tl.apply_task(tasks[t], tokens[row, :8], 10))


def test_descriptor_is_the_op_one_hot_and_two_circles():
    d = tl.descriptor(tl.Task("reverse", 2, 5), 8, 10)
    np.testing.assert_allclose(d, [0, 1, 0, 1, -1, 0], atol=1e-6)        # k = 2 of 8: 90 deg; a = 5 of 10: 180 deg
    d = tl.descriptor(tl.Task("rotate", 0, 0), 8, 10)
    np.testing.assert_allclose(d, [1, 0, 1, 0, 1, 0], atol=1e-6)
    assert d.dtype == np.float32 and d.shape == (6,)


def test_split_holds_out_unseen_values_and_an_unseen_combination():
    train, held = tl.split(8)
    assert len(train) == 28 and len(held) == 6 and len(set(train)) == 28
    assert not set(t for t, _ in held) & set(train)
    seen_k, seen_a = {t.k for t in train}, {t.a for t in train}
    assert 5 not in seen_k and 2 not in seen_a
    assert {t.a for t in train if t.op == "reverse"} == {0}                 # reverse never trained with an add
    for t, why in held:
        if why == "unseen offset":
            assert t.k not in seen_k
        elif why == "unseen value":
            assert t.a not in seen_a and t.k in seen_k
        else:
            assert why == "unseen combination" and t.op == "reverse" and t.a in seen_a and t.a != 0
    assert {why for _, why in held} == {"unseen offset", "unseen value", "unseen combination"}


def test_codes_turn_shifts_into_rotations():
    code = tl.token_code(10)
    for a in (1, 3):
        th = 2 * np.pi * a / 10
        rot = np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]])
        np.testing.assert_allclose(code[:10, :2] @ rot, code[(np.arange(10) + a) % 10, :2], atol=1e-6)
    np.testing.assert_array_equal(code[10:, 2:], np.eye(2))
    pos = tl.position_code(8)
    np.testing.assert_array_equal(pos[:8, :2], pos[9:, :2])                # x_j and the j-th query share a code
    np.testing.assert_array_equal(pos[8], [0, 0, 0, 1, 0])
    assert (pos[:8, 2] == 1).all() and (pos[9:, 4] == 1).all()


def test_model_is_scanned_with_the_adapted_kernels_stacked():
    model = tl.Transformer(symbols=10, length=8, width=16, heads=2, mlp=16, layers=3)
    spec = hj.targets.from_linen(model, jnp.zeros((1, 17), jnp.int32))
    assert set(tl.ADAPTED) <= set(spec.paths)
    assert spec.leaves["layers/attention/query/kernel"].shape == (3, 16, 2, 8)
    assert spec.leaves["layers/mlp_out/kernel"].shape == (3, 16, 16)
    logits = spec.apply(spec.init(jax.random.key(0)), jnp.zeros((2, 17), jnp.int32))
    assert logits.shape == (2, 17, 12)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("task_lora") / "task_lora.json"
    metrics = tl.main([*TINY, "--out", str(out)])
    return metrics, json.loads(out.read_text()), out


def test_json_has_the_contract_keys_and_ranges(tiny_run):
    metrics, rec, out = tiny_run
    assert rec["experiment"] == "task_lora" and rec["metrics"] == json.loads(json.dumps(metrics))
    m = rec["metrics"]
    for name in ("base", "shared_lora", "hyper_lora", "per_task_lora"):
        r = m[name]
        for key in ("heldout_token_accuracy", "heldout_exact_match"):
            assert 0.0 <= r[key] <= 1.0
            assert len(r[f"{key}_per_seed"]) == 2 and r[key] == pytest.approx(np.mean(r[f"{key}_per_seed"]))
            assert len(r[f"{key}_per_task"]) == 6 and r[key] == pytest.approx(np.mean(r[f"{key}_per_task"]))
        assert r["heldout_exact_match"] <= r["heldout_token_accuracy"] + 1e-9
        assert r["trainable_params"] > 0 and r["seconds"] > 0
    acc = {k: m[k]["heldout_token_accuracy"] for k in ("shared_lora", "hyper_lora", "per_task_lora")}
    gap = acc["per_task_lora"] - acc["shared_lora"]
    if gap > 0:
        assert m["gap_closed"] == pytest.approx((acc["hyper_lora"] - acc["shared_lora"]) / gap)
    else:                                   # 4 steps may leave the upper bound below the shared LoRA: undefined
        assert np.isnan(m["gap_closed"])
    assert m["targets"]["hyper_closes_70pct_of_gap"]["met"] == (m["gap_closed"] >= 0.7)
    assert m["per_task_lora"]["trainable_params"] == 6 * m["per_task_lora"]["trainable_params_per_task"]
    assert m["per_task_lora"]["trainable_params_per_task"] == m["shared_lora"]["trainable_params"]
    # static LoRA: 2 layers x 6 kernels (query, key, value, out, mlp_in, mlp_out; each a 16 x 16 view) x rank 2
    # x (n_in + n_out); the linear hypernetwork maps f32[6] (+ a bias) to all of those A and B
    assert m["shared_lora"]["trainable_params"] == 2 * 6 * 2 * (16 + 16)
    assert m["hyper_lora"]["trainable_params"] == (6 + 1) * 2 * 6 * 2 * (16 + 16)
    assert m["n_train_tasks"] == 28 and [t["why"] for t in m["heldout_tasks"]].count("unseen combination") == 2
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_adapters_start_exactly_at_the_frozen_base(tiny_run):
    m = tiny_run[0]
    base = m["base"]["heldout_token_accuracy_per_seed"]
    for name in ("shared_lora", "hyper_lora", "per_task_lora"):
        c = m[name]["curve"]
        assert c["step"][0] == 0 and c["step"][-1] == 4
        assert c["heldout_token_accuracy_per_seed"][0] == pytest.approx(base, abs=1e-6)   # B = 0: W(c) == W0
        assert m[name]["base_unchanged"] is True                        # the frozen base bitwise after training
