"""A user's own network (linen, NNX or Equinox module) as the body of a generator.

The body maps the conditioning vector to one flat vector of every generated scalar; hyperjax splits it
into the target's leaves with the hyperfan statistics, exactly as `dense` does with its built-in MLP.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from hyperjax._src import checks
from hyperjax._src.generators import common
from hyperjax._src.spec import TargetSpec
from hyperjax._src.targets.auto import module_spec
from hyperjax._src.types import HyperNetwork

WHO = "generators.from_module"
_N_CALIBRATION = 16   # unit-normal conds averaged to set the output gain at init


def from_module(module: Any, target: TargetSpec, *, cond_dim: int | None = None, num_conds: int | None = None,
                where: Any = None, init: str = "hyperfan_in", z_dim: int = common.DEFAULT_Z_DIM,
                dtype: Any = jnp.float32) -> HyperNetwork:
    """`module` (a linen, NNX or Equinox module, or a TargetSpec) maps c: f[cond_dim] -> f[n_generated].

    Args:
      module: the body. Called on one conditioning vector (vmap for batches); it must return a floating
        vector of exactly n_generated = the number of scalars in the generated leaves
        (`hj.generators.num_outputs(target, where=...)`). Linen bodies are initialised from init's key;
        NNX and Equinox bodies start from the weights they hold (init returns copies).
      target: the TargetSpec to generate.
      cond_dim, num_conds, where, z_dim: as in `dense` (cond_dim=None: static, the body maps one learned code
        f[z_dim]; with num_conds, an id's learned embedding; traced out-of-range ids give NaN weights).
      init: "hyperfan_in" / "hyperfan_out". The body's raw output is scaled by a learned gain
        hparams["hyper"]["gain"], set at init to 1 / RMS of the raw outputs over 16 unit-normal conds, and
        each leaf gets the fixed affine map mean_l + std_l * raw of its fan-in (fan-out) init.
      dtype: of the learned embeddings and the gain.

    apply(hparams, cond=None) -> params shaped like `target`.
    hparams: {"hyper": {"body": <module params>, "gain": f[]}, "embedding": {"cond_emb" | "code"}, "direct": ...}.
    Raises: TypeError for a module of another kind or a non-TargetSpec target; ValueError when the body's
    output is not f[n_generated] floating (naming both shapes).
    """
    paths = common.generated_paths(target, where, WHO)
    z_dim = checks.positive_int(z_dim, "z_dim", WHO)
    cond = common.conditioning(cond_dim, num_conds, WHO, static=common.LearnedCode(z_dim))
    example = jax.ShapeDtypeStruct((cond.dim,), dtype)
    body, body_init = module_spec(module, example, WHO)
    n_out = common.num_outputs(target, paths)
    out = jax.eval_shape(body.apply, body.abstract_params, example)
    if not isinstance(out, jax.ShapeDtypeStruct) or tuple(out.shape) != (n_out,) \
            or not jnp.issubdtype(out.dtype, jnp.floating):
        got = jax.tree.map(lambda x: f"{tuple(x.shape)} {x.dtype}", out)
        raise ValueError(f"hyperjax.{WHO}: the module maps a cond of shape ({cond.dim},) to {got}, but the "
                         f"{len(paths)} generated leaves need one floating vector of ({n_out},). End the module "
                         f"with a layer of {n_out} outputs (hj.generators.num_outputs(target, where=...)).")
    affine = common.leaf_moments(target, paths, init, WHO)

    def core_init(key):
        k_body, k_cal = jax.random.split(key)
        params = body_init(k_body)
        cal = jax.random.normal(k_cal, (_N_CALIBRATION, cond.dim), dtype)
        raw = jax.vmap(lambda c: body.apply(params, c))(cal)
        gain = jax.lax.rsqrt(jnp.maximum(jnp.mean(jnp.square(raw.astype(jnp.float32))), 1e-12)).astype(dtype)
        return {"hyper": {"body": params, "gain": gain}}

    def core_apply(hparams, c):
        raw = body.apply(hparams["hyper"]["body"], c) * hparams["hyper"]["gain"]
        return common.split_leaves(target, paths, raw, affine=affine)

    return common.assemble(target, paths, common.Core(core_init, core_apply), cond, dtype, WHO)


def num_outputs(target: TargetSpec, *, where: Any = None) -> int:
    """Number of scalars a generator of `target` emits for `where` (None: every leaf): the width a
    `from_module` body must end with. Raises ValueError when `where` matches nothing."""
    return common.num_outputs(target, common.generated_paths(target, where, "generators.num_outputs"))
