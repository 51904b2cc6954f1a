"""Flax linen module -> TargetSpec: unboxed params, layer axes read from the modules, boxes put back on export."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from hyperjax._src import checks
from hyperjax._src import paths as _paths
from hyperjax._src.spec import LeafAxes, TargetSpec, spec_from_params
from hyperjax._src.targets.layers import layer_axes


def from_linen(module: Any, *example_args: Any, with_state: bool = False, params: Any = None,
               **example_kwargs: Any) -> TargetSpec:
    """TargetSpec of a `flax.linen.Module`; its params are `variables["params"]`, unboxed.

    example_args: arrays or `jax.ShapeDtypeStruct`s for `module.init` (traced by `jax.eval_shape`).
    Paths look like 'Dense_0/kernel'. Collections other than "params" (e.g. "batch_stats") raise unless
    `with_state=True`, in which case `apply(params, state, *args) -> (y, new_state)` threads them and
    `spec.init_state(key)` gives their initial values.
    params: existing (e.g. pretrained) weights, `variables["params"]` or the whole `variables` (boxed or not),
      kept as `spec.params` (checked against the module's tree); `spec.init(key)` stays linen's `module.init`.

    Real models: `nn.with_logical_partitioning` boxes (`nn.Partitioned`) are unboxed, so paths end in the
    param's name ('layers/SelfAttention_0/query/kernel', not '.../value'); `spec.rebox(params)` puts them back
    (exports for the unmodified model), and `spec.logical_names()` gives their logical axis names for
    `hj.sharding`. Each leaf's axes (`spec.leaf_axes(path)`) are read from the layer that owns it: Dense,
    DenseGeneral (attention kernels: (d, heads, head_dim) in (0,), out (1, 2)), Conv, Embed, norm scales,
    and a leading `nn.scan` axis (found by comparing the shape the layer sees with the stored one), so fans,
    init statistics, the 2-D view and per_layer's stacks follow the layers.

    Raises:
      TypeError: `module` is not a linen Module.
      ValueError: no "params" collection, other collections without with_state=True, or `params` of another
        tree, shape or dtype (naming the leaf).
    """
    import flax.linen as nn

    if not isinstance(module, nn.Module):
        raise TypeError(f"hyperjax.targets.from_linen: expected a flax.linen.Module, got {type(module).__name__}. "
                        f"For NNX use from_nnx, for Equinox from_equinox.")

    layers: dict[tuple[str, ...], tuple[str, dict[str, Any], dict[str, tuple[int, ...]]]] = {}

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        mod = context.module
        if mod.scope is not None and tuple(mod.scope.path) not in layers:
            mine = nn.unbox(mod.variables).get("params", {})
            own = {k: tuple(jnp.shape(v)) for k, v in mine.items() if not isinstance(v, Mapping)}
            if own:
                layers[tuple(mod.scope.path)] = (type(mod).__name__, _layer_options(mod), own)
        return out

    def init_variables(key, args, kwargs):
        with nn.intercept_methods(record):
            return module.init(key, *args, **kwargs)

    boxed = jax.eval_shape(init_variables, jax.random.key(0), example_args, example_kwargs)
    if "params" not in boxed:
        raise ValueError("hyperjax.targets.from_linen: the module created no 'params' collection.")
    variables = nn.unbox(boxed)
    state_cols = sorted(c for c in variables if c != "params")
    if state_cols and not with_state:
        raise checks.unsupported_state(
            state_cols, "targets.from_linen",
            "Pass with_state=True to thread it explicitly: spec.apply(params, state, x) -> (y, new_state).")
    if params is not None and "params" in params and set(params) <= set(variables):
        params = params["params"]                       # the whole variables dict was given
    if params is not None:
        params = nn.unbox(params)
    axes = _leaf_axes(boxed["params"], layers)
    has_boxes = any(isinstance(b, nn.meta.AxisMetadata) for b in
                    jax.tree.leaves(boxed["params"], is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata)))
    rebox = _reboxer(boxed["params"]) if has_boxes else None

    concrete = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype) if isinstance(x, jax.ShapeDtypeStruct) else x,
                            (example_args, example_kwargs))     # ShapeDtypeStruct examples: zeros for init

    def init_fn(key):
        args, kwargs = concrete
        return nn.unbox(module.init(key, *args, **kwargs)["params"])

    common = dict(init_fn=init_fn, layout="in_out", framework="linen", params=params, axes=axes, rebox_fn=rebox)
    if not state_cols:
        def apply_fn(params, *args, **kwargs):
            return module.apply({"params": params}, *args, **kwargs)
        return spec_from_params(apply_fn, variables["params"], **common)

    def apply_with_state(params, state, *args, **kwargs):
        return module.apply({"params": params, **state}, *args, mutable=state_cols, **kwargs)

    def init_state(key):
        args, kwargs = concrete
        v = nn.unbox(module.init(key, *args, **kwargs))
        return {c: v[c] for c in state_cols}

    return spec_from_params(apply_with_state, variables["params"], abstract_state={c: variables[c] for c in state_cols},
                            init_state_fn=init_state, **common)


def _layer_options(mod: Any) -> dict[str, Any]:
    """The options of a layer that decide its params' axes (DenseGeneral's axis, features and batch_dims)."""
    out = {}
    for name in ("axis", "features", "batch_dims"):
        value = getattr(mod, name, None)
        if value is not None:
            out[name] = value
    return out


def _leaf_axes(boxed_params: Any, layers: Mapping[tuple[str, ...], tuple[str, dict[str, Any], dict[str, tuple]]]
               ) -> dict[str, LeafAxes]:
    """{path: LeafAxes} of every param: the owning layer's reading of its own (per-layer) shape, shifted by
    the leading axes a `nn.scan` added to the stored shape; logical names from the boxes."""
    import flax.linen as nn

    out = {}
    flat = jax.tree_util.tree_flatten_with_path(boxed_params, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))[0]
    for kp, leaf in flat:
        path = _paths.path_str(kp)
        names = getattr(leaf, "names", None)
        shape = tuple(nn.unbox(leaf).shape)
        owner, name = tuple(path.split("/")[:-1]), path.rsplit("/", 1)[-1]
        kind, options, own = layers.get(owner, ("", {}, {}))
        inner = own.get(name, shape)
        s = len(shape) - len(inner)
        if s < 0 or shape[s:] != inner:
            kind, s, inner = "", 0, shape
        ax = layer_axes(kind, options, name, inner, s)
        if names is not None and len(tuple(names)) == len(shape):
            ax = ax._replace(names=tuple(names))
        out[path] = ax
    return out


def _reboxer(boxed_params: Any):
    """params -> the boxed tree linen's init made (`nn.Partitioned` with their names around each array)."""
    import flax.linen as nn

    def is_box(x):
        return isinstance(x, nn.meta.AxisMetadata)

    def rebox(params):
        return jax.tree.map(lambda box, x: box.replace_boxed(x) if is_box(box) else x, boxed_params, params,
                            is_leaf=is_box)
    return rebox
