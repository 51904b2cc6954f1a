"""experiments.hyperlstm_charlm: the split, the truncated-BPTT windows, bits per character and parameter
matching, and one tiny in-process run writing the JSON record and the PNG."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hyperjax as hj
from experiments import hyperlstm_charlm as charlm

TINY = ["--steps", "6", "--eval-every", "3", "--steps-per-call", "3", "--seeds", "2", "--hidden", "8",
        "--hyper-hidden", "4", "--emb-dim", "2", "--embed", "4", "--batch", "2", "--seq", "5", "--lr", "1e-2",
        "--warmup", "1", "--eval-chars", "400", "--no-progress"]


@pytest.fixture(scope="module")
def text():
    return charlm.load_text()


def test_split_is_90_5_5_contiguous_blocks_fixed(text):
    data, vocab = charlm.split(text, 100)
    assert vocab == sorted(set(text)) and len(vocab) > 90
    assert sum(len(v) for v in data.values()) == len(text)
    assert abs(len(data["test"]) / len(text) - 0.05) < 0.005 and abs(len(data["val"]) / len(text) - 0.05) < 0.005
    decode = lambda ids: "".join(vocab[i] for i in ids)
    bounds = np.linspace(0, len(text), 101).astype(int)
    blocks = {text[bounds[b]:bounds[b + 1]] for b in range(100)}
    for name, ids in data.items():                    # every split is whole blocks of the text, in text order
        s, pos = decode(ids), 0
        while pos < len(s):
            block = next(b for b in blocks if s.startswith(b, pos))
            pos += len(block)
    again, _ = charlm.split(text, 100)
    for k in data:
        np.testing.assert_array_equal(data[k], again[k])
    with pytest.raises(ValueError, match="--blocks must be >= 20"):
        charlm.split(text, 10)


def test_tbptt_windows_continue_and_reset_per_epoch():
    train = np.arange(103, dtype=np.int32)
    batches = charlm.Batches(train, [0, 1], batch=2, seq=5)
    tokens, resets = batches.next(12)
    assert tokens.shape == (2, 12, 2, 6) and resets.shape == (2, 12)
    for s in range(2):
        assert resets[s, 0]
        for t in range(1, 12):
            if not resets[s, t]:                        # the next window starts where the last one stopped
                np.testing.assert_array_equal(tokens[s, t, :, 0], tokens[s, t - 1, :, -1])
                np.testing.assert_array_equal(np.diff(tokens[s, t], axis=-1), 1)
        assert resets[s].sum() >= 2                     # ~50 chars per row: a new epoch every <= 10 windows
    assert not np.array_equal(tokens[0], tokens[1])     # seeds draw their own epoch offsets
    rows = charlm.epoch_rows(train, 2, 3)
    np.testing.assert_array_equal(rows[0, -1], rows[1, 0])   # row b + 1 continues row b


def test_bpc_of_a_uniform_model_is_log2_vocab():
    args = charlm.build_parser().parse_args(TINY)
    for kind, hidden in (("lstm", 6), ("hyperlstm", 8)):
        params = charlm.init_seeds(kind, [0, 1], args, 11, hidden)
        params["out"] = jax.tree.map(jnp.zeros_like, params["out"])           # every logit 0
        ids = np.random.default_rng(0).integers(0, 11, 200).astype(np.int32)
        np.testing.assert_allclose(charlm.evaluator(kind)(params, ids), math.log2(11), rtol=1e-5)


def test_lstm_width_matches_the_hyperlstm_parameters_within_10pct():
    args = charlm.build_parser().parse_args([])
    size = charlm.sizes(args, 103)
    assert size["hyperlstm"]["hidden"] == 96 and size["lstm"]["hidden"] == 125
    assert abs(size["lstm"]["params"] / size["hyperlstm"]["params"] - 1) <= 0.01
    head = lambda h: 103 * 32 + h * 103 + 103
    assert size["lstm"]["params"] == hj.recurrent.lstm_param_count(32, 125) + head(125)
    for h in (124, 126):                                 # the closest width
        assert abs(hj.recurrent.lstm_param_count(32, h) + head(h) - size["hyperlstm"]["params"]) >= \
            abs(size["lstm"]["params"] - size["hyperlstm"]["params"])


def test_tiny_hyperlstm_run_learns_and_writes_record(tmp_path):
    """The default profile's form of the run below: the HyperLSTM alone (2 seeds), its record, curve and count."""
    out = tmp_path / "charlm.json"
    metrics = charlm.main([*TINY, "--models", "hyperlstm", "--out", str(out)])
    record = json.loads(out.read_text())
    assert record["experiment"] == "hyperlstm_charlm" and record["metrics"] == json.loads(json.dumps(metrics))
    m = record["metrics"]
    assert "lstm" not in m and "target_met" not in m and out.with_suffix(".png").stat().st_size > 10_000
    r, curve = m["hyperlstm"], record["curves"]["hyperlstm"]
    assert r["seeds"] == [0, 1] and r["test_bpc"] == pytest.approx(np.mean(r["test_bpc_per_seed"]))
    assert 0 < r["test_bpc"] < math.log2(m["vocab"]) + 1 and m["chars"]["val"] == m["chars"]["test"] == 400
    assert r["params"] == hj.recurrent.hyperlstm_param_count(4, 8, 4, 2) + m["vocab"] * (4 + 8 + 1)
    assert curve["step"] == [0, 3, 6] and np.isnan(curve["train_bpc"][0]).all()
    assert np.all(np.asarray(curve["train_bpc"][2]) < np.asarray(curve["train_bpc"][1]))   # it learns


