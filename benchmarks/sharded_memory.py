"""Per-device memory of one training step of a chunked hypernetwork generating a 10^7-parameter target, on
8 simulated CPU devices as meshes 1x1, 1x8, 2x4 and 8x1 (data x model).

Target: linen MLP 64 -> 3136 -> 3136 -> 10 (10,072,842 params). Generator: `chunked` (chunk embeddings 8,
hidden 64, 2,464 chunks of 4,089 so the chunk axis divides by 8), Adam, batch 128 split over "data".
Model parallelism: `model_parallel_rules()` shards the chunk embeddings over "model", the generated leaves
are constrained with `largest_axis_rules(spec, mesh)` and the step is traced under `jax.set_mesh(mesh)`.
Peak per device = argument + output + temp - alias bytes from XLA's `compiled.memory_analysis()` of the
SPMD-partitioned (per-device) program; step_ms is the median of timed steps (8 simulated devices share
the host's cores, so times are not a speed-up measurement). Run: `python -m benchmarks.sharded_memory`
(re-executes itself with XLA_FLAGS=--xla_force_host_platform_device_count=8 when JAX has fewer devices).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

FLAG = "--xla_force_host_platform_device_count=8"
MESHES = ((1, 1), (1, 8), (2, 4), (8, 1))


def measure(width: int, batch: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    import hyperjax as hj
    import hyperjax.sharding as hjs
    from benchmarks import _common

    spec = hj.testing.mlp_spec((64, width, width, 10))
    n_chunks = 8 * -(-spec.size // (8 * 4096))
    chunk = -(-spec.size // n_chunks)
    hnet = hj.generators.chunked(spec, chunk_size=chunk, cond_dim=8, chunk_emb_dim=8, hidden=64, num_conds=1)
    hp = jax.jit(hnet.init)(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (batch, 64))
    y = jnp.arange(batch, dtype=jnp.int32) % 10
    opt = optax.adam(1e-3)
    rows = []
    for d, m in MESHES:
        mesh = hjs.make_mesh(d, m)
        gen_rules = hjs.largest_axis_rules(spec, mesh)

        def loss_fn(p, b, rng):
            params = hnet.apply(p, jnp.int32(0))
            if m > 1:
                params = hjs.constrain(params, gen_rules)
            logits = spec.apply(params, b[0])
            return optax.softmax_cross_entropy_with_integer_labels(logits, b[1]).mean()

        state = hjs.place(hj.training.init_state(hp, opt, jax.random.key(2)), mesh, hjs.model_parallel_rules(),
                          unmatched="ignore")
        b = jax.device_put((x, y), hjs.batch_sharding(mesh))
        step = hj.training.make_step(loss_fn, opt, donate=False, grad_norm=False)
        with jax.set_mesh(mesh):
            compiled, compile_s = _common.compile_time(step, state, b)
            ma = compiled.memory_analysis()
            peak = (ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
                    - ma.alias_size_in_bytes)
            t = _common.timeit(lambda: jax.block_until_ready(compiled(state, b)), warmup=2, repeats=repeats)
        rows.append({"mesh": f"{d}x{m}", "peak_bytes_per_device": int(peak), "step_ms": t["median_ms"],
                     "argument_bytes": int(ma.argument_size_in_bytes), "output_bytes": int(ma.output_size_in_bytes),
                     "temp_bytes": int(ma.temp_size_in_bytes), "alias_bytes": int(ma.alias_size_in_bytes),
                     "compile_s": compile_s, "sharded_rules": [r[0] for r in gen_rules] if m > 1 else []})
        print(f"{d}x{m}: peak {peak / 2**20:7.1f} MB/device, step {t['median_ms']:8.1f} ms", flush=True)
    base = rows[0]["peak_bytes_per_device"]
    ratio = {r["mesh"]: r["peak_bytes_per_device"] / base for r in rows}
    return {"target_params": spec.size, "chunk_size": chunk, "n_chunks": n_chunks, "batch": batch,
            "generator_params": hj.training.count_params(hp), "meshes": rows, "peak_ratio_to_1x1": ratio,
            "goal": "1x8 per-device peak <= 0.25 of 1x1", "goal_met": bool(ratio["1x8"] <= 0.25)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sharded_memory", description=__doc__.split("\n")[0])
    p.add_argument("--width", type=int, default=3136, help="hidden width w of the MLP 64-w-w-10")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out-dir", default=None)
    args = p.parse_args(argv)
    if FLAG not in os.environ.get("XLA_FLAGS", ""):
        env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + FLAG).strip(), JAX_PLATFORMS="cpu")
        cmd = [sys.executable, "-m", "benchmarks.sharded_memory", *(argv if argv is not None else sys.argv[1:])]
        raise SystemExit(subprocess.run(cmd, env=env).returncode)
    from benchmarks import _common

    result = measure(args.width, args.batch, args.repeats)
    payload = {**result, "load_average": _common.load_average(), "provenance": _common.provenance(None),
               "command": "python -m benchmarks.sharded_memory " + " ".join(sys.argv[1:])}
    kw = {"results_dir": args.out_dir} if args.out_dir else {}
    print("wrote", _common.write_json("sharded_memory", payload, **kw),
          f"1x8 / 1x1 = {result['peak_ratio_to_1x1']['1x8']:.3f} (goal <= 0.25: "
          f"{'met' if result['goal_met'] else 'MISSED'})")


if __name__ == "__main__":
    main()
