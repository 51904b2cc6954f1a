"""Run an unmodified linen model with factorised per-example weights, through `flax.linen.intercept_methods`.

The factors of `lora`, `low_rank` and `scale_modulation` (`Modulated.factors(hparams, conds)`) give each example
its own weights without a weight matrix per example. `factorised_apply` runs the model's own `apply` with the
shared base kernels and adds, inside every adapted `nn.Dense` / `nn.DenseGeneral` call, the per-example term:

  LoRA       y = x W0 + b + scale ((x A) B)            A: f[B, n_in, r], B: f[B, r, n_out] per example
  low rank   y = x W0 + b + ((x U) * s) V^T            s: f[B, r] per example
  scale      y = ((x * a) W0) * b' + b                 a: f[B, n_in], b': f[B, n_out] per example

Linen: the per-example parts travel as extra entries beside each adapted kernel in the params collection
('kernel:hyperjax_lora_a', ...), with a stacked kernel's layer axes first, so `nn.scan` slices them per layer
like the kernel itself; the interceptor reads them from the calling module. NNX: the module is merged on the
base kernels and its adapted nnx.Linear / nnx.LinearGeneral layers are swapped for factorised ones. The model
code is not changed in either case.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hyperjax._src import paths as _paths
from hyperjax._src import spec as _spec
from hyperjax._src.generators.modulation import LoRAFactors, LowRankFactors, ScaleFactors
from hyperjax._src.spec import TargetSpec
from hyperjax._src.types import Array

FACTOR_TYPES = (LoRAFactors, LowRankFactors, ScaleFactors)
_TAG = "kernel:hyperjax_"


def _is_factors(x: Any) -> bool:
    return isinstance(x, FACTOR_TYPES)


def _stack_first(x: Array, n_stack: int, trailing: int) -> Array:
    """f[*batch, *stack, *trailing] -> f[*stack, *batch, *trailing]."""
    nb = jnp.ndim(x) - n_stack - trailing
    return jnp.moveaxis(x, tuple(range(nb, nb + n_stack)), tuple(range(n_stack))) if n_stack and nb else x


def _extras(target: TargetSpec, path: str, f: Any, who: str) -> tuple[Array, dict[str, Array]]:
    """A factor leaf -> (the kernel in the spec's shape, {extra param name: array, stack axes first})."""
    stack, n_in, n_out = _spec.matrix_shape(target, path)
    ns = len(stack)
    kernel = _spec.from_matrix(target, path, f.base)
    if isinstance(f, LoRAFactors):
        return kernel, {"lora_a": _stack_first(f.a, ns, 2), "lora_b": _stack_first(f.b * f.scale, ns, 2)}
    if ns:
        raise ValueError(f"hyperjax.{who}: leaf '{path}' is a stacked kernel; only LoRA factors of stacked "
                         f"kernels can be applied factorised.")
    if isinstance(f, LowRankFactors):
        return kernel, {"lr_u": f.u, "lr_s": f.s, "lr_v": f.v}
    out = {}
    if f.scale_in is not None:
        out["scale_in"] = f.scale_in
    if f.scale_out is not None:
        out["scale_out"] = f.scale_out
    return kernel, out


def _contracted(mod: Any, x: Array, path: str, who: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(contracted axes of x, the output feature shape) of a Dense / DenseGeneral call."""
    import flax.linen as nn

    if isinstance(mod, nn.Dense):
        return (x.ndim - 1,), (mod.features,)
    if mod.batch_dims:
        raise ValueError(f"hyperjax.{who}: leaf '{path}' belongs to a DenseGeneral with batch_dims="
                         f"{mod.batch_dims}; factorised apply supports DenseGeneral without batch_dims.")
    axis = mod.axis if isinstance(mod.axis, tuple) else (mod.axis,)
    feats = mod.features if isinstance(mod.features, tuple) else (mod.features,)
    return tuple(a % x.ndim for a in axis), tuple(feats)


def _batch_axes(path: str, rest: tuple[int, ...], batch: tuple[int, ...], who: str) -> None:
    if tuple(rest[:len(batch)]) != tuple(batch):
        raise ValueError(f"hyperjax.{who}: leaf '{path}': the layer's input has leading axes {tuple(rest)} but "
                         f"the per-example factors have batch axes {tuple(batch)}; build the factors from one "
                         f"cond per example (the first axis of the model's input).")


def _expand(v: Array, nb: int, n_mid: int) -> Array:
    """f[*batch, k] -> f[*batch, 1 x n_mid, k] to broadcast against f[*batch, *mid, k]."""
    return v.reshape(*v.shape[:nb], *(1,) * n_mid, v.shape[-1])


def _layer_output(call: Any, x: Array, axes: tuple[int, ...], feats: tuple[int, ...], extra: dict[str, Array],
                  bias: Array | None, path: str, who: str) -> Array:
    """One adapted layer: `call(x)` is the layer on the base kernel; adds (or applies) the per-example term."""
    rest_axes = tuple(a for a in range(x.ndim) if a not in axes)
    rest = tuple(x.shape[a] for a in rest_axes)
    n_in = math.prod(x.shape[a] for a in axes)
    x2 = jnp.transpose(x, (*rest_axes, *axes)).reshape(*rest, n_in)
    if "scale_in" in extra or "scale_out" in extra:
        si, so = extra.get("scale_in"), extra.get("scale_out")
        if si is not None:
            nb = si.ndim - 1
            _batch_axes(path, rest, si.shape[:nb], who)
            xs = (x2 * _expand(si, nb, len(rest) - nb).astype(x2.dtype)).reshape(*rest, *(x.shape[a] for a in axes))
            x = jnp.transpose(xs, tuple(int(i) for i in np.argsort((*rest_axes, *axes))))
        y = call(x)
        if so is None:
            return y
        nb = so.ndim - 1
        _batch_axes(path, rest, so.shape[:nb], who)
        so = so.reshape(*so.shape[:nb], *(1,) * (len(rest) - nb), *feats).astype(y.dtype)
        if bias is None:
            return y * so
        bias = bias.reshape((1,) * (y.ndim - bias.ndim) + bias.shape).astype(y.dtype)
        return (y - bias) * so + bias
    y = call(x)
    if "lora_a" in extra:
        a, b = extra["lora_a"], extra["lora_b"]
        nb = a.ndim - 2
        _batch_axes(path, rest, a.shape[:nb], who)
        t = jnp.einsum("...mi,...ir->...mr", x2.reshape(*rest[:nb], -1, n_in), a.astype(y.dtype))
        delta = jnp.einsum("...mr,...ro->...mo", t, b.astype(y.dtype))
    else:
        u, s, v = extra["lr_u"], extra["lr_s"], extra["lr_v"]
        nb = s.ndim - 1
        _batch_axes(path, rest, s.shape[:nb], who)
        delta = ((x2 @ u.astype(y.dtype)) * _expand(s, nb, len(rest) - nb).astype(y.dtype)) @ v.T.astype(y.dtype)
    return y + delta.reshape(*rest, *feats)


def _split_factors(target: TargetSpec, factors: Any, who: str) -> tuple[dict[str, Any], dict[str, dict[str, Array]]]:
    """factors -> ({path: leaf with the base kernels}, {adapted kernel path: its extra arrays})."""
    flat, treedef = jax.tree_util.tree_flatten(factors, is_leaf=_is_factors)
    if treedef != target.treedef:
        raise ValueError(f"hyperjax.{who}: `factors` must have the target's tree (from hnet.factors(hparams, conds) "
                         f"of a generator built for this target), with {len(target.paths)} leaves; got "
                         f"{len(flat)}.")
    leaves, extras = {}, {}
    for path, f in zip(target.paths, flat):
        if not _is_factors(f):
            leaves[path] = f
            continue
        if path.rsplit("/", 1)[-1] != "kernel":
            raise ValueError(f"hyperjax.{who}: leaf '{path}' is not a layer's 'kernel'; factorised apply adds its "
                             f"term inside Dense / Linear layer calls. Use hyperjax.per_sample (materialised).")
        leaves[path], extras[path] = _extras(target, path, f, who)
    if not extras:
        raise TypeError(f"hyperjax.{who}: `factors` has no LoRAFactors / LowRankFactors / ScaleFactors leaf; for "
                        f"ordinary params call target.apply(params, ...).")
    return leaves, extras


def factorised_apply(target: TargetSpec, factors: Any, *args: Any, **kwargs: Any) -> Any:
    """`target`'s model run on `factors` (from `Modulated.factors`): the output of the materialised per-example
    weights, computed as x W0 plus a per-example low-rank / scale term inside each adapted layer.

    target: a linen spec (`from_linen`: the adapted kernels' `nn.Dense` / `nn.DenseGeneral` calls are intercepted
      with `nn.intercept_methods`) or an NNX spec (`from_nnx`: the adapted `nnx.Linear` / `nnx.LinearGeneral`
      layers of a freshly merged module are swapped for factorised ones; not inside `nnx.scan`/`nnx.vmap`).
    factors: `hnet.factors(hparams, conds)` with conds f[B, cond_dim] (or ids (B,)): the model's inputs must
      have the batch axis B first; or `hnet.factors(hparams, cond)` with one cond (one adapter for every example).
    args, kwargs: the model's inputs, as for `target.apply`. Returns what `target.apply` returns. Works under
    jit, grad and vmap; linen `nn.scan`-stacked kernels take LoRA factors (sliced per layer with the kernel).

    Raises:
      TypeError: a target of another framework or with state, or `factors` without any factor leaf.
      ValueError: factors of another tree; an adapted leaf that is not the kernel of a Dense / Linear layer call
        (naming it: use the materialised per-example path `hyperjax.per_sample`); inputs whose leading axes
        differ from the factors' batch axes.
    """
    who = "generators.factorised_apply"
    framework = getattr(target, "framework", None)
    if not isinstance(target, TargetSpec) or framework not in ("linen", "nnx") or target.abstract_state is not None:
        raise TypeError(f"hyperjax.{who}: needs a linen (from_linen) or NNX (from_nnx) TargetSpec without state; "
                        f"got {framework or type(target).__name__}. For other frameworks use "
                        f"hyperjax.generators.modulated_matmul in the model, or the materialised hyperjax.per_sample.")
    leaves, extras = _split_factors(target, factors, who)
    if framework == "nnx":
        return _nnx_apply(target, leaves, extras, args, kwargs, who)
    import flax.linen as nn

    adapted = {p.rsplit("/", 1)[0]: p for p in extras}       # module path -> leaf path
    for p, extra in extras.items():
        for name, value in extra.items():
            leaves[f"{p.rsplit('/', 1)[0]}/{_TAG}{name}"] = value
    hits: set[str] = set()

    def intercept(next_fun, call_args, call_kwargs, context):
        mod = context.module
        if context.method_name != "__call__" or mod.scope is None:
            return next_fun(*call_args, **call_kwargs)
        own = mod.variables.get("params", {})
        extra = {k[len(_TAG):]: v for k, v in own.items() if isinstance(k, str) and k.startswith(_TAG)}
        if not extra:
            return next_fun(*call_args, **call_kwargs)
        mpath = "/".join(mod.scope.path)
        path = adapted.get(mpath, mpath + "/kernel")
        if not isinstance(mod, (nn.Dense, nn.DenseGeneral)):
            raise ValueError(f"hyperjax.{who}: leaf '{path}' belongs to a {type(mod).__name__}; factorised apply "
                             f"adds its term inside nn.Dense / nn.DenseGeneral calls. Use hyperjax.per_sample.")
        hits.add(mpath)
        if call_args:
            x, call = call_args[0], lambda xi: next_fun(xi, *call_args[1:], **call_kwargs)
        else:
            x, call = call_kwargs["inputs"], lambda xi: next_fun(**{**call_kwargs, "inputs": xi})
        axes, feats = _contracted(mod, x, path, who)
        return _layer_output(call, x, axes, feats, extra, own.get("bias"), path, who)

    with nn.intercept_methods(intercept):
        out = target.apply_fn(_paths.nest(leaves), *args, **kwargs)
    missed = sorted(set(adapted) - hits)
    if missed:
        raise ValueError(f"hyperjax.{who}: the model never called the layer of " + ", ".join(
            f"'{adapted[m]}'" for m in missed) + " as an nn.Dense / nn.DenseGeneral, so its factors were not "
            "applied. Use the materialised per-example path hyperjax.per_sample.")
    return out


class _NNXFactorised:
    """Stands in for an nnx.Linear / nnx.LinearGeneral of a merged module: the layer plus its factorised term."""

    def __init__(self, layer: Any, extra: dict[str, Array], path: str, who: str):
        self.layer, self.extra, self.path, self.who = layer, extra, path, who

    def __call__(self, x: Array, *args: Any, **kwargs: Any) -> Any:
        from flax import nnx

        layer = self.layer
        if isinstance(layer, nnx.Linear):
            axes, feats = (x.ndim - 1,), (layer.out_features,)
        else:
            if layer.batch_axis:
                raise ValueError(f"hyperjax.{self.who}: leaf '{self.path}' belongs to a LinearGeneral with "
                                 f"batch_axis; factorised apply supports LinearGeneral without it.")
            axis = layer.axis if isinstance(layer.axis, tuple) else (layer.axis,)
            feats = layer.out_features if isinstance(layer.out_features, tuple) else (layer.out_features,)
            axes = tuple(a % x.ndim for a in axis)
        bias = getattr(layer, "bias", None)
        bias = None if bias is None else bias[...]
        call = lambda xi: layer(xi, *args, **kwargs)     # e.g. out_sharding= from nnx.MultiHeadAttention
        return _layer_output(call, x, axes, tuple(feats), self.extra, bias, self.path, self.who)


def _nnx_apply(target: TargetSpec, leaves: dict[str, Any], extras: dict[str, dict[str, Array]], args: Any,
               kwargs: Any, who: str) -> Any:
    """Merge the module on the base kernels, swap every adapted layer for `_NNXFactorised`, call it."""
    from flax import nnx

    module = target.module_fn(_paths.nest(leaves))
    for path, extra in extras.items():
        if _spec.matrix_shape(target, path)[0]:
            raise ValueError(f"hyperjax.{who}: leaf '{path}' is stacked (nnx.vmap / nnx.scan layers); factorised "
                             f"apply swaps unstacked NNX layers only. Use hyperjax.per_sample (materialised).")
        *parents, name, _ = path.split("/")
        owner = module
        for part in parents:
            owner = owner[int(part)] if isinstance(owner, (list, tuple)) or part.isdigit() else getattr(owner, part)
        layer = owner[int(name)] if name.isdigit() else getattr(owner, name)
        if not isinstance(layer, (nnx.Linear, nnx.LinearGeneral)):
            raise ValueError(f"hyperjax.{who}: leaf '{path}' belongs to a {type(layer).__name__}; factorised apply "
                             f"swaps nnx.Linear / nnx.LinearGeneral layers. Use hyperjax.per_sample.")
        swapped = _NNXFactorised(layer, extra, path, who)
        if name.isdigit():
            owner[int(name)] = swapped
        else:
            object.__setattr__(owner, name, swapped)
    return module(*args, **kwargs)
