"""Gradients through params generated for a batch of conds: one cond, a Python loop, and `jax.vmap`.

    python -m benchmarks.batched_grad                  # both targets, every generator (a few minutes, 2 CPUs)
    python -m benchmarks.batched_grad --quick          # tiny sizes, 2 conds, 2 repeats (for tests)
    python -m benchmarks.batched_grad --compilation-cache /tmp/jax_cache

For each target and generator, the gradient (`jax.grad` w.r.t. the hparams) of the mean loss over the
params generated for `--conds` (8) task ids, each task with its own batch:

* one:  loss of task 0 alone;
* loop: mean over tasks in a Python loop (one `hnet.apply` and one target call per task, unrolled);
* vmap: `jax.vmap` over tasks of (hnet.apply -> target -> loss), the way per-task and per-example
  training is written (`hj.generate_batch` / `hj.per_sample` are the same vmap).

Targets: `mlp` = the quickstart linen MLP 64-256-256-10 (`hj.testing.mlp_spec`; batch 128 per task,
cross-entropy) and
`transformer` = a 2-layer width-64 linen encoder (token + position embedding, 2 pre-LN blocks of
nn.MultiHeadDotProductAttention with 4 heads and a 128-wide MLP, final LayerNorm, vocabulary head; seq 16,
batch 8 per task, token cross-entropy). `reference.<target>.stacked`: the same three gradients of the target
alone with 8 stacked copies of its ordinary params (the floor a generator adds to).

Every generator is built through `GENERATORS` below (keyword arguments only); `codebook` has no
conditioning input, so its "cond" is the temperature tau (8 values in [0.5, 2]), passed through `apply_fn`.
Jitted, warmed up, `jax.block_until_ready`, interleaved rounds (one, loop, vmap in rotating order), medians.
`bytes_*` / `flops_*`: XLA's `cost_analysis()` of each compiled gradient. Writes `--out` (default
benchmarks/results/batched_grad.json) and a markdown table beside it (.md).
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import hyperjax as hj
from benchmarks import _common

NAME = "batched_grad"
GOAL_VMAP_OVER_LOOP = 1.0     # issue 12: vmapped <= 1.0x the loop
GOAL_VMAP_OVER_ONE = 8.0      # ... and <= 8x the single-cond gradient
GOAL_BYTES = 1.5              # ... and bytes accessed of the vmapped gradient <= 1.5x the loop's

FULL = {"mlp": {"widths": (64, 256, 256, 10), "batch": 128},
        "transformer": {"vocab": 64, "width": 64, "heads": 4, "layers": 2, "mlp": 128, "seq": 16, "batch": 8},
        "conds": 8, "repeats": 20, "warmup": 3}
QUICK = {"mlp": {"widths": (16, 32, 32, 10), "batch": 16},
         "transformer": {"vocab": 16, "width": 16, "heads": 2, "layers": 1, "mlp": 32, "seq": 8, "batch": 2},
         "conds": 2, "repeats": 2, "warmup": 1}


# ---------------------------------------------------------------- targets
class Block(nn.Module):
    """Pre-LN encoder block: x + MHA(LN(x)), then x + MLP(LN(x)). x: f32[batch, seq, width]."""

    heads: int
    mlp: int

    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads)(y, y)
        y = nn.LayerNorm()(x)
        return x + nn.Dense(x.shape[-1])(nn.gelu(nn.Dense(self.mlp)(y)))


class Transformer(nn.Module):
    """tokens int32[batch, seq] -> logits f32[batch, seq, vocab]."""

    vocab: int
    width: int
    heads: int
    layers: int
    mlp: int
    seq: int

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(self.vocab, self.width)(tokens)
        x = x + self.param("pos", nn.initializers.normal(0.02), (self.seq, self.width))[None]
        for _ in range(self.layers):
            x = Block(self.heads, self.mlp)(x)
        return nn.Dense(self.vocab)(nn.LayerNorm()(x))


def make_target(name: str, cfg: dict, n_conds: int, key: jax.Array):
    """-> (spec, xs, ys): xs/ys hold one batch per cond (leading axis n_conds)."""
    kx, ky = jax.random.split(key)
    if name == "mlp":
        w = cfg["widths"]
        spec = hj.testing.mlp_spec(w)
        xs = jax.random.normal(kx, (n_conds, cfg["batch"], w[0]), jnp.float32)
        ys = jax.random.randint(ky, (n_conds, cfg["batch"]), 0, w[-1])
    else:
        model = Transformer(cfg["vocab"], cfg["width"], cfg["heads"], cfg["layers"], cfg["mlp"], cfg["seq"])
        spec = hj.targets.from_linen(model, jnp.zeros((1, cfg["seq"]), jnp.int32))
        xs = jax.random.randint(kx, (n_conds, cfg["batch"], cfg["seq"]), 0, cfg["vocab"])
        ys = jax.random.randint(ky, (n_conds, cfg["batch"], cfg["seq"]), 0, cfg["vocab"])
    return spec, xs, ys


def target_loss(spec, params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(spec.apply(params, x), y).mean()


# ---------------------------------------------------------------- generators (the one place they are built)
def first_dense_kernel(spec) -> str:
    """Path of the first 2-D Dense kernel in spec order (rowwise generates it row by row)."""
    for p, leaf in spec.leaves.items():
        if p.endswith("Dense_0/kernel") and len(leaf.shape) == 2:
            return p
    raise ValueError(f"no Dense_0/kernel in {spec.paths}")


def _dense(spec, n):
    return hj.generators.dense(spec, cond_dim=8, num_conds=n, hidden=(32,))


def _chunked(spec, n):
    return hj.generators.chunked(spec, cond_dim=8, num_conds=n, chunk_size=1024, hidden=(32,))


def _per_layer(spec, n):
    return hj.generators.per_layer(spec, cond_dim=8, num_conds=n)


def _low_rank(spec, n):
    return hj.generators.low_rank(spec, cond_dim=8, num_conds=n, rank=4, hidden=(32,))


def _scale_modulation(spec, n):
    return hj.generators.scale_modulation(spec, cond_dim=8, num_conds=n, mode="rowcol", hidden=(32,))


def _rowwise(spec, n):
    return hj.generators.rowwise(spec, cond_dim=8, num_conds=n, where=first_dense_kernel(spec), emb_dim=8,
                                 hidden=(64,))


def _codebook(spec, n):
    return hj.generators.codebook(spec, num_values=16)


GENERATORS: dict[str, Callable[[Any, int], Any]] = {
    "dense": _dense, "chunked": _chunked, "per_layer": _per_layer, "low_rank": _low_rank,
    "scale_modulation": _scale_modulation, "rowwise": _rowwise, "codebook": _codebook}


def conds_for(name: str, n: int) -> jax.Array:
    """What is vmapped over: task ids, or for codebook (no conditioning input) n temperatures tau."""
    if name == "codebook":
        return jnp.linspace(0.5, 2.0, n, dtype=jnp.float32)
    return jnp.arange(n, dtype=jnp.int32)


def apply_fn(name: str, hnet) -> Callable[[Any, Any], Any]:
    """(hparams, cond) -> params. codebook: cond is the temperature (apply(hp, tau=t) where apply takes a
    `tau` keyword, else apply(hp, t), its conditioning input in older releases)."""
    if name == "codebook" and "tau" in inspect.signature(hnet.apply).parameters:
        return lambda hp, t: hnet.apply(hp, tau=t)
    return hnet.apply


# ---------------------------------------------------------------- measurement
def gradients(loss_one: Callable, n: int) -> dict[str, Callable]:
    """loss_one(p, i) -> scalar loss of cond i; returns the three losses whose gradients are timed."""
    idx = jnp.arange(n)
    return {"one": lambda p: loss_one(p, 0),
            "loop": lambda p: sum(loss_one(p, i) for i in range(n)) / n,
            "vmap": lambda p: jnp.mean(jax.vmap(loss_one, in_axes=(None, 0))(p, idx))}


def cost(compiled) -> dict[str, float]:
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    return {"bytes": float(ca.get("bytes accessed", float("nan"))), "flops": float(ca.get("flops", float("nan")))}


def measure(fns: dict[str, Callable], arg: Any, repeats: int, warmup: int) -> dict[str, Any]:
    """Compile jax.grad of each fn, then time them in interleaved rounds (order rotates every round)."""
    out: dict[str, Any] = {}
    compiled = {}
    for k, f in fns.items():
        t0 = time.perf_counter()
        compiled[k] = jax.jit(jax.grad(f)).lower(arg).compile()
        out[f"compile_{k}_s"] = time.perf_counter() - t0
        c = cost(compiled[k])
        out[f"bytes_{k}"], out[f"flops_{k}"] = c["bytes"], c["flops"]
    for k in compiled:
        for _ in range(warmup):
            jax.block_until_ready(compiled[k](arg))
    names = list(compiled)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for k in (order if r % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled[k](arg))
            times[k].append((time.perf_counter() - t0) * 1e3)
    for k in names:
        out[f"{k}_ms"] = statistics.median(times[k])
        out[f"{k}_min_ms"] = min(times[k])
    out["vmap_over_loop"] = out["vmap_ms"] / out["loop_ms"]
    out["vmap_over_one"] = out["vmap_ms"] / out["one_ms"]
    out["bytes_vmap_over_loop"] = out["bytes_vmap"] / out["bytes_loop"]
    out["repeats"] = repeats
    return out


def run_case(target: str, gen: str, cfg: dict, n: int, key: jax.Array) -> dict[str, Any]:
    spec, xs, ys = make_target(target, cfg[target], n, key)
    hnet = GENERATORS[gen](spec, n)
    hp = jax.jit(hnet.init)(jax.random.key(1))
    apply, conds = apply_fn(gen, hnet), conds_for(gen, n)

    def loss_one(p, i):
        return target_loss(spec, apply(p, conds[i]), xs[i], ys[i])

    res = measure(gradients(loss_one, n), hp, cfg["repeats"], cfg["warmup"])
    res["hparams"] = int(sum(np.size(x) for x in jax.tree.leaves(hp)))
    res["target_params"] = int(spec.size)
    res["cond"] = "temperature tau (codebook has no conditioning input)" if gen == "codebook" else "task id"
    return res


def run_reference(target: str, cfg: dict, n: int, key: jax.Array) -> dict[str, Any]:
    """The target alone with n stacked copies of its ordinary params (no generator)."""
    spec, xs, ys = make_target(target, cfg[target], n, key)
    stacked = jax.vmap(spec.init)(jax.random.split(jax.random.key(1), n))

    def loss_one(p, i):
        return target_loss(spec, jax.tree.map(lambda a: a[i], p), xs[i], ys[i])

    return measure(gradients(loss_one, n), stacked, cfg["repeats"], cfg["warmup"])


def table(cases: dict, refs: dict) -> list[list[Any]]:
    rows = []
    for target, gens in cases.items():
        for gen, r in gens.items():
            rows.append([target, gen, r["one_ms"], r["loop_ms"], r["vmap_ms"], r["vmap_over_loop"],
                         r["vmap_over_one"], f"{r['bytes_loop']:.3g}", f"{r['bytes_vmap']:.3g}",
                         r["bytes_vmap_over_loop"]])
        if target in refs:
            r = refs[target]
            rows.append([target, "(stacked params, no generator)", r["one_ms"], r["loop_ms"], r["vmap_ms"],
                         r["vmap_over_loop"], r["vmap_over_one"], f"{r['bytes_loop']:.3g}",
                         f"{r['bytes_vmap']:.3g}", r["bytes_vmap_over_loop"]])
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny targets, 2 conds, 2 repeats (smoke test)")
    p.add_argument("--out", default=os.path.join(_common.RESULTS_DIR, f"{NAME}.json"), help="JSON path")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per case (default 20, quick 2)")
    p.add_argument("--conds", type=int, default=None, help="number of conds (default 8, quick 2)")
    p.add_argument("--targets", default="mlp,transformer", help="comma-separated subset of mlp,transformer")
    p.add_argument("--generators", default=",".join(GENERATORS), help="comma-separated subset")
    p.add_argument("--no-reference", action="store_true", help="skip the stacked-params reference rows")
    p.add_argument("--label", default=None, help="free text stored in the JSON (what was measured)")
    p.add_argument("--compilation-cache", default=None, metavar="DIR",
                   help="enable JAX's persistent compilation cache in DIR")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    _common.enable_compilation_cache(args.compilation_cache)
    cfg = dict(QUICK if args.quick else FULL)
    if args.repeats is not None:
        cfg["repeats"] = args.repeats
    n = args.conds or cfg["conds"]
    targets = [t for t in args.targets.split(",") if t]
    gens = [g for g in args.generators.split(",") if g]
    for t in targets:
        if t not in ("mlp", "transformer"):
            raise SystemExit(f"unknown target {t!r}; choose from mlp, transformer")
    for g in gens:
        if g not in GENERATORS:
            raise SystemExit(f"unknown generator {g!r}; choose from {', '.join(GENERATORS)}")

    load_before = _common.load_average()
    t_start = time.perf_counter()
    key = jax.random.key(args.seed)
    cases: dict[str, dict[str, Any]] = {}
    refs: dict[str, Any] = {}
    for t in targets:
        cases[t] = {}
        if not args.no_reference:
            refs[t] = {"stacked": run_reference(t, cfg, n, key)}
        for g in gens:
            cases[t][g] = run_case(t, g, cfg, n, key)
            r = cases[t][g]
            print(f"{t:12s} {g:17s} one {r['one_ms']:8.2f} ms  loop {r['loop_ms']:8.2f} ms  vmap "
                  f"{r['vmap_ms']:8.2f} ms  vmap/loop {r['vmap_over_loop']:5.2f}  bytes vmap/loop "
                  f"{r['bytes_vmap_over_loop']:5.2f}", flush=True)
    goals = {"vmap_over_loop_max": GOAL_VMAP_OVER_LOOP, "vmap_over_one_max": GOAL_VMAP_OVER_ONE,
             "bytes_vmap_over_loop_max": GOAL_BYTES,
             "met": {f"{t}.{g}": {"vmap_over_loop": r["vmap_over_loop"] <= GOAL_VMAP_OVER_LOOP,
                                  "vmap_over_one": r["vmap_over_one"] <= GOAL_VMAP_OVER_ONE,
                                  "bytes": r["bytes_vmap_over_loop"] <= GOAL_BYTES}
                     for t, gs in cases.items() for g, r in gs.items()}}
    payload = {"config": {**{k: v for k, v in cfg.items() if k in targets or k in ("repeats", "warmup")},
                          "conds": n, "quick": args.quick, "seed": args.seed,
                          "compilation_cache": args.compilation_cache, "generators": gens},
               "provenance": _common.provenance(args.label),
               "load_average_before": load_before, "load_average_after": _common.load_average(),
               "wall_s": time.perf_counter() - t_start, "goals": goals,
               "cases": cases, "reference": {t: r for t, r in refs.items()}}
    out_dir, base = os.path.split(os.path.abspath(args.out))
    name = base[:-5] if base.endswith(".json") else base
    _common.write_json(name, payload, results_dir=out_dir)
    header = ["target", "generator", "one ms", "loop ms", "vmap ms", "vmap/loop", "vmap/one", "bytes loop",
              "bytes vmap", "bytes vmap/loop"]
    ref_rows = {t: r["stacked"] for t, r in refs.items()}
    _common.write_markdown(name, header, table(cases, ref_rows), results_dir=out_dir,
                           title=f"Batched gradients: {n} conds, one / Python loop / jax.vmap (load average "
                                 f"{load_before})")
    return payload


if __name__ == "__main__":
    main()
