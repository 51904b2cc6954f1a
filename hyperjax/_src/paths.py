"""Leaf names: `jax.tree_util` key paths <-> "Dense_0/kernel" strings, and glob selectors."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax

Selector = Callable[[str, Any], bool]
Where = str | Sequence[str] | Selector


def key_name(key: Any) -> str:
    """One key-path entry as a plain string: DictKey 'a' -> 'a', SequenceKey 0 -> '0', GetAttrKey w -> 'w'."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_str(key_path: Sequence[Any]) -> str:
    """`jax.tree_util` key path -> "Dense_0/kernel"."""
    return "/".join(key_name(k) for k in key_path)


def leaves_with_paths(tree: Any, is_leaf: Callable[[Any], bool] | None = None) -> list[tuple[str, Any]]:
    """[(path string, leaf), ...] in `jax.tree_util` flatten order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return [(path_str(kp), leaf) for kp, leaf in flat]


def select(*patterns: str) -> Selector:
    """Selector `(path, leaf) -> bool` from shell-style globs; `*` also crosses '/'.

    >>> select("*/kernel")("Dense_0/kernel", None)
    True
    """
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"hyperjax.select: expected one or more glob strings, got {patterns!r}")

    def selector(path: str, leaf: Any = None) -> bool:
        return any(fnmatch.fnmatchcase(path, p) for p in patterns)

    selector.patterns = patterns  # type: ignore[attr-defined]
    return selector


def as_selector(where: Where) -> Selector:
    """A glob, a list of globs, or a `(path, leaf) -> bool` predicate -> a selector."""
    if isinstance(where, str):
        return select(where)
    if callable(where):
        return where
    if isinstance(where, Iterable):
        return select(*where)
    raise TypeError(f"hyperjax: `where` must be a glob string, a list of globs or a (path, leaf) -> bool "
                    f"predicate, got {type(where).__name__}")


def describe(where: Where) -> str:
    """Human-readable form of `where` for error messages."""
    if isinstance(where, str):
        return repr(where)
    pats = getattr(where, "patterns", None)
    if pats is not None:
        return ", ".join(repr(p) for p in pats)
    if callable(where):
        return getattr(where, "__name__", "predicate")
    return ", ".join(repr(p) for p in where)


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{"a/b": x, "a/c": y} -> {"a": {"b": x, "c": y}} (orbax- and optax-friendly nested dicts)."""
    out: dict[str, Any] = {}
    for path, value in flat.items():
        node = out
        *parents, last = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def unnest(tree: dict[str, Any], paths: Iterable[str]) -> dict[str, Any]:
    """Inverse of `nest` for the given paths: nested dicts -> {"a/b": x}."""
    out = {}
    for path in paths:
        node = tree
        for p in path.split("/"):
            node = node[p]
        out[path] = node
    return out
