"""Plain function `apply(params, *args)` -> TargetSpec."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from hyperjax._src import checks
from hyperjax._src.spec import LAYOUTS, leaves_and_treedef, spec_from_params, TargetSpec
from hyperjax._src.types import Params, PRNGKey


def from_fn(apply_fn: Callable[..., Any], example_params: Any, *,
            init_fn: Callable[[PRNGKey], Params] | None = None, layout: str = "in_out") -> TargetSpec:
    """TargetSpec of a plain `apply_fn(params, *args)`; `example_params` may be arrays or ShapeDtypeStructs.

    `layout` says how kernels are laid out for fan computation ("in_out" = (..., in, out), "out_in").
    Without `init_fn`, `init(key)` draws LeCun-normal kernels and small uniform vectors.

    Raises:
      TypeError: `apply_fn` / `init_fn` not callable; `example_params` does not flatten, or has a leaf that is no
        array, ShapeDtypeStruct or number (naming its path).
      ValueError: no leaves, a non-floating leaf, two leaves with one path string, an unknown layout.
    """
    if not callable(apply_fn):
        raise TypeError(f"hyperjax.targets.from_fn: `apply_fn` must be callable as apply_fn(params, *args), got "
                        f"{type(apply_fn).__name__}.")
    checks.array_leaves(example_params, "example_params", "targets.from_fn")
    checks.one_of(layout, LAYOUTS, "layout", "targets.from_fn")
    leaves, _ = leaves_and_treedef(example_params, "targets.from_fn")
    for path, leaf in leaves.items():
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            raise ValueError(f"hyperjax.targets.from_fn: leaf '{path}' has dtype {leaf.dtype}; only floating "
                             f"point parameters can be generated or trained.")
    return spec_from_params(apply_fn, example_params, init_fn=init_fn, layout=layout, framework="function")
