"""Low-rank modulation: W(c) = W0 + U diag(s(c)) V^T for each selected matrix, s(c) from a small MLP of c.

The materialising path (`apply`) builds W(c); the factorised path (`factors` + `modulated_matmul`) computes
x @ W(c) = x @ W0 + ((x @ U) * s(c)) @ V^T (Flax orientation) for a batch of examples with one condition
each, never forming a per-example weight matrix. See modulation.py for the shared machinery.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from hyperjax._src import checks
from hyperjax._src.generators.modulation import build, Kind, Leaf, LowRankFactors, Modulated
from hyperjax._src.spec import TargetSpec


def low_rank(target: TargetSpec, cond_dim: int | None = None, *, rank: int, where: Any = None,
             hidden: int | Sequence[int] = (32,), num_conds: int | None = None, init_scale: float = 0.1,
             activation: Callable[[jax.Array], jax.Array] = jax.nn.relu, dtype: Any = jnp.float32) -> Modulated:
    """W(c) = W0 + U diag(s(c)) V^T per selected matrix W0: f[rows, cols], U: f[rows, rank], V: f[cols, rank].

    Args:
      target: the TargetSpec; leaves not selected are ordinary params in hparams["direct"].
      cond_dim: length of the conditioning vector (of the learned embedding per id with `num_conds`).
      rank: r > 0, the rank of the conditioned update (shared U, V; only the r scales s(c) depend on c).
      where: glob(s) or predicate choosing the modulated leaves, each 2-D; None: every 2-D leaf.
      hidden: hidden widths of the MLP cond -> [s_leaf1, s_leaf2, ...] (() for a linear map).
      init_scale: at init the update U diag(s(c)) V^T has entries of std init_scale times the leaf's
        fan-in init std (U, V ~ N(0, 1); the MLP's output layer is scaled to match; its bias is 0), for
        unit-second-moment conditioning.
      activation, dtype: of the MLP; generated leaves are cast to the target's dtypes.

    hparams: {"base": {path parts: W0}, "u": {...: U}, "v": {...: V}, "mlp": [...], "direct": ...,
    ["cond_emb"]}; W0 starts as the target's own init. Trainable: sum over leaves of rows*cols +
    r*(rows + cols), plus the MLP (cond_dim, *hidden, r * num_leaves), plus the ordinary params.
    apply(hparams, cond) -> params; factors(hparams, conds) -> LowRankFactors tree (see `Modulated`).
    Raises ValueError for rank <= 0, cond_dim <= 0, or a selected leaf that is not 2-D.
    """
    who = "generators.low_rank"
    rank = checks.positive_int(rank, "rank", who)
    init_scale = checks.positive_float(init_scale, "init_scale", who)

    def leaf_init(key, l: Leaf):
        k_u, k_v = jax.random.split(key)
        return {"u": jax.random.normal(k_u, (l.rows, rank), dtype), "v": jax.random.normal(k_v, (l.cols, rank), dtype)}

    def materialise(w0, extra, s, l):
        return w0 + (extra["u"] * s[None, :]) @ extra["v"].T

    def factors(w0, extra, s, l):
        if l.transposed:                          # stored (out, in) = W0 + U s V^T: x @ W^T = x W0^T + (x V) s U^T
            return LowRankFactors(w0.T, extra["v"], s, extra["u"])
        return LowRankFactors(w0, extra["u"], s, extra["v"])

    kind = Kind("low_rank", ("u", "v"), lambda l: rank, lambda l: (0.0, init_scale * l.std / math.sqrt(rank)),
                leaf_init, materialise, factors)
    return build(target, cond_dim, kind=kind, where=where, hidden=hidden, num_conds=num_conds,
                 activation=activation, dtype=dtype, who=who)
