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


def parser(name: str, description: str, steps: int, images: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=description)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--out", default=f"results/{name}.json", help="JSON results path (a PNG is written beside it)")
    if images:
        p.add_argument("--mnist", default=None, metavar="PATH",
                       help="local MNIST (.npz or folder of IDX files); default: scikit-learn digits")
    p.add_argument("--no-progress", action="store_true", help="disable the progress bar")
    return p


def progress(iterable, total: int, desc: str, disable: bool = False):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=disable, dynamic_ncols=True, leave=False)


def train_loop(step, state, order, data: tuple[Any, Any], steps: int, eval_every: int, accuracy, desc: str,
               disable: bool = False) -> tuple[Any, dict[str, list[float]], float]:
    """Run `steps` jitted steps on batches data[idx] for idx from `order`, evaluating every `eval_every`.

    step: (state, batch) -> (state, metrics with "loss"); accuracy: params -> scalar test accuracy.
    Returns (state, curve {"step", "train_loss", "test_accuracy"} starting at step 0, seconds).
    Losses stay on the device between evaluations (no per-step host round trip).
    """
    x_tr, y_tr = data
    curve = {"step": [0], "train_loss": [float("nan")], "test_accuracy": [float(accuracy(state.params))]}
    losses = []
    t0 = time.perf_counter()
    for i in progress(range(1, steps + 1), steps, desc, disable=disable):
        idx = next(order)
        state, metrics = step(state, (x_tr[idx], y_tr[idx]))
        losses.append(metrics["loss"])
        if i % eval_every == 0 or i == steps:
            curve["step"].append(i)
            curve["train_loss"].append(float(np.mean([float(v) for v in losses])))
            curve["test_accuracy"].append(float(accuracy(state.params)))
            losses = []
    jax.block_until_ready(state.params)
    return state, curve, time.perf_counter() - t0


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
    import hyperjax as hj

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
