"""Case 1 of benchmarks.run_all: the dense hypernetwork training step.

Task embedding f32[8] -> 100 -> all 7,510 params of an MLP 64-100-10, batch 128, Adam; hyperjax's make_step
against the hand-written step (with and without donation), make_step(steps_per_call=k) against the
hand-written lax.scan over k steps (per step), and, with torch, hypnettorch's HMLP and plain PyTorch.
"""

from __future__ import annotations

from typing import Any

import jax

import hyperjax as hj
from benchmarks import _hparams
from benchmarks._problem import DENSE_DIMS, EMB, HIDDEN, Context, mlp_spec, target_params
from benchmarks._report import TIME_COLUMNS, add_ratios, find, goal, section
from benchmarks._steps import (HAND, first_loss_note, jax_entries, lib_name, multi_hand_name, multi_lib_name,
                               multi_step_entries, step_goals)
from benchmarks._timing import measure

TITLE = "1. Dense hypernetwork training step (emb 8 -> 100 -> 7,510 params of MLP 64-100-10, batch 128, Adam)"
# steps per call of the make_step(steps_per_call=k) rows (k = 1 is the ordinary step); small in --quick
STEPS_PER_CALL = {"full": (10, 100), "quick": (2, 4)}
PLAIN_FUSED = "plain PyTorch, Adam(fused=True)"
COLUMNS = (TIME_COLUMNS[:1] + [("steps_per_call", "steps per call"), ("median_ms", "median ms per step"),
                               ("min_ms", "min ms per step"), ("repeats", "repeats (calls)")]
           + [("ratio", "ratio vs hand-written JAX (k = 1)")])


def gen_flat(p: Any) -> jax.Array:
    """The same computation as hj.generators.dense(num_conds=1) for id 0, by hand: f[7510]."""
    (l0, l1), emb = _hparams.mlp(p), _hparams.cond_emb(p)
    h = jax.nn.relu(emb[0] @ l0["w"] + l0["b"])
    return h @ l1["w"] + l1["b"]


def run(ctx: Context) -> dict[str, Any]:
    spec = mlp_spec(DENSE_DIMS)
    gen = hj.generators.dense(spec, cond_dim=EMB, hidden=HIDDEN, num_conds=1)
    ks = STEPS_PER_CALL["quick" if ctx.quick else "full"]
    entries = jax_entries(ctx, "dense", gen, spec, gen_flat, 2, with_no_donation=True)
    entries += multi_step_entries(ctx, "dense", gen, spec, gen_flat, 2, ks)
    notes = []
    if ctx.torch is not None:
        entries += ctx.torch.case_dense(ctx.torch_runner(ctx.np_batches), DENSE_DIMS, EMB, HIDDEN, ctx.cfg["adam"])
    else:
        notes.append(ctx.torch_note)
    rows = measure(entries, *ctx.cfg["fast"], rounds=ctx.cfg["rounds"])
    for r in rows:
        r.setdefault("steps_per_call", 1)   # every PyTorch row is one step per call
    notes.insert(0, first_loss_note(rows))
    add_ratios(rows, find(rows, HAND), "hand-written JAX (donate)")
    lib = find(rows, lib_name("dense"))
    hyp = [r for r in rows if r["name"].startswith("hypnettorch")]
    fastest = min(hyp, key=lambda r: r["median_ms"]) if hyp else None
    summary = steps_per_call_summary(rows, ks, fastest, find(rows, PLAIN_FUSED))
    goals = step_goals(rows, "dense") + [
        goal("hypnettorch (fastest Adam) / hyperjax", fastest["median_ms"] / lib["median_ms"] if fastest else None,
             ">=", 3.0, f"fastest: {fastest['name']}" if fastest else ctx.torch_note)]
    goals += multi_step_goals(rows, ks, summary, ctx.torch_note)
    notes += multi_step_notes(summary, ks, ctx.torch_note)
    return section(TITLE, rows, COLUMNS, goals, notes, target_params=target_params(DENSE_DIMS),
                   steps_per_call=summary)


