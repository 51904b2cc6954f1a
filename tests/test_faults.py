"""Faults: a training run SIGKILLed at random steps resumes to bitwise the same params as an uninterrupted run;
a checkpoint damaged on disk is named on restore (step and what is wrong) and skipped by restore_latest_valid,
with nothing deleted."""

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hyperjax as hj

# Orbax leaves its other array reads pending when one fails; they surface later as unraisable warnings
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

# ------------------------------------------------------------------------------------------------ killed runs
# A small training script: a chunked generator for the 5 -> 7 -> 3 linen MLP with two task ids, Adam, input
# noise from the state's key, batch i a function of i only. It checkpoints every EVERY steps (async saves),
# resumes from the newest intact checkpoint when there is one, prints "step N" after step N and writes the
# final state's leaves to OUT.
TRAIN = textwrap.dedent("""
    import os, sys, time
    import jax, jax.numpy as jnp, numpy as np, optax
    import hyperjax as hj
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    jax.config.update("jax_numpy_rank_promotion", "raise")

    ckpt, total, every, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    pace = float(sys.argv[5])
    spec = hj.testing.mlp_spec()
    hnet = hj.generators.chunked(spec, cond_dim=3, chunk_size=16, chunk_emb_dim=4, hidden=(8,), num_conds=2)
    opt = optax.adam(1e-2)

    def loss_fn(hp, batch, rng):
        x, y, task = batch
        noisy = x + 0.05 * jax.random.normal(rng, x.shape)
        return jnp.mean((spec.apply(hnet.apply(hp, task), noisy) - y) ** 2)

    step_fn = hj.training.make_step(loss_fn, opt)

    def init():
        return hj.training.init_state(hnet.init(jax.random.key(0)), opt, jax.random.key(1))

    def batch(i):
        r = np.random.default_rng(1000 + i)
        x = r.standard_normal((8, 5), dtype=np.float32)
        return x, np.tanh(x[:, :3]), np.asarray(i % 2, np.int32)

    mgr = hj.checkpoint.manager(ckpt, max_to_keep=2, async_save=True)
    if mgr.latest_step() is None:
        state = jax.jit(init)()
        print("resumed 0 skipped 0 (fresh start)", flush=True)
    else:
        got = hj.checkpoint.restore_latest_valid(mgr, jax.eval_shape(init))
        state = got.state
        print(f"resumed {got.step} skipped {len(got.skipped)}", flush=True)
    for i in range(int(state.step), total):
        state, metrics = step_fn(state, batch(i))
        if (i + 1) % every == 0:
            hj.checkpoint.save(mgr, i + 1, state, metrics={"loss": float(metrics["loss"])})
        print(f"step {i + 1}", flush=True)
        time.sleep(pace)
    mgr.close()
    leaves = jax.tree.leaves(jax.tree.map(lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.prng_key) else x, state))
    np.savez(out, *[np.asarray(x) for x in leaves])
    print("done", flush=True)
""")

# two kills by default (each a fresh process); HYPERJAX_SLOW=1 kills five times
TOTAL, EVERY, PACE = 30, 3, 0.02
KILLS = 5 if os.environ.get("HYPERJAX_SLOW", "") not in ("", "0") else 2


def _env(cache):
    # one JAX process at a time; the persistent compilation cache cuts each start's compile time
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.getcwd(), JAX_COMPILATION_CACHE_DIR=str(cache),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
                XLA_FLAGS=os.environ.get("XLA_FLAGS", ""))


