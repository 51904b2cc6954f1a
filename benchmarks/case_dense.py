"""Case 1 of benchmarks.run_all: the dense hypernetwork training step.

Task embedding f32[8] -> 100 -> all 7,510 params of an MLP 64-100-10, batch 128, Adam; hyperjax's make_step
against the hand-written step (with and without donation) and, with torch, hypnettorch's HMLP.
"""

from __future__ import annotations

from typing import Any

import jax

import hyperjax as hj
from benchmarks import _hparams
from benchmarks._problem import DENSE_DIMS, EMB, HIDDEN, Context, mlp_spec, target_params
from benchmarks._report import TIME_COLUMNS, add_ratios, find, goal, section
from benchmarks._steps import HAND, first_loss_note, jax_entries, lib_name, step_goals
from benchmarks._timing import measure

TITLE = "1. Dense hypernetwork training step (emb 8 -> 100 -> 7,510 params of MLP 64-100-10, batch 128, Adam)"


def gen_flat(p: Any) -> jax.Array:
    """The same computation as hj.generators.dense(num_conds=1) for id 0, by hand: f[7510]."""
    (l0, l1), emb = _hparams.mlp(p), _hparams.cond_emb(p)
    h = jax.nn.relu(emb[0] @ l0["w"] + l0["b"])
    return h @ l1["w"] + l1["b"]


def run(ctx: Context) -> dict[str, Any]:
    spec = mlp_spec(DENSE_DIMS)
    gen = hj.generators.dense(spec, cond_dim=EMB, hidden=HIDDEN, num_conds=1)
    entries, notes = jax_entries(ctx, "dense", gen, spec, gen_flat, 2, with_no_donation=True), []
    if ctx.torch is not None:
        entries += ctx.torch.case_dense(ctx.torch_runner(ctx.np_batches), DENSE_DIMS, EMB, HIDDEN, ctx.cfg["adam"])
    else:
        notes.append(ctx.torch_note)
    rows = measure(entries, *ctx.cfg["fast"], rounds=ctx.cfg["rounds"])
    notes.insert(0, first_loss_note(rows))
    add_ratios(rows, find(rows, HAND), "hand-written JAX (donate)")
    lib = find(rows, lib_name("dense"))
    hyp = [r for r in rows if r["name"].startswith("hypnettorch")]
    fastest = min(hyp, key=lambda r: r["median_ms"]) if hyp else None
    goals = step_goals(rows, "dense") + [
        goal("hypnettorch (fastest Adam) / hyperjax", fastest["median_ms"] / lib["median_ms"] if fastest else None,
             ">=", 3.0, f"fastest: {fastest['name']}" if fastest else ctx.torch_note)]
    return section(TITLE, rows, TIME_COLUMNS + [("ratio", "ratio vs hand-written JAX")], goals, notes,
                   target_params=target_params(DENSE_DIMS))
