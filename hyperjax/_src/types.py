"""The hypernetwork protocol and shared type aliases."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

Array = jax.Array
PRNGKey = jax.Array
Params = Any    # a pytree shaped like a TargetSpec's abstract_params
HParams = Any   # the hypernetwork's own trainable pytree


class HyperNetwork(NamedTuple):
    """A hypernetwork as two pure functions, like `optax.GradientTransformation`.

    init:  init(key) -> hparams, the trainable pytree (generator weights, embeddings and, with partial
           generation, the ordinary parameters under hparams["direct"]).
    apply: apply(hparams, cond) -> params with exactly the target's tree structure, shapes and dtypes.
           cond: f[cond_dim], or an integer id of shape () for generators built with num_conds.
           Use jax.vmap(apply, in_axes=(None, 0)) (or hyperjax.per_sample) for per-example weights.
    """

    init: Callable[[PRNGKey], HParams]
    apply: Callable[[HParams, Array], Params]
