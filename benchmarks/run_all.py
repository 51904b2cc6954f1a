"""hyperjax against hand-written JAX and the PyTorch hypernetwork libraries, side by side in one run.

    python -m benchmarks.run_all [--quick] [--no-torch] [--device cpu|gpu] [--cases 1,2,3,4,5]

Cases (float32, rotating real digits batches, warm-up excluded, medians, each figure also a ratio to its
reference measured in the same run):
  1. dense hypernetwork training step (task emb 8 -> 100 -> 7,510 params of MLP 64-100-10, batch 128, Adam);
  2. chunked hypernetwork step (MLP 64-1000-1000-10, chunks of 4,096) as a fraction of the matmul peak;
  3. per-sample weights (64 conds -> 64 weight sets, each on its own example, forward only), and the
     factorised modulation path against materialising at batch 256 (when hyperjax has it);
  4. scaling of step time and XLA memory with the target size, dense vs chunked (benchmarks/scaling.py);
  5. compile time against depth for the per-layer generator (lax.scan vs a Python loop).

Writes benchmarks/results/run_all[_gpu][_quick].json and .md; a full run also rewrites benchmarks/RESULTS.md
from the full CPU and GPU JSON files. PyTorch rows need the `compare` extra:
    pip install -e ".[compare]" && pip install --no-deps hypnettorch hyper-nn hyperlight
A missing torch is reported in the results, never a crash.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hyperjax as hj
from benchmarks import _common

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_MD = os.path.join(HERE, "RESULTS.md")
INSTALL = ('pip install -e ".[dev,compare]"  # torch==2.13.0\n'
           "pip install --no-deps hypnettorch hyper-nn hyperlight  # their pinned deps would replace torch")

# problem sizes (the reference points in the issue use the same)
EMB, HIDDEN, BATCH, LR = 8, 100, 128, 1e-3
DENSE_DIMS = (64, 100, 10)                 # 7,510 target params
CHUNKED_DIMS = (64, 1000, 1000, 10)        # 1,076,010 target params
CHUNK = 4096
PER_SAMPLE_N = 64
MODULATION_BATCH = 256

# (warmup, repeats) per kind of measurement
CONFIGS = {
    "full": {"fast": (20, 200), "slow": (5, 30), "per_sample": (20, 100), "scaling": (3, 20),
             "rounds": 10, "compile_repeats": 3, "adam": ("fused", "default", "default+ftz")},
    "quick": {"fast": (5, 30), "slow": (2, 8), "per_sample": (5, 30), "scaling": (2, 5),
              "rounds": 2, "compile_repeats": 1, "adam": ("fused", "default", "default+ftz")},
}


def target_params(dims: Sequence[int]) -> int:
    return sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))


# ---------------------------------------------------------------- rows, ratios, goals
def row(name: str, framework: str, stats: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "framework": framework, **stats, **extra}


def add_ratios(rows: list[dict], ref: dict, label: str) -> None:
    """Every row gets `ratio` = its median / the reference median, and `ratio_to` = label."""
    for r in rows:
        if "median_ms" in r:
            r["ratio"] = r["median_ms"] / ref["median_ms"]
            r["ratio_to"] = label


def goal(name: str, value: float | None, op: str, target: float, note: str = "") -> dict[str, Any]:
    """A goal `value op target` (op "<=" or ">="); passed is None when the value could not be measured."""
    if op not in ("<=", ">="):
        raise ValueError(f"goal {name!r}: op must be '<=' or '>=', got {op!r}")
    passed = None if value is None else bool(value <= target if op == "<=" else value >= target)
    return {"name": name, "value": value, "op": op, "target": target, "passed": passed, "note": note}


def find(rows: Sequence[dict], name: str) -> dict | None:
    return next((r for r in rows if r["name"] == name), None)


# ---------------------------------------------------------------- JAX building blocks
def mlp_spec(dims: Sequence[int]) -> hj.TargetSpec:
    """TargetSpec of a linen MLP dims[0] -> ... -> dims[-1] with ReLU (paths Dense_i/kernel, Dense_i/bias)."""
    import flax.linen as nn

    class MLP(nn.Module):
        features: tuple[int, ...]

        @nn.compact
        def __call__(self, x):
            for f in self.features[:-1]:
                x = nn.relu(nn.Dense(f)(x))
            return nn.Dense(self.features[-1])(x)

    return hj.targets.from_linen(MLP(tuple(dims[1:])), jnp.zeros((1, dims[0]), jnp.float32))


def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def hyperjax_step(gen: hj.HyperNetwork, spec: hj.TargetSpec, key: jax.Array, donate: bool = True,
                  grad_norm: bool = False):
    """(jitted step, initial TrainState) for CE on the target with weights from gen.apply(hparams, 0).

    grad_norm=False (default here) gives the hand-written step's outputs; make_step's own default adds it.
    """
    def loss_fn(params, batch, rng):
        x, y = batch
        return cross_entropy(spec.apply(gen.apply(params, 0), x), y)

    opt = optax.adam(LR)
    step = hj.training.make_step(loss_fn, opt, donate=donate, grad_norm=grad_norm)
    return step, hj.training.init_state(gen.init(key), opt, None)  # deterministic loss: no PRNG key in the state


def split_by_paths(spec: hj.TargetSpec, flat: jax.Array) -> dict[str, jax.Array]:
    """Hand-written: slice a flat vector into the spec's leaves in path order."""
    out, offset = {}, 0
    for p, s in spec.leaves.items():
        n = math.prod(s.shape)
        out[p] = flat[offset:offset + n].reshape(s.shape)
        offset += n
    return out


