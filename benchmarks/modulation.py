"""Per-example modulated weights: the factorised path against materialising one weight set per example.

    python -m benchmarks.modulation            # both MLPs, batch 256 (about a minute on 2 CPU cores)
    python -m benchmarks.modulation --quick    # tiny sizes, for tests

Generators: `hj.generators.low_rank(spec, cond_dim=8, rank=4)` (W(c) = W0 + U diag(s(c)) V^T) and
`hj.generators.scale_modulation(spec, cond_dim=8, mode="rowcol")` (W(c) = W0 * a(c) b(c)^T), hidden=(32,),
on every kernel of a linen MLP (biases are ordinary params). Each of the batch's 256 examples has its own condition.

* materialise: `hj.per_sample(gen, spec)` = jax.vmap over examples of (gen.apply -> spec.apply): a batch of
               full weight sets, B x (sum of kernel sizes) floats, then batched matrix-vector products.
* factorised:  `gen.factors(hparams, conds)` + `hj.generators.modulated_matmul` per layer: one shared x @ W0
               plus O(rank (n_in + n_out)) (low rank) or O(n_in + n_out) (scale) per example.
* base_only:   the same MLP with the shared base weights and no modulation (the floor, for context).

Timed, jitted, on the same hparams and inputs (the two paths are first checked to agree): the forward pass,
and a training step's value_and_grad of a cross-entropy with respect to the hparams. Each round runs every
variant once, in rotating order (at least 20 rounds, more up to 500 while they fit in 5 s); medians over
rounds, warm-up excluded, `jax.block_until_ready`.
speedup = median(materialise) / median(factorised). Writes benchmarks/results/modulation.json and .md.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import optax

import hyperjax as hj
from benchmarks import _common, _hparams

NAME = "modulation"
GOAL_SPEEDUP = 5.0
FULL = {"mlps": {"256-512-512-10": (256, 512, 512, 10), "64-100-10": (64, 100, 10)}, "batch": 256,
        "cond_dim": 8, "hidden": 32, "rank": 4, "rounds": 20, "warmup": 3, "budget_s": 5.0}
QUICK = {"mlps": {"8-6-3": (8, 6, 3)}, "batch": 4, "cond_dim": 2, "hidden": 4, "rank": 2, "rounds": 3,
         "warmup": 1, "budget_s": 0.0}


def forward(p: Any, x: jax.Array, n_layers: int) -> jax.Array:
    """The linen MLP written with modulated_matmul: p holds factors (or plain kernels) and biases."""
    for i in range(n_layers):
        layer = p[f"Dense_{i}"]
        x = hj.generators.modulated_matmul(x, layer["kernel"]) + layer["bias"][None, :]
        x = jax.nn.relu(x) if i < n_layers - 1 else x
    return x


def variants(gen, spec, n_layers: int) -> dict[str, Any]:
    """{name: f(hparams, conds, xs) -> logits f[B, n_out]}."""
    per_sample = hj.per_sample(gen, spec)

    def base_only(hp, conds, xs):
        return forward(_hparams.modulation_base(hp), xs, n_layers)

    return {"materialise": per_sample,
            "factorised": lambda hp, conds, xs: forward(gen.factors(hp, conds), xs, n_layers),
            "base_only": base_only}


def timed_rounds(fns: dict[str, Any], rounds: int, warmup: int, budget_s: float = 0.0
                 ) -> tuple[dict[str, float], int]:
    """(median ms per function, rounds); each round calls every function once, the order rotating every round.

    At least `rounds` rounds; more (up to 500) while they fit in `budget_s` seconds, so fast cases get
    enough samples for a stable median.
    """
    for f in fns.values():
        for _ in range(warmup):
            f()
    t0 = time.perf_counter()
    for f in fns.values():
        f()
    round_s = time.perf_counter() - t0
    rounds = max(rounds, min(500, int(budget_s / max(round_s, 1e-9))))
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for k in (order if r % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            fns[k]()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}, rounds


def run_case(kind: str, widths: tuple[int, ...], cfg: dict) -> dict[str, Any]:
    spec = hj.testing.mlp_spec(widths)   # linen MLP, ReLU between Dense layers
    if kind == "low_rank":
        gen = hj.generators.low_rank(spec, cond_dim=cfg["cond_dim"], rank=cfg["rank"], hidden=cfg["hidden"])
    else:
        gen = hj.generators.scale_modulation(spec, cond_dim=cfg["cond_dim"], mode="rowcol", hidden=cfg["hidden"])
    n_layers = len(widths) - 1
    k_hp, k_c, k_x = jax.random.split(jax.random.key(0), 3)
    hp = jax.jit(gen.init)(k_hp)
    conds = jax.random.normal(k_c, (cfg["batch"], cfg["cond_dim"]), jnp.float32)
    xs = jax.random.normal(k_x, (cfg["batch"], widths[0]), jnp.float32)
    ys = jnp.arange(cfg["batch"], dtype=jnp.int32) % widths[-1]
    fwd = {k: jax.jit(f) for k, f in variants(gen, spec, n_layers).items()}

    def grad_of(f):
        def loss(hp):
            return optax.softmax_cross_entropy_with_integer_labels(f(hp, conds, xs), ys).mean()
        return jax.jit(jax.value_and_grad(loss))
    grads = {k: grad_of(f) for k, f in variants(gen, spec, n_layers).items() if k != "base_only"}

    compile_s = {}
    for name, f in fwd.items():
        t0 = time.perf_counter()
        f.lower(hp, conds, xs).compile()
        compile_s[f"forward/{name}"] = time.perf_counter() - t0
    for name, g in grads.items():
        t0 = time.perf_counter()
        g.lower(hp).compile()
        compile_s[f"grad/{name}"] = time.perf_counter() - t0

    # the two paths compute the same function (outputs and gradients), float32 tolerance
    out_m, out_f = fwd["materialise"](hp, conds, xs), fwd["factorised"](hp, conds, xs)
    max_out = float(jnp.max(jnp.abs(out_m - out_f)))
    (l_m, g_m), (l_f, g_f) = grads["materialise"](hp), grads["factorised"](hp)
    max_grad = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(g_m), jax.tree.leaves(g_f)))
    scale = float(jnp.max(jnp.abs(out_m)))
    if max_out > 1e-4 * max(1.0, scale):
        raise AssertionError(f"{kind} {widths}: factorised and materialised outputs differ by {max_out:.3g}")

    fwd_ms, fwd_rounds = timed_rounds({k: (lambda f=f: jax.block_until_ready(f(hp, conds, xs))) for k, f in fwd.items()},
                          cfg["rounds"], cfg["warmup"], cfg["budget_s"])
    grad_ms, grad_rounds = timed_rounds({k: (lambda g=g: jax.block_until_ready(g(hp))) for k, g in grads.items()},
                           cfg["rounds"], cfg["warmup"], cfg["budget_s"])
    kernels = sum(math.prod(spec.leaves[p].shape) for p in spec.paths if p.endswith("kernel"))
    return {"kind": kind, "widths": list(widths), "batch": cfg["batch"],
            "materialised_floats_per_batch": kernels * cfg["batch"],
            "hparams": hj.training.count_params(hp), "forward_ms": fwd_ms, "grad_ms": grad_ms,
            "rounds": {"forward": fwd_rounds, "grad": grad_rounds},
            "forward_speedup": fwd_ms["materialise"] / fwd_ms["factorised"],
            "grad_speedup": grad_ms["materialise"] / grad_ms["factorised"],
            "compile_s": compile_s, "max_abs_output_diff": max_out, "max_abs_grad_diff": max_grad,
            "loss_diff": abs(float(l_m) - float(l_f))}


def compare(batch: int = 256, warmup: int = 3, repeats: int = 20, widths: tuple[int, ...] = (64, 100, 10),
            kinds: tuple[str, ...] = ("low_rank", "scale_rowcol")) -> dict[str, Any]:
    """Entry point for `benchmarks.run_all` (per-sample case): each kind on the case's MLP in this run.

    Returns {"speedup": low_rank forward materialise / factorised, "cases": {kind: run_case(...)}, ...};
    `speedup` is the first kind's forward ratio, every kind's forward and grad ratios are listed beside it.
    """
    cfg = {**FULL, "batch": batch, "warmup": warmup, "rounds": repeats, "budget_s": 2.0}
    cases = {f"{kind}/{'-'.join(map(str, widths))}": run_case(kind, tuple(widths), cfg) for kind in kinds}
    first = next(iter(cases.values()))
    return {"speedup": first["forward_speedup"], "grad_speedup": first["grad_speedup"], "batch": batch,
            "widths": list(widths), "materialise_ms": first["forward_ms"]["materialise"],
            "factorised_ms": first["forward_ms"]["factorised"],
            "speedups": {k: {"forward": c["forward_speedup"], "grad": c["grad_speedup"]} for k, c in cases.items()},
            "cases": cases}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.modulation", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, a few rounds (for tests)")
    p.add_argument("--results-dir", default=_common.RESULTS_DIR)
    args = p.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    cases = {}
    for mlp, widths in cfg["mlps"].items():
        for kind in ("low_rank", "scale_rowcol"):
            name = f"{kind}/{mlp}"
            cases[name] = run_case(kind, tuple(widths), cfg)
            c = cases[name]
            print(f"{name}: forward {c['forward_ms']['materialise']:.3f} -> {c['forward_ms']['factorised']:.3f} ms "
                  f"(x{c['forward_speedup']:.1f}); grad {c['grad_ms']['materialise']:.3f} -> "
                  f"{c['grad_ms']['factorised']:.3f} ms (x{c['grad_speedup']:.1f})", flush=True)
    payload = {"quick": args.quick, "config": {k: v for k, v in cfg.items() if k != "mlps"},
               "mlps": {k: list(v) for k, v in cfg["mlps"].items()}, "cases": cases, "goal_speedup": GOAL_SPEEDUP,
               "goal_met": {k: c["forward_speedup"] >= GOAL_SPEEDUP for k, c in cases.items()},
               "load_average": list(__import__("os").getloadavg())}
    _common.write_json(NAME, payload, args.results_dir)
    header = ["case", "forward materialise ms", "forward factorised ms", "forward base-only ms", "speedup",
              "grad materialise ms", "grad factorised ms", "speedup", "max |diff| out"]
    rows = [[k, c["forward_ms"]["materialise"], c["forward_ms"]["factorised"], c["forward_ms"]["base_only"],
             c["forward_speedup"], c["grad_ms"]["materialise"], c["grad_ms"]["factorised"], c["grad_speedup"],
             f"{c['max_abs_output_diff']:.2e}"] for k, c in cases.items()]
    _common.write_markdown(NAME, header, rows, args.results_dir,
                           title=f"Per-example modulated weights, batch {cfg['batch']}: factorised vs materialised "
                                 f"(goal >= {GOAL_SPEEDUP}x)")
    return payload


if __name__ == "__main__":
    main()
