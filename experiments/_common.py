"""What every experiment shares: argparse defaults, a progress bar, the JSON record, a PNG figure."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import hyperjax as hj


class CompilationCache(argparse.Action):
    """--compilation-cache DIR: turn on JAX's persistent compilation cache in DIR when the flag is parsed."""

    def __call__(self, parser, namespace, values, option_string=None):
        enable_compilation_cache(values)
        setattr(namespace, self.dest, values)


def enable_compilation_cache(directory: str) -> None:
    """JAX's persistent compilation cache: compiled programs are written to `directory` and re-used by later
    processes (every program, however small or quick to compile)."""
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def parser(name: str, description: str, steps: int, images: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=description)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--out", default=f"results/{name}.json", help="JSON results path (a PNG is written beside it)")
    if images:
        p.add_argument("--mnist", default=None, metavar="PATH",
                       help="local MNIST (.npz or folder of IDX files); default: scikit-learn digits")
    p.add_argument("--no-progress", action="store_true", help="disable the progress bar")
    p.add_argument("--steps-per-call", type=int, default=10,
                   help="training steps per compiled call (make_step(steps_per_call=k)); the same updates")
    p.add_argument("--compilation-cache", default=None, metavar="DIR", action=CompilationCache,
                   help="JAX persistent compilation cache directory (warm restarts skip recompiling)")
    return p


def progress(iterable, total: int, desc: str, disable: bool = False):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=disable, dynamic_ncols=True, leave=False)


def train_loop(step, state, order, data: tuple[Any, Any], steps: int, eval_every: int, accuracy, desc: str,
               disable: bool = False, multi: tuple[int, Any] | None = None
               ) -> tuple[Any, dict[str, list[float]], float]:
    """Run `steps` jitted steps on batches data[idx] for idx from `order`, evaluating every `eval_every`.

    step: (state, batch) -> (state, metrics with "loss"); accuracy: params -> scalar test accuracy.
    multi: (k, step_k) with step_k = make_step(..., steps_per_call=k): runs of k steps that fit before the next
      evaluation go in one call over k stacked batches (bitwise the same updates, one dispatch); the rest, and
      runs with multi=None, one step per call.
    Returns (state, curve {"step", "train_loss", "test_accuracy"} starting at step 0, seconds).
    Losses stay on the device between evaluations (no per-step host round trip).
    """
    x_tr, y_tr = data
    k, step_k = multi if multi is not None else (1, None)
    curve = {"step": [0], "train_loss": [float("nan")], "test_accuracy": [float(accuracy(state.params))]}
    losses = []
    t0 = time.perf_counter()
    bar = progress(None, steps, desc, disable=disable)
    i = 0
    while i < steps:
        next_eval = min(steps, (i // eval_every + 1) * eval_every)
        if step_k is not None and next_eval - i >= k:
            idx = np.stack([next(order) for _ in range(k)])
            state, metrics = step_k(state, (x_tr[idx], y_tr[idx]))
            losses.extend(metrics["loss"][j] for j in range(k))
            n = k
        else:
            idx = next(order)
            state, metrics = step(state, (x_tr[idx], y_tr[idx]))
            losses.append(metrics["loss"])
            n = 1
        i += n
        bar.update(n)
        if i == next_eval:
            curve["step"].append(i)
            curve["train_loss"].append(float(np.mean([float(v) for v in losses])))
            curve["test_accuracy"].append(float(accuracy(state.params)))
            losses = []
    bar.close()
    jax.block_until_ready(state.params)
    return state, curve, time.perf_counter() - t0


def make_steps(loss_fn, opt, steps_per_call: int, **kwargs: Any) -> tuple[Any, tuple[int, Any] | None]:
    """(one-step make_step, train_loop's `multi` for steps_per_call > 1 or None)."""
    step = hj.training.make_step(loss_fn, opt, **kwargs)
    if steps_per_call <= 1:
        return step, None
    return step, (steps_per_call, hj.training.make_step(loss_fn, opt, steps_per_call=steps_per_call, **kwargs))


def alternating_round(steps: list):
    """-> jitted round_(states, batches) -> (states, metrics stacked over steps, e.g. loss f32[len(steps)]).

    One update per un-jitted `make_step` function, in order, each starting from the params the previous one
    produced (alternating training of one params tree with several optimizers); every state leaves with the
    last params. states and batches: one per step.
    """
    @jax.jit
    def round_(states, batches):
        params, out, metrics = states[0].params, [], []
        for step, st, batch in zip(steps, states, batches):
            st, m = step(st._replace(params=params), batch)
            params = st.params
            out.append(st)
            metrics.append(m)
        return tuple(o._replace(params=params) for o in out), jax.tree.map(lambda *x: jnp.stack(x), *metrics)

    return round_


def params_sha256(tree: Any) -> str:
    """Hex sha256 of a params pytree: for every leaf in tree (key-path) order, its path, dtype and shape, then
    its raw C-order bytes (typed PRNG keys as their key data). Equal hashes mean bitwise equal trees."""
    h = hashlib.sha256()
    for path, leaf in hj.testing.leaves_with_paths(tree):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{path}|{a.dtype.str}|{a.shape}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def environment() -> dict[str, Any]:
    import flax
    import optax

    return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
            "device": str(jax.devices()[0].device_kind), "platform": jax.default_backend(),
            "python": platform.python_version(), "cpu_count": os.cpu_count()}


def write_json(path: str, name: str, config: dict, metrics: dict, **extra: Any) -> str:
    """Atomically write {experiment, config, seed, environment, metrics, ...} to `path`."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    record = {"experiment": name, "config": config, "seed": config.get("seed"), "environment": environment(),
              "metrics": metrics, "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True, default=float)
    os.replace(tmp, path)
    return path


def png_path(json_path: str, suffix: str = "") -> str:
    root, _ = os.path.splitext(json_path)
    return f"{root}{suffix}.png"


def finish_figure(fig, axes, title: str, path: str) -> str:
    """Grid and legend on `axes`, the title above, saved as PNG at `path` and closed; returns the path."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, y=1.03)
    path = savefig(fig, path)
    plt.close(fig)
    return path


def savefig(fig, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
