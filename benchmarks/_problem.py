"""The problem every case of `benchmarks.run_all` shares: sizes, the target MLP, the loss, the run's context."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

import hyperjax as hj
from benchmarks import _common

# problem sizes (the reference points in the issue use the same)
EMB, HIDDEN, BATCH, LR = 8, 100, 128, 1e-3
DENSE_DIMS = (64, 100, 10)                 # 7,510 target params
CHUNKED_DIMS = (64, 1000, 1000, 10)        # 1,076,010 target params
CHUNK = 4096
PER_SAMPLE_N = 64
MODULATION_BATCH = 256


def target_params(dims: Sequence[int]) -> int:
    return sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))


def mlp_spec(dims: Sequence[int]) -> hj.TargetSpec:
    """TargetSpec of a linen MLP dims[0] -> ... -> dims[-1] with ReLU (paths Dense_i/kernel, Dense_i/bias)."""
    return hj.testing.mlp_spec(tuple(dims))


def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


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
