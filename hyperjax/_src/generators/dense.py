"""Full-output generator: one MLP from the conditioning vector to every generated scalar."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hyperjax._src import checks
from hyperjax._src.generators import common
from hyperjax._src.spec import TargetSpec
from hyperjax._src.types import HyperNetwork


def dense(target: TargetSpec, cond_dim: int | None = None, *, hidden: int | Sequence[int] = (100,),
          num_conds: int | None = None, where: Any = None, init: str = "hyperfan_in",
          activation: Callable[[jax.Array], jax.Array] = jax.nn.relu, dtype: Any = jnp.float32) -> HyperNetwork:
    """MLP cond -> hidden -> all generated leaves (Ha et al.'s "full" hypernetwork, hypnettorch's HMLP).

    Args:
      target: the TargetSpec to generate.
      cond_dim: length of the conditioning vector; with `num_conds`, of the learned embedding per id.
      hidden: hidden widths of the MLP (() for a linear map).
      num_conds: if set, `cond` is an integer id in [0, num_conds) looked up in hparams["cond_emb"].
      where: glob(s) or `(path, leaf) -> bool` choosing the generated leaves; the others are ordinary
        params in hparams["direct"]. None generates all.
      init: "hyperfan_in" or "hyperfan_out": the output layer's columns for leaf l are drawn with variance
        Var_l / d_k, so that generated kernels start with variance 1/fan_in (1/fan_out) of their layer.
        Assumes the conditioning vector has unit second moment (true for the learned embeddings).
      dtype: dtype of the generator's weights; generated leaves are cast to the target dtypes.

    apply(hparams, cond): cond f[cond_dim] (or int id) -> params shaped like `target`.
    Generator parameters: sum over layers (n_in + 1) * n_out with sizes (cond_dim, *hidden, n_generated).
    """
    who = "generators.dense"
    paths = common.generated_paths(target, where, who)
    cond = common.conditioning(cond_dim, num_conds, who)
    hidden = checks.positive_ints(hidden, "hidden", who)
    mean, std = common.leaf_moments(target, paths, init, who)
    n_out = sum(math.prod(target.leaves[p].shape) for p in paths)
    sizes = (cond.cond_dim, *hidden, n_out)
    d_k = sizes[-2]
    out_std = common.per_element(target, paths, std / math.sqrt(d_k)).astype(np.float32)
    out_mean = common.per_element(target, paths, mean).astype(np.float32)

    def core_init(key):
        return {"mlp": common.mlp_init(key, sizes, dtype, out_std=out_std,
                                       out_mean=out_mean if out_mean.any() else 0.0)}

    def core_apply(hparams, c):
        flat = common.mlp_apply(hparams["mlp"], c.astype(dtype), activation)
        return common.split_leaves(target, paths, flat)

    return common.assemble(target, paths, common.Core(core_init, core_apply), cond, dtype, who)