def steps_per_call_summary(rows: list[dict], ks: tuple[int, ...], fastest: dict | None,
                           plain: dict | None) -> dict[str, Any]:
    """Per-step medians of hyperjax and the hand-written step at k = 1 and each k, hyperjax's best k, and the
    speedups per step at that k over hypnettorch (fastest Adam) and plain PyTorch (fused Adam)."""
    lib = {1: find(rows, lib_name("dense")), **{k: find(rows, multi_lib_name("dense", k)) for k in ks}}
    hand = {1: find(rows, HAND), **{k: find(rows, multi_hand_name(k)) for k in ks}}
    best = min(lib, key=lambda k: lib[k]["median_ms"])
    best_ms = lib[best]["median_ms"]
    return {"ks": [1, *ks],
            "hyperjax_ms_per_step": {str(k): r["median_ms"] for k, r in lib.items()},
            "hand_written_ms_per_step": {str(k): r["median_ms"] for k, r in hand.items()},
            "hyperjax_over_hand_written": {str(k): lib[k]["median_ms"] / hand[k]["median_ms"] for k in lib},
            "best_k": best, "best_ms_per_step": best_ms,
            "speedup_vs_k1": lib[1]["median_ms"] / best_ms,
            "hypnettorch_fastest": fastest["name"] if fastest else None,
            "speedup_vs_hypnettorch_fastest": fastest["median_ms"] / best_ms if fastest else None,
            "speedup_vs_plain_pytorch_fused": plain["median_ms"] / best_ms if plain else None}


def multi_step_goals(rows: list[dict], ks: tuple[int, ...], summary: dict[str, Any], torch_note: str) -> list[dict]:
    """hyperjax k / hand-written lax.scan k per step (<= 1.05, like k = 1), and the hypnettorch goal at the
    best k."""
    goals = [goal(f"hyperjax make_step k={k} / hand-written JAX lax.scan k={k} (per step)",
                  summary["hyperjax_over_hand_written"][str(k)], "<=", 1.05,
                  "same outputs: state and the k losses; same stacked batches") for k in ks]
    best, fastest = summary["best_k"], summary["hypnettorch_fastest"]
    goals.append(goal("hypnettorch (fastest Adam) / hyperjax at its best k, per step",
                      summary["speedup_vs_hypnettorch_fastest"], ">=", 3.0,
                      f"best k={best}; fastest: {fastest}" if fastest else torch_note))
    return goals


def multi_step_notes(summary: dict[str, Any], ks: tuple[int, ...], torch_note: str) -> list[str]:
    per = summary["hyperjax_ms_per_step"]
    best, ms = summary["best_k"], summary["best_ms_per_step"]
    text = (f"make_step(steps_per_call=k) rows (k = {', '.join(map(str, ks))}): one call runs k updates in one "
            f"compiled lax.scan over k rotating digits batches stacked along a leading axis (the same sequence "
            f"of batches as the single-step rows; donated, warmed up); times are per step (one call / k). "
            f"hyperjax per step: " + ", ".join(f"k={k} {v:.3f} ms" for k, v in per.items())
            + f"; best k={best}: {summary['speedup_vs_k1']:.2f}x faster per step than k = 1.")
    if summary["speedup_vs_hypnettorch_fastest"] is None:
        return [text + f" Speedups over PyTorch: not measured ({torch_note})."]
    text += (f" At k={best}, hyperjax is {summary['speedup_vs_hypnettorch_fastest']:.2f}x faster per step than "
             f"hypnettorch with its fastest Adam ({summary['hypnettorch_fastest']})")
    plain = summary["speedup_vs_plain_pytorch_fused"]
    text += f" and {plain:.2f}x faster than plain PyTorch with Adam(fused=True)." if plain else "."
    return [text]
