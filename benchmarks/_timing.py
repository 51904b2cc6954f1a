"""Timing entries `{name, framework, run, final}` and their interleaved measurement (medians, warm-up excluded)."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks import _common


def row(name: str, framework: str, stats: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "framework": framework, **stats, **extra}


def jax_step_entry(name: str, step: Callable, state: Any, batches: Sequence[Any], **extra: Any) -> dict[str, Any]:
    """Entry for a JAX training step `step(state, batch) -> (state, out)`: compiled apart (compile_s), the
    first-step loss recorded, then `run()` does one call on the next batch, threading (donating) the state.

    For a k-steps-per-call step pass `steps_per_call=k` and batches stacked along a leading axis k
    (`stacked_batches`): `measure` then reports the time of one call / k, and the losses are the first
    step's of the first call and the last step's of the last call.
    """
    k = extra.pop("steps_per_call", 1)
    compiled, compile_s = _common.compile_time(step, state, batches[0])
    first = loss_of(compiled(jax.tree.map(jnp.copy, state), batches[0])[1])
    box, count, last = [state], [0], [None]

    def run():
        batch = batches[count[0] % len(batches)]
        count[0] += 1
        box[0], last[0] = compiled(box[0], batch)
        jax.block_until_ready((box[0], last[0]))

    return {"name": name, "framework": "jax", "run": run, "compiled": compiled,
            "final": lambda: {"compile_s": compile_s, "first_loss": first, "final_loss": loss_of(last[0], -1),
                              "xla_flops": cost_flops(compiled), **extra},
            "steps_per_call": k}


def stacked_batches(batches: Sequence[Any], k: int) -> list[Any]:
    """The rotation of `batches` cut into calls of k steps: call g stacks batches (g k + j) mod n, j < k, along
    a new leading axis, so the calls walk the same sequence of batches as k single steps would.

    n / gcd(k, n) calls before the rotation repeats (7 for the 14 digits batches and any even k).
    """
    n = len(batches)
    return [jax.tree.map(lambda *xs: jnp.stack(xs), *[batches[(g * k + j) % n] for j in range(k)])
            for g in range(n // math.gcd(k, n))]


def loss_of(out: Any, index: int = 0) -> float:
    """The loss from a step's second output: make_step's metrics dict, (loss, norm) or loss; for a stacked
    (k-step) output, its `index`-th step's (the first by default)."""
    loss = out["loss"] if isinstance(out, dict) else out[0] if isinstance(out, tuple) else out
    return float(jnp.ravel(loss)[index])


def measure(entries: Sequence[dict], warmup: int, repeats: int, rounds: int, pause_s: float = 0.2) -> list[dict]:
    """Time entries: framework by framework (JAX, then PyTorch), interleaved within a framework.

    In a framework group each entry warms up, then in each of `rounds` rounds (order reversed every other
    round) runs once untimed and ceil(repeats / rounds) times timed, so drift of a shared machine hits its
    rows alike. Frameworks are not interleaved step by step: their thread pools (XLA's, PyTorch's OpenMP)
    would compete for the same cores; a pause separates the groups. Returns rows {name, framework,
    median_ms, min_ms, max_ms, repeats, **final()} in the order of `entries`. An entry with
    `steps_per_call` k reports per step (each call's time / k) and adds call_median_ms, call_min_ms.
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
        ts, k = times[e["name"]], e.get("steps_per_call", 1)
        stats = {"median_ms": statistics.median(ts) / k, "min_ms": min(ts) / k, "max_ms": max(ts) / k,
                 "repeats": len(ts)}
        if k != 1:
            stats |= {"call_median_ms": statistics.median(ts), "call_min_ms": min(ts)}
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