@pytest.mark.slow   # both models x 2 seeds compiled end to end; the split, windows, bpc and width tests run by default
def test_tiny_run_writes_record_and_figure(tmp_path):
    out = tmp_path / "charlm.json"
    metrics = charlm.main([*TINY, "--out", str(out)])
    record = json.loads(out.read_text())
    assert record["experiment"] == "hyperlstm_charlm" and record["metrics"] == json.loads(json.dumps(metrics))
    png = out.with_suffix(".png")
    assert png.exists() and png.stat().st_size > 10_000
    m = record["metrics"]
    assert m["vocab"] == len(set(charlm.load_text())) and m["chars"]["val"] == m["chars"]["test"] == 400
    for kind in ("lstm", "hyperlstm"):
        r = m[kind]
        assert len(r["test_bpc_per_seed"]) == 2 and r["seeds"] == [0, 1]
        assert r["test_bpc"] == pytest.approx(np.mean(r["test_bpc_per_seed"]))
        assert 0 < r["test_bpc"] < math.log2(m["vocab"]) + 1
        assert m["params"][kind] == r["params"]
        curve = record["curves"][kind]
        assert curve["step"] == [0, 3, 6] and len(curve["val_bpc"]) == 3 and len(curve["val_bpc"][0]) == 2
        assert np.all(np.asarray(curve["train_bpc"][2]) < np.asarray(curve["train_bpc"][1]))   # it learns
        assert np.isnan(curve["train_bpc"][0]).all() and r["val_bpc_per_seed"] == curve["val_bpc"][-1]
    assert m["params"]["hyperlstm"] == hj.recurrent.hyperlstm_param_count(4, 8, 4, 2) + m["vocab"] * (4 + 8 + 1)
    assert m["params_within_10pct"] and abs(m["params"]["ratio_lstm_over_hyperlstm"] - 1) <= 0.1
    assert m["target_met"] == (m["hyperlstm"]["test_bpc"] < m["lstm"]["test_bpc"])
    assert m["test_bpc_gap_lstm_minus_hyperlstm"] == pytest.approx(m["lstm"]["test_bpc"] - m["hyperlstm"]["test_bpc"])
