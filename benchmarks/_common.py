"""Helpers shared by the benchmarks: timing (warm-up excluded, medians, compile time apart from step time),
the environment, JSON and markdown files, the digits batches, figures, and reading numbers back from JSON."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def timeit(fn: Callable[[], Any], warmup: int = 10, repeats: int = 50) -> dict[str, float]:
    """fn() must block until its result is ready (jax.block_until_ready). Returns ms statistics."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(ts), "min_ms": min(ts), "max_ms": max(ts), "repeats": repeats}


def compile_time(jitted: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """(compiled, seconds) for `jitted.lower(*args).compile()`."""
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def memory_analysis(compiled: Any, unit: int = 1) -> dict[str, float | int | None]:
    """XLA's memory analysis of a compiled program in units of `unit` bytes (1: int bytes, 2**20: float MB):
    {"argument", "output", "temp", "alias", "peak"} with peak ~ argument + output + temp - alias; every value
    None where the backend has no analysis."""
    try:
        ma = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        ma = None
    keys = ("argument", "output", "temp", "alias")
    if ma is None:
        return {k: None for k in (*keys, "peak")}
    conv = int if unit == 1 else (lambda v: float(v) / unit)
    arg, out, tmp, alias = (conv(getattr(ma, f"{k}_size_in_bytes", 0)) for k in keys)
    return {"argument": arg, "output": out, "temp": tmp, "alias": alias, "peak": arg + out + tmp - alias}


def print_rows(rows: list[list[Any]]) -> None:
    """The markdown table's rows on stdout, floats to 3 decimals, cells joined by " | "."""
    for r in rows:
        print(" | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r))


def environment() -> dict[str, Any]:
    import flax
    import jaxlib
    import numpy as np
    import optax

    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
            "optax": optax.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "devices": [str(d) for d in jax.devices()], "backend": jax.default_backend(),
            "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "XLA_FLAGS": os.environ.get("XLA_FLAGS", "<unset>")}


def write_json(name: str, payload: dict[str, Any], results_dir: str = RESULTS_DIR) -> str:
    os.makedirs(results_dir, exist_ok=True)
    path = os.path.join(results_dir, f"{name}.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"benchmark": name, "environment": environment(), **payload}, f, indent=2, default=float)
    os.replace(tmp, path)
    return path


def write_markdown(name: str, header: list[str], rows: list[list[Any]], results_dir: str = RESULTS_DIR,
                   title: str | None = None) -> str:
    os.makedirs(results_dir, exist_ok=True)
    path = os.path.join(results_dir, f"{name}.md")
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = [f"# {title or name}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def digits_batches(batch: int = 128):
    """All full batches of scikit-learn digits (x f32[batch, 64] in [0,1], y int32[batch]) to rotate through."""
    import numpy as np
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int32)
    return [(x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch]) for i in range(len(x) // batch)]


def savefig(fig: Any, path: str) -> str:
    """Save a matplotlib figure (Agg backend, 110 dpi, tight box) to `path`, creating its folder; -> path."""
    import matplotlib

    matplotlib.use("Agg")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def walk_numbers(tree: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    """(dotted key, number) for every number in a JSON tree (lists and booleans are skipped)."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from walk_numbers(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield prefix, float(tree)


def enable_compilation_cache(path: str | None) -> None:
    """JAX's persistent compilation cache in `path`, caching every program (no size or time threshold)."""
    if not path:
        return
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def provenance(label: str | None) -> dict[str, Any]:
    """Which hyperjax was measured: its folder, the git commit and how many files under hyperjax/ differ."""
    import subprocess

    import hyperjax

    pkg = os.path.dirname(os.path.abspath(hyperjax.__file__))
    info: dict[str, Any] = {"label": label, "hyperjax_path": pkg, "git_commit": None,
                            "hyperjax_modified_files": None}
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=os.path.dirname(pkg), capture_output=True, text=True,
                                        timeout=10)
        head = run("rev-parse", "HEAD")
        if head.returncode == 0:
            info["git_commit"] = head.stdout.strip()
            info["hyperjax_modified_files"] = len(run("status", "--porcelain", "--", "hyperjax").stdout.splitlines())
    except (OSError, subprocess.SubprocessError):
        pass
    return info
