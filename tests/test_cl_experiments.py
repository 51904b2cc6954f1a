"""The continual-learning experiments end to end on tiny settings, in-process: the JSON keys the issue names
(`metrics.<method>.final_mean_accuracy`, `cl3_mean_accuracy`, `per_task` for hypernet, finetune, ewc, joint),
the accuracy matrices, the targets block computed from the metrics, the PNGs, the task construction."""

import json

import numpy as np
import pytest

from experiments import _continual, cl_permuted_digits, cl_polynomials, cl_split_digits

TINY = ["--steps", "4", "--widths", "8", "--hidden", "8", "--chunk-size", "64", "--cond-dim", "4",
        "--chunk-emb-dim", "4", "--steps-per-call", "1", "--no-progress"]


def check_digits_record(rec, n_tasks, methods=_continual.METHODS):
    m = rec["metrics"]
    assert sorted(k for k in m if k in _continual.METHODS) == sorted(methods)
    for name in methods:
        r = m[name]
        assert len(r["per_task"]) == n_tasks and all(0.0 <= a <= 1.0 for a in r["per_task"])
        assert r["final_mean_accuracy"] == pytest.approx(np.mean(r["per_task"]))
        assert r["cl3_mean_accuracy"] == pytest.approx(np.mean(r["cl3_per_task"]))
        assert 0.0 <= r["task_inference_accuracy"] <= 1.0
        rows = r["accuracy_matrix"]
        if name == "joint":
            assert len(rows) == 1 and rows[0] == r["per_task"]
        else:
            assert [len(row) for row in rows] == list(range(1, n_tasks + 1)) and rows[-1] == r["per_task"]
    t, acc = m["targets"], {k: m[k]["final_mean_accuracy"] for k in methods}
    if "joint" in methods:
        gap = 100 * (acc["joint"] - acc["hypernet"])
        assert t["hypernet_within_3pt_of_joint"] == {"gap_points": pytest.approx(gap), "met": gap <= 3.0}
    if "ewc" in methods:
        assert t["hypernet_at_or_above_ewc"]["met"] == (acc["hypernet"] >= acc["ewc"])


def test_split_digits(tmp_path):
    out = tmp_path / "split.json"
    metrics = cl_split_digits.main([*TINY, "--out", str(out)])
    rec = json.loads(out.read_text())
    assert rec["metrics"] == json.loads(json.dumps(metrics)) and rec["experiment"] == "cl_split_digits"
    check_digits_record(rec, 5)
    assert rec["config"]["validation"] is False
    m = rec["metrics"]
    assert m["finetune"]["trainable_params"] == m["ewc"]["trainable_params"] == m["joint"]["trainable_params"]
    assert m["target_params"] == 64 * 8 + 8 + 8 * 2 + 2
    assert m["finetune"]["trainable_params"] == 64 * 8 + 8 + 5 * (8 * 2 + 2)     # trunk + a 2-way head per task
    assert sum(m["n_test_per_task"]) == 449 and m["dataset"] == "digits"          # round(0.25 * 1797)
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_split_tasks_relabel_each_pair():
    y = np.array([0, 1, 2, 3, 9, 8, 5], np.int32)
    x = np.arange(7, dtype=np.float32)[:, None]
    tasks, digits = cl_split_digits.split_tasks(x, y, x, y)
    assert [t.y_train.tolist() for t in tasks] == [[0, 1], [0, 1], [1], [], [1, 0]]
    assert [d.tolist() for d in digits] == [[0, 1], [2, 3], [5], [], [9, 8]]


def test_permuted_digits(tmp_path):
    out = tmp_path / "perm.json"
    cl_permuted_digits.main([*TINY, "--tasks", "3", "--out", str(out), "--validation", "--steps-per-call", "2",
                             "--methods", "hypernet", "ewc", "--checkpoint-dir", str(tmp_path / "ckpt")])
    rec = json.loads(out.read_text())
    assert rec["config"]["validation"] is True and rec["metrics"]["dataset"] == "digits (validation split)"
    check_digits_record(rec, 3, methods=("hypernet", "ewc"))
    m = rec["metrics"]
    for name in ("hypernet", "ewc"):
        assert m[name]["task1_accuracy_after_each_task"] == [row[0] for row in m[name]["accuracy_matrix"]]
    assert m["n_test_per_task"] == (1797 - 449) // 5                        # 20% of the training set
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["ewc", "hypernet"]    # --checkpoint-dir
    assert all(m[k]["resumed_from_task"] == 0 for k in ("hypernet", "ewc"))
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_permutations_fix_task_one():
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    tasks, perms = cl_permuted_digits.permuted_tasks(x, np.zeros(2, np.int32), x, np.zeros(2, np.int32), 3, 0)
    np.testing.assert_array_equal(tasks[0].x_train, x)
    for t, p in zip(tasks, perms):
        np.testing.assert_array_equal(np.sort(p), np.arange(6))
        np.testing.assert_array_equal(t.x_test, x[:, p])
    assert not np.array_equal(perms[1], perms[2])


def test_polynomials(tmp_path):
    out = tmp_path / "poly.json"
    metrics = cl_polynomials.main(["--steps", "20", "--steps-per-call", "1", "--no-progress", "--out", str(out),
                                   "--methods", "hypernet", "joint"])
    rec = json.loads(out.read_text())
    assert rec["metrics"] == json.loads(json.dumps(metrics))
    for name in ("hypernet", "joint"):
        r = rec["metrics"][name]
        assert len(r["per_task"]) == 3 and r["final_mean_mse"] == pytest.approx(np.mean(r["per_task"]))
        assert len(rec["fits"][name]) == 3 and all(len(f) == 100 for f in rec["fits"][name])
        for i, f in enumerate(rec["fits"][name]):               # the MSE is that of the plotted fit
            truth = np.asarray(cl_polynomials.TASKS[i][0](np.asarray(rec["fits"]["x"][i])))
            assert r["per_task"][i] == pytest.approx(np.mean((np.asarray(f) - truth) ** 2), rel=1e-4)
    assert [len(row) for row in rec["metrics"]["hypernet"]["mse_matrix"]] == [1, 2, 3]
    assert rec["metrics"]["joint"]["trainable_params"] == rec["metrics"]["target_params"]
    assert rec["metrics"]["target_params"] == 1 * 10 + 10 + 10 * 10 + 10 + 10 + 1
    assert out.with_suffix(".png").stat().st_size > 10_000
