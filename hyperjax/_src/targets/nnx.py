"""Flax NNX module -> TargetSpec."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from hyperjax._src import checks
from hyperjax._src import paths as _paths
from hyperjax._src.spec import spec_from_params, TargetSpec
from hyperjax._src.targets.layers import nnx_layer_axes


def from_nnx(module: Any, *, factory: Callable[[Any], Any] | None = None) -> TargetSpec:
    """TargetSpec of a `flax.nnx.Module`; params are its `nnx.Param` variables as a pure nested dict.

    The graph is split once; `apply(params, *args)` merges it again, so the module stays untouched.
    Paths look like 'linear1/kernel' or 'layers/0/kernel'. Each leaf's axes (`spec.leaf_axes`) come from its
    layer (Linear, LinearGeneral attention kernels, Conv, Embed, norms; params stacked by `nnx.vmap`/`nnx.scan`
    have their leading layer axis marked), as for linen. Non-parameter state other than RNG streams
    (e.g. `nnx.BatchStat`) raises. RNG streams stored in the module (e.g. `nnx.Dropout(rngs=...)`) are
    frozen at their build-time value, so apply is pure and every call draws the same keys; pass fresh ones
    per call, e.g. `spec.apply(params, x, rngs=nnx.Rngs(key))` when the module forwards `rngs`, or call
    with `deterministic=True`.
    `spec.params` holds the module's current (e.g. pretrained) weights. `init(key)` is NNX's own
    initialisation: `factory(nnx.Rngs(key))` when given (a fresh module per key); without a factory NNX
    cannot re-run it, so init returns copies of the weights the module was built with (the key is unused).
    An abstract module (`nnx.eval_shape`) without a factory draws from `TargetSpec.init_moments`.

    Raises:
      TypeError: `module` is not an nnx.Module.
      ValueError: the module holds non-parameter state other than RNG streams.
    """
    from flax import nnx

    if not isinstance(module, nnx.Module):
        raise TypeError(f"hyperjax.targets.from_nnx: expected a flax.nnx.Module, got {type(module).__name__}.")
    graphdef, param_state, rest = nnx.split(module, nnx.Param, ...)
    stateful = sorted({"/".join(str(k) for k in path) + f" ({type(v).__name__})"
                       for path, v in rest.flat_state()
                       if not isinstance(v, nnx.RngState)})
    if stateful:
        raise checks.unsupported_state(
            stateful, "targets.from_nnx",
            "Build the spec from a module without batch statistics, or wrap the stateful call in a plain "
            "function and use from_fn(apply_fn, params) with the state handled explicitly.")
    template = param_state.to_pure_dict()

    def module_fn(params: Any) -> Any:
        state = jax.tree.map(lambda x: x, param_state)
        state.replace_by_pure_dict(params)
        # fresh copies of the other variables too (RNG counters): a call never mutates the captured state,
        # so apply is pure and works under jit (the counters would otherwise leak tracers out of the trace)
        return nnx.merge(graphdef, state, jax.tree.map(lambda x: x, rest))

    def apply_fn(params: Any, *args: Any, **kwargs: Any) -> Any:
        return module_fn(params)(*args, **kwargs)

    if factory is not None and not callable(factory):
        raise TypeError(f"hyperjax.targets.from_nnx: `factory` must be callable (key -> a new module) or None, got "
                        f"{type(factory).__name__}.")
    concrete = all(isinstance(x, jax.Array) for x in jax.tree.leaves(template))
    init_fn = current_weights(template) if concrete else None
    if factory is not None:
        def init_fn(key):
            return nnx.split(factory(nnx.Rngs(key)), nnx.Param, ...)[1].to_pure_dict()

    shapes = {p: tuple(x.shape) for p, x in _paths.leaves_with_paths(template)}
    return spec_from_params(apply_fn, template, init_fn=init_fn, layout="in_out", framework="nnx",
                            params=template if concrete else None, axes=nnx_layer_axes(module, shapes),
                            module_fn=module_fn)


def current_weights(weights: Any) -> Callable[[Any], Any]:
    """init(key) returning copies of a module's own (already initialised) weights; the key is unused."""
    return lambda key: jax.tree.map(lambda x: x.copy(), weights)
