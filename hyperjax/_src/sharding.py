"""Placement past one device: `jax.sharding` specs chosen per leaf by path rules.

Rules are (glob, PartitionSpec) pairs; the first glob that matches a leaf's path ("hyper/mlp/1/w",
"direct/Dense_0/kernel") wins (matched by `hyperjax.select`, so `*` crosses '/'; a list of globs or a
`(path, leaf) -> bool` predicate also works), and unmatched leaves get `default` (replicated). Every sharded axis is
checked to divide by its mesh axes at build time, naming the leaf, so XLA never pads silently. Messages start
with the public name of the function called ("hyperjax.sharding.place: ..."). A rule that matches
no leaf of the tree is an error naming its glob and the available paths (`unmatched="warn"` or `"ignore"` relaxes
it), so a misspelt path never leaves a large leaf silently replicated.

Meshes with `jax.sharding.AxisType.Auto` axes are supported (XLA propagates shardings through the
generator); meshes with explicit axes need per-op `out_sharding` annotations the generators do not
make yet: build them with `make_mesh(data, model)` (Auto axes "data" x "model").

Model parallelism: shard the generator's chunk / layer-block / feature axis over "model"
(`model_parallel_rules()`), constrain the generated leaves inside the loss (`constrain`, rules from
`largest_axis_rules`), and trace the step under `jax.set_mesh(mesh)` so `chunked` partitions its backward
pass without gathering a whole leaf. Multi-process: `initialize` (before anything touches a device) and
`global_batch` (each process's rows of one global batch).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec

from hyperjax._src import paths as _paths
from hyperjax._src.spec import TargetSpec

Rules = Sequence[tuple[_paths.Where, PartitionSpec]]
UNMATCHED = ("error", "warn", "ignore")


def _check_mesh(mesh: Any, who: str, concrete: bool = False) -> None:
    """`mesh` must be a `jax.sharding.Mesh` (or, for abstract shardings, an `AbstractMesh`)."""
    kinds = (Mesh,) if concrete else (Mesh, AbstractMesh)
    if not isinstance(mesh, kinds):
        want = "a jax.sharding.Mesh" + ("" if concrete else " or AbstractMesh")
        raise TypeError(f"hyperjax.{who}: `mesh` must be {want} (e.g. jax.make_mesh((n,), ('data',))), got "
                        f"{type(mesh).__name__}.")


def _leaf_shape(path: str, leaf: Any, who: str) -> tuple[int, ...]:
    """The shape of an array or ShapeDtypeStruct leaf (Python and NumPy numbers are arrays of shape ())."""
    if isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct, np.ndarray, np.generic)) or \
            (isinstance(leaf, (int, float, complex)) and not isinstance(leaf, bool)):
        return tuple(np.shape(leaf))
    raise TypeError(f"hyperjax.{who}: leaf '{path}' must be an array or a jax.ShapeDtypeStruct, got "
                    f"{type(leaf).__name__}.")


def _compile(rules: Rules, default: PartitionSpec, who: str) -> list[tuple[_paths.Selector, PartitionSpec]]:
    """(glob, PartitionSpec) pairs -> [(selector, PartitionSpec)], each checked once."""
    if isinstance(rules, (str, PartitionSpec)) or not isinstance(rules, Sequence):
        raise TypeError(f"hyperjax.{who}: `rules` must be a sequence of (glob, PartitionSpec) pairs, got "
                        f"{type(rules).__name__}.")
    if not isinstance(default, PartitionSpec):
        raise TypeError(f"hyperjax.{who}: `default` must be a PartitionSpec, got {type(default).__name__}.")
    out = []
    for rule in rules:
        if not isinstance(rule, (tuple, list)) or len(rule) != 2 or not isinstance(rule[1], PartitionSpec):
            raise TypeError(f"hyperjax.{who}: each rule must be a (glob, PartitionSpec) pair, got {rule!r}.")
        out.append((_paths.as_selector(rule[0], who), rule[1]))
    return out


def _check_unmatched(unmatched: Any, who: str) -> str:
    if not isinstance(unmatched, str) or unmatched not in UNMATCHED:
        raise ValueError(f"hyperjax.{who}: unknown `unmatched`={unmatched!r}; valid options are "
                         + ", ".join(repr(o) for o in UNMATCHED) + ".")
    return unmatched


def _report_unmatched(rules: Rules, hits: Sequence[bool], available: Sequence[str], unmatched: str,
                      who: str) -> None:
    """Raise (or warn about) the rules whose glob matched no leaf of the tree."""
    missed = [_paths.describe(rule[0]) for rule, hit in zip(rules, hits) if not hit]
    if not missed or unmatched == "ignore":
        return
    shown = ", ".join(available[:40]) + (" ..." if len(available) > 40 else "")
    what = (f"rule {missed[0]} matches" if len(missed) == 1 else f"rules {'; '.join(missed)} match")
    message = (f"hyperjax.{who}: {what} no leaf of the tree, so {'it is' if len(missed) == 1 else 'they are'} "
               f"never applied. Available paths: {shown or '(none: the tree has no leaves)'}. Fix the glob, or "
               f"pass unmatched='warn' or 'ignore' (e.g. for rules shared between trees).")
    if unmatched == "error":
        raise ValueError(message)
    warnings.warn(message, UserWarning, stacklevel=4)


def _axis_size(mesh: Mesh, names: Any) -> int:
    if names is None:
        return 1
    names = names if isinstance(names, tuple) else (names,)
    return math.prod(mesh.shape[n] for n in names)


def _checked(path: str, shape: tuple[int, ...], spec: PartitionSpec, mesh: Mesh, who: str) -> PartitionSpec:
    """`spec` for a leaf of `shape`: rank, mesh axes and divisibility checked, naming the leaf."""
    if len(spec) > len(shape):
        raise ValueError(f"hyperjax.{who}: leaf '{path}' has shape {shape} (rank {len(shape)}) but its rule "
                         f"gives PartitionSpec{tuple(spec)} of rank {len(spec)}.")
    used: set[Any] = set()
    for dim, names in zip(shape, spec):
        if names is None:
            continue
        for n in (names if isinstance(names, tuple) else (names,)):
            if n not in mesh.shape:
                raise ValueError(f"hyperjax.{who}: leaf '{path}': mesh has no axis {n!r} "
                                 f"(axes: {', '.join(map(str, mesh.axis_names))}).")
            if n in used:
                raise ValueError(f"hyperjax.{who}: leaf '{path}': PartitionSpec{tuple(spec)} uses mesh axis "
                                 f"{n!r} for more than one dimension; each mesh axis shards at most one.")
            used.add(n)
        size = _axis_size(mesh, names)
        if dim % size:
            raise ValueError(f"hyperjax.{who}: leaf '{path}' axis of size {dim} does not divide over mesh "
                             f"axes {names!r} of size {size}; change the rule or the layer width.")
    return spec


def _first(compiled: list[tuple[_paths.Selector, PartitionSpec]], path: str, leaf: Any,
           default: PartitionSpec) -> PartitionSpec:
    return next((s for sel, s in compiled if sel(path, leaf)), default)


def spec_for(path: str, shape: tuple[int, ...], mesh: Mesh, rules: Rules,
             default: PartitionSpec = PartitionSpec()) -> PartitionSpec:
    """The PartitionSpec of one leaf (first matching rule, else `default`), checked against its shape and mesh.

    path: the leaf's path string, e.g. "hyper/mlp/1/w"; shape: its shape. A rule that does not match this one
    leaf is not an error here (the tree-level functions check that every rule matches some leaf).

    Raises:
      TypeError: `rules` is not a sequence of (glob, PartitionSpec) pairs, `default` is no PartitionSpec, `mesh`
        is no Mesh / AbstractMesh, or `shape` is not a tuple of ints.
      ValueError: the rule's rank exceeds the leaf's, it names an axis the mesh lacks or one mesh axis twice,
        or a sharded axis does not divide by its mesh axes (naming the leaf).
    """
    who = "sharding.spec_for"
    _check_mesh(mesh, who)
    if not isinstance(shape, (tuple, list)) or not all(
            isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise TypeError(f"hyperjax.{who}: `shape` of leaf '{path}' must be a tuple of ints >= 0, got {shape!r}.")
    leaf = jax.ShapeDtypeStruct(tuple(shape), jnp.float32)
    return _checked(path, tuple(shape), _first(_compile(rules, default, who), path, leaf, default), mesh, who)


def _shardings(tree: Any, mesh: Any, rules: Rules, default: PartitionSpec, unmatched: Any, who: str) -> Any:
    unmatched = _check_unmatched(unmatched, who)
    _check_mesh(mesh, who)
    compiled = _compile(rules, default, who)
    hits = [False] * len(compiled)
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    out, available = [], []
    for kp, leaf in flat:
        path = _paths.path_str(kp)
        available.append(path)
        shape = _leaf_shape(path, leaf, who)
        for i, (sel, _) in enumerate(compiled):
            if not hits[i] and sel(path, leaf):
                hits[i] = True
        out.append(NamedSharding(mesh, _checked(path, shape, _first(compiled, path, leaf, default), mesh, who)))
    _report_unmatched(rules, hits, available, unmatched, who)
    return jax.tree_util.tree_unflatten(treedef, out)


def shardings(tree: Any, mesh: Mesh | AbstractMesh, rules: Rules = (), default: PartitionSpec = PartitionSpec(),
              *, unmatched: str = "error") -> Any:
    """Pytree of `NamedSharding`, one per leaf of `tree` (arrays or ShapeDtypeStructs), same structure.

    mesh: a `jax.sharding.Mesh` (an `AbstractMesh` also works: shardings without devices, e.g. to plan a
    layout). unmatched: what a rule that matches no leaf of `tree` does: "error" (default: a ValueError naming
    its glob and the available paths), "warn" (a UserWarning with the same text) or "ignore".

    Raises:
      TypeError: as `spec_for`; a leaf that is neither an array nor a ShapeDtypeStruct (naming its path).
      ValueError: as `spec_for`, for the first leaf whose rule does not fit; a rule that matches no leaf
        (unless unmatched="warn" / "ignore"); an unknown `unmatched`.
    """
    return _shardings(tree, mesh, rules, default, unmatched, "sharding.shardings")


def place(tree: Any, mesh: Mesh, rules: Rules = (), default: PartitionSpec = PartitionSpec(), *,
          unmatched: str = "error") -> Any:
    """`jax.device_put` every leaf with its rule's sharding (`mesh` must be a concrete `Mesh`).

    For a mesh spanning processes (after `initialize`), every process passes the same full values (e.g. from
    the same init key) and gets global arrays holding its own shards (typed PRNG keys replicated).

    Raises:
      TypeError, ValueError: as `shardings`; TypeError for an `AbstractMesh` (it has no devices).
    """
    who = "sharding.place"
    _check_mesh(mesh, who, concrete=True)
    sh = _shardings(tree, mesh, rules, default, unmatched, who)
    if all(s.is_fully_addressable for s in jax.tree.leaves(sh)):
        return jax.device_put(tree, sh)
    return jax.tree.map(_global, tree, sh)


def _global(leaf: Any, sharding: NamedSharding) -> jax.Array:
    """A global array (a mesh spanning processes) from the full value every process holds (same seed)."""
    if hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        data = np.asarray(jax.random.key_data(leaf))
        impl = jax.random.key_impl(leaf)
        raw = jax.make_array_from_callback(data.shape, NamedSharding(sharding.mesh, PartitionSpec()),
                                           lambda idx: data[idx])
        return jax.random.wrap_key_data(raw, impl=impl)
    value = np.asarray(leaf)
    return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])


def abstract_with_shardings(tree: Any, mesh: Mesh | AbstractMesh, rules: Rules = (),
                            default: PartitionSpec = PartitionSpec(), *, unmatched: str = "error") -> Any:
    """ShapeDtypeStructs carrying shardings, e.g. the abstract target for a sharded Orbax restore.

    Raises:
      TypeError, ValueError: as `shardings`.
    """
    sh = _shardings(tree, mesh, rules, default, unmatched, "sharding.abstract_with_shardings")
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x), sharding=s), tree, sh)


def batch_sharding(mesh: Mesh, axis: str = "data") -> NamedSharding:
    """Shard the leading (batch) axis over `axis`, e.g. for conds f[B, cond_dim] and inputs f[B, ...].

    Raises:
      TypeError: `mesh` is no Mesh / AbstractMesh.
      ValueError: the mesh has no axis `axis`.
    """
    who = "sharding.batch_sharding"
    _check_mesh(mesh, who)
    if axis not in mesh.shape:
        raise ValueError(f"hyperjax.{who}: mesh has no axis {axis!r} (axes: {', '.join(map(str, mesh.axis_names))}).")
    return NamedSharding(mesh, PartitionSpec(axis))


# ------------------------------------------------------------------------------------------------ meshes
def make_mesh(data: int = 1, model: int = 1, *, devices: Sequence[Any] | None = None) -> Mesh:
    """A `data` x `model` mesh with axes ("data", "model") of `AxisType.Auto` over the first data*model devices
    (`jax.devices()`, which spans every process after `initialize`; or `devices`).

    Raises:
      TypeError: `data` or `model` is not an int.
      ValueError: a size < 1, or fewer than data * model devices (naming how many there are and how to
        simulate more on CPU).
    """
    who = "sharding.make_mesh"
    for name, n in (("data", data), ("model", model)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise TypeError(f"hyperjax.{who}: `{name}` must be an int >= 1, got {type(n).__name__}.")
        if n < 1:
            raise ValueError(f"hyperjax.{who}: `{name}` must be an int >= 1, got {n}.")
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) < data * model:
        raise ValueError(f"hyperjax.{who}: a {data}x{model} mesh needs {data * model} devices, only {len(devices)} "
                         f"available. On CPU, simulate more by setting XLA_FLAGS=--xla_force_host_platform_device_"
                         f"count={data * model} (or jax.config.update('jax_num_cpu_devices', {data * model})) "
                         f"before JAX starts.")
    return jax.make_mesh((data, model), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2,
                         devices=devices[:data * model])


def mesh_name(mesh: Mesh | AbstractMesh) -> str:
    """"2x4" for a mesh of shape data 2 x model 4 (axis sizes joined by 'x', in axis order)."""
    _check_mesh(mesh, "sharding.mesh_name")
    return "x".join(str(n) for n in mesh.shape.values())


def model_parallel_rules(axis: str = "model") -> list[tuple[str, PartitionSpec]]:
    """Rules sharding the generators' repeated axes over `axis`: chunked's chunk embeddings (chunk axis),
    per_layer's layer / block embeddings (block axis) and rowwise's feature embeddings (feature axis).

    Use with `unmatched="ignore"` (a generator has only some of them); the rest of hparams is replicated.
    XLA propagates the sharding through the generator, so each device generates its share of the chunks or
    blocks. The axis sizes must divide the mesh axis (for chunked: ceil(n / chunk_size) chunks).
    """
    if not isinstance(axis, str):
        raise TypeError(f"hyperjax.sharding.model_parallel_rules: `axis` must be a mesh axis name (str), got "
                        f"{type(axis).__name__}.")
    return [("embedding/chunk_emb", PartitionSpec(axis, None)),
            ("embedding/layer_emb/*", PartitionSpec(axis, None)),
            ("embedding/feature_emb", PartitionSpec(axis, None))]


def largest_axis_rules(tree: Any, mesh: Mesh | AbstractMesh, axis: str = "model", *,
                       min_size: int = 2 ** 16) -> list[tuple[str, PartitionSpec]]:
    """One rule per leaf of `tree` (params, a TargetSpec's leaves, ShapeDtypeStructs) with at least
    `min_size` elements: shard its largest dimension that divides by the size of mesh axis `axis`
    (the first such dimension on ties); smaller leaves, and leaves with no divisible dimension, get no rule
    (replicated). E.g. the generated target leaves for `constrain`.

    Raises:
      TypeError: `mesh` is no Mesh / AbstractMesh, a leaf is not an array.
      ValueError: the mesh has no axis `axis`.
    """
    who = "sharding.largest_axis_rules"
    _check_mesh(mesh, who)
    if axis not in mesh.shape:
        raise ValueError(f"hyperjax.{who}: mesh has no axis {axis!r} (axes: {', '.join(map(str, mesh.axis_names))}).")
    size = mesh.shape[axis]
    items = (list(tree.leaves.items()) if isinstance(tree, TargetSpec) else
             [(_paths.path_str(kp), leaf) for kp, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]])
    rules = []
    for path, leaf in items:
        shape = _leaf_shape(path, leaf, who)
        if math.prod(shape) < min_size or size == 1:
            continue
        dims = [d for d in sorted(range(len(shape)), key=lambda d: (-shape[d], d)) if shape[d] % size == 0]
        if dims:
            rules.append((_glob_escape(path), PartitionSpec(*[axis if d == dims[0] else None for d in range(len(shape))])))
    return rules


def _glob_escape(path: str) -> str:
    """A glob matching exactly `path` (fnmatch's special characters bracketed)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in path)


def constrain(tree: Any, rules: Rules = (), default: PartitionSpec = PartitionSpec(), *,
              mesh: Mesh | AbstractMesh | None = None, unmatched: str = "error") -> Any:
    """`jax.lax.with_sharding_constraint` on every leaf by path rules, inside a jitted function: e.g. the
    generated params, `constrain(hnet.apply(hp, c), largest_axis_rules(spec, mesh))`, so they (and their
    gradients) stay sharded over "model" instead of XLA choosing to replicate them.

    mesh: default the mesh of the current `jax.set_mesh` context. Leaves without a rule get `default`
    (replicated). Checked like `shardings` (ranks, axes, divisibility, rules that match nothing).

    Raises:
      ValueError: no `mesh` and no mesh context; as `shardings`.
      TypeError: as `shardings`.
    """
    who = "sharding.constrain"
    if mesh is None:
        mesh = jax.sharding.get_abstract_mesh()
        if mesh.empty:
            raise ValueError(f"hyperjax.{who}: no `mesh` given and no mesh context; pass mesh= or trace under "
                             f"`with jax.set_mesh(mesh):`.")
    sh = _shardings(tree, mesh, rules, default, unmatched, who)
    if isinstance(mesh, AbstractMesh):
        sh = jax.tree.map(lambda s: s.spec, sh)   # a PartitionSpec resolves against the context mesh
    return jax.lax.with_sharding_constraint(tree, sh)


# ------------------------------------------------------------------------------------------------ processes
def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, local_device_count: int | None = None,
               cpu_collectives: str = "gloo", **kwargs: Any) -> None:
    """`jax.distributed.initialize` for one process of a multi-process job; call it first, before anything
    touches a device.

    coordinator_address: "host:port" of process 0 (None: detected on Slurm, Open MPI, Kubernetes / TPU pods,
      as `jax.distributed.initialize()` does). num_processes, process_id: this job's size and rank.
    local_device_count: simulate this many CPU devices in this process (`jax_num_cpu_devices`; tests and
      one-machine runs). cpu_collectives: the CPU collectives library ("gloo"; "mpi" needs an MPI build),
      so a jitted step over a mesh spanning processes runs on CPU too. kwargs go to `jax.distributed.initialize`.

    Raises:
      TypeError: `local_device_count` is not an int.
      ValueError: `local_device_count` < 1 or an unknown `cpu_collectives`.
      RuntimeError: JAX's backends already started (from JAX: it must come before any device use).
    """
    who = "sharding.initialize"
    if cpu_collectives not in ("gloo", "mpi"):
        raise ValueError(f"hyperjax.{who}: unknown `cpu_collectives`={cpu_collectives!r}; valid options are "
                         f"'gloo', 'mpi'.")
    if local_device_count is not None:
        if isinstance(local_device_count, bool) or not isinstance(local_device_count, int):
            raise TypeError(f"hyperjax.{who}: `local_device_count` must be an int >= 1 or None, got "
                            f"{type(local_device_count).__name__}.")
        if local_device_count < 1:
            raise ValueError(f"hyperjax.{who}: `local_device_count` must be an int >= 1, got {local_device_count}.")
        jax.config.update("jax_num_cpu_devices", local_device_count)
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(coordinator_address, num_processes, process_id, **kwargs)


def global_batch(local_batch: Any, mesh: Mesh, axis: str = "data") -> Any:
    """Each process's rows of one global batch -> global arrays sharded over `axis` along their leading axis
    (`jax.make_array_from_process_local_data`); in one process, the same as `device_put` with
    `batch_sharding(mesh, axis)`. The global batch size is the sum of the processes' rows.

    Raises:
      TypeError: `mesh` is no Mesh.
      ValueError: the mesh has no axis `axis`; a leaf has no leading axis.
    """
    who = "sharding.global_batch"
    _check_mesh(mesh, who, concrete=True)
    sh = batch_sharding(mesh, axis)
    out = []
    flat, treedef = jax.tree_util.tree_flatten_with_path(local_batch)
    for kp, leaf in flat:
        if np.ndim(leaf) == 0:
            raise ValueError(f"hyperjax.{who}: leaf '{_paths.path_str(kp)}' is a scalar; every batch leaf needs a "
                             f"leading (batch) axis to split over {axis!r}.")
        out.append(jax.make_array_from_process_local_data(sh, np.asarray(leaf)))
    return jax.tree_util.tree_unflatten(treedef, out)


def logical_rules(target: Any, logical_to_mesh: Sequence[tuple[str, Any]], *, where: Any = None
                  ) -> list[tuple[str, PartitionSpec]]:
    """Path rules from a model's logical axis names, as Flax's `nn.logical_to_mesh_sharding` maps them.

    target: a TargetSpec whose leaves carry logical names (`from_linen` of a model with
      `nn.with_logical_partitioning`; `target.logical_names()`).
    logical_to_mesh: Flax-style rules, e.g. [("embed", None), ("mlp", "model"), ("kv", "model"),
      ("vocab", "model"), ("layers", None)]: a logical name -> a mesh axis (or None: replicated).
    where: glob(s) or predicate limiting the leaves; None: every leaf with names.
    Returns [(exact path, PartitionSpec)], usable as `rules` of `shardings`, `place` and `constrain`; leaves
    without names match none of them (give `default=` or more rules after these).

    Raises:
      TypeError: `target` is not a TargetSpec.
      ValueError: no leaf carries logical names, or a name is missing from `logical_to_mesh` (naming the
        leaf and the name).
    """
    import flax.linen as nn

    who = "sharding.logical_rules"
    if not isinstance(target, TargetSpec):
        raise TypeError(f"hyperjax.{who}: `target` must be a TargetSpec (e.g. hj.targets.from_linen(model, x)), "
                        f"got {type(target).__name__}.")
    names = target.logical_names()
    if where is not None:
        chosen = set(target.select(where))
        names = {p: n for p, n in names.items() if p in chosen}
    if not names:
        raise ValueError(f"hyperjax.{who}: no leaf of the target carries logical axis names; build the model "
                         f"with nn.with_logical_partitioning, or write path rules.")
    known = {k for k, _ in logical_to_mesh}
    out = []
    for path, axes in names.items():
        missing = [a for a in axes if a is not None and a not in known]
        if missing:
            raise ValueError(f"hyperjax.{who}: leaf '{path}' has logical axes {axes}; {missing[0]!r} is not in "
                             f"`logical_to_mesh` (names there: {sorted(known)}).")
        out.append((_glob_escape(path), nn.logical_to_mesh_axes(axes, tuple(logical_to_mesh))))
    return out
