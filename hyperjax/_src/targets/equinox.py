"""Equinox module -> TargetSpec."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from hyperjax._src import checks
from hyperjax._src.spec import spec_from_params, TargetSpec
from hyperjax._src.targets.nnx import current_weights


def _is_float_leaf(x: Any) -> bool:
    return isinstance(x, (jax.Array, jax.ShapeDtypeStruct)) and jnp.issubdtype(x.dtype, jnp.inexact)


def from_equinox(module: Any, *, factory: Callable[[jax.Array], Any] | None = None) -> TargetSpec:
    """TargetSpec of an `equinox.Module`; params are its floating-point array leaves (`eqx.partition`).

    `module` may also be an abstract module from `eqx.filter_eval_shape(Model, key=...)`: nothing
    is allocated. Params keep the module's own pytree type; paths look like 'layers/0/weight'.
    Kernels are (out, in, ...) ("out_in" layout). Modules holding `eqx.nn.State` (BatchNorm) raise.
    `spec.params` holds the module's current (e.g. pretrained) weights. `init(key)` is Equinox's own
    initialisation: `factory(key)` when given (e.g. `lambda key: eqx.nn.MLP(..., key=key)`); without one it
    returns copies of the weights the module was built with (the key is unused); an abstract module without
    a factory draws from `TargetSpec.init_moments`.

    Raises:
      ImportError: equinox is not installed (names the extra).
      TypeError: `module` is not an equinox.Module.
      ValueError: the module holds eqx.nn.State.
    """
    try:
        import equinox as eqx
    except ImportError as e:
        raise checks.missing_extra("equinox", "equinox", "targets.from_equinox") from e

    if not isinstance(module, eqx.Module):
        raise TypeError(f"hyperjax.targets.from_equinox: expected an equinox.Module, got {type(module).__name__}.")
    state_leaves = [x for x in jax.tree_util.tree_leaves(module, is_leaf=lambda x: isinstance(x, eqx.nn.StateIndex))
                    if isinstance(x, eqx.nn.StateIndex)]
    if state_leaves:
        raise checks.unsupported_state(
            ["eqx.nn.State"], "targets.from_equinox",
            "Remove the stateful layers (e.g. eqx.nn.BatchNorm) or thread the state in a plain function "
            "given to from_fn.")
    params, static = eqx.partition(module, _is_float_leaf)

    def apply_fn(p: Any, *args: Any, **kwargs: Any) -> Any:
        return eqx.combine(p, static)(*args, **kwargs)

    if factory is not None and not callable(factory):
        raise TypeError(f"hyperjax.targets.from_equinox: `factory` must be callable (key -> a new module) or None, got "
                        f"{type(factory).__name__}.")
    concrete = all(isinstance(x, jax.Array) for x in jax.tree.leaves(params))
    init_fn = current_weights(params) if concrete else None
    if factory is not None:
        def init_fn(key):
            return eqx.partition(factory(key), _is_float_leaf)[0]

    return spec_from_params(apply_fn, params, init_fn=init_fn, layout="out_in", framework="equinox",
                            params=params if concrete else None)