def mlp_forward(leaves: dict[str, jax.Array], x: jax.Array, n_layers: int) -> jax.Array:
    """Hand-written forward of the linen MLP from {path: leaf}."""
    for i in range(n_layers):
        x = x @ leaves[f"Dense_{i}/kernel"] + leaves[f"Dense_{i}/bias"]
        if i < n_layers - 1:
            x = jax.nn.relu(x)
    return x


def handwritten_step(gen_flat: Callable[[Any], jax.Array], spec: hj.TargetSpec, n_layers: int, hparams: Any,
                     donate: bool = True, grad_norm: bool = False):
    """Hand-written jitted step ((params, opt_state), (x, y)) -> ((params, opt_state), loss), optax.adam.

    With grad_norm the step also returns the gradient norm (the same outputs as hyperjax's make_step).
    """
    opt = optax.adam(LR)

    def loss_fn(p, x, y):
        return cross_entropy(mlp_forward(split_by_paths(spec, gen_flat(p)), x, n_layers), y)

    def step(state, batch):
        p, s = state
        loss, g = jax.value_and_grad(loss_fn)(p, *batch)
        upd, s = opt.update(g, s, p)
        return (optax.apply_updates(p, upd), s), ((loss, rows_norm(g)) if grad_norm else loss)

    params = jax.tree.map(jnp.copy, hparams)
    return jax.jit(step, donate_argnums=(0,) if donate else ()), (params, opt.init(params))


def rows_norm(tree: Any) -> jax.Array:
    """Gradient norm summed in rows of 1,024 (optax.global_norm's single reduction is slow on XLA CPU)."""
    total = jnp.zeros((), jnp.float32)
    for x in jax.tree.leaves(tree):
        v = jnp.square(x).ravel()
        if v.shape[0] > 1024:
            v = jnp.sum(jnp.pad(v, (0, -v.shape[0] % 1024)).reshape(-1, 1024), axis=1)
        total = total + jnp.sum(v)
    return jnp.sqrt(total)


def jax_step_entry(name: str, step: Callable, state: Any, batches: Sequence[Any], **extra: Any) -> dict[str, Any]:
    """Entry for a JAX training step `step(state, batch) -> (state, out)`: compiled apart (compile_s), the
    first-step loss recorded, then `run()` does one step on the next batch, threading (donating) the state."""
    compiled, compile_s = _common.compile_time(step, state, batches[0])
    first = _loss_of(compiled(jax.tree.map(jnp.copy, state), batches[0])[1])
    box, count, last = [state], [0], [None]

    def run():
        batch = batches[count[0] % len(batches)]
        count[0] += 1
        box[0], last[0] = compiled(box[0], batch)
        jax.block_until_ready((box[0], last[0]))

    return {"name": name, "framework": "jax", "run": run, "compiled": compiled,
            "final": lambda: {"compile_s": compile_s, "first_loss": first, "final_loss": _loss_of(last[0]),
                              "xla_flops": cost_flops(compiled), **extra}}


def _loss_of(out: Any) -> float:
    """The loss from a step's second output: make_step's metrics dict, (loss, norm) or loss."""
    return float(out["loss"] if isinstance(out, dict) else out[0] if isinstance(out, tuple) else out)


