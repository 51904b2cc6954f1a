"""Per-example LoRA adapters without materialising: factorised x W0 + (x A(c)) B(c) vs a weight matrix per example.

    python -m benchmarks.lora            # the issue's sizes (a few minutes on 2 CPU cores)
    python -m benchmarks.lora --quick    # tiny sizes, for tests

Target: `hj.testing.Transformer` (decoder-only linen LM, the 4 layers in one `nn.scan`, `nn.SelfAttention` with
DenseGeneral kernels), width 256, 4 heads, MLP 1024, vocab 256, batch 64, sequence 16 (about the length
of `experiments/task_lora`'s 17-token sequences: 8 inputs, SEP, 8 queries; every case is repeated at sequence 64 as
"<case>@seq64", where the shared model's own work per example is 4x larger), pretrained-style base
(`from_linen(model, tokens, params=variables)`). Generator: `hj.generators.lora(spec, rank=8, cond_dim=16,
hidden=(64,))`, one cond per example; its B head (zero at init) is perturbed so the adapters are non-zero (the
logits move by `adapter_effect_max_abs`). Two cases, the same generator settings:

* attention (the headline numbers): LoRA on the attention query/key/value/out kernels of every layer;
* attention+mlp (context): the same plus the mlp_in / mlp_out kernels.

Two paths, same hparams, same conds and tokens:

* factorised:   `factorised_apply(spec, hnet.factors(hp, conds), tokens)`: the unmodified model, shared W0, and
                inside each adapted DenseGeneral the per-example (x A) B; no per-example matrix.
* materialised: `jax.vmap` over examples of `spec.apply(hnet.apply(hp, c), t[None])`: W0 + A B built for every
                example, every layer, every adapted kernel.

Measured: the jitted forward (logits f[B, L, vocab]) and one training step (`hj.training.make_step`: jitted,
state donated, value_and_grad of the next-token cross-entropy w.r.t. the hparams, `multi_optimizer` with Adam on
"hyper" and "embedding", the frozen base untouched), the same step code for both paths; for context, the
forward of the model alone on its base weights (`base_model_forward_ms`: the floor both paths pay; the
factorised path's overhead over it is recorded). Times: each round runs all five programs once in rotating
order (`benchmarks.modulation.timed_rounds`), medians, warm-up excluded, `jax.block_until_ready`; compile
time apart. Memory: XLA's `compiled.memory_analysis()` of each compiled
program, peak ~ argument + output + temp - alias bytes (as benchmarks.hyperlstm / scaling). Speedups and
memory ratios are materialised / factorised. The two paths' logits (and first-step losses) are checked equal
first. Writes benchmarks/results/lora.json and .md with the machine load and provenance.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hyperjax as hj
from benchmarks import _common
from benchmarks.modulation import timed_rounds

NAME = "lora"
PATHS = ("factorised", "materialised")
WHERE = {"attention": ("layers/attention/*/kernel",),
         "attention+mlp": ("layers/attention/*/kernel", "layers/mlp_in/kernel", "layers/mlp_out/kernel")}
PRIMARY = "attention"
TARGETS = {"forward_speedup": 3.0, "step_speedup": 3.0, "memory_ratio": 4.0}
FULL = {"vocab": 256, "width": 256, "heads": 4, "mlp": 1024, "layers": 4, "seq": 16, "batch": 64, "rank": 8,
        "cond_dim": 16, "hidden": (64,), "perturb_std": 0.005, "lr": 1e-3, "rounds": 6, "warmup": 1,
        "budget_s": 0.0}
QUICK = {"vocab": 11, "width": 16, "heads": 2, "mlp": 32, "layers": 2, "seq": 8, "batch": 3, "rank": 2,
         "cond_dim": 4, "hidden": (8,), "perturb_std": 0.05, "lr": 1e-3, "rounds": 2, "warmup": 1,
         "budget_s": 0.0}
LONGER_SEQ = 64      # full runs repeat every case at this sequence length too (cases "<name>@seq64")
TOLERANCE = 1e-4     # max |factorised - materialised| logits, relative to max(1, max |logits|)


def memory(compiled: Any) -> dict[str, int | None]:
    """Bytes from XLA's memory analysis (None where the backend has none); peak ~ arg + out + temp - alias."""
    return _common.memory_analysis(compiled)


