"""experiments.quickstart end to end on a few steps: JSON record, PNG, parameter accounting, --mnist path,
bitwise identical params and metrics from two runs with the same seed."""

import json
import math
import os
import subprocess
import sys
import time

import chex
import numpy as np
import pytest

import jax
import jax.numpy as jnp

import hyperjax as hj
from experiments import _common, quickstart

MLP_DIGITS = 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10   # 85,002


def hnet_params(n_target, chunk_size, chunk_emb_dim, hidden, cond_dim):
    """Trainable scalars of the chunked generator with one learned task embedding (docstring formula)."""
    sizes = (cond_dim + chunk_emb_dim, hidden, chunk_size)
    mlp = sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))
    return math.ceil(n_target / chunk_size) * chunk_emb_dim + mlp + cond_dim


def run(tmp_path, *extra):
    out = tmp_path / "quickstart.json"
    metrics = quickstart.main(["--steps", "12", "--eval-every", "5", "--warmup", "3", "--no-progress",
                               "--out", str(out), *extra])
    return metrics, json.loads(out.read_text()), out.with_suffix(".png")


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """One 12-step run at the defaults, shared by the record, determinism and --devices tests."""
    return run(tmp_path_factory.mktemp("quickstart"))


def test_default_run_writes_record_and_figure(default_run):
    metrics, record, png = default_run
    assert png.exists() and png.stat().st_size > 10_000
    assert record["experiment"] == "quickstart" and record["seed"] == 0
    assert record["metrics"] == json.loads(json.dumps(metrics))
    m = record["metrics"]
    assert m["dataset"] == "digits" and m["target_params"] == MLP_DIGITS
    assert m["direct"]["trainable_params"] == MLP_DIGITS
    assert m["hypernet"]["trainable_params"] == hnet_params(MLP_DIGITS, 512, 16, 64, 8)
    assert 2 * m["hypernet"]["trainable_params"] <= MLP_DIGITS   # the default keeps at most half the params
    assert m["compression_ratio"] == pytest.approx(MLP_DIGITS / m["hypernet"]["trainable_params"])
    for name in ("hypernet", "direct"):
        assert 0.0 <= m[name]["test_accuracy"] <= 1.0
        curve = record["curves"][name]
        assert curve["step"] == [0, 5, 10, 12]
        assert len(curve["train_loss"]) == len(curve["test_accuracy"]) == 4
        assert curve["test_accuracy"][-1] == m[name]["test_accuracy"]
        assert np.isfinite(curve["train_loss"][1:]).all()
        assert curve["train_loss"][-1] < curve["train_loss"][1]    # a dozen steps already lower the loss
    assert m["accuracy_gap_points"] == pytest.approx(
        100 * (m["direct"]["test_accuracy"] - m["hypernet"]["test_accuracy"]))
    assert m["wall_time_s"] > 0 and "jax" in record["environment"]
    hashes = [m["hypernet"]["params_sha256"], m["hypernet"]["generated_params_sha256"], m["direct"]["params_sha256"]]
    assert len(set(hashes)) == 3 and all(len(h) == 64 and int(h, 16) >= 0 for h in hashes)


def test_hypernet_flags_change_the_generator():
    args = quickstart.build_parser().parse_args(["--chunk-size", "2048", "--chunk-emb-dim", "4", "--hidden", "8",
                                                 "--cond-dim", "3", "--widths", "32", "16"])
    spec, hnet, hparams, direct = quickstart.build(args, 64)
    n_target = 64 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10
    assert spec.size == hj.training.count_params(direct) == n_target
    assert hj.training.count_params(hparams) == hnet_params(n_target, 2048, 4, 8, 3)
    emb = hparams["embedding"]
    assert emb["chunk_emb"].shape == (math.ceil(n_target / 2048), 4) and emb["cond_emb"].shape == (1, 3)
    chex.assert_trees_all_equal_shapes_and_dtypes(hnet.apply(hparams, 0), direct)


def test_mnist_file_is_flattened_to_784_inputs(tmp_path):
    """--mnist reads a local .npz in keras' layout; 28x28 images flatten to 784 standardised inputs."""
    rng = np.random.default_rng(0)
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=rng.integers(0, 256, (300, 28, 28), dtype=np.uint8),
             y_train=rng.integers(0, 10, 300, dtype=np.uint8),
             x_test=rng.integers(0, 256, (50, 28, 28), dtype=np.uint8),
             y_test=rng.integers(0, 10, 50, dtype=np.uint8))
    x_tr, y_tr, x_te, y_te, name = quickstart.load(str(path), seed=0)
    assert name == "mnist" and x_tr.shape == (300, 784) and x_te.shape == (50, 784)
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int32
    np.testing.assert_allclose(x_tr.mean(0), 0.0, atol=1e-4)          # standardised with train statistics
    args = quickstart.build_parser().parse_args(["--mnist", str(path)])
    spec, _, hparams, _ = quickstart.build(args, x_tr.shape[1])
    assert spec.size == 784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    assert hj.training.count_params(hparams) == hnet_params(spec.size, 512, 16, 64, 8)


