"""A layer's params -> their axes (LeafAxes), from the layer's type and options; shared by the linen and NNX
adapters (NNX layer types are given under their linen names: Linear -> Dense, LinearGeneral -> DenseGeneral)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hyperjax._src.spec import LeafAxes, heuristic_axes

NORMS = ("LayerNorm", "RMSNorm", "GroupNorm", "BatchNorm", "InstanceNorm")
CONVS = ("Conv", "ConvTranspose", "ConvLocal")


def _as_tuple(x: Any) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def layer_axes(kind: str, options: Mapping[str, Any], name: str, inner: tuple[int, ...], s: int) -> LeafAxes:
    """Axes of param `name` of a layer of type `kind`, whose own shape is `inner`, after `s` stacked axes."""
    nd = s + len(inner)
    stack = tuple(range(s))
    rest = tuple(range(s, nd))
    if kind == "DenseGeneral":
        nb = len(_as_tuple(options.get("batch_dims", ())))
        nf = len(_as_tuple(options.get("features", ())))
        na = len(_as_tuple(options.get("axis", -1)))
        if name == "kernel" and len(inner) == nb + na + nf:
            return LeafAxes("kernel", stack + rest[:nb], rest[nb:nb + na], rest[nb + na:])
        if name == "bias" and len(inner) == nb + nf:
            return LeafAxes("bias", stack + rest[:nb], (), rest[nb:])
    elif kind in CONVS and name == "kernel" and len(inner) >= 2:
        return LeafAxes("kernel", stack, (nd - 2,), (nd - 1,), rest[:-2])
    elif kind == "Embed" and name == "embedding" and len(inner) == 2:
        return LeafAxes("embedding", stack, (s,), (s + 1,))
    elif kind in NORMS and name in ("scale", "bias"):
        return LeafAxes("scale" if name == "scale" else "bias", stack, (), rest)
    elif name == "bias" and kind:
        return LeafAxes("bias", stack, (), rest)
    return heuristic_axes((1,) * s + inner, "in_out", name, stack=s)


_NNX_KINDS = {"Linear": "Dense", "LinearGeneral": "DenseGeneral", "Conv": "Conv", "ConvTranspose": "ConvTranspose",
              "Embed": "Embed", **{n: n for n in NORMS}}


def nnx_layer_axes(module: Any, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, LeafAxes]:
    """{path: LeafAxes} of an NNX module's params ({path: stored shape}), read from the layers that own them:
    Linear, LinearGeneral, Conv, Embed and norms; leading axes beyond the layer's own rank (params stacked by
    `nnx.vmap` / `nnx.scan`) are stacked layers."""
    from flax import nnx

    out = {}
    for path, node in nnx.iter_graph(module):
        kind = _NNX_KINDS.get(type(node).__name__)
        if kind is None or not isinstance(node, nnx.Module):
            continue
        prefix = "/".join(str(k) for k in path)
        options = {}
        if kind == "DenseGeneral":
            options = {"axis": _as_tuple(node.in_features), "features": _as_tuple(node.out_features),
                       "batch_dims": tuple(getattr(node, "batch_axis", {}) or {})}
        for name in ("kernel", "bias", "scale", "embedding"):
            p = f"{prefix}/{name}" if prefix else name
            if p not in shapes:
                continue
            shape = shapes[p]
            own = _own_rank(kind, name, options, node)
            s = len(shape) - own if own is not None and len(shape) >= own else 0
            out[p] = layer_axes(kind, options, name, tuple(shape[s:]), s)
    return out


def _own_rank(kind: str, name: str, options: Mapping[str, Any], node: Any) -> int | None:
    """The rank a layer's own param has (before any stacking)."""
    if kind == "DenseGeneral":
        nb, na, nf = len(options["batch_dims"]), len(options["axis"]), len(options["features"])
        return nb + na + nf if name == "kernel" else nb + nf
    if kind in CONVS:
        return len(_as_tuple(node.kernel_size)) + 2 if name == "kernel" else 1
    if kind in ("Dense", "Embed"):
        return 2 if name in ("kernel", "embedding") else 1
    return 1
