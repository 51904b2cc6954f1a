"""experiments.diet_genomics and experiments.learned_sharing on tiny settings, plus their data and metric helpers."""

import json

import numpy as np
import pytest

import hyperjax as hj
from experiments import diet_genomics, learned_sharing


def test_balding_nichols_genotypes_and_fst():
    """Flat model (F1 = 0): E[var_k f] / fbar(1 - fbar) = F (K - 1) / K for K populations (population variance)."""
    x, y, freqs, fst, _ = diet_genomics.balding_nichols(0, 4000, 1, 10, 3, 0.0, 0.05)
    assert x.shape == (30, 4000) and set(np.unique(x)) <= {0, 1, 2} and np.bincount(y).tolist() == [3] * 10
    assert 0.05 * 0.9 * 0.9 < fst < 0.05 * 0.9 * 1.1
    _, _, _, fst2, within = diet_genomics.balding_nichols(0, 4000, 2, 5, 3, 0.04, 0.002)
    assert within < 0.002 < fst2                                  # nested: populations within groups are closer


def test_folds_and_histograms():
    y = np.repeat(np.arange(3), 10)
    folds = diet_genomics.stratified_folds(y, 5, 0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(30))
    assert all(np.bincount(y[f], minlength=3).tolist() == [2, 2, 2] for f in folds)
    x = np.random.default_rng(0).integers(0, 3, (30, 7))
    raw = diet_genomics.class_histograms(x, y, 3, centred=False).reshape(7, 3, 3)
    np.testing.assert_allclose(raw.sum(2), 1.0, rtol=1e-6)                  # genotype frequencies per class
    np.testing.assert_allclose(raw[:, 1, 2], (x[y == 1] == 2).mean(0), rtol=1e-6)
    centred = diet_genomics.class_histograms(x, y, 3).reshape(7, 3, 3)
    np.testing.assert_allclose(centred.sum(1), 0.0, atol=1e-6)              # deviations from the class mean


def test_diet_genomics_tiny_run(tmp_path):
    out = tmp_path / "diet.json"
    d, h, groups, per_group, e_hidden = 300, 8, 2, 2, 4
    metrics = diet_genomics.main(["--snps", str(d), "--groups", str(groups), "--pops-per-group", str(per_group),
                                  "--per-pop", "10", "--folds", "2", "--steps", "3", "--hidden", str(h),
                                  "--emb-hidden", str(e_hidden), "--no-progress", "--out", str(out)])
    record = json.loads(out.read_text())
    assert record["metrics"] == json.loads(json.dumps(metrics)) and out.with_suffix(".png").exists()
    k = groups * per_group
    head = h + h * k + k                                           # hidden bias + output layer
    assert metrics["mlp"]["trainable_params"] == d * h + head
    assert metrics["diet"]["trainable_params"] == head + hj.generators.rowwise_param_count(
        emb_dim=3 * k, units=h, hidden=(e_hidden,), decoder_units=h)
    assert metrics["diet_linear"]["trainable_params"] == head + hj.generators.rowwise_param_count(
        emb_dim=3 * k, units=h, hidden=())
    for m in ("mlp", "diet", "diet_linear"):
        assert len(metrics[m]["test_error_per_fold"]) == 2
        assert 0.0 <= metrics[m]["test_error_mean"] <= 1.0
    assert metrics["diet"]["param_ratio"] == pytest.approx(metrics["mlp"]["trainable_params"]
                                                           / metrics["diet"]["trainable_params"])
    assert metrics["data"]["n_samples"] == 40 and metrics["data"]["n_snps"] == d


def test_diagonal_sharing_metric():
    rng = np.random.default_rng(0)
    i, j = np.meshgrid(np.arange(12), np.arange(12), indexing="ij")
    toeplitz = np.clip(i - j + 2, 0, 4)                                  # a convolution's assignment
    r = learned_sharing.diagonal_sharing(toeplitz, rng, 50)
    assert r["same_value_fraction"] == 1.0 and r["random_mean"] < 0.6 and r["z_score"] > 3
    scrambled = rng.permutation(toeplitz.ravel()).reshape(12, 12)
    assert learned_sharing.diagonal_sharing(scrambled, rng, 50)["same_value_fraction"] < 0.7


def test_learned_sharing_tiny_run(tmp_path):
    out = tmp_path / "ls.json"
    metrics = learned_sharing.main(["--steps", "6", "--conv-steps", "6", "--values", "4", "--hidden", "8",
                                    "--perms", "10", "--eval-every", "3", "--no-progress", "--out", str(out)])
    assert json.loads(out.read_text())["metrics"] == json.loads(json.dumps(metrics))
    assert out.with_suffix(".png").exists()
    n = 64 * 8 + 8 * 10
    for k, bits in ((4, 2),):
        r = metrics["a"][f"K={k}"]
        assert r["slots"] == n and r["distinct_values"] <= k and r["trainable_params"] == n * k + k + 8 + 10
        assert r["compression"] == pytest.approx(32 * n / (bits * n + 32 * k))
        assert r["gap_points"] == pytest.approx(100 * (metrics["a"]["unshared"]["test_accuracy"]
                                                       - r["test_accuracy_hard"]))
    b = metrics["b"]["shared"]
    assert b["distinct_values"] <= 8 and 0.0 <= b["same_value_fraction"] <= 1.0
    assert metrics["target_met_K16"] is None                       # K=16 was not run
