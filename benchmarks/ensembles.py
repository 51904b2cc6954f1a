"""Forward time of an M-member ensemble on one batch: factorised BatchEnsemble vs M weight sets vs a loop.

    python -m benchmarks.ensembles            # M = 8, batch 256, two MLPs (well under a minute on 2 CPU cores)
    python -m benchmarks.ensembles --quick    # tiny sizes, for tests

`hj.ensembles.batch_ensemble(spec, members=8)` on a linen MLP (`hj.testing.mlp_spec`); every variant computes the
logits of all M members on the same batch of 256, f[M, B, n_out], from the same hparams (checked equal first):

* factorised:    `members_apply(forward, be.factors(hp), x)`: one shared x @ W0 per layer for all members, with the
                 rank-1 scales applied elementwise; no member weight is built.
* materialised:  `jax.vmap` over member ids of `spec.apply(be.apply(hp, m), x)`: M full weight sets per call.
* stored_stack:  a deep ensemble's M stored weight sets (`deep_ensemble.apply`, one vmap, nothing generated):
                 the cost of running M independent networks, for context.
* python_loop:   M calls of a jitted single-member `spec.apply(be.apply(hp, m), x)`, one dispatch each, stacked.

Each round runs every variant once in rotating order (`benchmarks.modulation.timed_rounds`); medians, warm-up
excluded, `jax.block_until_ready`. Ratios are relative to factorised. Writes benchmarks/results/ensembles.json
and .md with the machine load and provenance.
"""

from __future__ import annotations

import argparse
from typing import Any

import jax
import jax.numpy as jnp

import hyperjax as hj
from benchmarks import _common
from benchmarks.modulation import timed_rounds

NAME = "ensembles"
FULL = {"mlps": {"64-128-128-10": (64, 128, 128, 10), "256-512-512-10": (256, 512, 512, 10)}, "members": 8,
        "batch": 256, "rounds": 20, "warmup": 3, "budget_s": 5.0}
QUICK = {"mlps": {"8-6-3": (8, 6, 3)}, "members": 3, "batch": 4, "rounds": 3, "warmup": 1, "budget_s": 0.0}
VARIANTS = ("factorised", "materialised", "stored_stack", "python_loop")


def forward(p: Any, x: jax.Array) -> jax.Array:
    n = len(p)
    for i in range(n):
        layer = p[f"Dense_{i}"]
        x = hj.generators.modulated_matmul(x, layer["kernel"]) + layer["bias"][None, :]
        x = jax.nn.relu(x) if i < n - 1 else x
    return x


def run_case(widths: tuple[int, ...], cfg: dict) -> dict[str, Any]:
    spec = hj.testing.mlp_spec(widths)
    m = cfg["members"]
    be = hj.ensembles.batch_ensemble(spec, members=m)
    de = hj.ensembles.deep_ensemble(spec, members=m)
    hp = jax.jit(be.init)(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (cfg["batch"], widths[0]), jnp.float32)
    ids = jnp.arange(m, dtype=jnp.int32)
    stored = jax.jit(jax.vmap(lambda i: be.apply(hp, i)))(ids)       # M weight sets, made once
    factorised = jax.jit(lambda hp, x: hj.ensembles.members_apply(forward, be.factors(hp), x))
    materialised = jax.jit(lambda hp, x: jax.vmap(lambda i: spec.apply(be.apply(hp, i), x))(ids))
    stored_stack = jax.jit(de.apply)
    one = jax.jit(lambda hp, i, x: spec.apply(be.apply(hp, i), x))

    def loop(hp, x):
        return jnp.stack([one(hp, jnp.int32(i), x) for i in range(m)])

    compile_s = {}
    for name, f, args in (("factorised", factorised, (hp, x)), ("materialised", materialised, (hp, x)),
                          ("stored_stack", stored_stack, (stored, x)), ("python_loop", one, (hp, ids[0], x))):
        _, compile_s[name] = _common.compile_time(f, *args)
    outs = {"factorised": factorised(hp, x), "materialised": materialised(hp, x),
            "stored_stack": stored_stack(stored, x), "python_loop": loop(hp, x)}
    scale = max(1.0, float(jnp.max(jnp.abs(outs["materialised"]))))
    diffs = {k: float(jnp.max(jnp.abs(v - outs["materialised"]))) for k, v in outs.items()}
    if max(diffs.values()) > 1e-4 * scale:
        raise AssertionError(f"{widths}: the variants disagree: {diffs}")
    fns = {"factorised": lambda: jax.block_until_ready(factorised(hp, x)),
           "materialised": lambda: jax.block_until_ready(materialised(hp, x)),
           "stored_stack": lambda: jax.block_until_ready(stored_stack(stored, x)),
           "python_loop": lambda: jax.block_until_ready(loop(hp, x))}
    ms, rounds = timed_rounds(fns, cfg["rounds"], cfg["warmup"], cfg["budget_s"])
    kernels = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    return {"widths": list(widths), "members": m, "batch": cfg["batch"], "forward_ms": ms, "rounds": rounds,
            "ratio_to_factorised": {k: v / ms["factorised"] for k, v in ms.items()},
            "compile_s": compile_s, "max_abs_diff_to_materialised": diffs,
            "hparams": hj.training.count_params(hp), "deep_ensemble_params": hj.training.count_params(stored),
            "materialised_kernel_floats_per_call": m * kernels}


def main(argv=None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ensembles", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (for tests)")
    p.add_argument("--results-dir", default=_common.RESULTS_DIR)
    p.add_argument("--label", default=None, help="free-form label stored with the provenance")
    args = p.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    load_before = _common.load_average()
    cases = {name: run_case(w, cfg) for name, w in cfg["mlps"].items()}
    payload = {"quick": args.quick, "config": {k: v for k, v in cfg.items() if k != "mlps"},
               "load_average_before": load_before, "load_average_after": _common.load_average(),
               "provenance": _common.provenance(args.label), "cases": cases}
    path = _common.write_json(NAME, payload, args.results_dir)
    rows = [[name, c["members"], c["batch"], *(c["forward_ms"][v] for v in VARIANTS),
             *(c["ratio_to_factorised"][v] for v in VARIANTS[1:])] for name, c in cases.items()]
    _common.write_markdown(NAME, ["case", "M", "batch", *(f"{v} ms" for v in VARIANTS),
                                  *(f"{v} / factorised" for v in VARIANTS[1:])], rows, args.results_dir,
                           title="Ensemble forward: factorised BatchEnsemble vs M weight sets vs a loop")
    _common.print_rows(rows)
    print(f"wrote {path} (load {load_before} -> {payload['load_average_after']})")
    return payload


if __name__ == "__main__":
    main()
