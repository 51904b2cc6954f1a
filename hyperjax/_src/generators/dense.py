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

_N_CALIBRATION = 16   # unit-norm codes averaged to scale the output layer at init


def dense(target: TargetSpec, *, cond_dim: int | None = None, num_conds: int | None = None,
          hidden: int | Sequence[int] = common.DEFAULT_HIDDEN, where: Any = None, init: str = "hyperfan_in",
          activation: Callable[[jax.Array], jax.Array] = jax.nn.relu, z_dim: int = common.DEFAULT_Z_DIM,
          dtype: Any = jnp.float32) -> HyperNetwork:
    """MLP cond -> hidden -> all generated leaves (Ha et al.'s "full" hypernetwork, hypnettorch's HMLP).

    Args:
      target: the TargetSpec to generate.
      cond_dim: length of the conditioning vector; with `num_conds`, of the learned embedding per id.
        None (with num_conds=None): a static generator mapping one learned code f[z_dim].
      num_conds: if set, `cond` is an integer id in [0, num_conds) looked up in
        hparams["embedding"]["cond_emb"]. Out-of-range ids raise eagerly; traced ids out of range give NaN
        weights (see `hyperjax.checked` to raise instead).
      hidden: hidden widths of the MLP (() for a linear map).
      where: glob(s) or `(path, leaf) -> bool` choosing the generated leaves; the others are ordinary
        params in hparams["direct"]. None (default) generates every leaf.
      init: "hyperfan_in" or "hyperfan_out": the output layer's columns for leaf l are drawn with variance
        Var_l / d_k and scaled so that this network's last hidden features have unit mean square over 16
        unit-norm codes, so generated kernels start with variance 1/fan_in (1/fan_out) of their layer.
        Assumes the conditioning vector has unit second moment (true for the learned embeddings).
      activation: between hidden layers.
      z_dim: size of the learned code hparams["embedding"]["code"] of the static form (cond_dim=None).
      dtype: of the generator's weights; generated leaves are cast to the target dtypes.

    apply(hparams, cond=None): cond f[cond_dim], an int id, or None (static) -> params shaped like `target`.
    hparams: {"hyper": {"mlp": [...]}, "embedding": {"cond_emb" | "code"}, "direct": ...}.
    Generator parameters: sum over layers (n_in + 1) * n_out with sizes (cond_dim, *hidden, n_generated).
    Raises: TypeError for a target that is not a TargetSpec; ValueError for non-positive sizes, an unknown
    init, or a `where` that matches nothing.
    """
    who = "generators.dense"
    paths = common.generated_paths(target, where, who)
    z_dim = checks.positive_int(z_dim, "z_dim", who)
    cond = common.conditioning(cond_dim, num_conds, who, static=common.LearnedCode(z_dim))
    hidden = checks.positive_ints(hidden, "hidden", who)
    mean, std = common.leaf_moments(target, paths, init, who)
    sizes = (cond.dim, *hidden, common.num_outputs(target, paths))
    d_k = sizes[-2]
    out_std = common.per_element(target, paths, std / math.sqrt(d_k)).astype(np.float32)
    out_mean = common.per_element(target, paths, mean).astype(np.float32)

    def core_init(key):
        k_mlp, k_cal = jax.random.split(key)
        mlp = common.mlp_init(k_mlp, sizes, dtype, out_std=out_std, out_mean=out_mean if out_mean.any() else 0.0)
        if hidden:   # calibrate this network's hidden features: E_c |h(c)|^2 / d_k = 1 over unit codes
            cal = common.embeddings(k_cal, _N_CALIBRATION, cond.dim, dtype)
            h = jax.vmap(lambda c: activation(common.mlp_apply(mlp[:-1], c, activation)))(cal)
            scale = jax.lax.rsqrt(jnp.maximum(jnp.mean(jnp.sum(jnp.square(h), axis=1)) / d_k, 1e-12))
            mlp[-1]["w"] = mlp[-1]["w"] * scale.astype(dtype)
        return {"hyper": {"mlp": mlp}}

    def core_apply(hparams, c):
        flat = common.mlp_apply(hparams["hyper"]["mlp"], c.astype(dtype), activation)
        return common.split_leaves(target, paths, flat)

    return common.assemble(target, paths, common.Core(core_init, core_apply), cond, dtype, who)