def test_params_sha256_sees_every_bit_path_and_dtype():
    tree = {"a": {"w": jnp.arange(6.0).reshape(2, 3)}, "b": jnp.ones(2, jnp.bfloat16), "k": jax.random.key(3)}
    h = _common.params_sha256(tree)
    assert h == _common.params_sha256(jax.tree.map(lambda x: x.copy(), tree))
    flipped = np.asarray(tree["a"]["w"]).copy()
    flipped.view(np.uint32)[1, 2] ^= 1                                     # one low mantissa bit
    assert _common.params_sha256({**tree, "a": {"w": jnp.asarray(flipped)}}) != h
    assert _common.params_sha256({**tree, "a": {"v": tree["a"]["w"]}}) != h              # same bytes, other path
    assert _common.params_sha256({**tree, "b": jnp.ones(1, jnp.float32)}) != h            # same bytes, other dtype
    assert _common.params_sha256({**tree, "a": {"w": tree["a"]["w"].reshape(3, 2)}}) != h  # other shape
    assert _common.params_sha256({**tree, "k": jax.random.key(4)}) != h


def _untimed(m):
    return {k: _untimed(v) if isinstance(v, dict) else v for k, v in m.items() if k not in ("train_time_s",
                                                                                          "wall_time_s")}


def test_a_second_run_with_the_same_seed_is_bitwise_identical(default_run, tmp_path):
    """In-process (the default profile's form of the fresh-process test below): a second run, compiled again
    from new closures, gives the same params hashes, metrics and curves as the first."""
    _, a, _ = default_run
    _, b, _ = run(tmp_path)
    for name in ("hypernet", "direct"):
        assert a["metrics"][name]["params_sha256"] == b["metrics"][name]["params_sha256"], name
    assert a["metrics"]["hypernet"]["generated_params_sha256"] == b["metrics"]["hypernet"]["generated_params_sha256"]
    assert _untimed(a["metrics"]) == _untimed(b["metrics"]) and a["curves"] == b["curves"]


@pytest.mark.slow   # two fresh processes of 30 steps; the in-process test above runs by default
def test_two_runs_with_the_same_seed_write_bitwise_identical_params_and_metrics(tmp_path):
    """Two fresh processes (each compiles its own steps), same seed, CPU: same params hashes, same metrics."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.getcwd())
    records, walls = [], []
    for i in range(2):                                   # one after the other: one JAX process at a time
        out = tmp_path / f"run{i}.json"
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "experiments.quickstart", "--steps", "30", "--eval-every", "10",
                               "--warmup", "3", "--no-progress", "--out", str(out)],
                              capture_output=True, text=True, timeout=600, env=env)
        walls.append(time.perf_counter() - t0)
        assert proc.returncode == 0, proc.stderr[-3000:]
        records.append(json.loads(out.read_text()))
    a, b = (r["metrics"] for r in records)
    timing = ("train_time_s", "wall_time_s")

    def untimed(m):
        return {k: untimed(v) if isinstance(v, dict) else v for k, v in m.items() if k not in timing}
    print(f"hypernet params_sha256 {a['hypernet']['params_sha256']} / {b['hypernet']['params_sha256']}; "
          f"direct {a['direct']['params_sha256']} / {b['direct']['params_sha256']}; runs {walls[0]:.1f}s, "
          f"{walls[1]:.1f}s")
    for name in ("hypernet", "direct"):
        assert a[name]["params_sha256"] == b[name]["params_sha256"], name
    assert a["hypernet"]["generated_params_sha256"] == b["hypernet"]["generated_params_sha256"]
    assert untimed(a) == untimed(b)                                   # accuracies, losses, counts: exactly equal
    assert records[0]["curves"] == records[1]["curves"]               # every logged loss and accuracy
    assert records[0]["config"] == {**records[1]["config"], "out": records[0]["config"]["out"]}


def test_devices_runs_data_parallel_and_matches_one_device(default_run, tmp_path):
    """--devices 2 in a process whose JAX already started re-runs itself with 2 simulated CPU devices; the JSON
    records devices and mesh, and the run agrees with the 1-device run up to float32 reduction order."""
    one = default_run[0]
    out = tmp_path / "two.json"
    metrics = quickstart.main(["--steps", "12", "--eval-every", "5", "--warmup", "3", "--no-progress",
                               "--out", str(out), "--devices", "2"])
    record = json.loads(out.read_text())
    assert record["metrics"] == metrics and record["config"]["devices"] == 2
    assert metrics["devices"] == 2 and metrics["mesh"] == "2x1" and one["devices"] == 1 and one["mesh"] is None
    for name in ("hypernet", "direct"):
        assert metrics[name]["test_accuracy"] == pytest.approx(one[name]["test_accuracy"], abs=0.02)
        assert metrics[name]["final_train_loss"] == pytest.approx(one[name]["final_train_loss"], rel=1e-3)
    with pytest.raises(SystemExit, match="--batch-size 256 does not split over --devices 3"):
        quickstart.main(["--devices", "3", "--out", str(tmp_path / "x.json")])
