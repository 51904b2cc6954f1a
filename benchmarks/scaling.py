"""Case 4 of benchmarks.run_all: step time and XLA memory as the target grows, dense vs chunked generator.

Targets are linen MLPs 64 -> w -> w -> 10 with w chosen so the parameter count is close to 1e4 ... 1e7.
For each size the hyperjax training step (make_step, Adam, donation) is compiled apart, its
`compiled.memory_analysis()` recorded (argument, output, temp, alias bytes; peak ~ argument + output + temp
- alias), then timed on rotating digits batches. The dense generator's output layer has 101 x N params, so
it is capped (see DENSE_CAP). Also runnable alone: `python -m benchmarks.scaling [--quick]`.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp

import hyperjax as hj
from benchmarks import _common
from benchmarks._problem import BATCH, CHUNK, EMB, HIDDEN, mlp_spec
from benchmarks._report import render, section
from benchmarks._steps import hyperjax_step
from benchmarks._timing import jax_step_entry, measure

FULL_SIZES = (10_000, 30_000, 100_000, 300_000, 1_000_000, 3_000_000, 10_000_000)
QUICK_SIZES = (10_000, 100_000)
DENSE_CAP = 150_000_000  # generator output-layer params above which dense is skipped (600 MB f32, ~4x with Adam)


def width_for(n_params: int, d_in: int = 64, d_out: int = 10) -> int:
    """w with 64*w + w + w*w + w + 10*w + 10 = w^2 + (d_in + d_out + 2) w + d_out closest to n_params."""
    b = d_in + d_out + 2
    return max(1, round((-b + math.sqrt(b * b + 4 * (n_params - d_out))) / 2))


def memory(compiled: Any) -> dict[str, float | None]:
    """MB from XLA's memory analysis of the compiled program (None where the backend has none)."""
    return {f"{k}_mb": v for k, v in _common.memory_analysis(compiled, 2 ** 20).items()}


def run(quick: bool, reps: tuple[int, int], batches: Sequence[Any], key: jax.Array, out_dir: str,
        suffix: str | None = None, sizes: Sequence[int] | None = None) -> dict[str, Any]:
    """Measure every (generator, size) point; write scaling_time{suffix}.png and scaling_memory{suffix}.png."""
    sizes = tuple(sizes or (QUICK_SIZES if quick else FULL_SIZES))
    suffix = ("_quick" if quick else "") if suffix is None else suffix
    warmup, repeats = reps
    rows, notes, skipped = [], [], []
    for n in sizes:
        w = width_for(n)
        spec = mlp_spec((64, w, w, 10))
        for kind in ("dense", "chunked"):
            if kind == "dense" and (HIDDEN + 1) * spec.size > DENSE_CAP:
                gb = (HIDDEN + 1) * spec.size * 4 / 1e9
                skipped.append({"generator": kind, "target_params": spec.size,
                                "reason": f"output layer would have {(HIDDEN + 1) * spec.size:.3g} params "
                                          f"({gb:.1f} GB float32, about {4 * gb:.0f} GB with gradient and Adam "
                                          f"moments) > cap {DENSE_CAP:.2g}"})
                continue
            if kind == "dense":
                gen = hj.generators.dense(spec, cond_dim=EMB, hidden=HIDDEN, num_conds=1)
            else:
                gen = hj.generators.chunked(spec, cond_dim=EMB, chunk_size=CHUNK, chunk_emb_dim=EMB, hidden=HIDDEN,
                                            num_conds=1)
            step, state = hyperjax_step(gen, spec, key)
            entry = jax_step_entry(f"{kind} N={spec.size:,}", step, state, batches, generator=kind,
                                   target_params=spec.size, width=w,
                                   trainable_params=hj.training.count_params(state.params))
            mem = memory(entry["compiled"])
            del state
            rows.append({**measure([entry], warmup, repeats, rounds=1)[0], **mem})
            del entry
            print(f"   {kind:8s} N={spec.size:>10,} {rows[-1]['median_ms']:9.2f} ms  "
                  f"peak~{mem['peak_mb'] or float('nan'):8.1f} MB", flush=True)
    for s in skipped:
        notes.append(f"{s['generator']} at N={s['target_params']:,} skipped: {s['reason']}.")
    notes.append("Memory: XLA memory_analysis() of the compiled step, peak ~ argument + output + temp - alias "
                 "(donated state aliases its output).")
    pngs = plots(rows, out_dir, suffix, skipped)
    columns = [("generator", "generator"), ("target_params", "target params"), ("trainable_params", "hypernet params"),
               ("median_ms", "median ms"), ("compile_s", "compile s"), ("argument_mb", "argument MB"),
               ("output_mb", "output MB"), ("temp_mb", "temp MB"), ("alias_mb", "alias MB"), ("peak_mb", "peak MB")]
    return section("4. Scaling with the target size (MLP 64-w-w-10, batch 128, Adam, make_step(grad_norm=False); no goal, curves only)",
                   rows, columns, [], notes, skipped=skipped, pngs=pngs)


def plots(rows: Sequence[dict], out_dir: str, suffix: str, skipped: Sequence[dict] = ()) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for key, ylabel, name in (("median_ms", "step time (ms, median)", "scaling_time"),
                              ("peak_mb", "XLA peak memory estimate (MB)", "scaling_memory")):
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for kind, marker in (("dense", "o"), ("chunked", "s")):
            pts = [(r["target_params"], r[key]) for r in rows if r["generator"] == kind and r[key] is not None]
            if pts:
                ax.loglog(*zip(*pts), marker=marker, label=f"{kind} generator")
        gone = [s["target_params"] for s in skipped if s["generator"] == "dense"]
        if gone:
            ax.text(0.98, 0.03, f"dense skipped at N >= {min(gone):.0e}:\noutput layer > {DENSE_CAP:.1e} params",
                    transform=ax.transAxes, ha="right", va="bottom", fontsize=8, color="tab:blue")
        ax.set_xlabel("target parameters")
        ax.set_ylabel(ylabel)
        ax.set_title(f"hyperjax training step: {ylabel.split(' (')[0]}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        paths.append(_common.savefig(fig, os.path.join(out_dir, f"{name}{suffix}.png")))
        plt.close(fig)
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out-dir", default=_common.RESULTS_DIR)
    args = p.parse_args(argv)
    batches = [(jnp.asarray(x), jnp.asarray(y)) for x, y in _common.digits_batches(BATCH)]
    result = run(args.quick, (2, 5) if args.quick else (3, 20), batches, jax.random.key(0), args.out_dir)
    _common.write_json("scaling" + ("_quick" if args.quick else ""), {"case": result}, results_dir=args.out_dir)
    print("\n".join(render({"environment": _common.environment(), "torch": {"available": False, "note": ""},
                            "command": "python -m benchmarks.scaling", "config": {"quick": args.quick},
                            "written_at": "", "wall_s": 0.0, "cases": {"4": result}}, "scaling")))


if __name__ == "__main__":
    main()
