"""Trace-time validation. Every user-facing error message of hyperjax is written here.

Shapes and dtypes are static under `jit`, so these checks are plain Python and cost nothing
in the compiled program. Each names the leaf path or option, the expected and the actual value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hyperjax._src import paths as _paths


def _fmt(shape: Sequence[int], dtype: Any) -> str:
    return f"{tuple(shape)} {jnp.dtype(dtype).name}"


def positive_int(value: Any, option: str, who: str) -> int:
    """`value` must be a Python int > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"hyperjax.{who}: `{option}` must be a positive int, got {value!r}.")
    return int(value)


def positive_ints(values: Any, option: str, who: str) -> tuple[int, ...]:
    """A sequence of positive ints (e.g. hidden widths); an int is taken as one width."""
    if isinstance(values, (int, np.integer)) and not isinstance(values, bool):
        values = (values,)
    try:
        values = tuple(values)
    except TypeError:
        raise ValueError(f"hyperjax.{who}: `{option}` must be a sequence of positive ints, got {values!r}.")
    for v in values:
        positive_int(v, option, who)
    return tuple(int(v) for v in values)


def one_of(value: Any, options: Sequence[Any], option: str, who: str) -> Any:
    if value not in options:
        raise ValueError(f"hyperjax.{who}: unknown `{option}`={value!r}; valid options are "
                         + ", ".join(repr(o) for o in options) + ".")
    return value


def cond_vector(cond: Any, cond_dim: int, who: str) -> None:
    """A conditioning vector must be f[cond_dim]: no silent broadcasting of a batch or a scalar."""
    shape = tuple(jnp.shape(cond))
    dtype = jnp.result_type(cond)
    if shape != (cond_dim,):
        hint = ""
        if len(shape) == 2 and shape[-1] == cond_dim:
            hint = (" A leading batch axis was given: use hyperjax.per_sample(...) or "
                    "jax.vmap(hnet.apply, in_axes=(None, 0)) for per-example weights.")
        raise ValueError(f"hyperjax.{who}: conditioning input `cond` must have shape ({cond_dim},) "
                         f"(cond_dim={cond_dim}), got {shape}.{hint}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"hyperjax.{who}: conditioning input `cond` must be floating point, got {dtype}. "
                        f"For integer task ids build the generator with num_conds=N.")


def cond_index(cond: Any, num_conds: int, who: str) -> None:
    """An id conditioning input must be an integer scalar (shape ())."""
    shape = tuple(jnp.shape(cond))
    dtype = jnp.result_type(cond)
    if shape != () or not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"hyperjax.{who}: this generator was built with num_conds={num_conds}, so `cond` "
                         f"must be an integer id of shape (), got shape {shape} dtype {dtype}. "
                         f"For per-example ids use jax.vmap over a batch of ids.")
    if not isinstance(cond, jax.core.Tracer):
        c = int(np.asarray(cond))
        if not 0 <= c < num_conds:
            raise ValueError(f"hyperjax.{who}: conditioning id {c} out of range [0, {num_conds}).")


def no_match(where: Any, available: Sequence[str], who: str) -> ValueError:
    shown = ", ".join(available[:40]) + (" ..." if len(available) > 40 else "")
    return ValueError(f"hyperjax.{who}: `where`={_paths.describe(where)} matches no leaf of the target. "
                      f"Available paths: {shown}")


def tree_matches(params: Any, leaves: Mapping[str, jax.ShapeDtypeStruct], treedef: Any, who: str,
                 hint: str = "", what: str = "params") -> None:
    """`params` must have exactly the spec's leaf paths, shapes and dtypes.

    Raises a ValueError naming missing and unexpected paths, or the first leaf whose shape or dtype
    differs, instead of a treedef dump or a later XLA shape error.
    """
    got = _paths.leaves_with_paths(params)
    got_paths = [p for p, _ in got]
    if got_paths != list(leaves):
        missing = [p for p in leaves if p not in set(got_paths)]
        unexpected = [p for p in got_paths if p not in leaves]
        parts = []
        if missing:
            parts.append("missing: " + ", ".join(missing[:20]))
        if unexpected:
            parts.append("unexpected: " + ", ".join(unexpected[:20]))
        if not parts:
            parts.append("same leaf paths in a different order or container type")
        raise ValueError(f"hyperjax.{who}: {what} tree does not match the target ({'; '.join(parts)}).{hint}")
    got_def = jax.tree_util.tree_structure(params)
    if got_def != treedef:
        raise ValueError(f"hyperjax.{who}: {what} tree has the target's leaf paths but different containers "
                         f"(e.g. a list where a tuple or a module was expected): got {got_def}, "
                         f"expected {treedef}.{hint}")
    for (path, leaf) in got:
        want = leaves[path]
        shape, dtype = tuple(jnp.shape(leaf)), jnp.result_type(leaf)
        if shape != tuple(want.shape) or dtype != want.dtype:
            raise ValueError(f"hyperjax.{who}: leaf '{path}' expected {_fmt(want.shape, want.dtype)}, "
                             f"got {_fmt(shape, dtype)}.{hint}")


def leaf_like(path: str, value: Any, want: jax.ShapeDtypeStruct, who: str) -> None:
    shape, dtype = tuple(jnp.shape(value)), jnp.result_type(value)
    if shape != tuple(want.shape) or dtype != want.dtype:
        raise ValueError(f"hyperjax.{who}: leaf '{path}' expected {_fmt(want.shape, want.dtype)}, "
                         f"got {_fmt(shape, dtype)}.")


def missing_extra(extra: str, package: str, who: str) -> ImportError:
    return ImportError(f"hyperjax.{who} needs {package}, which is not installed. "
                       f"Install it with: pip install 'hyperjax[{extra}]' (or pip install {package}).")


def unsupported_state(collections: Sequence[str], who: str, fix: str) -> ValueError:
    return ValueError(f"hyperjax.{who}: the target has non-parameter state ({', '.join(collections)}) that a "
                      f"stateless apply(params, x) would silently drop. {fix}")
