"""Two JAX processes on localhost (`hj.sharding.initialize`: jax.distributed with gloo CPU collectives, 4
simulated CPU devices each, 8 global) train the quickstart model data-parallel on one global 8-device
mesh, each feeding its half of every batch (`global_batch`); after the steps the params equal the
single-process 8-device run to float32 tolerance. Both processes save one Orbax checkpoint together
(`hj.checkpoint.save`, each writing its shards); a single process restores it bitwise. The processes get a
free port from the OS, run under a timeout and are both killed on failure."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

# slow profile (HYPERJAX_SLOW=1): three fresh JAX processes. The default profile's data-parallel check is
# tests/test_quickstart.py::test_devices_runs_data_parallel_and_matches_one_device (one process, 2 devices) and
# its cross-mesh restore is tests/test_mesh_restore.py.
pytestmark = pytest.mark.slow

STEPS = 4
COMMON = textwrap.dedent("""
    import json, os, sys
    import jax, jax.numpy as jnp, numpy as np, optax
    import hyperjax as hj, hyperjax.sharding as hjs
    if len(sys.argv) > 2:                          # a worker: join the job before anything touches a device
        pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
        hjs.initialize(f"localhost:{port}", 2, pid, local_device_count=4, initialization_timeout=60)
    STEPS = %d
    spec = hj.targets.from_linen(hj.testing.MLP(features=(256, 256, 10)), jnp.zeros((1, 64)))
    hnet = hj.generators.chunked(spec, chunk_size=512, chunk_emb_dim=16, hidden=64, cond_dim=8, num_conds=1)
    opt = optax.adamw(3e-3, weight_decay=1e-4)
    def loss_fn(hp, batch, rng):
        x, y = batch
        logits = spec.apply(hnet.apply(hp, jnp.int32(0)), x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    rng = np.random.default_rng(0)
    xs = np.repeat(rng.normal(size=(1, 64, 64)).astype(np.float32), STEPS, 0)     # one batch: the loss falls
    ys = np.repeat(rng.integers(0, 10, size=(1, 64)).astype(np.int32), STEPS, 0)
    def train(mesh, rows):
        state = hjs.place(jax.jit(lambda: hj.training.init_state(hnet.init(jax.random.key(0)), opt,
                                                                  jax.random.key(1)))(), mesh)
        step = hj.training.make_step(loss_fn, opt)
        losses = []
        for i in range(STEPS):
            state, m = step(state, hjs.global_batch((xs[i][rows], ys[i][rows]), mesh))
            losses.append(float(m["loss"]))
        return state, losses
""" % STEPS)

WORKER = COMMON + textwrap.dedent("""
    assert jax.device_count() == 8 and jax.local_device_count() == 4 and jax.process_count() == 2
    mesh = hjs.make_mesh(8, 1)
    state, losses = train(mesh, slice(32 * pid, 32 * (pid + 1)))     # this process's half of each batch
    with hj.checkpoint.manager(os.path.join(out, "ckpt"), async_save=False) as mgr:
        hj.checkpoint.save(mgr, STEPS, state, config={"processes": 2})
    from jax.experimental import multihost_utils
    params = multihost_utils.process_allgather(state.params, tiled=True)
    if pid == 0:
        np.savez(os.path.join(out, "params.npz"), **{p: np.asarray(v) for p, v in hj.testing.leaves_with_paths(params)})
        json.dump({"losses": losses}, open(os.path.join(out, "multi.json"), "w"))
    print("WORKER_OK", pid, flush=True)
""")

SINGLE = COMMON + textwrap.dedent("""
    out = sys.argv[1]
    assert jax.device_count() == 8 and jax.process_count() == 1
    state, losses = train(hjs.make_mesh(8, 1), slice(None))
    multi = np.load(os.path.join(out, "params.npz"))
    mine = dict(hj.testing.leaves_with_paths(state.params))
    diff = max(float(np.max(np.abs(np.asarray(mine[p]) - multi[p]))) for p in mine)
    assert sorted(mine) == sorted(multi.files)
    with hj.checkpoint.manager(os.path.join(out, "ckpt")) as mgr:
        restored, config = hj.checkpoint.restore(mgr, jax.eval_shape(lambda: state))
    bitwise = all(np.asarray(v).tobytes() == multi[p].tobytes()
                  for p, v in hj.testing.leaves_with_paths(restored.params))
    print("RESULT " + json.dumps({"losses": losses, "max_diff": diff, "restored_bitwise": bitwise,
                                  "restored_step": int(restored.step), "config": config}))
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_two_processes(out: str, timeout: float = 240) -> list[str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(i), port, out], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:                  # on a timeout or any failure neither process outlives the test
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (so, se) in zip(procs, outs):
        assert p.returncode == 0, se[-4000:]
    return [so for so, _ in outs]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("multiprocess"))
    stdouts = run_two_processes(out)
    assert all(f"WORKER_OK {i}" in s for i, s in enumerate(stdouts))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SINGLE, out], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    single = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))[len("RESULT "):])
    multi = json.load(open(os.path.join(out, "multi.json")))
    return single, multi, out


def test_two_processes_equal_one_process_on_8_devices(result):
    single, multi, _ = result
    print(f"max |params(2 processes) - params(1 process)| = {single['max_diff']:.3g}")
    assert single["max_diff"] < 1e-5
    np.testing.assert_allclose(multi["losses"], single["losses"], rtol=1e-5)
    assert single["losses"][-1] < single["losses"][0]


def test_multiprocess_checkpoint_restores_in_one_process(result):
    single, _, out = result
    assert single["restored_bitwise"] and single["restored_step"] == STEPS
    assert single["config"] == {"processes": 2}
    # each process wrote its own OCDBT shard files of the one step
    state_dir = os.path.join(out, "ckpt", str(STEPS), "state")
    assert sorted(d for d in os.listdir(state_dir) if d.startswith("ocdbt.process_")) == \
        ["ocdbt.process_0", "ocdbt.process_1"]
