"""Case 3 of benchmarks.run_all: per-sample weights, and factorised modulation against materialising.

64 conds -> 64 weight sets of MLP 64-100-10, each on its own example, forward only: hj.per_sample against a
hand-written jit(vmap), a loop of 64 jitted calls and, with torch, torch.func.vmap and a hand-batched bmm.
Beside it, benchmarks.modulation's factorised path against materialising at batch 256.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import hyperjax as hj
from benchmarks import _common, _hparams
from benchmarks._problem import DENSE_DIMS, EMB, HIDDEN, MODULATION_BATCH, PER_SAMPLE_N, Context, mlp_spec
from benchmarks._report import TIME_COLUMNS, add_ratios, find, goal, section
from benchmarks._steps import mlp_forward, split_by_paths
from benchmarks._timing import measure

LIB_PER_SAMPLE = "hyperjax per_sample (jit)"
TITLE = (f"3. Per-sample weights ({PER_SAMPLE_N} conds -> {PER_SAMPLE_N} weight sets of MLP 64-100-10, "
         "each on its own example, forward only)")


def forward_entry(name: str, fn: Callable[[Any], Any], inputs: Sequence[Any]) -> dict[str, Any]:
    count = [0]

    def run():
        count[0] += 1
        jax.block_until_ready(fn(inputs[count[0] % len(inputs)]))
    return {"name": name, "framework": "jax", "run": run, "final": dict}


def jax_side(spec: hj.TargetSpec, gen: hj.HyperNetwork, hparams: Any, conds: jax.Array, xs: Sequence[jax.Array]
             ) -> tuple[list[dict], dict[str, float]]:
    """(entries, max |difference| of each to a loop over examples) for hyperjax and the hand-written paths."""
    def single(p, c, x):  # hand-written: one weight set, one example f[64] -> f[10]
        l0, l1 = _hparams.mlp(p)
        h = jax.nn.relu(c @ l0["w"] + l0["b"])
        return mlp_forward(split_by_paths(spec, h @ l1["w"] + l1["b"]), x, 2)

    lib = jax.jit(hj.per_sample(gen, spec))
    lib_flat = jax.jit(hj.per_sample(gen, spec, example_has_batch_axis=False))
    vm = jax.jit(jax.vmap(single, in_axes=(None, 0, 0)))
    one = jax.jit(single)
    c_list = [conds[i] for i in range(PER_SAMPLE_N)]
    x_lists = [[x[i] for i in range(PER_SAMPLE_N)] for x in xs]
    x0 = xs[0]
    ref_out = jnp.stack([one(hparams, c_list[i], x0[i]) for i in range(PER_SAMPLE_N)])
    diffs = {"hyperjax_vs_loop": float(jnp.max(jnp.abs(lib(hparams, conds, x0) - ref_out))),
             "hyperjax_flat_vs_loop": float(jnp.max(jnp.abs(lib_flat(hparams, conds, x0) - ref_out))),
             "vmap_vs_loop": float(jnp.max(jnp.abs(vm(hparams, conds, x0) - ref_out)))}
    entries = [
        forward_entry(LIB_PER_SAMPLE, lambda x: lib(hparams, conds, x), xs),
        forward_entry("hyperjax per_sample, example_has_batch_axis=False (jit)", lambda x: lib_flat(hparams, conds, x), xs),
        forward_entry("JAX jit(vmap) hand-written", lambda x: vm(hparams, conds, x), xs),
        forward_entry("JAX loop of 64 jitted calls",
                      lambda xl: [one(hparams, c_list[i], xl[i]) for i in range(PER_SAMPLE_N)], x_lists)]
    return entries, diffs


def run(ctx: Context) -> dict[str, Any]:
    spec = mlp_spec(DENSE_DIMS)
    gen = hj.generators.dense(spec, cond_dim=EMB, hidden=HIDDEN)
    hparams = gen.init(ctx.key)
    conds_np = np.asarray(jax.random.normal(jax.random.key(1), (PER_SAMPLE_N, EMB), jnp.float32))
    entries, diffs = jax_side(spec, gen, hparams, jnp.asarray(conds_np), [jnp.asarray(x) for x, _ in ctx.np_small])
    notes: list[str] = []
    if ctx.torch is not None:
        torch_entries, torch_checks = ctx.torch.case_per_sample(ctx.torch_runner(ctx.np_small), DENSE_DIMS, EMB,
                                                                HIDDEN, conds_np)
        entries += torch_entries
        diffs.update(torch_checks)
    rows = measure(entries, *ctx.cfg["per_sample"], rounds=ctx.cfg["rounds"])
    if ctx.torch is not None:
        ref, ref_label = find(rows, "torch hand-batched bmm"), "torch hand-batched bmm"
    else:
        notes.append(ctx.torch_note)
        ref, ref_label = find(rows, "JAX jit(vmap) hand-written"), "JAX jit(vmap) hand-written (torch missing)"
    add_ratios(rows, ref, ref_label)
    notes.append("Forward only (torch under inference_mode). Max |difference| to a loop over examples: "
                 + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()) + ".")
    goals = [goal("hyperjax per_sample / torch hand-batched bmm",
                  find(rows, LIB_PER_SAMPLE)["ratio"] if ctx.torch is not None else None, "<=", 0.8,
                  "" if ctx.torch is not None else ctx.torch_note)]
    modulation = modulation_case(ctx)
    goals.append(goal(f"modulation: materialising / factorised at batch {MODULATION_BATCH}", modulation.get("speedup"),
                      ">=", 5.0, modulation.get("generator", "") if modulation.get("speedup") is not None
                      else modulation["note"]))
    return section(TITLE, rows, TIME_COLUMNS + [("ratio", f"ratio vs {ref_label}")], goals, notes, checks=diffs,
                   modulation=modulation)


def modulation_case(ctx: Context) -> dict[str, Any]:
    """Factorised modulation vs materialising per-example weights at batch 256 (structured-generators issue).

    Timed in this run through `benchmarks.modulation.compare(batch=, warmup=, repeats=) -> {"speedup", ...}`
    when that module provides it; otherwise the figures of its own last run (results/modulation.json) are
    quoted and marked as such; otherwise "not available".
    """
    candidates = [n for n in ("low_rank", "scale", "modulation") if hasattr(hj.generators, n)]
    if not candidates:
        return {"available": False, "note": "not available: hyperjax.generators has no low_rank / scale modulation "
                                            "generator in this checkout (structured-generators issue)"}
    try:
        from benchmarks import modulation as mod_bench
    except ImportError:
        mod_bench = None
    compare = getattr(mod_bench, "compare", None)
    if compare is not None:
        try:
            warmup, repeats = ctx.cfg["per_sample"]
            return {"available": True, "generator": candidates[0], "source": "this run",
                    **compare(batch=MODULATION_BATCH, warmup=warmup, repeats=repeats)}
        except Exception as e:  # noqa: BLE001 - another module's API; report, never crash the run
            return {"available": False, "generator": candidates[0], "note": f"modulation.compare failed: {e!r}"[:300]}
    return quoted_modulation(candidates[0])


def quoted_modulation(generator: str) -> dict[str, Any]:
    """The speedup of benchmarks/modulation.py's own last run, marked as quoted; or why there is none."""
    saved = os.path.join(_common.RESULTS_DIR, "modulation.json")
    if os.path.exists(saved):
        with open(saved) as f:
            data = json.load(f)
        speedup = next((v for k, v in _common.walk_numbers(data) if "speedup" in k.lower()), None)
        return {"available": True, "generator": generator, "source": "benchmarks/results/modulation.json "
                "(its own run, not this one)", "speedup": speedup,
                "note": "quoted from benchmarks/results/modulation.json (not measured in this run)"}
    return {"available": False, "generator": generator,
            "note": f"hyperjax.generators.{generator} exists but benchmarks/modulation.py has no "
                    "compare(batch, warmup, repeats) and no results/modulation.json was found"}
