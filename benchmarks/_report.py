"""Results as data (rows with ratios, goals, one section per case) and as markdown (run_all*.md, RESULTS.md)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

INSTALL = ('pip install -e ".[dev,compare]"  # torch==2.13.0\n'
           "pip install --no-deps hypnettorch hyper-nn hyperlight  # their pinned deps would replace torch")
TIME_COLUMNS = [("name", "variant"), ("median_ms", "median ms"), ("min_ms", "min ms"), ("repeats", "repeats")]


# ---------------------------------------------------------------- rows, ratios, goals, sections
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


def section(title: str, rows: list[dict], columns: list[tuple[str, str]], goals: list[dict],
            notes: list[str], **extra: Any) -> dict[str, Any]:
    return {"title": title, "rows": rows, "columns": [list(c) for c in columns], "goals": goals,
            "notes": notes, **extra}


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
    lines = _run_header(payload, label) + _load_lines(payload)
    for case in payload["cases"].values():
        lines += _case_lines(case, payload["environment"])
    return lines + _goal_lines(payload)


def _run_header(payload: dict[str, Any], label: str) -> list[str]:
    env, torch_info = payload["environment"], payload["torch"]
    return [f"## {label}", "",
            f"Command: `{payload['command']}` ({'quick: few repeats, not for citing' if payload['config']['quick'] else 'full'}), "
            f"{payload['written_at']}, {payload['wall_s']:.0f} s.", "",
            f"Machine: {env['machine']}, {env['cpu_count']} CPUs, JAX devices {', '.join(env['devices'])}. "
            f"Versions: Python {env['python']}, jax {env['jax']}, jaxlib {env['jaxlib']}, flax {env['flax']}, "
            f"optax {env['optax']}, numpy {env['numpy']}; "
            + (", ".join(f"{k} {v}" for k, v in torch_info["versions"].items()) if torch_info["available"]
               else torch_info["note"]) + ".", ""]


def _load_lines(payload: dict[str, Any]) -> list[str]:
    env = payload["environment"]
    loads = [x for case in payload["cases"].values() for x in case.get("load_average", [])]
    # the run's own threads (XLA's and torch's, one per core) keep the load near the CPU count; more than
    # that means other processes competed for the cores
    if loads and max(loads) > (env["cpu_count"] or 1) + 0.5:
        return [f"**Busy machine:** the 1-minute load average reached {max(loads):.1f} on {env['cpu_count']} CPUs "
                "during this run (this run's own threads count about one per CPU; other processes were "
                "running), so these timings are noisy; rerun on an idle machine before citing them.", ""]
    if loads:
        return [f"1-minute load average during the run: at most {max(loads):.1f} on {env['cpu_count']} CPUs "
                "(this run's own threads included).", ""]
    return []


def _case_lines(case: dict[str, Any], env: dict[str, Any]) -> list[str]:
    lines = [f"### {case['title']}", ""]
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
    return lines + [""]


def _goal_lines(payload: dict[str, Any]) -> list[str]:
    all_goals = [(case["title"].split(".")[0], g) for case in payload["cases"].values() for g in case.get("goals", [])]
    if not all_goals:
        return []
    return (["### Goals", ""]
            + table(["case", "goal", "value", "target", "passed", "note"],
                    [[c, g["name"], g["value"], f"{g['op']} {g['target']}",
                      "n/a" if g["passed"] is None else g["passed"], g["note"]] for c, g in all_goals])
            + [""])


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
