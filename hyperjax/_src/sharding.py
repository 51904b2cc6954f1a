"""Placement past one device: `jax.sharding` specs chosen per leaf by path rules.

Rules are (glob, PartitionSpec) pairs; the first glob that matches a leaf's path ("hyper/mlp/1/w",
"direct/Dense_0/kernel") wins (matched by `hyperjax.select`, so `*` crosses '/'; a list of globs or a
`(path, leaf) -> bool` predicate also works), and unmatched leaves get `default` (replicated). Every sharded axis is
checked to divide by its mesh axes at build time, naming the leaf, so XLA never pads silently.

Meshes with `jax.sharding.AxisType.Auto` axes are supported (XLA propagates shardings through the
generator); meshes with explicit axes need per-op `out_sharding` annotations the generators do not
make yet: build them with `jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names))`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hyperjax._src import paths as _paths

Rules = Sequence[tuple[_paths.Where, PartitionSpec]]
_WHO = "sharding"


def _compile(rules: Rules, default: PartitionSpec) -> list[tuple[_paths.Selector, PartitionSpec]]:
    """(glob, PartitionSpec) pairs -> [(selector, PartitionSpec)], each checked once."""
    if isinstance(rules, (str, PartitionSpec)) or not isinstance(rules, Sequence):
        raise TypeError(f"hyperjax.{_WHO}: `rules` must be a sequence of (glob, PartitionSpec) pairs, got "
                        f"{type(rules).__name__}.")
    if not isinstance(default, PartitionSpec):
        raise TypeError(f"hyperjax.{_WHO}: `default` must be a PartitionSpec, got {type(default).__name__}.")
    out = []
    for rule in rules:
        if not isinstance(rule, (tuple, list)) or len(rule) != 2 or not isinstance(rule[1], PartitionSpec):
            raise TypeError(f"hyperjax.{_WHO}: each rule must be a (glob, PartitionSpec) pair, got {rule!r}.")
        out.append((_paths.as_selector(rule[0], _WHO), rule[1]))
    return out


def _axis_size(mesh: Mesh, names: Any) -> int:
    if names is None:
        return 1
    names = names if isinstance(names, tuple) else (names,)
    return math.prod(mesh.shape[n] for n in names)


def _checked(path: str, shape: tuple[int, ...], spec: PartitionSpec, mesh: Mesh) -> PartitionSpec:
    """`spec` for a leaf of `shape`: rank, mesh axes and divisibility checked, naming the leaf."""
    if len(spec) > len(shape):
        raise ValueError(f"hyperjax.sharding: leaf '{path}' has shape {shape} (rank {len(shape)}) but its rule "
                         f"gives PartitionSpec{tuple(spec)} of rank {len(spec)}.")
    for dim, names in zip(shape, spec):
        if names is None:
            continue
        for n in (names if isinstance(names, tuple) else (names,)):
            if n not in mesh.shape:
                raise ValueError(f"hyperjax.sharding: leaf '{path}': mesh has no axis {n!r} "
                                 f"(axes: {', '.join(mesh.axis_names)}).")
        size = _axis_size(mesh, names)
        if dim % size:
            raise ValueError(f"hyperjax.sharding: leaf '{path}' axis of size {dim} does not divide over mesh "
                             f"axes {names!r} of size {size}; change the rule or the layer width.")
    return spec


def _first(compiled: list[tuple[_paths.Selector, PartitionSpec]], path: str, leaf: Any,
           default: PartitionSpec) -> PartitionSpec:
    return next((s for sel, s in compiled if sel(path, leaf)), default)


def spec_for(path: str, shape: tuple[int, ...], mesh: Mesh, rules: Rules,
             default: PartitionSpec = PartitionSpec()) -> PartitionSpec:
    """The PartitionSpec of one leaf (first matching rule, else `default`), checked against its shape and mesh.

    path: the leaf's path string, e.g. "hyper/mlp/1/w"; shape: its shape.

    Raises:
      TypeError: `rules` is not a sequence of (glob, PartitionSpec) pairs, or `default` is no PartitionSpec.
      ValueError: the rule's rank exceeds the leaf's, it names an axis the mesh lacks, or a sharded axis does
        not divide by its mesh axes (naming the leaf).
    """
    leaf = jax.ShapeDtypeStruct(tuple(shape), jnp.float32)
    return _checked(path, tuple(shape), _first(_compile(rules, default), path, leaf, default), mesh)


def shardings(tree: Any, mesh: Mesh, rules: Rules = (), default: PartitionSpec = PartitionSpec()) -> Any:
    """Pytree of `NamedSharding`, one per leaf of `tree` (arrays or ShapeDtypeStructs), same structure.

    Raises:
      TypeError, ValueError: as `spec_for`, for the first leaf whose rule does not fit.
    """
    compiled = _compile(rules, default)

    def one(kp: Any, leaf: Any) -> NamedSharding:
        path = _paths.path_str(kp)
        return NamedSharding(mesh, _checked(path, tuple(leaf.shape), _first(compiled, path, leaf, default), mesh))
    return jax.tree_util.tree_map_with_path(one, tree)


def place(tree: Any, mesh: Mesh, rules: Rules = (), default: PartitionSpec = PartitionSpec()) -> Any:
    """`jax.device_put` every leaf with its rule's sharding.

    Raises:
      TypeError, ValueError: as `shardings`.
    """
    return jax.device_put(tree, shardings(tree, mesh, rules, default))


def abstract_with_shardings(tree: Any, mesh: Mesh, rules: Rules = (),
                            default: PartitionSpec = PartitionSpec()) -> Any:
    """ShapeDtypeStructs carrying shardings, e.g. the abstract target for a sharded Orbax restore.

    Raises:
      TypeError, ValueError: as `shardings`.
    """
    sh = shardings(tree, mesh, rules, default)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, sh)


def batch_sharding(mesh: Mesh, axis: str = "data") -> NamedSharding:
    """Shard the leading (batch) axis over `axis`, e.g. for conds f[B, cond_dim] and inputs f[B, ...].

    Raises:
      ValueError: the mesh has no axis `axis`.
    """
    if axis not in mesh.shape:
        raise ValueError(f"hyperjax.sharding: mesh has no axis {axis!r} (axes: {', '.join(mesh.axis_names)}).")
    return NamedSharding(mesh, PartitionSpec(axis))
