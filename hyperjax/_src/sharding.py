"""Placement past one device: `jax.sharding` specs chosen per leaf by path rules.

Rules are (glob, PartitionSpec) pairs; the first glob that matches a leaf's path ("mlp/1/w",
"direct/Dense_0/kernel") wins, and unmatched leaves get `default` (replicated). Every sharded axis is
checked to divide by its mesh axes at build time, naming the leaf, so XLA never pads silently.

Meshes with `jax.sharding.AxisType.Auto` axes are supported (XLA propagates shardings through the
generator); meshes with explicit axes need per-op `out_sharding` annotations the generators do not
make yet: build them with `jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names))`.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hyperjax._src import paths as _paths

Rules = Sequence[tuple[str, PartitionSpec]]


def _axis_size(mesh: Mesh, names: Any) -> int:
    if names is None:
        return 1
    names = names if isinstance(names, tuple) else (names,)
    return math.prod(mesh.shape[n] for n in names)


def spec_for(path: str, shape: tuple[int, ...], mesh: Mesh, rules: Rules,
             default: PartitionSpec = PartitionSpec()) -> PartitionSpec:
    """The PartitionSpec of one leaf (first matching rule), checked against its shape and the mesh."""
    spec = next((s for pattern, s in rules if fnmatch.fnmatchcase(path, pattern)), default)
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


def shardings(tree: Any, mesh: Mesh, rules: Rules = (), default: PartitionSpec = PartitionSpec()) -> Any:
    """Pytree of `NamedSharding`, one per leaf of `tree` (arrays or ShapeDtypeStructs)."""
    def one(kp, leaf):
        return NamedSharding(mesh, spec_for(_paths.path_str(kp), tuple(leaf.shape), mesh, rules, default))
    return jax.tree_util.tree_map_with_path(one, tree)


def place(tree: Any, mesh: Mesh, rules: Rules = (), default: PartitionSpec = PartitionSpec()) -> Any:
    """`jax.device_put` every leaf with its rule's sharding."""
    return jax.device_put(tree, shardings(tree, mesh, rules, default))


def abstract_with_shardings(tree: Any, mesh: Mesh, rules: Rules = (),
                            default: PartitionSpec = PartitionSpec()) -> Any:
    """ShapeDtypeStructs carrying shardings, e.g. the abstract target for a sharded Orbax restore."""
    sh = shardings(tree, mesh, rules, default)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, sh)


def batch_sharding(mesh: Mesh, axis: str = "data") -> NamedSharding:
    """Shard the leading (batch) axis over `axis`, e.g. for conds and inputs of per-example weights."""
    if axis not in mesh.shape:
        raise ValueError(f"hyperjax.sharding: mesh has no axis {axis!r} (axes: {', '.join(mesh.axis_names)}).")
    return NamedSharding(mesh, PartitionSpec(axis))