class _Run:
    """One child process running TRAIN; killed (with its watchdog) whatever happens in the test."""

    def __init__(self, script, ckpt, out, env, log, timeout=120):
        self.log = open(log, "a")
        self.proc = subprocess.Popen([sys.executable, str(script), str(ckpt), str(TOTAL), str(EVERY), str(out),
                                      str(PACE)], stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        self.watchdog = threading.Timer(timeout, self.kill)
        self.watchdog.start()
        self.lines = []

    def kill(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)

    def read_until(self, pred):
        """Read stdout lines until pred(line) or EOF; returns the matching line or None."""
        for line in self.proc.stdout:
            self.lines.append(line.strip())
            if pred(line.strip()):
                return line.strip()
        return None

    def finish(self):
        self.lines += [line.strip() for line in self.proc.stdout.read().splitlines()]
        self.proc.wait(timeout=60)
        self.watchdog.cancel()
        self.log.close()
        return self.proc.returncode


def _steps(lines):
    """The N of each 'step N' line."""
    return [int(line.split()[1]) for line in lines if line.startswith("step ")]


def _leaves(path):
    with np.load(path) as z:
        return [z[f"arr_{i}"] for i in range(len(z.files))]


def test_killed_repeatedly_resumes_bitwise(tmp_path):
    seed = int(os.environ.get("HJ_FAULT_SEED", "20240611"))
    kill_at = sorted(random.Random(seed).sample(range(2, TOTAL - 2), KILLS))
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    env, log = _env(tmp_path / "jax_cache"), tmp_path / "stderr.log"
    t0 = time.perf_counter()
    runs = []
    try:
        ref = _Run(script, tmp_path / "ref_ckpt", tmp_path / "ref.npz", env, log)
        runs.append(ref)
        assert ref.read_until(lambda l: l == "done") == "done", f"reference run failed: {log.read_text()[-3000:]}"
        assert ref.finish() == 0
        t_ref = time.perf_counter() - t0

        record = []   # (kill step drawn, step line after which it was killed, checkpoint it had resumed from)
        for k in kill_at:
            run = _Run(script, tmp_path / "ckpt", tmp_path / "faulted.npz", env, log)
            runs.append(run)
            first = run.read_until(lambda l: l.startswith("resumed"))
            hit = run.read_until(lambda l: l.startswith("step ") and int(l.split()[1]) >= k)
            run.kill()
            code = run.finish()
            assert first is not None and hit is not None and code == -signal.SIGKILL, (
                f"kill steps {kill_at}: the run meant to die at step {k} ended with {code}; "
                f"printed {run.lines[-3:]}; {log.read_text()[-3000:]}")
            resumed = int(first.split()[1])
            assert first.split()[3] == "0", first              # a killed save never leaves a damaged step
            assert _steps(run.lines)[0] == resumed + 1, (run.lines[:3], kill_at)   # resumes right after it
            record.append((k, int(hit.split()[1]), resumed))
        final = _Run(script, tmp_path / "ckpt", tmp_path / "faulted.npz", env, log)
        runs.append(final)
        first = final.read_until(lambda l: l.startswith("resumed"))
        assert final.read_until(lambda l: l == "done") == "done", f"final run failed: {log.read_text()[-3000:]}"
        assert final.finish() == 0
    finally:                                  # no child outlives the test, whatever failed
        for r in runs:
            r.kill()
            r.watchdog.cancel()
            r.proc.wait(timeout=60)
    wall = time.perf_counter() - t0
    summary = (f"seed {seed}: SIGKILL at steps {kill_at}; (drawn, killed after step, had resumed from "
               f"checkpoint) = {record}; final run: {first} -> step {TOTAL}; reference run {t_ref:.1f}s, all "
               f"{len(runs)} runs {wall:.1f}s")
    print(summary)
    assert int(first.split()[1]) > 0 and any(r[2] > 0 for r in record), summary   # resumes really happened
    assert os.listdir(tmp_path / "jax_cache"), "the persistent compilation cache was not used"
    ref_leaves, got = _leaves(tmp_path / "ref.npz"), _leaves(tmp_path / "faulted.npz")
    assert len(ref_leaves) == len(got), summary
    for i, (a, b) in enumerate(zip(ref_leaves, got)):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), f"leaf {i}: {summary}"


# ------------------------------------------------------------------------------------------------ damaged steps
def _state(s):
    """A TrainState whose every leaf depends on s (dense generator for the 5 -> 7 -> 3 MLP, Adam)."""
    spec = hj.testing.mlp_spec()
    hnet = hj.generators.dense(spec, cond_dim=3, hidden=4)
    opt = optax.adam(1e-3)
    state = hj.training.init_state(hnet.init(jax.random.key(s)), opt, jax.random.key(100 + s))
    return state._replace(step=jnp.asarray(s, jnp.int32))


