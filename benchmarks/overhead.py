"""Overhead of hyperjax's training step against a hand-written pure-JAX step of the same hypernetwork.

    python -m benchmarks.overhead            # full run (about a minute on 2 CPU cores)
    python -m benchmarks.overhead --quick    # a few repeats, for tests

Cases (float32, batch 128 of real scikit-learn digits, rotated every step, optax.adam(1e-3)):

* dense:   learned task embedding f32[8] -> 100 -> all 7,510 params of an MLP 64 -> 100 -> 10.
* chunked: [task emb f32[8], chunk emb f32[8]] -> 100 (ReLU, centred over chunks) -> 4,096 scalars,
           vmapped over 263 chunks, generating all 1,076,010 params of an MLP 64 -> 1000 -> 1000 -> 10.

Library side: `hj.targets.from_linen` + `hj.generators.dense / chunked` + `hj.training.make_step` (jitted,
state donated), timed twice: "hyperjax" = make_step(grad_norm=False) on init_state(..., key=None), which
does and returns what the hand-written step does (new params and optimizer state, loss); "hyperjax_default"
= make_step() on a state holding a typed PRNG key, whose metrics add the global gradient norm (one more
pass over every gradient) and whose key costs a little dispatch time per step. Hand-written side: the same function written out in jax.numpy (MLP,
vmap over chunk embeddings, centring, slicing into leaves in the spec's order, the same hyperfan per-leaf
scale), the same loss and optimizer, `jax.jit(step, donate_argnums=(0, 1))`. All start from the same
hparams (the library's init), and the first step is checked to give the same loss and update.

Timing: compile time apart (cost_analysis of each executable is recorded too); after warm-up, each round
runs one step of every implementation, in an order that rotates and flips every round, so machine drift
(other processes on a shared CPU) hits all of them; each step is timed alone with `jax.block_until_ready`
on all its outputs. ratio = median(library) / median(hand-written); paired_ratio = median over rounds of
the per-round ratio. Writes benchmarks/results/overhead.json and overhead.md.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import hyperjax as hj
from benchmarks import _common, _hparams

NAME = "overhead"
GOAL_RATIO = 1.05
CASES = {
    "dense": {"widths": (64, 100, 10), "cond_dim": 8, "hidden": 100, "batch": 128},
    "chunked": {"widths": (64, 1000, 1000, 10), "cond_dim": 8, "hidden": 100, "batch": 128,
                "chunk_size": 4096, "chunk_emb_dim": 8},
}


def cross_entropy(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


# ---------------------------------------------------------------- library
def library(case: dict, opt: optax.GradientTransformation):
    """-> (hparams, {variant: jitted step(state, batch) -> (state, metrics)}, spec).

    "hyperjax": make_step(grad_norm=False), the same outputs as the hand-written step (state and loss);
    timed on a state without a PRNG key. "hyperjax_default": make_step(), whose metrics add the global
    gradient norm; timed on a state holding a typed key.
    """
    widths = case["widths"]
    spec = hj.testing.mlp_spec(widths)   # linen MLP, ReLU between Dense layers
    if "chunk_size" in case:
        hnet = hj.generators.chunked(spec, cond_dim=case["cond_dim"], chunk_size=case["chunk_size"],
                                     chunk_emb_dim=case["chunk_emb_dim"], hidden=case["hidden"], num_conds=1)
    else:
        hnet = hj.generators.dense(spec, cond_dim=case["cond_dim"], hidden=case["hidden"], num_conds=1)

    def loss_fn(hparams, batch, rng):
        x, y = batch
        return cross_entropy(spec.apply(hnet.apply(hparams, 0), x), y)

    steps = {"hyperjax": hj.training.make_step(loss_fn, opt, grad_norm=False),
             "hyperjax_default": hj.training.make_step(loss_fn, opt)}
    return hnet.init(jax.random.key(0)), steps, spec


# ---------------------------------------------------------------- hand-written
def leaf_layout(widths):
    """[(kind, shape, std)] in linen's flatten order (per layer: bias, then kernel); hyperfan-in scale:
    kernels Var 1/fan_in, biases Var 1/(3 fan_in)."""
    out = []
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        out.append(("b", (n_out,), math.sqrt(1.0 / (3.0 * n_in))))
        out.append(("w", (n_in, n_out), math.sqrt(1.0 / n_in)))
    return out


def handwritten(case: dict, opt: optax.GradientTransformation):
    """The same hypernetwork and step in plain jax.numpy: -> jitted step(p, s, x, y) -> (p, s, loss)."""
    widths, chunked = case["widths"], "chunk_size" in case
    layout = leaf_layout(widths)

    def generate(p):
        (l0, l1), task = _hparams.mlp(p), _hparams.cond_emb(p)[0]
        if chunked:   # hidden features of every chunk, centred over chunks, then one shared output layer
            h = jax.vmap(lambda e: jax.nn.relu(jnp.concatenate([task, e]) @ l0["w"] + l0["b"]))(_hparams.chunk_emb(p))
            h = h - jnp.mean(h, axis=0, keepdims=True)
            flat = (h @ l1["w"] + l1["b"][None]).reshape(-1)
        else:
            flat = jax.nn.relu(task @ l0["w"] + l0["b"]) @ l1["w"] + l1["b"]
        leaves, off = [], 0
        for _, shape, std in layout:
            n = math.prod(shape)
            leaf = flat[off:off + n]
            leaves.append((leaf * std if chunked else leaf).reshape(shape))   # dense folds the scale into init
            off += n
        return leaves

    def target(leaves, x):
        n = len(leaves) // 2
        for i in range(n):
            x = x @ leaves[2 * i + 1] + leaves[2 * i][None]
            if i < n - 1:
                x = jax.nn.relu(x)
        return x

    def loss_fn(p, x, y):
        return cross_entropy(target(generate(p), x), y)

    def step(p, s, x, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        with jax.numpy_dtype_promotion("standard"):   # trace-time only: optax mixes floats and int32 counts
            upd, s = opt.update(g, s, p)
            return optax.apply_updates(p, upd), s, loss

    return jax.jit(step, donate_argnums=(0, 1))


# ---------------------------------------------------------------- measurement
def cost(compiled) -> dict:
    try:
        c = compiled.cost_analysis()
        c = c[0] if isinstance(c, (list, tuple)) else c
        return {"flops": float(c.get("flops", float("nan"))), "bytes_accessed": float(c.get("bytes accessed", float("nan")))}
    except Exception as e:   # cost analysis is best-effort and backend dependent
        return {"error": repr(e)}


def implementations(hparams, lib_steps: dict, hw_step, opt: optax.GradientTransformation) -> dict:
    """{name: (jitted fn, its argument-state, call(f, state, x, y) -> (new state, outputs))}."""
    return {
        **{k: (f, hj.training.init_state(hparams, opt, None if k == "hyperjax" else jax.random.key(1)),
               lambda f, st, x, y: (lambda out: (out[0], out))(f(st, (x, y))))
           for k, f in lib_steps.items()},
        "handwritten": (hw_step, (jax.tree.map(jnp.copy, hparams), opt.init(hparams)),
                        lambda f, st, x, y: (lambda out: (out[:2], out))(f(*st, x, y))),
    }


def first_steps(name: str, impls: dict, lib_steps: dict, x0, y0) -> tuple[dict, dict, dict, dict]:
    """Compile each implementation apart, then take one step: -> (state, compile_s, costs, diffs).

    Raises AssertionError when a library step's first loss or new params differ from the hand-written one's
    (the same function from the same hparams gives the same loss and update)."""
    state, compile_s, costs, first = {}, {}, {}, {}
    for k, (f, st, call) in impls.items():
        args = (st, (x0, y0)) if k != "handwritten" else (*st, x0, y0)
        t0 = time.perf_counter()                      # compile apart (jit reuses this executable)
        compiled = f.lower(*args).compile()
        compile_s[k] = time.perf_counter() - t0
        costs[k] = cost(compiled)
        state[k], out = call(f, st, x0, y0)
        first[k] = (float(out[1]["loss"] if k != "handwritten" else out[2]),
                    jax.tree.leaves(state[k].params if k != "handwritten" else state[k][0]))
    ref_loss, ref_params = first["handwritten"]
    diffs = {}
    for k in lib_steps:
        loss, params = first[k]
        diffs[k] = (abs(loss - ref_loss), max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(params, ref_params)))
        if diffs[k][0] > 1e-4 * max(1.0, abs(ref_loss)) or diffs[k][1] > 1e-5:
            raise AssertionError(f"{name}: {k} and hand-written steps differ (loss {diffs[k][0]:.3g}, params "
                                 f"{diffs[k][1]:.3g}); the benchmark would compare different functions.")
    return state, compile_s, costs, diffs


def time_rounds(impls: dict, state: dict, batches: list, repeats: int, warmup: int) -> dict[str, list[float]]:
    """{name: ms per step}: after warm-up, one step of each per round, in an order that rotates and flips."""
    counter = dict.fromkeys(impls, 0)

    def one(k):
        f, _, call = impls[k]
        x, y = batches[counter[k] % len(batches)]
        counter[k] += 1
        t = time.perf_counter()
        state[k], out = call(f, state[k], x, y)
        jax.block_until_ready(out)                    # every output: new state and metrics
        return (time.perf_counter() - t) * 1e3

    for _ in range(warmup):
        for k in impls:
            one(k)
    times = {k: [] for k in impls}
    names = list(impls)
    for r in range(repeats):                          # one step of each per round; the order rotates
        order = names[r % len(names):] + names[:r % len(names)]
        for k in (order if r % 2 == 0 else order[::-1]):
            times[k].append(one(k))
    return times


def run_case(name: str, case: dict, batches: list, repeats: int, warmup: int) -> dict:
    opt = optax.adam(1e-3)
    hparams, lib_steps, spec = library(case, opt)
    impls = implementations(hparams, lib_steps, handwritten(case, opt), opt)
    x0, y0 = batches[0]
    state, compile_s, costs, diffs = first_steps(name, impls, lib_steps, x0, y0)
    times = time_rounds(impls, state, batches, repeats, warmup)
    med = {k: statistics.median(v) for k, v in times.items()}
    paired = {k: statistics.median(a / b for a, b in zip(times[k], times["handwritten"])) for k in lib_steps}
    n_blocks = 3 if repeats >= 30 else 1                # spread: the ratio over each third of the rounds
    cut = [len(times["handwritten"]) * i // n_blocks for i in range(n_blocks + 1)]
    blocks = [statistics.median(times["hyperjax"][a:b]) / statistics.median(times["handwritten"][a:b])
              for a, b in zip(cut[:-1], cut[1:])]
    return {
        "hyperjax_ms": med["hyperjax"], "handwritten_ms": med["handwritten"],
        "ratio": med["hyperjax"] / med["handwritten"],
        "hyperjax_default_ms": med["hyperjax_default"],
        "ratio_default": med["hyperjax_default"] / med["handwritten"],
        "paired_ratio": paired["hyperjax"], "paired_ratio_default": paired["hyperjax_default"],
        "block_ratios": blocks,
        "min_ms": {k: min(v) for k, v in times.items()},
        "compile_s": compile_s, "cost_analysis": costs,
        "repeats": len(times["hyperjax"]), "warmup": warmup,
        "target_params": spec.size, "hnet_trainable_params": hj.training.count_params(hparams),
        "first_step_diff": {k: {"loss_abs": d[0], "params_max_abs": d[1]} for k, d in diffs.items()},
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in case.items()},
    }


NOTES = """
- hand-written: the same hypernetwork and target written out in jax.numpy, `jax.jit(step, donate_argnums=(0, 1))`,
  returning (params, opt_state, loss).