def perturb(tree: Any, key: jax.Array, std: float) -> Any:
    """tree + std * N(0, 1), one key per leaf (moves the zero-initialised B head so A(c) B(c) != 0)."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([x + std * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


def run_case(where: tuple[str, ...], cfg: dict) -> dict[str, Any]:
    b, seq = cfg["batch"], cfg["seq"]
    model = hj.testing.Transformer(vocab=cfg["vocab"], width=cfg["width"], heads=cfg["heads"], mlp=cfg["mlp"],
                                   layers=cfg["layers"], max_len=seq)
    k_model, k_hp, k_perturb, k_cond, k_tok = jax.random.split(jax.random.key(0), 5)
    tokens = jax.random.randint(k_tok, (b, seq), 0, cfg["vocab"], jnp.int32)
    variables = jax.jit(model.init)(k_model, tokens[:1])
    spec = hj.targets.from_linen(model, tokens[:1], params=variables)
    hnet = hj.generators.lora(spec, rank=cfg["rank"], cond_dim=cfg["cond_dim"], where=list(where),
                              hidden=cfg["hidden"])
    hp0 = hnet.init(k_hp)
    hp = {**hp0, "hyper": perturb(hp0["hyper"], k_perturb, cfg["perturb_std"])}
    conds = jax.random.normal(k_cond, (b, cfg["cond_dim"]), jnp.float32)

    def factorised(hp, conds, tokens):
        return hj.generators.factorised_apply(spec, hnet.factors(hp, conds), tokens)

    def materialised(hp, conds, tokens):
        return jax.vmap(lambda c, t: spec.apply(hnet.apply(hp, c), t[None])[0])(conds, tokens)

    def plain(frozen, tokens):          # context: the model alone on its base weights, no adapter at all
        return spec.apply(frozen, tokens)

    fwd_fns = {"factorised": factorised, "materialised": materialised}
    plain_c, plain_compile_s = _common.compile_time(jax.jit(plain), spec.params, tokens)
    opt = hj.training.multi_optimizer({"hyper": optax.adam(cfg["lr"]), "embedding": optax.adam(cfg["lr"])})

    def loss_for(fwd):
        def loss_fn(hp, batch, rng):
            conds, tokens = batch
            logits = fwd(hp, conds, tokens)[:, :-1]
            return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
        return loss_fn

    batch = (conds, tokens)
    compile_s: dict[str, dict[str, float]] = {"forward": {}, "step": {}}
    mem: dict[str, dict[str, Any]] = {"forward": {}, "step": {}}
    fwd_c, step_c, states = {}, {}, {}
    for name, fwd in fwd_fns.items():
        fwd_c[name], compile_s["forward"][name] = _common.compile_time(jax.jit(fwd), hp, conds, tokens)
        step = hj.training.make_step(loss_for(fwd), opt, grad_norm=False)      # jitted, state donated
        states[name] = hj.training.init_state(hp, opt)
        step_c[name], compile_s["step"][name] = _common.compile_time(step, states[name], batch)
        mem["forward"][name], mem["step"][name] = memory(fwd_c[name]), memory(step_c[name])

    # the two paths agree, and the adapters matter (so agreement is not W0 == W0)
    logits = {k: c(hp, conds, tokens) for k, c in fwd_c.items()}
    base = fwd_c["factorised"](hp0, conds, tokens)                          # B = 0: exactly W0
    scale = max(1.0, float(jnp.max(jnp.abs(logits["materialised"]))))
    diff = float(jnp.max(jnp.abs(logits["factorised"] - logits["materialised"])))
    effect = float(jnp.max(jnp.abs(logits["materialised"] - base)))
    first_loss = {}
    for name in PATHS:
        states[name], metrics = step_c[name](states[name], batch)
        first_loss[name] = float(metrics["loss"])
    loss_diff = abs(first_loss["factorised"] - first_loss["materialised"])
    if not (diff <= TOLERANCE * scale and loss_diff <= TOLERANCE * max(1.0, first_loss["materialised"])):
        raise AssertionError(f"{where}: factorised and materialised disagree: logits max |diff| {diff:.3g} "
                             f"(scale {scale:.3g}), first-step losses {first_loss}")

    def stepper(name):
        def run():
            states[name], metrics = step_c[name](states[name], batch)
            jax.block_until_ready((states[name], metrics))
        return run

    fns = {f"forward/{k}": (lambda c=c: jax.block_until_ready(c(hp, conds, tokens))) for k, c in fwd_c.items()}
    fns.update({f"step/{k}": stepper(k) for k in PATHS})
    fns["forward/base_model"] = lambda: jax.block_until_ready(plain_c(spec.params, tokens))
    ms, rounds = timed_rounds(fns, cfg["rounds"], cfg["warmup"], cfg["budget_s"])
    forward_ms = {k: ms[f"forward/{k}"] for k in PATHS}
    base_ms = ms["forward/base_model"]
    step_ms = {k: ms[f"step/{k}"] for k in PATHS}

    n_mats, kernel_floats, factor_floats = 0, 0, 0
    for path in spec.paths:
        if hj.select(*where)(path):
            stack, n_in, n_out = hj.targets.matrix_shape(spec, path)      # the 2-D view, one per scanned layer
            copies = int(np.prod(stack))
            n_mats += copies
            kernel_floats += copies * n_in * n_out
            factor_floats += copies * cfg["rank"] * (n_in + n_out)
    ratio = lambda d: d["materialised"] / d["factorised"]  # noqa: E731
    peak = lambda kind: {k: mem[kind][k]["peak"] for k in PATHS}  # noqa: E731
    mem_ratio = lambda kind: (None if None in peak(kind).values() else ratio(peak(kind)))  # noqa: E731
    counts = {role: hj.training.count_params(v) for role, v in hp.items()}
    return {"where": list(where), "forward_ms": forward_ms, "step_ms": step_ms, "rounds": rounds,
            "forward_speedup": ratio(forward_ms), "base_model_forward_ms": base_ms,
            "forward_overhead_over_base_model": {k: forward_ms[k] / base_ms for k in PATHS},
            "base_model_forward_compile_s": plain_compile_s, "step_speedup": ratio(step_ms),
            "step_peak_bytes": peak("step"), "forward_peak_bytes": peak("forward"),
            "memory_ratio": mem_ratio("step"), "forward_memory_ratio": mem_ratio("forward"),
            "memory_bytes": mem, "compile_s": compile_s,
            "max_abs_diff_logits": diff, "logits_max_abs": scale, "adapter_effect_max_abs": effect,
            "first_step_loss": first_loss, "first_step_loss_abs_diff": loss_diff,
            "sizes": {"adapted_matrices": n_mats, "hparams": counts,
                      "materialised_kernel_floats_per_example": kernel_floats,
                      "materialised_kernel_floats_per_call": b * kernel_floats,
                      "factor_floats_per_example": factor_floats, "factor_floats_per_call": b * factor_floats,
                      "tokens_per_call": b * seq}}


def main(argv=None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.lora", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (for tests)")
    p.add_argument("--out", default=os.path.join(_common.RESULTS_DIR, f"{NAME}.json"),
                   help="JSON path; the markdown table goes beside it (.md)")
    p.add_argument("--cases", default=",".join(WHERE), help=f"comma-separated subset of {', '.join(WHERE)}")
    p.add_argument("--label", default=None, help="free-form label stored with the provenance")
    p.add_argument("--seq", type=int, default=None, help="tokens per example (default: 16; 8 with --quick)")
    p.add_argument("--no-longer-seq", action="store_true",
                   help=f"skip the repeat of every case at sequence length {LONGER_SEQ} (full runs only)")
    args = p.parse_args(argv)
    names = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(names) - set(WHERE))
    if unknown or PRIMARY not in names:
        p.error(f"--cases: unknown {unknown}; valid: {', '.join(WHERE)} (must include {PRIMARY!r})")
    cfg = dict(QUICK if args.quick else FULL)
    if args.seq is not None:
        cfg["seq"] = args.seq
    load_before = _common.load_average()
    cases = {name: run_case(WHERE[name], cfg) for name in names}
    if not args.quick and not args.no_longer_seq and cfg["seq"] != LONGER_SEQ:
        cases.update({f"{name}@seq{LONGER_SEQ}": {**run_case(WHERE[name], {**cfg, "seq": LONGER_SEQ}),
                                                  "seq": LONGER_SEQ} for name in names})
    head = cases[PRIMARY]
    values = {k: head[k] for k in TARGETS}
    payload = {"benchmark": NAME, "forward_speedup": head["forward_speedup"], "step_speedup": head["step_speedup"],
               "memory_ratio": head["memory_ratio"], "forward_memory_ratio": head["forward_memory_ratio"],
               "forward_ms": head["forward_ms"], "step_ms": head["step_ms"],
               "step_peak_bytes": head["step_peak_bytes"], "forward_peak_bytes": head["forward_peak_bytes"],
               "max_abs_diff_logits": head["max_abs_diff_logits"],
               "adapter_effect_max_abs": head["adapter_effect_max_abs"], "sizes": head["sizes"],
               "targets": {k: {"min": v, "value": values[k], "met": values[k] is not None and values[k] >= v}
                           for k, v in TARGETS.items()},
               "primary_case": PRIMARY, "quick": args.quick,
               "config": {**cfg, "hidden": list(cfg["hidden"]), "tolerance": TOLERANCE},
               "load_average_before": load_before, "load_average_after": _common.load_average(),
               "provenance": _common.provenance(args.label), "cases": cases}
    out_dir, stem = os.path.dirname(os.path.abspath(args.out)), os.path.splitext(os.path.basename(args.out))[0]
    path = _common.write_json(stem, payload, out_dir)
    mb = lambda v: None if v is None else v / 2 ** 20  # noqa: E731
    rows = [[name, *(c["forward_ms"][k] for k in PATHS), c["forward_speedup"],
             *(c["step_ms"][k] for k in PATHS), c["step_speedup"],
             *(mb(c["step_peak_bytes"][k]) for k in PATHS), c["memory_ratio"], c["forward_memory_ratio"],
             f"{c['max_abs_diff_logits']:.2e}"] for name, c in cases.items()]
    _common.write_markdown(stem, ["case", "fwd factorised ms", "fwd materialised ms", "fwd speedup",
                                  "step factorised ms", "step materialised ms", "step speedup",
                                  "step peak factorised MB", "step peak materialised MB", "step memory ratio",
                                  "fwd memory ratio", "max abs diff logits"], rows, out_dir,
                           title=f"Per-example LoRA (rank {cfg['rank']}, batch {cfg['batch']}, seq {cfg['seq']}, "
                                 f"width {cfg['width']}, {cfg['layers']} layers): factorised vs materialised")
    with open(os.path.join(out_dir, f"{stem}.md"), "a") as f:
        f.write(f"\nTargets ({PRIMARY}): " + "; ".join(
            f"{k} {v['value']:.2f} >= {v['min']:g}: {'met' if v['met'] else 'not met'}"
            for k, v in payload["targets"].items() if v["value"] is not None)
            + f". Load average {load_before} -> {payload['load_average_after']} on "
              f"{os.cpu_count()} CPUs ({jax.default_backend()}).\n")
    _common.print_rows(rows)
    print(f"wrote {path} (load {load_before} -> {payload['load_average_after']})")
    return payload


if __name__ == "__main__":
    main()
