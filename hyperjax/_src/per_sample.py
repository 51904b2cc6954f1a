"""Per-example generated weights: a batch of conditioning inputs -> a batch of params, one per example."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from hyperjax._src.spec import TargetSpec
from hyperjax._src.types import Array, HParams, HyperNetwork


def per_sample(hnet: HyperNetwork, target: TargetSpec, *, example_has_batch_axis: bool = True
               ) -> Callable[..., Any]:
    """fn(hparams, conds, xs) -> ys: example i runs the target with the weights generated from conds[i].

    conds: f[B, cond_dim] (or int[B] ids); xs: f[B, ...]. One `jax.vmap`, no Python loop; the batch of
    params never leaves the compiled program. With `example_has_batch_axis` (default) each example is
    given to the target as a batch of one (x[None]) and the output's leading axis is dropped, so
    convolutional targets that expect NHWC inputs work unchanged.
    """

    def one(hparams: HParams, cond: Array, x: Any) -> Any:
        params = hnet.apply(hparams, cond)
        if not example_has_batch_axis:
            return target.apply(params, x)
        y = target.apply(params, jax.tree.map(lambda a: a[None], x))
        return jax.tree.map(lambda a: a[0], y)

    batched = jax.vmap(one, in_axes=(None, 0, 0))

    def fn(hparams: HParams, conds: Array, xs: Any) -> Any:
        n_cond = jnp.shape(conds)[0] if jnp.ndim(conds) else None
        n_x = {jnp.shape(a)[0] if jnp.ndim(a) else None for a in jax.tree.leaves(xs)}
        if n_cond is None or n_x != {n_cond}:
            raise ValueError(f"hyperjax.per_sample: conds and xs need the same leading batch axis, got conds "
                             f"{tuple(jnp.shape(conds))} and xs with leading sizes {sorted(n_x, key=str)}.")
        return batched(hparams, conds, xs)

    return fn


def generate_batch(hnet: HyperNetwork, hparams: HParams, conds: Array) -> Any:
    """conds f[B, cond_dim] (or int[B] ids) -> params with a leading axis B on every leaf (`jax.vmap` of
    `hnet.apply`). Raises ValueError if conds has no leading batch axis."""
    if jnp.ndim(conds) == 0:
        raise ValueError("hyperjax.generate_batch: conds needs a leading batch axis (f[B, cond_dim] or int[B] "
                         "ids), got shape (); for a single cond call hnet.apply(hparams, cond).")
    return jax.vmap(hnet.apply, in_axes=(None, 0))(hparams, conds)
