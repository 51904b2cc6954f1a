"""Chunked generator: one shared MLP, vmapped over learned chunk embeddings, emits the target in chunks."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from hyperjax._src import checks
from hyperjax._src.generators import common
from hyperjax._src.spec import TargetSpec
from hyperjax._src.types import HyperNetwork


def chunked(target: TargetSpec, cond_dim: int | None = None, chunk_size: int | None = None,
            chunk_emb_dim: int = 8, *, hidden: int | Sequence[int] = (100,), num_conds: int | None = None,
            where: Any = None, init: str = "hyperfan_in",
            activation: Callable[[jax.Array], jax.Array] = jax.nn.relu, dtype: Any = jnp.float32) -> HyperNetwork:
    """MLP([cond, chunk_emb_i]) -> chunk i of the flat generated vector, for i < ceil(n / chunk_size).

    The chunks are concatenated, the ragged tail is dropped and the vector is split into leaves, so sizes
    that do not divide, biases and mixed leaf dtypes all work. The MLP runs once over all chunks as
    one batched matmul (`jax.vmap`), never a Python loop.

    Args:
      target, cond_dim, hidden, num_conds, where, activation, dtype: as in `dense`.
      chunk_size: scalars emitted per chunk (> 0).
      chunk_emb_dim: size of each learned chunk embedding (hparams["chunk_emb"]: f[n_chunks, chunk_emb_dim]).
      init: "hyperfan_in" / "hyperfan_out". The output layer is shared by chunks that straddle leaves, so
        it is initialised for unit output variance and each leaf gets a fixed per-leaf affine map
        (mean_l + std_l * raw) to the variance a fan-in (fan-out) init gives it.

    Generator parameters: n_chunks * chunk_emb_dim + MLP with sizes (cond_dim + chunk_emb_dim, *hidden, chunk_size).
    """
    who = "generators.chunked"
    paths = common.generated_paths(target, where, who)
    cond = common.conditioning(cond_dim, num_conds, who)
    if chunk_size is None:
        raise ValueError(f"hyperjax.{who}: `chunk_size` is required (scalars per chunk, a positive int).")
    chunk_size = checks.positive_int(chunk_size, "chunk_size", who)
    chunk_emb_dim = checks.positive_int(chunk_emb_dim, "chunk_emb_dim", who)
    hidden = checks.positive_ints(hidden, "hidden", who)
    affine = common.leaf_moments(target, paths, init, who)
    n_out = sum(math.prod(target.leaves[p].shape) for p in paths)
    n_chunks = -(-n_out // chunk_size)
    sizes = (cond.cond_dim + chunk_emb_dim, *hidden, chunk_size)
    d_k = sizes[-2]

    def core_init(key):
        k_emb, k_mlp = jax.random.split(key)
        return {"chunk_emb": jax.random.normal(k_emb, (n_chunks, chunk_emb_dim), dtype),
                "mlp": common.mlp_init(k_mlp, sizes, dtype, out_std=1.0 / math.sqrt(d_k))}

    def core_apply(hparams, c):
        c = c.astype(dtype)

        def one_chunk(emb):
            return common.mlp_apply(hparams["mlp"], jnp.concatenate([c, emb]), activation)

        flat = jax.vmap(one_chunk)(hparams["chunk_emb"]).reshape(-1)
        return common.split_leaves(target, paths, flat, affine=affine)

    return common.assemble(target, paths, common.Core(core_init, core_apply), cond, dtype, who)
