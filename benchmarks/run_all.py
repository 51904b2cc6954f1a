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

Each case is one module with `run(ctx) -> dict` (benchmarks/case_*.py); this module only parses the
arguments, runs the chosen cases and writes the results.

Writes benchmarks/results/run_all[_gpu][_quick].json and .md; a full run also rewrites benchmarks/RESULTS.md
from the full CPU and GPU JSON files. PyTorch rows need the `compare` extra:
    pip install -e ".[compare]" && pip install --no-deps hypnettorch hyper-nn hyperlight
A missing torch is reported in the results, never a crash.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax

from benchmarks import _common, case_chunked, case_compile_depth, case_dense, case_per_sample, case_scaling
from benchmarks._problem import BATCH, EMB, HIDDEN, LR, Context
from benchmarks._report import render, write_results_md

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_MD = os.path.join(HERE, "RESULTS.md")

# (warmup, repeats) per kind of measurement
CONFIGS = {
    "full": {"fast": (20, 200), "slow": (5, 30), "per_sample": (20, 100), "scaling": (3, 20),
             "rounds": 10, "compile_repeats": 3, "adam": ("fused", "default", "default+ftz")},
    "quick": {"fast": (5, 30), "slow": (2, 8), "per_sample": (5, 30), "scaling": (2, 5),
              "rounds": 2, "compile_repeats": 1, "adam": ("fused", "default", "default+ftz")},
}

CASES: dict[int, tuple[str, Callable[[Context], dict]]] = {
    1: ("1_dense", case_dense.run), 2: ("2_chunked", case_chunked.run), 3: ("3_per_sample", case_per_sample.run),
    4: ("4_scaling", case_scaling.run), 5: ("5_compile_depth", case_compile_depth.run),
}


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


def setup_jax(device: str) -> None:
    """CPU or GPU (SystemExit if JAX sees none), and float32 matmuls (no TF32 on GPU; torch's default too)."""
    if device == "cpu":
        jax.config.update("jax_platforms", "cpu")
    elif jax.default_backend() != "gpu":  # JAX picks a GPU by default when it has one
        raise SystemExit(f"--device gpu: JAX sees no GPU (backend {jax.default_backend()!r}; install "
                         "jax[cuda12]); nothing was run.")
    jax.config.update("jax_default_matmul_precision", "float32")


def run_cases(ctx: Context, numbers: Sequence[int]) -> dict[str, dict[str, Any]]:
    """{case key: the case's section, with the 1-minute load average at its start and end}."""
    cases = {}
    for c in numbers:
        key, fn = CASES[c]
        tc = time.perf_counter()
        print(f"== case {key} ...", flush=True)
        load = os.getloadavg()[0]
        cases[key] = fn(ctx)
        cases[key]["load_average"] = [round(load, 2), round(os.getloadavg()[0], 2)]
        print(f"   done in {time.perf_counter() - tc:.1f} s", flush=True)
    return cases


def make_payload(args: argparse.Namespace, cfg: dict[str, Any], command: str, wall_s: float, torch_mod: Any,
                 torch_note: str, cases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    goals = [{"case": k, **g} for k, case in cases.items() for g in case.get("goals", [])]
    return {"command": command, "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "wall_s": wall_s,
            "config": {"quick": args.quick, "device": args.device, "cases": args.cases,
                       "timing": {k: v for k, v in cfg.items()}, "matmul_precision": "float32",
                       "sizes": {"emb": EMB, "hidden": HIDDEN, "batch": BATCH, "lr": LR}},
            "torch": {"available": torch_mod is not None, "note": torch_note,
                      "versions": torch_mod.environment() if torch_mod else {}},
            "cases": cases, "goals": goals}


def write_outputs(args: argparse.Namespace, name: str, payload: dict[str, Any]) -> dict[str, Any]:
    """<name>.json and <name>.md in --out-dir (and RESULTS.md after a full run); -> the payload as written."""
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


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    setup_jax(args.device)
    cfg = make_config(args.quick, args.warmup, args.repeats)
    torch_mod, torch_note = load_torch(args.no_torch, args.device)
    ctx = Context(cfg, args.quick, args.device, torch_mod, torch_note, args.out_dir)
    name = "run_all" + ("_gpu" if args.device == "gpu" else "") + ("_quick" if args.quick else "")
    command = "python -m benchmarks.run_all" + "".join(" " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    print(f"{command}\n  device {args.device}, JAX {jax.devices()}, "
          f"{'PyTorch: ' + torch_mod.torch.__version__ if torch_mod else torch_note}", flush=True)
    t0 = time.perf_counter()
    cases = run_cases(ctx, args.cases)
    payload = make_payload(args, cfg, command, time.perf_counter() - t0, torch_mod, torch_note, cases)
    return write_outputs(args, name, payload)


if __name__ == "__main__":
    main()
