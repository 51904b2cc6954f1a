"""Time to the first training step in a fresh process: hand-written JAX vs every generator.

    python -m benchmarks.startup                  # 8 cases x 3 repeats x (cold, warm cache) fresh processes
    python -m benchmarks.startup --quick          # 1 repeat each (smoke test); --cases hand,dense for a subset
    python -m benchmarks.startup --compilation-cache DIR   # where the warm-cache runs keep their cache

Each measurement is a new Python process (`python -m benchmarks.startup --child CASE`) that takes the time
before `import jax` and reports, for the quickstart target (linen MLP 64-256-256-10, batch 128 of random
data, cross-entropy, optax.adam(1e-3)):

* import_s: importing jax, flax, optax and hyperjax;
* spec_s: `hj.testing.mlp_spec` (`hj.targets.from_linen` of the same MLP; hand: 0, there is no spec);
* init_s: `hnet.init(key)` until its arrays are ready (hand: the linen module's `init`);
* first_step_s: `hj.training.init_state` + `make_step` + the first step until its outputs are ready (hand:
  `optimizer.init` + a jitted value_and_grad/Adam step written out);
* total_s: from before `import jax` to the end of the first step;
* init_compilations / step_compilations: XLA compilations in those phases, counted with a `jax.monitoring`
  listener on "/jax/core/compile/backend_compile_duration" (one event per compiled program, persistent
  cache hits included; `*_cache_hits` counts "/jax/compilation_cache/cache_hits").

Cold runs start with an empty persistent compilation cache (a new directory per case and repeat, which the
cold run fills: what a first run with the cache enabled costs); the warm run right after (`warm_cache`)
reads that directory. ratio_to_hand = total_s / hand's total_s (medians) in the same run.
Writes `--out` (default benchmarks/results/startup.json) and a markdown table beside it.
This module imports nothing at module level that would start JAX, so the child's clock starts first.
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()     # the child's clock: before anything imports jax

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from typing import Any  # noqa: E402

NAME = "startup"
CASES = ("hand", "dense", "chunked", "per_layer", "low_rank", "scale_modulation", "rowwise", "codebook")
GOAL_RATIO = 1.3              # issue 12: every generator's total_s <= 1.3x hand-written JAX
GOAL_INIT_COMPILATIONS = 2    # ... and hnet.init at most 2 compilations
MARK = "STARTUP_RESULT "
WIDTHS = (64, 256, 256, 10)
BATCH = 128
NUM_CONDS = 4


# ---------------------------------------------------------------- child (one fresh process)
def child(case: str, cache_dir: str | None) -> dict[str, Any]:
    t_import = time.perf_counter()
    import jax

    from benchmarks import _common    # after jax: it imports jax itself

    _common.enable_compilation_cache(cache_dir)
    counts = {"compile": 0, "hit": 0}

    def on_duration(event: str, duration: float, **kw: Any) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            counts["compile"] += 1

    def on_event(event: str, **kw: Any) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            counts["hit"] += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)
    import flax.linen as nn
    import jax.numpy as jnp
    import optax

    if case != "hand":                 # hand-written JAX does not import hyperjax
        import hyperjax as hj
        from benchmarks import batched_grad

    class MLP(nn.Module):
        """x: f32[batch, 64] -> logits f32[batch, 10]; ReLU between Dense layers."""

        @nn.compact
        def __call__(self, h):
            for i, f in enumerate(WIDTHS[1:]):
                h = nn.Dense(f)(h)
                if i < len(WIDTHS) - 2:
                    h = nn.relu(h)
            return h

    out: dict[str, Any] = {"case": case, "import_s": time.perf_counter() - t_import}
    rng = jax.random.key(0)
    x = jax.random.normal(jax.random.key(1), (BATCH, WIDTHS[0]), jnp.float32)
    y = jax.random.randint(jax.random.key(2), (BATCH,), 0, WIDTHS[-1])
    model = MLP()
    opt = optax.adam(1e-3)
    base = dict(counts)

    def phase(name: str, t: float) -> None:
        nonlocal base
        out[f"{name}_s"] = time.perf_counter() - t
        out[f"{name}_compilations"] = counts["compile"] - base["compile"]
        out[f"{name}_cache_hits"] = counts["hit"] - base["hit"]
        base = dict(counts)

    cond = None if case == "hand" else batched_grad.conds_for(case, NUM_CONDS)[0]
    out["setup_compilations"] = counts["compile"]      # the data above (random normal, randint, the cond)
    base = dict(counts)
    if case == "hand":
        out["spec_s"], out["spec_compilations"], out["spec_cache_hits"] = 0.0, 0, 0
        t = time.perf_counter()
        params = jax.block_until_ready(model.init(rng, x[:1])["params"])
        phase("init", t)
        t = time.perf_counter()

        def loss_fn(p, x, y):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()

        @jax.jit
        def step(p, s, x, y):
            loss, g = jax.value_and_grad(loss_fn)(p, x, y)
            updates, s = opt.update(g, s, p)
            return optax.apply_updates(p, updates), s, loss

        opt_state = opt.init(params)
        jax.block_until_ready(step(params, opt_state, x, y))
        phase("first_step", t)
    else:
        t = time.perf_counter()
        spec = hj.testing.mlp_spec(WIDTHS)             # the same linen ReLU MLP, through from_linen
        phase("spec", t)
        t = time.perf_counter()
        hnet = batched_grad.GENERATORS[case](spec, NUM_CONDS)
        hparams = jax.block_until_ready(hnet.init(rng))
        phase("init", t)
        t = time.perf_counter()
        apply = batched_grad.apply_fn(case, hnet)

        def loss_fn(hp, batch, _rng):
            bx, by = batch
            logits = spec.apply(apply(hp, cond), bx)
            return optax.softmax_cross_entropy_with_integer_labels(logits, by).mean()

        state = hj.training.init_state(hparams, opt)
        step = hj.training.make_step(loss_fn, opt)
        state, metrics = step(state, (x, y))
        jax.block_until_ready((state, metrics))
        phase("first_step", t)
    out["total_s"] = time.perf_counter() - _T0
    out["step_compilations"] = out.pop("first_step_compilations")
    out["step_cache_hits"] = out.pop("first_step_cache_hits")
    return out


# ---------------------------------------------------------------- parent
def run_child(case: str, cache_dir: str | None, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.startup", "--child", case]
    if cache_dir:
        cmd += ["--child-cache", cache_dir]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t
    lines = [l for l in proc.stdout.splitlines() if l.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"startup child {case!r} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    res = json.loads(lines[-1][len(MARK):])
    res["process_wall_s"] = wall
    return res


KEYS = ("total_s", "import_s", "spec_s", "init_s", "first_step_s", "process_wall_s")
COUNTS = ("init_compilations", "step_compilations", "spec_compilations", "init_cache_hits", "step_cache_hits")


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    cases: dict[str, dict[str, Any]] = {}
    for case, rs in runs.items():
        c = {k: statistics.median(r[k] for r in rs) for k in KEYS}
        c.update({k: int(statistics.median(r[k] for r in rs)) for k in COUNTS})
        c["total_all_s"] = [r["total_s"] for r in rs]
        c["repeats"] = len(rs)
        cases[case] = c
    hand = cases.get("hand", {}).get("total_s")
    for c in cases.values():
        c["ratio_to_hand"] = c["total_s"] / hand if hand else None
    return cases


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 repeat per case and cache state (smoke test)")
    p.add_argument("--repeats", type=int, default=None, help="fresh processes per case and cache state (3)")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ",".join(CASES))
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/startup.json)")
    p.add_argument("--label", default=None, help="free text stored in the JSON (what was measured)")
    p.add_argument("--compilation-cache", default=None, metavar="DIR",
                   help="folder for the runs' persistent caches, one subfolder per case and repeat "
                        "(default: a new temporary folder, removed at the end)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per child process")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-cache", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(MARK + json.dumps(child(args.child, args.child_cache)), flush=True)
        return {}

    from benchmarks import _common

    cases = [c for c in args.cases.split(",") if c]
    for c in cases:
        if c not in CASES:
            raise SystemExit(f"unknown case {c!r}; choose from {', '.join(CASES)}")
    repeats = args.repeats or (1 if args.quick else 3)
    out = args.out or os.path.join(_common.RESULTS_DIR, f"{NAME}.json")
    tmp = None
    cache_root = args.compilation_cache
    if cache_root is None:
        tmp = tempfile.TemporaryDirectory(prefix="hyperjax_startup_cache_")
        cache_root = tmp.name
    load_before = _common.load_average()
    t_start = time.perf_counter()
    cold: dict[str, list] = {c: [] for c in cases}
    warm: dict[str, list] = {c: [] for c in cases}
    for r in range(repeats):           # interleave cases and cache states, so machine drift hits all alike
        for c in (cases if r % 2 == 0 else cases[::-1]):
            cache_dir = os.path.join(cache_root, f"{c}-{r}")          # empty: the cold run fills it
            cold[c].append(run_child(c, cache_dir, args.timeout))
            warm[c].append(run_child(c, cache_dir, args.timeout))
            print(f"{c:17s} cold {cold[c][-1]['total_s']:6.2f} s (init {cold[c][-1]['init_s']:5.2f} s, "
                  f"{cold[c][-1]['init_compilations']} compilations)  warm {warm[c][-1]['total_s']:6.2f} s",
                  flush=True)
    payload = {"config": {"target": f"linen MLP {'-'.join(map(str, WIDTHS))}", "batch": BATCH,
                          "optimizer": "adam(1e-3)", "num_conds": NUM_CONDS, "repeats": repeats,
                          "quick": args.quick, "cases": cases, "compilation_cache": args.compilation_cache},
               "provenance": _common.provenance(args.label),
               "load_average_before": load_before, "load_average_after": _common.load_average(),
               "wall_s": time.perf_counter() - t_start,
               "goals": {"ratio_to_hand_max": GOAL_RATIO, "init_compilations_max": GOAL_INIT_COMPILATIONS},
               "cases": summarise(cold),
               "warm_cache": {"cases": summarise(warm)}}
    if tmp is not None:
        tmp.cleanup()
    out_dir, base = os.path.split(os.path.abspath(out))
    name = base[:-5] if base.endswith(".json") else base
    _common.write_json(name, payload, results_dir=out_dir)
    header = ["case", "total s", "ratio to hand", "import s", "spec s", "init s", "first step s",
              "init compilations", "step compilations", "warm total s", "warm ratio", "warm init s",
              "warm init cache hits"]
    rows = []
    for c in cases:
        a, w = payload["cases"][c], payload["warm_cache"]["cases"][c]
        rows.append([c, a["total_s"], a["ratio_to_hand"] if a["ratio_to_hand"] is not None else "-",
                     a["import_s"], a["spec_s"], a["init_s"], a["first_step_s"], a["init_compilations"],
                     a["step_compilations"], w["total_s"],
                     w["ratio_to_hand"] if w["ratio_to_hand"] is not None else "-", w["init_s"],
                     w["init_cache_hits"]])
    _common.write_markdown(name, header, rows, results_dir=out_dir,
                           title=f"Time to the first step in a fresh process (median of {repeats}; load average "
                                 f"{load_before})")
    return payload


if __name__ == "__main__":
    main()