- hyperjax: `hj.generators.*` + `hj.targets.from_linen` + `hj.training.make_step(loss_fn, optax.adam(1e-3),
  grad_norm=False)` on `init_state(hparams, opt, key=None)`: the same work and outputs (plus the step counter).
  Its compiled HLO has the same ops as the hand-written one apart from the int32 step counter.
- hyperjax + grad_norm metric: `make_step` defaults (metrics include the global gradient norm) on a state
  holding a typed PRNG key: the norm is one more pass over every gradient.
- ratio = median(library ms) / median(hand-written ms); paired ratio = median over rounds of the per-round
  ratio; each round runs one step of every implementation in a rotating order. The CPU is shared with other
  processes, so run it a few times: the ratio moves by a few percent between runs (block_ratios in the JSON).
"""


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a few repeats (for tests); timings are not meaningful")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per implementation (per case)")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--results-dir", default=_common.RESULTS_DIR)
    args = p.parse_args(argv)

    batches = [(jnp.asarray(x), jnp.asarray(y)) for x, y in _common.digits_batches(128)]
    plan = {"dense": (600, 30), "chunked": (120, 5)}   # timed rounds (one step of each), warm-up rounds
    if args.quick:
        plan = {"dense": (4, 1), "chunked": (2, 1)}
    results = {}
    for name in args.cases:
        repeats, warmup = plan[name]
        results[name] = run_case(name, CASES[name], batches, args.repeats or repeats, warmup)
        r = results[name]
        print(f"{name:<8} hand-written {r['handwritten_ms']:.3f} ms  hyperjax {r['hyperjax_ms']:.3f} ms "
              f"(ratio {r['ratio']:.3f})  hyperjax+grad_norm {r['hyperjax_default_ms']:.3f} ms "
              f"(ratio {r['ratio_default']:.3f})  paired ratio {r['paired_ratio']:.3f}  "
              f"[{r['repeats']} interleaved repeats each]", flush=True)

    worst = max(r["ratio"] for r in results.values())
    payload = {"cases": results, "goal_ratio": GOAL_RATIO, "worst_ratio": worst, "quick": args.quick,
               "met": worst <= GOAL_RATIO}
    path = _common.write_json(NAME, payload, args.results_dir)
    rows = [[n, r["target_params"], r["hnet_trainable_params"], r["handwritten_ms"], r["hyperjax_ms"], r["ratio"],
             r["paired_ratio"], r["hyperjax_default_ms"], r["ratio_default"], r["repeats"],
             f"{r['compile_s']['hyperjax']:.2f} / {r['compile_s']['handwritten']:.2f}"]
            for n, r in results.items()]
    _common.write_markdown(NAME, ["case", "target params", "hnet params", "hand-written ms/step",
                                  "hyperjax ms/step", "ratio", "paired ratio", "hyperjax + grad_norm metric ms/step",
                                  "ratio (default metrics)", "repeats", "compile s (hj / hw)"], rows,
                           args.results_dir,
                           title=f"hyperjax step overhead vs hand-written JAX (goal ratio <= {GOAL_RATIO})")
    with open(os.path.join(args.results_dir, f"{NAME}.md"), "a") as f:
        f.write(NOTES)
    print(f"overhead: worst ratio {worst:.3f} (goal <= {GOAL_RATIO}: {'met' if worst <= GOAL_RATIO else 'MISSED'})"
          f"{' [quick: not a measurement]' if args.quick else ''}; wrote {path}")
    return payload


if __name__ == "__main__":
    main()
