"""Flax linen module -> TargetSpec."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from hyperjax._src import checks
from hyperjax._src.spec import TargetSpec, spec_from_params


def from_linen(module: Any, *example_args: Any, with_state: bool = False, params: Any = None,
               **example_kwargs: Any) -> TargetSpec:
    """TargetSpec of a `flax.linen.Module`; its params are `variables["params"]`.

    example_args: arrays or `jax.ShapeDtypeStruct`s for `module.init` (traced by `jax.eval_shape`).
    Paths look like 'Dense_0/kernel'. Collections other than "params" (e.g. "batch_stats") raise unless
    `with_state=True`, in which case `apply(params, state, *args) -> (y, new_state)` threads them and
    `spec.init_state(key)` gives their initial values.
    params: existing (e.g. pretrained) weights, `variables["params"]` or the whole `variables`, kept as
      `spec.params` (checked against the module's tree); `spec.init(key)` stays linen's `module.init`.

    Raises:
      TypeError: `module` is not a linen Module.
      ValueError: no "params" collection, other collections without with_state=True, or `params` of another
        tree, shape or dtype (naming the leaf).
    """
    import flax.linen as nn

    if not isinstance(module, nn.Module):
        raise TypeError(f"hyperjax.targets.from_linen: expected a flax.linen.Module, got {type(module).__name__}. "
                        f"For NNX use from_nnx, for Equinox from_equinox.")

    def init_variables(key, args, kwargs):
        return module.init(key, *args, **kwargs)

    variables = jax.eval_shape(init_variables, jax.random.key(0), example_args, example_kwargs)
    if "params" not in variables:
        raise ValueError("hyperjax.targets.from_linen: the module created no 'params' collection.")
    state_cols = sorted(c for c in variables if c != "params")
    if state_cols and not with_state:
        raise checks.unsupported_state(
            state_cols, "targets.from_linen",
            "Pass with_state=True to thread it explicitly: spec.apply(params, state, x) -> (y, new_state).")
    if params is not None and "params" in params and set(params) <= set(variables):
        params = params["params"]                       # the whole variables dict was given

    concrete = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype) if isinstance(x, jax.ShapeDtypeStruct) else x,
                            (example_args, example_kwargs))     # ShapeDtypeStruct examples: zeros for init

    def init_fn(key):
        args, kwargs = concrete
        return module.init(key, *args, **kwargs)["params"]

    if not state_cols:
        def apply_fn(params, *args, **kwargs):
            return module.apply({"params": params}, *args, **kwargs)
        return spec_from_params(apply_fn, variables["params"], init_fn=init_fn, layout="in_out", framework="linen",
                                params=params)

    def apply_with_state(params, state, *args, **kwargs):
        return module.apply({"params": params, **state}, *args, mutable=state_cols, **kwargs)

    def init_state(key):
        args, kwargs = concrete
        v = module.init(key, *args, **kwargs)
        return {c: v[c] for c in state_cols}

    return spec_from_params(apply_with_state, variables["params"], init_fn=init_fn, layout="in_out", params=params,
                            framework="linen", abstract_state={c: variables[c] for c in state_cols},
                            init_state_fn=init_state)
