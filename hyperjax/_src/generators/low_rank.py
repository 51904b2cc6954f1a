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
from hyperjax._src.generators import common
from hyperjax._src.generators.modulation import build, Kind, Leaf, LowRankFactors, Modulated
from hyperjax._src.spec import TargetSpec


def low_rank(target: TargetSpec, *, rank: int, cond_dim: int | None = None, num_conds: int | None = None,
             where: Any = common.matrices, hidden: int | Sequence[int] = common.DEFAULT_HIDDEN,
             init: str = "hyperfan_in", init_scale: float = 0.1,
             activation: Callable[[jax.Array], jax.Array] = jax.nn.relu, z_dim: int = common.DEFAULT_Z_DIM,
             dtype: Any = jnp.float32) -> Modulated:
    """W(c) = W0 + U diag(s(c)) V^T per selected matrix W0: f[rows, cols], U: f[rows, rank], V: f[cols, rank].

    Args:
      target: the TargetSpec; leaves not selected are ordinary params in hparams["direct"].
      rank: r > 0, the rank of the conditioned update (shared U, V; only the r scales s(c) depend on c).
      cond_dim, num_conds, z_dim: as in `dense` (cond_dim=None: static, one learned code f[z_dim]; traced
        out-of-range ids give NaN weights).
      where: glob(s) or predicate choosing the modulated leaves, each 2-D or an unstacked kernel of another
        rank (DenseGeneral (d, heads, head_dim), conv: modulated as its 2-D view, U over n_in, V over n_out,
        see `hyperjax.targets.as_matrix`); default `matrices` (every 2-D leaf); None: every leaf.
      hidden: hidden widths of the MLP cond -> [s_leaf1, s_leaf2, ...] (() for a linear map).
      init: "hyperfan_in" / "hyperfan_out": W0 ~ N(0, 1/fan_in) (1/fan_out) of its layer.
      init_scale: at init the update U diag(s(c)) V^T has entries of std init_scale times the leaf's
        init std (U, V ~ N(0, 1); the MLP's output layer is scaled to match; its bias is 0), for
        unit-second-moment conditioning; 0 makes W(c) = W0 exactly at init (the MLP's output layer is
        zero; U, V are not, so the first gradient reaches it).
      activation, dtype: of the MLP; generated leaves are cast to the target's dtypes.

    hparams: {"base": {path parts: W0}, "hyper": {"mlp": [...], "u": {...: U}, "v": {...: V}},
    "embedding": ..., "direct": ...}. Trainable: sum over leaves of rows*cols +
    r*(rows + cols), plus the MLP (cond_dim, *hidden, r * num_leaves), plus the ordinary params.
    apply(hparams, cond=None) -> params; factors(hparams, conds) -> LowRankFactors tree (see `Modulated`).
    Raises: TypeError for a target that is not a TargetSpec; ValueError for rank <= 0, non-positive sizes,
    an unknown init, or a selected leaf that is not 2-D.
    """
    who = "generators.low_rank"
    rank = checks.positive_int(rank, "rank", who)
    init_scale = checks.non_negative_float(init_scale, "init_scale", who)

    def leaf_init(key, leaves: list[Leaf]):
        """U, V ~ N(0, 1) of every leaf, from one draw."""
        z = common.normals(key, [s for l in leaves for s in ((l.rows, rank), (l.cols, rank))], dtype)
        return {l.path: {"u": z[2 * i], "v": z[2 * i + 1]} for i, l in enumerate(leaves)}

    def materialise(w0, extra, s, l):
        return common.shared(w0, s) + (extra["u"] * s[None, :]) @ extra["v"].T

    def factors(w0, extra, s, l):
        if l.transposed:                          # stored (out, in) = W0 + U s V^T: x @ W^T = x W0^T + (x V) s U^T
            return LowRankFactors(w0.T, extra["v"], s, extra["u"])
        return LowRankFactors(w0, extra["u"], s, extra["v"])

    kind = Kind("low_rank", ("u", "v"), lambda l: rank, lambda l: (0.0, init_scale * l.std / math.sqrt(rank)),
                leaf_init, materialise, factors)
    return build(target, kind=kind, cond_dim=cond_dim, num_conds=num_conds, where=where, hidden=hidden,
                 init=init, activation=activation, z_dim=z_dim, dtype=dtype, who=who)
