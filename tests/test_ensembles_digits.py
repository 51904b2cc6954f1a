"""experiments.ensembles_digits on a tiny setting: the JSON keys the issue names, parameter accounting, the
targets block computed from the metrics, the PNG; and its data (letters and noise standardised like digits)."""

import json

import numpy as np
import pytest

from experiments import ensembles_digits

KEYS = {"accuracy", "nll", "ece", "auroc_letters", "auroc_noise", "params"}


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    out = tmp_path_factory.mktemp("ens") / "ens.json"
    metrics = ensembles_digits.main(["--steps", "6", "--seeds", "2", "--widths", "16", "--members", "3",
                                     "--samples", "2", "--eval-every", "3", "--warmup", "2", "--noise-images", "50",
                                     "--steps-per-call", "2", "--no-progress", "--out", str(out)])
    return metrics, json.loads(out.read_text()), out


@pytest.fixture(scope="module")
def small_record(tmp_path_factory):
    """Two of the four methods, 2 steps, 2 seeds: the default profile's form of `record`."""
    out = tmp_path_factory.mktemp("ens_small") / "ens.json"
    metrics = ensembles_digits.main(["--steps", "2", "--seeds", "2", "--widths", "16", "--members", "3",
                                     "--samples", "2", "--eval-every", "1", "--warmup", "1", "--noise-images", "50",
                                     "--steps-per-call", "1", "--methods", "single", "batch_ensemble",
                                     "--no-progress", "--out", str(out)])
    return metrics, json.loads(out.read_text()), out


def test_small_run_keys_params_and_seeds(small_record):
    metrics, rec, out = small_record
    assert rec["metrics"] == json.loads(json.dumps(metrics)) and rec["experiment"] == "ensembles_digits"
    m = rec["metrics"]
    assert [k for k in ensembles_digits.METHODS if k in m] == ["single", "batch_ensemble"] and "targets" not in m
    single = 64 * 16 + 16 + 16 * 10 + 10
    assert m["target_params"] == m["single"]["params"] == single
    assert m["batch_ensemble"]["params"] == single + 3 * 3 + 4 * ((64 + 16) + (16 + 10))
    for name in ("single", "batch_ensemble"):
        r = m[name]
        assert KEYS <= set(r)
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["ece"] <= 1 and r["nll"] > 0
        assert 0 <= r["auroc_letters"] <= 1 and 0 <= r["auroc_noise"] <= 1
        assert r["accuracy"] == pytest.approx(np.mean(r["per_seed"]["accuracy"]))
        assert len(set(r["per_seed"]["params_sha256"])) == 2, name       # seed 0 and seed 1 train different params
        curves = rec["curves"][name]
        assert [c["step"] for c in curves] == [[0, 1, 2]] * 2
        assert all(np.isfinite(c["train_loss"][1:]).all() for c in curves)


@pytest.mark.slow   # all four methods (about 90 s on 2 cores); test_small_run_keys_params_and_seeds by default
def test_json_keys_params_and_figure(record):
    metrics, rec, out = record
    assert rec["metrics"] == json.loads(json.dumps(metrics)) and rec["experiment"] == "ensembles_digits"
    assert out.with_suffix(".png").stat().st_size > 10_000
    m = rec["metrics"]
    single = 64 * 16 + 16 + 16 * 10 + 10
    assert m["target_params"] == m["single"]["params"] == single
    assert m["deep_ensemble"]["params"] == 3 * single
    assert m["batch_ensemble"]["params"] == single + 3 * 3 + 4 * ((64 + 16) + (16 + 10))
    # base + biases + noise MLP 8 -> 32 -> rows + cols of both kernels
    assert m["stochastic_hypernet"]["params"] == single + 9 * 32 + 33 * ((64 + 16) + (16 + 10))
    for name in ensembles_digits.METHODS:
        r = m[name]
        assert KEYS <= set(r)
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["ece"] <= 1 and r["nll"] > 0
        assert 0 <= r["auroc_letters"] <= 1 and 0 <= r["auroc_noise"] <= 1
        assert len(r["per_seed"]["accuracy"]) == 2
        assert r["accuracy"] == pytest.approx(np.mean(r["per_seed"]["accuracy"]))
        curves = rec["curves"][name]
        assert [c["step"] for c in curves] == [[0, 3, 6]] * 2
        assert all(np.isfinite(c["train_loss"][1:]).all() for c in curves)
    t = m["targets"]
    assert t["be_params_at_most_quarter_of_deep"]["ratio"] == pytest.approx(
        m["batch_ensemble"]["params"] / m["deep_ensemble"]["params"])
    assert t["be_accuracy_within_0.5pt_of_deep"]["gap_points"] == pytest.approx(
        100 * (m["deep_ensemble"]["accuracy"] - m["batch_ensemble"]["accuracy"]))
    assert t["ensembles_beat_single_nll"]["batch_ensemble"] == (m["batch_ensemble"]["nll"] < m["single"]["nll"])
    assert rec["config"]["diversity"] == pytest.approx(1 / m["n_train"])
    assert m["n_letters"] == 52 * len(rec["config"]["letter_fonts"]) and m["n_noise"] == 50


@pytest.mark.slow
def test_seeds_differ_and_the_same_seed_repeats(record):
    metrics, rec, out = record
    for name in ensembles_digits.METHODS:
        hashes = rec["metrics"][name]["per_seed"]["params_sha256"]
        assert len(set(hashes)) == 2, name                           # seed 0 and seed 1 train different params


def test_data_is_standardised_with_train_statistics():
    args = ensembles_digits.build_parser().parse_args(["--noise-images", "20"])
    data = ensembles_digits.load(args)
    assert data["x_tr"].shape[1] == data["letters"].shape[1] == data["noise"].shape[1] == 64
    np.testing.assert_allclose(data["x_tr"].mean(0), 0.0, atol=1e-4)
    assert len(data["noise"]) == 20 and len(data["letters"]) == 52 * len(data["fonts"])
    val = ensembles_digits.load(ensembles_digits.build_parser().parse_args(["--eval-on", "val"]))
    assert len(val["x_te"]) == (len(data["x_tr"])) // 5 and len(val["x_tr"]) + len(val["x_te"]) == len(data["x_tr"])