ABSTRACT = jax.eval_shape(lambda: _state(0))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Steps 1, 2, 3 saved once; tests damage a copy."""
    root = tmp_path_factory.mktemp("saved")
    with hj.checkpoint.manager(root, max_to_keep=None, async_save=False) as mgr:
        for s in (1, 2, 3):
            hj.checkpoint.save(mgr, s, _state(s), config={"s": s}, metrics={"loss": float(s)})
    return root


def _copy(saved, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(saved, d)
    return d


def _files(step_dir, under):
    return sorted((p for p in (step_dir / under).rglob("*") if p.is_file()), key=lambda p: (-p.stat().st_size, p.name))


def _snapshot(d):
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


def _del_data_file(d):        # the largest OCDBT data file of the state: array chunks
    _files(d / "3", "state/ocdbt.process_0/d")[0].unlink()


def _del_index_node(d):       # the OCDBT b-tree node naming where each array is
    for p in _files(d / "3", "state/d"):
        p.unlink()


def _zero_data_file(d):
    _files(d / "3", "state/ocdbt.process_0/d")[0].write_bytes(b"")


def _half_data_file(d):
    p = _files(d / "3", "state/ocdbt.process_0/d")[0]
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _zero_step_metadata(d):
    (d / "3" / "_CHECKPOINT_METADATA").write_bytes(b"")


def _garbled_tree_metadata(d):
    p = d / "3" / "state" / "_METADATA"
    p.write_bytes(p.read_bytes()[:40])


def _del_tree_metadata(d):
    (d / "3" / "state" / "_METADATA").unlink()


def _no_commit_marker(d):     # step 3 copied over again, interrupted: no marker, half its data files
    shutil.rmtree(d / "3")
    shutil.copytree(d / "2", d / "3", ignore=lambda _, names: [n for n in names if n == "commit_success.txt"])
    for p in _files(d / "3", "state/ocdbt.process_0/d")[::2]:
        p.unlink()


def _del_item(d):
    shutil.rmtree(d / "3" / "state")


DAMAGE = [
    pytest.param(_del_data_file, r"reading leaf '[^']+' failed: [A-Z_]+: .*; an array data file under 'state/' "
                 r"is missing, truncated or corrupted", id="deleted-array-data-file"),
    pytest.param(_del_index_node, r"file 'state/d/[0-9a-f]+' is missing \(reading it failed with NOT_FOUND\)",
                 id="deleted-index-file"),
    pytest.param(_zero_data_file, r"file 'state/ocdbt.process_0/d/[0-9a-f]+' is empty \(0 bytes: truncated\)",
                 id="zero-length-data-file"),
    pytest.param(_half_data_file, r"reading leaf '[^']+' failed: OUT_OF_RANGE: .*array data file",
                 id="half-length-data-file"),
    pytest.param(_zero_step_metadata, r"file '_CHECKPOINT_METADATA' is empty \(0 bytes: truncated\)",
                 id="zero-length-step-metadata"),
    pytest.param(_garbled_tree_metadata, r"file 'state/_METADATA' is not valid JSON \(corrupted\)",
                 id="truncated-tree-metadata"),
    pytest.param(_del_tree_metadata, r"file 'state/_METADATA' is missing", id="deleted-tree-metadata"),
    pytest.param(_no_commit_marker, r"it has no commit_success.txt, the marker Orbax writes when a step is "
                 r"complete \(a half-written step directory", id="half-written-no-commit-marker"),
    pytest.param(_del_item, r"its item directory 'state/' is missing", id="deleted-item-directory"),
]


@pytest.mark.parametrize("damage,reason", DAMAGE)
def test_damaged_latest_step_is_named_and_skipped(saved, tmp_path, damage, reason):
    d = _copy(saved, tmp_path)
    damage(d)
    before = _snapshot(d)
    with hj.checkpoint.manager(d, async_save=False) as mgr:
        assert mgr.all_steps() == [1, 2, 3]                       # Orbax still lists the damaged step
        with pytest.raises(hj.checkpoint.DamagedCheckpointError,
                           match=r"^hyperjax.checkpoint.restore: checkpoint step 3 in .*ckpt is damaged: "
                                 + reason) as err:
            hj.checkpoint.restore(mgr, ABSTRACT)
        print(f"{damage.__name__}: {err.value}")
        assert isinstance(err.value, ValueError) and err.value.step == 3
        assert "tensorstore_spec" not in str(err.value) and "restore_latest_valid" in str(err.value)
        for read in (hj.checkpoint.load_config, hj.checkpoint.metrics):
            if damage not in (_del_data_file, _del_index_node, _half_data_file):   # found only by reading arrays
                with pytest.raises(hj.checkpoint.DamagedCheckpointError, match=r"step 3 .* is damaged: " + reason):
                    read(mgr)
        got = hj.checkpoint.restore_latest_valid(mgr, ABSTRACT)
        assert got.step == 2 and got.config == {"s": 2}
        assert [s for s, _ in got.skipped] == [3] and got.skipped[0][1] == err.value.reason
        want = _state(2)
        for a, b in zip(jax.tree.leaves(got.state), jax.tree.leaves(want)):
            if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
                a, b = jax.random.key_data(a), jax.random.key_data(b)
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
        back, _ = hj.checkpoint.restore(mgr, ABSTRACT, step=1)    # older steps are untouched
        assert int(back.step) == 1
    assert _snapshot(d) == before                                 # nothing deleted or rewritten


def test_set_aside_moves_damaged_steps_and_the_run_saves_them_again(saved, tmp_path):
    d = _copy(saved, tmp_path)
    _zero_data_file(d)
    before = _snapshot(d)
    with hj.checkpoint.manager(d, async_save=False) as mgr:
        with pytest.raises(ValueError, match=r"^hyperjax.checkpoint.save: step 2 is before the latest step on disk "
                                             r"\(3\) in .*; Orbax saves only steps after the latest one, so this "
                                             r"save would be skipped silently.* \[3\] .*set_aside=True"):
            hj.checkpoint.save(mgr, 2, _state(2))
        got = hj.checkpoint.restore_latest_valid(mgr, ABSTRACT, set_aside=True)
        assert got.step == 2 and [s for s, _ in got.skipped] == [3]
        assert mgr.all_steps() == [1, 2] and sorted(os.listdir(d)) == ["1", "2", "3.damaged"]
        assert hj.checkpoint.save(mgr, 3, _state(7))             # the step number is free again
        back, _ = hj.checkpoint.restore(mgr, ABSTRACT)
        assert int(back.step) == 7
    after = _snapshot(d)
    moved = {k.replace("3.damaged/", "3/", 1): v for k, v in after.items() if k.startswith("3.damaged/")}
    assert moved == {k: v for k, v in before.items() if k.startswith("3/")}        # moved, byte for byte
    assert {k: v for k, v in after.items() if k.startswith(("1/", "2/"))} == \
           {k: v for k, v in before.items() if k.startswith(("1/", "2/"))}


def test_every_step_damaged_lists_each(saved, tmp_path):
    d = _copy(saved, tmp_path)
    for s in ("1", "2", "3"):
        (d / s / "commit_success.txt").unlink()
    (d / "2" / "_CHECKPOINT_METADATA").write_bytes(b"")
    with hj.checkpoint.manager(d, async_save=False) as mgr:
        with pytest.raises(hj.checkpoint.DamagedCheckpointError,
                           match=r"^hyperjax.checkpoint.restore_latest_valid: every checkpoint step in .* is "
                                 r"damaged \(step 3: it has no commit_success.txt.*; step 2: .*; step 1: .*\)\. "
                                 r"They were left on disk"):
            hj.checkpoint.restore_latest_valid(mgr, ABSTRACT)
    with hj.checkpoint.manager(tmp_path / "empty", async_save=False) as mgr:
        with pytest.raises(FileNotFoundError, match=r"restore_latest_valid: no completed checkpoint in"):
            hj.checkpoint.restore_latest_valid(mgr, ABSTRACT)
    with pytest.raises(TypeError, match=r"`mgr` must come from hyperjax.checkpoint.manager"):
        hj.checkpoint.restore_latest_valid(str(d), ABSTRACT)


def test_a_mismatched_abstract_state_is_not_skipped_as_damage(saved, tmp_path):
    """An older step would hide a config bug: a structure mismatch is raised, never skipped over."""
    d = _copy(saved, tmp_path)
    wrong = {**jax.tree.map(lambda x: x, ABSTRACT._asdict()), "step": jax.ShapeDtypeStruct((2,), jnp.int32)}
    wrong = type(ABSTRACT)(**wrong)
    with hj.checkpoint.manager(d, async_save=False) as mgr:
        with pytest.raises(ValueError, match=r"restore_latest_valid: the checkpoint does not match the abstract "
                                             r"state: leaf 'step' is \(\) int32 in the checkpoint step 3") as err:
            hj.checkpoint.restore_latest_valid(mgr, wrong)
        assert not isinstance(err.value, hj.checkpoint.DamagedCheckpointError)
