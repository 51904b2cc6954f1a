"""Partial generation: generate the leaves chosen by path, keep the rest as ordinary parameters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hyperjax._src.spec import TargetSpec
from hyperjax._src.types import HyperNetwork


def partial(factory: Callable[..., HyperNetwork], target: TargetSpec, *, where: Any, **kwargs: Any) -> HyperNetwork:
    """`factory(target, where=where, **kwargs)`: e.g. partial(chunked, spec, where="*/kernel", cond_dim=8, chunk_size=64).

    `where` is a glob, a list of globs or a `(path, leaf) -> bool` predicate; a pattern that matches no
    leaf raises and lists the available paths. Leaves not chosen are initialised by `target.init` and
    live in hparams["direct"] (nested by path parts); `apply` returns one combined params tree.
    """
    if where is None:
        raise ValueError("hyperjax.generators.partial: `where` is required (a glob such as '*/kernel', "
                         "a list of globs, or a (path, leaf) -> bool predicate).")
    if not callable(factory):
        raise TypeError(f"hyperjax.generators.partial: `factory` must be a generator factory such as "
                        f"hyperjax.generators.dense, called as factory(target, where=..., **kwargs), got "
                        f"{type(factory).__name__}.")
    return factory(target, where=where, **kwargs)
