"""Soak: 10,000 jitted steps of the dense quickstart model (the linen MLP 64 -> 256 -> 256 -> 10 trained
directly with AdamW on rotating digits batches, `make_step` with donation), a `hj.checkpoint` save every
500 steps (async, the last 3 kept): resident memory (RSS, /proc/self/status VmRSS) is recorded every 500
steps and XLA compilations are counted with `jax.monitoring` (every backend compile emits the "/jax/core/compile/backend_compile_duration" event), from the end of the
first step on (the first save's own programs included).

Keys: rss_mb (list, one entry per 500 steps, after the save of that step), growth_after_1000 (fraction:
(last - RSS at step 1,000) / RSS at step 1,000; goal <= 0.05), compilations_after_first_step (goal 0).
Run: `python -m benchmarks.soak [--steps 10000 --every 500]`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


def run(steps: int, every: int) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    import hyperjax as hj
    from benchmarks import _common

    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, duration, **kw: compiles.append(event) if event == "/jax/core/compile/backend_compile_duration"
        else None)
    spec = hj.testing.mlp_spec((64, 256, 256, 10))
    opt = optax.adamw(1e-3, weight_decay=1e-4)

    def loss_fn(p, batch, rng):
        x, y = batch
        return optax.softmax_cross_entropy_with_integer_labels(spec.apply(p, x), y).mean()

    batches = [(jnp.asarray(x), jnp.asarray(y)) for x, y in _common.digits_batches(128)]
    step = hj.training.make_step(loss_fn, opt)
    state = hj.training.init_state(jax.jit(spec.init)(jax.random.key(0)), opt, jax.random.key(1))
    state, m = step(state, batches[0])
    jax.block_until_ready(state)
    after_first = len(compiles)
    rss, at, losses = [], [], []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d, hj.checkpoint.manager(d, max_to_keep=3) as mgr:
        hj.checkpoint.save(mgr, 1, state, metrics={"loss": float(m["loss"])})
        mgr.wait()
        compiles_after_first_save = len(compiles)
        for i in range(2, steps + 1):
            state, m = step(state, batches[i % len(batches)])
            if i % every == 0:
                loss = float(m["loss"])
                hj.checkpoint.save(mgr, i, state, metrics={"loss": loss})
                mgr.wait()
                rss.append(round(rss_mb(), 2))
                at.append(i)
                losses.append(loss)
                print(f"step {i:6d}  loss {loss:.4f}  rss {rss[-1]:8.1f} MB  compilations {len(compiles)}", flush=True)
        saved = mgr.all_steps()
    wall = time.perf_counter() - t0
    ref = rss[at.index(1000)] if 1000 in at else rss[0]
    return {"steps": steps, "checkpoint_every": every, "rss_mb": rss, "rss_steps": at, "losses": losses,
            "growth_after_1000": (rss[-1] - ref) / ref, "max_growth_after_1000": (max(rss[at.index(1000) if 1000 in at else 0:]) - ref) / ref,
            "compilations_first_step": after_first,
            "compilations_after_first_step": len(compiles) - after_first,       # the first save included
            "compilations_in_first_save": compiles_after_first_save - after_first,
            "compilations_after_first_save": len(compiles) - compiles_after_first_save,
            "checkpoints_kept": saved, "wall_s": wall,
            "goals": {"growth_after_1000 <= 0.05": None, "compilations_after_first_step == 0": None}}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--every", type=int, default=500)
    p.add_argument("--out-dir", default=None)
    args = p.parse_args(argv)
    from benchmarks import _common

    r = run(args.steps, args.every)
    r["goals"] = {"growth_after_1000 <= 0.05": bool(r["growth_after_1000"] <= 0.05),
                  "compilations_after_first_step == 0": r["compilations_after_first_step"] == 0}
    payload = {**r, "load_average": _common.load_average(), "provenance": _common.provenance(None),
               "command": "python -m benchmarks.soak " + " ".join(sys.argv[1:] if argv is None else argv)}
    kw = {"results_dir": args.out_dir} if args.out_dir else {}
    print("wrote", _common.write_json("soak", payload, **kw), f"growth after 1000: {100 * r['growth_after_1000']:+.2f}%, "
          f"compilations after the first step: {r['compilations_after_first_step']}")


if __name__ == "__main__":
    main()