def measure(entries: Sequence[dict], warmup: int, repeats: int, rounds: int, pause_s: float = 0.2) -> list[dict]:
    """Time entries: framework by framework (JAX, then PyTorch), interleaved within a framework.

    In a framework group each entry warms up, then in each of `rounds` rounds (order reversed every other
    round) runs once untimed and ceil(repeats / rounds) times timed, so drift of a shared machine hits its
    rows alike. Frameworks are not interleaved step by step: their thread pools (XLA's, PyTorch's OpenMP)
    would compete for the same cores; a pause separates the groups. Returns rows {name, framework,
    median_ms, min_ms, max_ms, repeats, **final()} in the order of `entries`.
    """
    per_round = -(-repeats // max(rounds, 1))
    times: dict[str, list[float]] = {e["name"]: [] for e in entries}
    frameworks = list(dict.fromkeys(e["framework"] for e in entries))
    for i, fw in enumerate(frameworks):
        group = [e for e in entries if e["framework"] == fw]
        if i:
            time.sleep(pause_s)
        for e in group:
            for _ in range(warmup):
                e["run"]()
        for r in range(max(rounds, 1)):
            for e in (group if r % 2 == 0 else group[::-1]):
                e["run"]()
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    e["run"]()
                    times[e["name"]].append((time.perf_counter() - t0) * 1e3)
    rows = []
    for e in entries:
        ts = times[e["name"]]
        stats = {"median_ms": statistics.median(ts), "min_ms": min(ts), "max_ms": max(ts), "repeats": len(ts)}
        rows.append(row(e["name"], e["framework"], stats, **{k: v for k, v in e.items()
                                                              if k not in ("name", "framework", "run", "final", "compiled")},
                        **e["final"]()))
    return rows


def cost_flops(compiled: Any) -> float | None:
    """XLA's own flop count of a compiled program (None if the backend gives none)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float(cost["flops"]) if cost and "flops" in cost else None


def matmul_entry(n: int) -> dict[str, Any]:
    """Case D of the anchors: jit(jnp.dot) of two n x n float32 matrices."""
    k1, k2 = jax.random.split(jax.random.key(0))
    a = jax.random.normal(k1, (n, n), jnp.float32)
    b = jax.random.normal(k2, (n, n), jnp.float32)
    f = jax.jit(jnp.dot)
    return {"name": f"JAX jit(jnp.dot) {n}x{n} float32", "framework": "jax",
            "run": lambda: f(a, b).block_until_ready(), "final": dict}


# ---------------------------------------------------------------- context
class Context:
    """Everything the cases share: the timing config, batches on the device, the PyTorch side or why not."""

    def __init__(self, cfg: dict[str, Any], quick: bool, device: str, torch_mod: Any, torch_note: str,
                 out_dir: str):
        self.cfg, self.quick, self.device, self.out_dir = cfg, quick, device, out_dir
        self.torch, self.torch_note = torch_mod, torch_note
        self.np_batches = _common.digits_batches(BATCH)
        self.np_small = _common.digits_batches(PER_SAMPLE_N)
        self.batches = [(jnp.asarray(x), jnp.asarray(y)) for x, y in self.np_batches]
        self.key = jax.random.key(0)

    def torch_runner(self, batches):
        return self.torch.Runner("cuda" if self.device == "gpu" else "cpu", batches)


def section(title: str, rows: list[dict], columns: list[tuple[str, str]], goals: list[dict],
            notes: list[str], **extra: Any) -> dict[str, Any]:
    return {"title": title, "rows": rows, "columns": [list(c) for c in columns], "goals": goals,
            "notes": notes, **extra}


TIME_COLUMNS = [("name", "variant"), ("median_ms", "median ms"), ("min_ms", "min ms"), ("repeats", "repeats")]


def jax_entries(ctx: Context, kind: str, gen: hj.HyperNetwork, spec: hj.TargetSpec, gen_flat: Callable,
                n_layers: int, with_no_donation: bool = False) -> list[dict]:
    """hyperjax make_step against the hand-written step with the same outputs: loss only
    (make_step(grad_norm=False)) and loss + gradient norm (make_step's default metrics); all from the same
    initial hparams (their first-step losses are recorded to check they agree)."""
    entries = []
    for donate in (True, False) if with_no_donation else (True,):
        suffix = "" if donate else ", no donation"
        step, state = hyperjax_step(gen, spec, ctx.key, donate)
        entries.append(jax_step_entry(lib_name(kind) + suffix, step, state, ctx.batches,
                                      trainable_params=hj.training.count_params(state.params)))
        step, state = handwritten_step(gen_flat, spec, n_layers, gen.init(ctx.key), donate=donate)
        entries.append(jax_step_entry(HAND + suffix, step, state, ctx.batches))
        if donate:
            step, state = hyperjax_step(gen, spec, ctx.key, grad_norm=True)
            entries.append(jax_step_entry(lib_name(kind, default=True), step, state, ctx.batches))
            step, state = handwritten_step(gen_flat, spec, n_layers, gen.init(ctx.key), grad_norm=True)
            entries.append(jax_step_entry(HAND_NORM, step, state, ctx.batches))
    return entries


def lib_name(kind: str, default: bool = False) -> str:
    return f"hyperjax {kind} + " + ("make_step() default metrics (loss, grad_norm)" if default
                                    else "make_step(grad_norm=False)")


HAND, HAND_NORM = "hand-written JAX", "hand-written JAX + grad norm"


def first_loss_note(rows: Sequence[dict]) -> str:
    firsts = [r["first_loss"] for r in rows if r["framework"] == "jax" and "first_loss" in r]
    return (f"Same initial hparams on every JAX row: first-step losses agree to {max(firsts) - min(firsts):.1e} "
            f"({firsts[0]:.6f}). Pairs with equal outputs: make_step(grad_norm=False) and '{HAND}' (state, loss); "
            f"make_step() and '{HAND_NORM}' (state, loss, gradient norm).")


def step_goals(rows: Sequence[dict], kind: str) -> list[dict]:
    """hyperjax / hand-written for both equal-output pairs (goal <= 1.05)."""
    lib, lib_d = find(rows, lib_name(kind)), find(rows, lib_name(kind, default=True))
    hand, hand_n = find(rows, HAND), find(rows, HAND_NORM)
    return [goal("hyperjax make_step(grad_norm=False) / hand-written JAX", lib["median_ms"] / hand["median_ms"],
                 "<=", 1.05, "same outputs: state and loss"),
            goal("hyperjax make_step() / hand-written JAX + grad norm", lib_d["median_ms"] / hand_n["median_ms"],
                 "<=", 1.05, "same outputs: state, loss and gradient norm")]


# ---------------------------------------------------------------- case 1
def case_dense(ctx: Context) -> dict[str, Any]:
    spec = mlp_spec(DENSE_DIMS)
    gen = hj.generators.dense(spec, cond_dim=EMB, hidden=HIDDEN, num_conds=1)

    def gen_flat(p):  # the same computation as hj.generators.dense, by hand
        h = jax.nn.relu(p["cond_emb"][0] @ p["mlp"][0]["w"] + p["mlp"][0]["b"])
        return h @ p["mlp"][1]["w"] + p["mlp"][1]["b"]

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
    return section("1. Dense hypernetwork training step (emb 8 -> 100 -> 7,510 params of MLP 64-100-10, batch 128, Adam)",
                   rows, TIME_COLUMNS + [("ratio", "ratio vs hand-written JAX")], goals, notes,
                   target_params=target_params(DENSE_DIMS))


# ---------------------------------------------------------------- case 2
def chunked_flops(dims: Sequence[int], chunk: int, emb: int = EMB, hidden: int = HIDDEN, batch: int = BATCH
                  ) -> dict[str, int]:
    """Analytic matmul FLOPs (as the anchors' common.flops_B): step ~ 3 x (hnet fwd + target fwd)."""
    n_chunks = -(-target_params(dims) // chunk)
    hnet = n_chunks * 2 * (2 * emb * hidden + hidden * chunk)
    target = 2 * batch * sum(a * b for a, b in zip(dims[:-1], dims[1:]))
    return {"hnet_fwd": hnet, "target_fwd": target, "step": 3 * (hnet + target)}


def case_chunked(ctx: Context) -> dict[str, Any]:
    spec = mlp_spec(CHUNKED_DIMS)
    gen = hj.generators.chunked(spec, cond_dim=EMB, chunk_size=CHUNK, chunk_emb_dim=EMB, hidden=HIDDEN, num_conds=1)
    n_chunks = -(-spec.size // CHUNK)

    scale = np.repeat([math.sqrt(spec.init_moments(p)[1]) for p in spec.paths],
                      [math.prod(spec.leaves[p].shape) for p in spec.paths]).astype(np.float32)

    def gen_flat(p):  # the same computation as hj.generators.chunked, by hand: batched chunk matmul,
        c = jnp.broadcast_to(p["cond_emb"][0], (n_chunks, EMB))  # features centred over chunks, per-leaf scale
        h = jax.nn.relu(jnp.concatenate([c, p["chunk_emb"]], axis=1) @ p["mlp"][0]["w"] + p["mlp"][0]["b"])
        h = h - jnp.mean(h, axis=0, keepdims=True)
        return (h @ p["mlp"][1]["w"] + p["mlp"][1]["b"]).reshape(-1)[:spec.size] * scale

    n_mm = 4096 if ctx.device == "gpu" else 2048  # the peak is timed interleaved with the steps of its framework
    entries, notes = jax_entries(ctx, "chunked", gen, spec, gen_flat, 3) + [matmul_entry(n_mm)], []
    if ctx.torch is not None:
        entries += ctx.torch.case_chunked(ctx.torch_runner(ctx.np_batches), CHUNKED_DIMS, EMB, HIDDEN, CHUNK,
                                          ctx.cfg["adam"])
        entries.append(ctx.torch.matmul_peak("cuda" if ctx.device == "gpu" else "cpu", n_mm))
    else:
        notes.append(ctx.torch_note)
    rows = measure(entries, *ctx.cfg["slow"], rounds=ctx.cfg["rounds"])
    peaks = [r for r in rows if r["name"].endswith(f"{n_mm}x{n_mm} float32")]
    rows = [r for r in rows if r not in peaks]
    for r in peaks:
        r["gflops"] = 2 * n_mm ** 3 / (r["median_ms"] * 1e-3) / 1e9
        r["gflops_best"] = 2 * n_mm ** 3 / (r["min_ms"] * 1e-3) / 1e9
    notes.insert(0, first_loss_note(rows))
    peak = peaks[0]
    flops = chunked_flops(CHUNKED_DIMS, CHUNK)
    for r in rows:
        r["gflops"] = flops["step"] / (r["median_ms"] * 1e-3) / 1e9
        r["peak_fraction"] = r["gflops"] / peak["gflops"]
        r["peak_fraction_best"] = flops["step"] / (r["min_ms"] * 1e-3) / 1e9 / peak["gflops_best"]
    add_ratios(rows, find(rows, HAND), "hand-written JAX")
    lib = find(rows, lib_name("chunked"))
    hyp = [r for r in rows if r["name"].startswith("hypnettorch")]
    fastest = min(hyp, key=lambda r: r["median_ms"]) if hyp else None
    notes.append(f"FLOPs per step (analytic, 3 x forward matmuls): {flops['step'] / 1e6:.1f} M "
                 f"(hypernetwork forward {flops['hnet_fwd'] / 1e6:.1f} M, target forward {flops['target_fwd'] / 1e6:.1f} M); "
                 f"XLA cost_analysis counts {lib.get('xla_flops') or float('nan'):.3g} for the hyperjax step. "
                 f"Peak = {peak['name']}: {peak['gflops']:.1f} GFLOP/s at its median. 'same, best repeats' divides the "
                 f"step's best repeat by the matmul's best repeat (less sensitive to a busy machine).")
    goals = [goal("hyperjax achieved / matmul peak", lib["peak_fraction"], ">=", 0.75,
                  "make_step(grad_norm=False); FLOPs analytic as in the anchors"),
             *step_goals(rows, "chunked"),
             goal("hypnettorch (fastest Adam) / hyperjax", fastest["median_ms"] / lib["median_ms"] if fastest else None,
                  ">=", 1.7, "the issue's 'about 1.7x' that 75% of peak implies; informational")]
    return section(f"2. Chunked hypernetwork training step (MLP 64-1000-1000-10, {spec.size:,} params, "
                   f"{n_chunks} chunks of {CHUNK})", rows,
                   TIME_COLUMNS + [("ratio", "ratio vs hand-written JAX"), ("gflops", "GFLOP/s"),
                                   ("peak_fraction", "fraction of matmul peak"),
                                   ("peak_fraction_best", "same, best repeats")],
                   goals, notes, peaks=peaks, flops=flops, target_params=spec.size, n_chunks=n_chunks)


# ---------------------------------------------------------------- case 3
LIB_PER_SAMPLE = "hyperjax per_sample (jit)"


def case_per_sample(ctx: Context) -> dict[str, Any]:
    spec = mlp_spec(DENSE_DIMS)
    gen = hj.generators.dense(spec, cond_dim=EMB, hidden=HIDDEN)
    hparams = gen.init(ctx.key)
    conds_np = np.asarray(jax.random.normal(jax.random.key(1), (PER_SAMPLE_N, EMB), jnp.float32))
    conds = jnp.asarray(conds_np)
    xs = [jnp.asarray(x) for x, _ in ctx.np_small]
    notes: list[str] = []

    def single(p, c, x):  # hand-written: one weight set, one example f[64] -> f[10]
        h = jax.nn.relu(c @ p["mlp"][0]["w"] + p["mlp"][0]["b"])
        return mlp_forward(split_by_paths(spec, h @ p["mlp"][1]["w"] + p["mlp"][1]["b"]), x, 2)

    def forward_entry(name: str, fn: Callable[[Any], Any], inputs: Sequence[Any]) -> dict[str, Any]:
        count = [0]

        def run():
            count[0] += 1
            jax.block_until_ready(fn(inputs[count[0] % len(inputs)]))
        return {"name": name, "framework": "jax", "run": run, "final": dict}

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
    lib_row = find(rows, LIB_PER_SAMPLE)
    goals = [goal("hyperjax per_sample / torch hand-batched bmm",
                  lib_row["ratio"] if ctx.torch is not None else None, "<=", 0.8,
                  "" if ctx.torch is not None else ctx.torch_note)]
    modulation = modulation_case(ctx)
    if modulation.get("speedup") is not None:
        goals.append(goal(f"modulation: materialising / factorised at batch {MODULATION_BATCH}",
                          modulation["speedup"], ">=", 5.0, modulation.get("generator", "")))
    else:
        goals.append(goal(f"modulation: materialising / factorised at batch {MODULATION_BATCH}", None, ">=", 5.0,
                          modulation["note"]))
    return section(f"3. Per-sample weights ({PER_SAMPLE_N} conds -> {PER_SAMPLE_N} weight sets of MLP 64-100-10, "
                   "each on its own example, forward only)", rows,
                   TIME_COLUMNS + [("ratio", f"ratio vs {ref_label}")], goals, notes, checks=diffs,
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
    saved = os.path.join(_common.RESULTS_DIR, "modulation.json")
    if os.path.exists(saved):
        with open(saved) as f:
            data = json.load(f)
        speedup = next((v for k, v in _walk(data) if "speedup" in k.lower()), None)
        return {"available": True, "generator": candidates[0], "source": "benchmarks/results/modulation.json "
                "(its own run, not this one)", "speedup": speedup,
                "note": "quoted from benchmarks/results/modulation.json (not measured in this run)"}
    return {"available": False, "generator": candidates[0],
            "note": f"hyperjax.generators.{candidates[0]} exists but benchmarks/modulation.py has no "
                    "compare(batch, warmup, repeats) and no results/modulation.json was found"}


def _walk(tree: Any, prefix: str = ""):
    """(dotted key, number) for every number in a JSON tree."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _walk(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield prefix, float(tree)


# ---------------------------------------------------------------- case 4
def case_scaling(ctx: Context) -> dict[str, Any]:
    from benchmarks import scaling

    return scaling.run(quick=ctx.quick, reps=ctx.cfg["scaling"], batches=ctx.batches, key=ctx.key,
                       out_dir=ctx.out_dir, suffix=("_gpu" if ctx.device == "gpu" else "") + ("_quick" if ctx.quick else ""))


# ---------------------------------------------------------------- case 5
def case_compile_depth(ctx: Context) -> dict[str, Any]:
    depths = (2, 32) if ctx.quick else (2, 8, 32)
    n_rep = ctx.cfg["compile_repeats"]
    rows, notes = [], []
    x, y = ctx.batches[0]
    step, state = _handwritten_deep(depths[0], "lax_scan", ctx.key)  # warm JAX's own tracing caches first
    jax.jit(step).lower(state, (x, y)).compile()
    for depth in depths:
        for variant in ("lax_scan", "python_loop"):
            rows.append(_compile_row("hand-written JAX (reference)", variant, depth,
                                     lambda d=depth, v=variant: _handwritten_deep(d, v, ctx.key), (x, y), n_rep))
    lib_note = _per_layer_note()
    if lib_note is None:
        try:
            for depth in depths:
                for variant in _per_layer_variants():
                    rows.append(_compile_row("hyperjax per_layer", variant, depth,
                                             lambda d=depth, v=variant: _per_layer_deep(d, v, ctx.key), (x, y), n_rep))
        except Exception as e:  # noqa: BLE001 - another helper's generator: report, never crash the run
            rows = [r for r in rows if r["impl"] != "hyperjax per_layer"]
            lib_note = f"hyperjax per_layer exists but building its step failed: {e!r}"[:400]
    if lib_note:
        notes.append(lib_note)
        saved = os.path.join(_common.RESULTS_DIR, "compile_depth.json")
        if os.path.exists(saved):  # the structured-generators benchmark's own figures, quoted as such
            with open(saved) as f:
                quoted = {k: v for k, v in _walk(json.load(f)) if "ratio" in k.lower() or k.lower().endswith("_s")}
            notes.append("Quoted from benchmarks/results/compile_depth.json (its own run, not this one): "
                         + ", ".join(f"{k} {v:.3g}" for k, v in list(quoted.items())[:12]) + ".")
    for r in rows:
        base = next(b for b in rows if b["impl"] == r["impl"] and b["variant"] == r["variant"] and b["depth"] == depths[0])
        r["ratio"] = r["total_s"] / base["total_s"]
        r["ratio_to"] = f"L={depths[0]}, same variant"
    lib_scan = [r for r in rows if r["impl"] == "hyperjax per_layer" and r["variant"] == "lax_scan"
                and r["depth"] == depths[-1]]
    goals = [goal(f"hyperjax per_layer compile time L={depths[-1]} / L={depths[0]}",
                  lib_scan[0]["ratio"] if lib_scan else None, "<=", 1.3, lib_note or "")]
    notes.append("hyperjax per_layer lax_scan: the L hidden layers are one flax.linen.scan (params stacked (L, ...)) "
                 "generated by per_layer(stack_axes=1); python_loop: L separately named Dense layers.")
    notes.append("Target: 64->100 (direct) -> L x [100->100 generated from a layer embedding] -> 10 (direct); "
                 "timed: jit(train step).lower() and .compile(), Adam, batch 128"
                 + (f"; median of {n_rep} fresh compilations." if n_rep > 1 else "; one compilation each."))
    columns = [("impl", "implementation"), ("variant", "variant"), ("depth", "L"), ("lower_s", "trace+lower s"),
               ("compile_s", "XLA compile s"), ("total_s", "total s"), ("ratio", "ratio vs smallest L")]
    return section("5. Compile time vs depth of generated layers", rows, columns, goals, notes)


def _compile_row(impl: str, variant: str, depth: int, build: Callable[[], tuple[Callable, Any]], batch: Any,
                 n_rep: int) -> dict[str, Any]:
    lowers, compiles = [], []
    for _ in range(n_rep):
        step, state = build()  # a fresh function each time: nothing is cached
        t0 = time.perf_counter()
        lowered = jax.jit(step).lower(state, batch)
        t1 = time.perf_counter()
        lowered.compile()
        compiles.append(time.perf_counter() - t1)
        lowers.append(t1 - t0)
    lower_s, compile_s = float(np.median(lowers)), float(np.median(compiles))
    return {"impl": impl, "variant": variant, "depth": depth, "lower_s": lower_s, "compile_s": compile_s,
            "total_s": lower_s + compile_s, "name": f"{impl} {variant} L={depth}"}


def _handwritten_deep(depth: int, variant: str, key: jax.Array):
    """The anchors' case E: one shared hypernetwork generates L 100x100 layers (+bias), scan or Python loop."""
    width, n_layer = DENSE_DIMS[1], DENSE_DIMS[1] ** 2 + DENSE_DIMS[1]
    ks = jax.random.split(key, 6)
    params = {"hnet": {"w0": jax.random.normal(ks[0], (2 * EMB, HIDDEN)) * 0.25, "b0": jnp.zeros(HIDDEN),
                       "w1": jax.random.normal(ks[1], (HIDDEN, n_layer)) * 0.01, "b1": jnp.zeros(n_layer)},
              "layer_emb": jax.random.normal(ks[2], (depth, EMB)), "task_emb": jax.random.normal(ks[3], (EMB,)),
              "w_in": jax.random.normal(ks[4], (DENSE_DIMS[0], width)) * 0.125, "b_in": jnp.zeros(width),
              "w_out": jax.random.normal(ks[5], (width, DENSE_DIMS[2])) * 0.1, "b_out": jnp.zeros(DENSE_DIMS[2])}
    opt = optax.adam(LR)

    def layer(p, emb, h):
        z = jax.nn.relu(jnp.concatenate([emb, p["task_emb"]]) @ p["hnet"]["w0"] + p["hnet"]["b0"])
        flat = z @ p["hnet"]["w1"] + p["hnet"]["b1"]
        return jax.nn.relu(h @ flat[:width * width].reshape(width, width) + flat[width * width:])

    def loss_fn(p, x, y):
        h = jax.nn.relu(x @ p["w_in"] + p["b_in"])
        if variant == "lax_scan":
            h, _ = jax.lax.scan(lambda h, e: (layer(p, e, h), None), h, p["layer_emb"])
        else:
            for i in range(depth):
                h = layer(p, p["layer_emb"][i], h)
        return cross_entropy(h @ p["w_out"] + p["b_out"], y)

    def step(state, batch):
        p, s = state
        loss, g = jax.value_and_grad(loss_fn)(p, *batch)
        upd, s = opt.update(g, s, p)
        return (optax.apply_updates(p, upd), s), loss

    return step, (params, opt.init(params))


def _per_layer_note() -> str | None:
    if not hasattr(hj.generators, "per_layer"):
        return "hyperjax per_layer: not available (hyperjax.generators has no per_layer in this checkout)"
    return None


def _per_layer_variants() -> tuple[str, ...]:
    return ("lax_scan", "python_loop")


def _per_layer_deep(depth: int, variant: str, key: jax.Array):
    """per_layer generating L 100x100 layers (kernel and bias) from layer embeddings (z_dim = d = EMB).

    lax_scan: the target's hidden layers are one `flax.linen.scan` (params stacked (L, ...)) and
    per_layer(stack_axes=1) makes all L in one contraction, as the hand-written scan reference;
    python_loop: L separately named Dense layers (the target's forward and backward unrolled L times).
    The same builder as benchmarks/compile_depth.py.
    """
    from benchmarks import compile_depth

    cfg = {"dims": DENSE_DIMS, "z_dim": EMB, "d": EMB}
    step, state, _, _ = compile_depth.build(variant, depth, cfg, key)
    return step, state


CASES: dict[int, tuple[str, Callable[[Context], dict]]] = {
    1: ("1_dense", case_dense), 2: ("2_chunked", case_chunked), 3: ("3_per_sample", case_per_sample),
    4: ("4_scaling", case_scaling), 5: ("5_compile_depth", case_compile_depth),
}


# ---------------------------------------------------------------- markdown
def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:.3g}" if abs(value) >= 1e4 or abs(value) < 1e-2 else f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]


def render(payload: dict[str, Any], label: str) -> list[str]:
    """Markdown for one run: machine, versions, command, one table per case, the goals."""
    env, torch_info = payload["environment"], payload["torch"]
    lines = [f"## {label}", "",
             f"Command: `{payload['command']}` ({'quick: few repeats, not for citing' if payload['config']['quick'] else 'full'}), "
             f"{payload['written_at']}, {payload['wall_s']:.0f} s.", "",
             f"Machine: {env['machine']}, {env['cpu_count']} CPUs, JAX devices {', '.join(env['devices'])}. "
             f"Versions: Python {env['python']}, jax {env['jax']}, jaxlib {env['jaxlib']}, flax {env['flax']}, "
             f"optax {env['optax']}, numpy {env['numpy']}; "
             + (", ".join(f"{k} {v}" for k, v in torch_info["versions"].items()) if torch_info["available"]
                else torch_info["note"]) + ".", ""]
    loads = [x for case in payload["cases"].values() for x in case.get("load_average", [])]
    # the run's own threads (XLA's and torch's, one per core) keep the load near the CPU count; more than
    # that means other processes competed for the cores
    if loads and max(loads) > (env["cpu_count"] or 1) + 0.5:
        lines += [f"**Busy machine:** the 1-minute load average reached {max(loads):.1f} on {env['cpu_count']} CPUs "
                  "during this run (this run's own threads count about one per CPU; other processes were "
                  "running), so these timings are noisy; rerun on an idle machine before citing them.", ""]
    elif loads:
        lines += [f"1-minute load average during the run: at most {max(loads):.1f} on {env['cpu_count']} CPUs "
                  "(this run's own threads included).", ""]
    all_goals = []
    for key, case in payload["cases"].items():
        lines += [f"### {case['title']}", ""]
        if case.get("rows"):
            cols = case["columns"]
            lines += table([h for _, h in cols], [[r.get(k) for k, _ in cols] for r in case["rows"]]) + [""]
        for note in case.get("notes", []):
            lines.append(f"- {note}")
        if case.get("peaks"):
            lines.append("- Matmul peak, timed interleaved with the steps: " + "; ".join(
                f"{p['name']} {p['median_ms']:.1f} ms = {p['gflops']:.1f} GFLOP/s (best {p['gflops_best']:.1f})"
                for p in case["peaks"]) + ".")
        if case.get("load_average"):
            lines.append(f"- 1-minute load average at the start / end of the case: {case['load_average'][0]} / "
                         f"{case['load_average'][1]} ({env['cpu_count']} CPUs).")
        lines.append("")
        all_goals += [(case["title"].split(".")[0], g) for g in case.get("goals", [])]
    if all_goals:
        lines += ["### Goals", ""]
        lines += table(["case", "goal", "value", "target", "passed", "note"],
                       [[c, g["name"], g["value"], f"{g['op']} {g['target']}",
                         "n/a" if g["passed"] is None else g["passed"], g["note"]] for c, g in all_goals])
        lines.append("")
    return lines


def write_results_md(out_dir: str, path: str) -> str:
    """benchmarks/RESULTS.md from the full CPU and GPU results in out_dir (labelled sections)."""
    lines = ["# Benchmarks: hyperjax vs hand-written JAX vs PyTorch hypernetwork libraries", "",
             "Generated by `python -m benchmarks.run_all` (do not edit by hand). float32; rotating real digits "
             "batches; warm-up excluded; medians; every ratio is against a reference measured in the same run.",
             "", "PyTorch side (the `compare` extra):", "", "```", INSTALL, "```", ""]
    found = False
    for name, label in (("run_all", "CPU"), ("run_all_gpu", "GPU")):
        p = os.path.join(out_dir, f"{name}.json")
        if os.path.exists(p):
            with open(p) as f:
                lines += render(json.load(f), label)
            found = True
    if not found:
        lines.append("No full run recorded yet.")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------- main
def load_torch(no_torch: bool, device: str) -> tuple[Any, str]:
    """(benchmarks.torch_cases or None, note)."""
    if no_torch:
        return None, "--no-torch: PyTorch rows skipped"
    try:
        import torch  # noqa: F401
    except ImportError:
        return None, "torch not installed: PyTorch rows skipped (pip install -e \".[compare]\")"
    try:
        from benchmarks import torch_cases
    except ImportError as e:
        return None, f"PyTorch side unavailable ({e}): PyTorch rows skipped"
    if device == "gpu" and not torch_cases.torch.cuda.is_available():
        return None, "torch has no CUDA device: PyTorch rows skipped on the GPU run"
    return torch_cases, ""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="few repeats and small sizes (< 2 min on 2 CPU cores)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch rows")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--cases", default="1,2,3,4,5", help="comma-separated subset of 1,2,3,4,5")
    p.add_argument("--out-dir", default=_common.RESULTS_DIR, help="where run_all*.json/.md go")
    p.add_argument("--results-md", default=RESULTS_MD, help="RESULTS.md rewritten after a full run")
    p.add_argument("--repeats", type=int, default=None, help="override every repeat count (smoke tests)")
    p.add_argument("--warmup", type=int, default=None, help="override every warm-up count (smoke tests)")
    args = p.parse_args(argv)
    try:
        args.cases = sorted({int(c) for c in args.cases.split(",") if c.strip()})
    except ValueError:
        p.error(f"--cases: expected numbers from 1-5 separated by commas, got {args.cases!r}")
    if not args.cases or any(c not in CASES for c in args.cases):
        p.error(f"--cases: choose from {sorted(CASES)}, got {args.cases}")
    return args


def make_config(quick: bool, warmup: int | None, repeats: int | None) -> dict[str, Any]:
    cfg = dict(CONFIGS["quick" if quick else "full"])
    if warmup is not None or repeats is not None:
        cfg = {k: ((warmup if warmup is not None else v[0], repeats if repeats is not None else v[1])
                   if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], int) else v) for k, v in cfg.items()}
    return cfg


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.device == "cpu":
        jax.config.update("jax_platforms", "cpu")
    elif jax.default_backend() != "gpu":  # JAX picks a GPU by default when it has one
        raise SystemExit(f"--device gpu: JAX sees no GPU (backend {jax.default_backend()!r}; install "
                         "jax[cuda12]); nothing was run.")
    jax.config.update("jax_default_matmul_precision", "float32")  # no TF32 on GPU; torch's default too
    cfg = make_config(args.quick, args.warmup, args.repeats)
    torch_mod, torch_note = load_torch(args.no_torch, args.device)
    ctx = Context(cfg, args.quick, args.device, torch_mod, torch_note, args.out_dir)
    name = "run_all" + ("_gpu" if args.device == "gpu" else "") + ("_quick" if args.quick else "")
    command = "python -m benchmarks.run_all" + "".join(" " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    print(f"{command}\n  device {args.device}, JAX {jax.devices()}, "
          f"{'PyTorch: ' + torch_mod.torch.__version__ if torch_mod else torch_note}", flush=True)
    t0 = time.perf_counter()
    cases = {}
    for c in args.cases:
        key, fn = CASES[c]
        tc = time.perf_counter()
        print(f"== case {key} ...", flush=True)
        load = os.getloadavg()[0]
        cases[key] = fn(ctx)
        cases[key]["load_average"] = [round(load, 2), round(os.getloadavg()[0], 2)]
        print(f"   done in {time.perf_counter() - tc:.1f} s", flush=True)
    goals = [{"case": k, **g} for k, case in cases.items() for g in case.get("goals", [])]
    payload = {"command": command, "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "wall_s": time.perf_counter() - t0,
               "config": {"quick": args.quick, "device": args.device, "cases": args.cases,
                          "timing": {k: v for k, v in cfg.items()}, "matmul_precision": "float32",
                          "sizes": {"emb": EMB, "hidden": HIDDEN, "batch": BATCH, "lr": LR}},
               "torch": {"available": torch_mod is not None, "note": torch_note,
                         "versions": torch_mod.environment() if torch_mod else {}},
               "cases": cases, "goals": goals}
    path = _common.write_json(name, payload, results_dir=args.out_dir)
    with open(path) as f:
        payload = json.load(f)
    md = os.path.join(args.out_dir, f"{name}.md")
    with open(md, "w") as f:
        f.write("\n".join(render(payload, f"{args.device.upper()} ({name})")) + "\n")
    if not args.quick:
        write_results_md(args.out_dir, args.results_md)
    print("\n".join(render(payload, name)))
    print(f"wrote {path} and {md}" + ("" if args.quick else f" and {args.results_md}"))
    return payload


if __name__ == "__main__":
    main()
