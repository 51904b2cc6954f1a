"""TargetSpec: a stateless target network described as data (leaf paths, shapes, dtypes, apply).

A spec is an immutable value built once by `spec_from_params` (every adapter in `hyperjax.targets` ends in it):
leaves `{path: ShapeDtypeStruct}`, the treedef, the pure apply and the init. Internal callers that want their own
name in error messages use the module functions `select_paths(target, where, who)` and
`check_params(target, params, who)`; the methods `select` / `check` are the public forms of the same.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from hyperjax._src import checks
from hyperjax._src import paths as _paths
from hyperjax._src.types import Array, Params, PRNGKey

LAYOUTS = ("in_out", "out_in")
KINDS = ("kernel", "embedding", "bias", "scale", "vector")
_SCALE_NAMES = ("scale", "gamma")


class LeafAxes(NamedTuple):
    """What each axis of a leaf is: the layer's input and output axes, conv spatial axes, stacked layers.

    Axis indices are into the leaf's shape; together they are a permutation of `range(ndim)`.
    kind: "kernel" (a weight read as in -> out), "embedding" (a lookup table: rows in, features out),
      "bias", "scale" (a norm's multiplicative vector: mean 1 at init) or "vector" (anything else 1-D-like).
    stack: leading axes that index stacked layers (`nn.scan`, `nnx.scan`, a DenseGeneral's batch_dims): they
      are in neither fan and every 2-D view has one matrix per stack index.
    inputs / outputs: contracted / produced axes (DenseGeneral's (d, heads, head_dim) query kernel: inputs (0,),
      outputs (1, 2); its (heads, head_dim, d) out kernel: inputs (0, 1), outputs (2,)).
    receptive: conv spatial axes; they count in both fans and belong to the 2-D view's input side.
    names: logical axis names (`nn.with_logical_partitioning`) per axis, or None.
    """

    kind: str
    stack: tuple[int, ...] = ()
    inputs: tuple[int, ...] = ()
    outputs: tuple[int, ...] = ()
    receptive: tuple[int, ...] = ()
    names: tuple[str | None, ...] | None = None

    @property
    def order(self) -> tuple[int, ...]:
        """The axes in view order: stack, receptive, inputs, outputs."""
        return (*self.stack, *self.receptive, *self.inputs, *self.outputs)


def heuristic_axes(shape: Sequence[int], layout: str, name: str = "", stack: int = 0) -> LeafAxes:
    """Axes read from the shape alone (what a spec without layer information assumes).

    The first `stack` axes are stacked layers; of the rest, rank >= 2 is a kernel ((*spatial, in, out) for
    layout "in_out", (out, in, *spatial) for "out_in"), rank <= 1 a vector ("scale" for names scale / gamma).
    """
    nd = len(shape)
    st = tuple(range(min(stack, nd)))
    k = nd - len(st)
    if k >= 2:
        if layout == "in_out":
            return LeafAxes("kernel", st, (nd - 2,), (nd - 1,), tuple(range(len(st), nd - 2)))
        b = len(st)
        return LeafAxes("kernel", st, (b + 1,), (b,), tuple(range(b + 2, nd)))
    low = name.lower()
    kind = "scale" if (low in _SCALE_NAMES or (low == "weight" and layout == "out_in")) else "vector"
    return LeafAxes(kind, st, (), tuple(range(len(st), nd)))


def abstract(tree: Any) -> Any:
    """Pytree of arrays (or ShapeDtypeStructs) -> pytree of `jax.ShapeDtypeStruct`.

    Raises:
      TypeError: the tree does not flatten, or a leaf is no array, ShapeDtypeStruct or number (naming its path).
    """
    checks.array_leaves(tree, "tree", "targets.abstract")
    return _abstract(tree)


def _abstract(tree: Any) -> Any:
    """`abstract` without the leaf check (internal callers have checked their trees or name their own errors)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), tree)


def _unravel_for(structs: Any) -> tuple[Any, Callable[[Array], Any]]:
    """(flat dtype, unravel) of `jax.flatten_util.ravel_pytree` for a tree of ShapeDtypeStructs, traced only.

    The flat dtype is the standard promotion of the leaf dtypes (also under strict promotion).
    """
    out = []

    def ravel(tree: Any) -> Array:
        with jax.numpy_dtype_promotion("standard"):
            flat, unravel = ravel_pytree(tree)
        out.append(unravel)        # a pure function of shapes and dtypes: no tracer escapes
        return flat

    flat = jax.eval_shape(ravel, structs)
    return flat.dtype, out[0]


@dataclasses.dataclass(frozen=True, eq=False)
class TargetSpec:
    """A stateless target network: `apply(params, *args)` plus the structure of `params`.

    Built once by `spec_from_params` (the adapters in `hyperjax.targets` call it) from `jax.eval_shape`
    structures: no weights are allocated. Immutable: nothing is set after construction.

    Attributes:
      apply_fn: the framework's pure apply, `apply_fn(params, *args, **kwargs)`; None for a spec that only
        describes a tree (`apply` raises).
      leaves: {path: jax.ShapeDtypeStruct} in `jax.tree_util` flatten order (read-only mapping).
      treedef: the params' PyTreeDef; `abstract_params` is `tree_unflatten(treedef, leaves.values())`.
      init_fn: `init_fn(key) -> params`, concrete initial parameters; None draws from `init_moments`.
      layout: kernel axis convention for fan computation: "in_out" (Flax, Haiku: (..., in, out)) or
        "out_in" (Equinox, PyTorch: (out, in, ...)).
      framework: name used in messages ("linen", "nnx", "equinox", "haiku", "function").
      abstract_state: non-parameter state (e.g. batch statistics, ShapeDtypeStructs) when threaded explicitly,
        else None. With state, apply(params, state, *args) returns (output, new_state).
      init_state_fn: `init_state_fn(key) -> state` when abstract_state is set.
      params: the base weights (concrete arrays in the spec's tree), e.g. a pretrained module's current
        weights: always for concrete NNX and Equinox modules, for linen and Haiku when given as `params=`;
        None otherwise. Generators that build on a base (low_rank, scale_modulation, the direct leaves)
        and a training script can start from them.
      module_fn: `module_fn(params) -> the live module` (NNX: the merged module, a fresh one per call), for
        code that swaps layers before calling it (`hyperjax.generators.factorised_apply`); None otherwise.

    Raises (at construction):
      TypeError: a leaf is not a `jax.ShapeDtypeStruct`, or apply_fn / init_fn is neither callable nor None.
      ValueError: unknown layout, no leaves, a non-floating leaf, or a treedef whose leaf count differs.
    """

    apply_fn: Callable[..., Any] | None
    leaves: Mapping[str, jax.ShapeDtypeStruct]
    treedef: Any
    init_fn: Callable[[PRNGKey], Params] | None = None
    layout: str = "in_out"
    framework: str = "function"
    abstract_state: Any = None
    init_state_fn: Callable[[PRNGKey], Any] | None = None
    params: Any = None
    axes: Mapping[str, LeafAxes] | None = None
    rebox_fn: Callable[[Params], Any] | None = None
    module_fn: Callable[[Params], Any] | None = None

    def __post_init__(self) -> None:   # validation only: every field is final as given
        who = "hyperjax.TargetSpec"
        checks.one_of(self.layout, LAYOUTS, "layout", "TargetSpec")
        for name in ("apply_fn", "init_fn", "init_state_fn"):
            fn = getattr(self, name)
            if fn is not None and not callable(fn):
                raise TypeError(f"{who}: `{name}` must be callable or None, got {type(fn).__name__}.")
        if not self.leaves:
            raise ValueError(f"{who}: the {self.framework} target has no parameters.")
        if self.treedef.num_leaves != len(self.leaves):
            raise ValueError(f"{who}: `treedef` has {self.treedef.num_leaves} leaves but `leaves` has "
                             f"{len(self.leaves)}; build specs with spec_from_params(apply_fn, params).")
        for path, leaf in self.leaves.items():
            if not isinstance(leaf, jax.ShapeDtypeStruct):
                raise TypeError(f"{who}: leaf '{path}' must be a jax.ShapeDtypeStruct, got {type(leaf).__name__}; "
                                f"build specs with spec_from_params(apply_fn, params).")
            if not jnp.issubdtype(leaf.dtype, jnp.inexact):
                raise ValueError(f"{who}: leaf '{path}' has dtype {leaf.dtype}; only floating "
                                 f"point parameters can be generated or trained.")
        for path, ax in (self.axes or {}).items():
            checks.leaf_axes(path, tuple(self.leaves[path].shape) if path in self.leaves else None, ax, KINDS, who)
        if self.rebox_fn is not None and not callable(self.rebox_fn):
            raise TypeError(f"{who}: `rebox_fn` must be callable or None, got {type(self.rebox_fn).__name__}.")
        if self.params is not None:
            adapter = "fn" if self.framework == "function" else self.framework
            check_params(self, self.params, f"targets.from_{adapter}: `params` (the base weights)")

    # ---------------------------------------------------------------- structure
    @property
    def paths(self) -> tuple[str, ...]:
        """Leaf path strings in flatten order, e.g. ('Dense_0/bias', 'Dense_0/kernel', ...)."""
        return tuple(self.leaves)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """{path: shape}."""
        return {p: tuple(l.shape) for p, l in self.leaves.items()}

    @property
    def size(self) -> int:
        """Total number of scalar parameters."""
        return sum(math.prod(l.shape) for l in self.leaves.values())

    @property
    def abstract_params(self) -> Any:
        """Pytree of `jax.ShapeDtypeStruct`: the exact structure generators must emit."""
        return jax.tree_util.tree_unflatten(self.treedef, list(self.leaves.values()))

    @functools.cached_property
    def _unravel(self) -> tuple[Any, Callable[[Array], Any]]:
        # derived once from the (immutable) leaves: jax.eval_shape costs ~3.5 ms per call eagerly
        return _unravel_for(self.abstract_params)

    def select(self, where: _paths.Where) -> tuple[str, ...]:
        """Paths of the leaves matched by a glob, a list of globs or a `(path, leaf) -> bool` predicate.

        Raises:
          TypeError: `where` is not a glob, a list of globs or a predicate.
          ValueError: nothing matches (the message lists the available paths).
        """
        return select_paths(self, where, "TargetSpec.select")

    # ---------------------------------------------------------------- params
    def init(self, key: PRNGKey) -> Params:
        """Ordinary concrete parameters, from the framework's own initialisers (or `init_moments`)."""
        if self.init_fn is None:
            return _moment_init(self, key)
        return self.init_fn(key)

    def zeros(self) -> Params:
        """Params of zeros with the spec's tree, shapes and dtypes."""
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), self.abstract_params)

    def check(self, params: Params) -> None:
        """Check `params` against the spec (at trace time: free under `jit`).

        Raises:
          ValueError: naming the missing / unexpected paths, or the first leaf whose shape or dtype differs.
        """
        check_params(self, params, "TargetSpec.check")

    def apply(self, params: Params, *args: Any, **kwargs: Any) -> Any:
        """Run the target with `params` (checked against the spec at trace time).

        Raises:
          ValueError: `params` (or, for a spec with state, `state`) does not match; the spec has no apply_fn.
        """
        check_params(self, params, "TargetSpec.apply")
        deleted = [p for p, x in _paths.leaves_with_paths(params)
                   if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) and x.is_deleted()]
        if deleted:
            raise ValueError(f"hyperjax.TargetSpec.apply: leaf '{deleted[0]}' is a deleted (donated) buffer. "
                             f"Params generated from a TrainState share its buffers, and a donating make_step "
                             f"frees them: regenerate the params from the state the step returned, or build the "
                             f"step with make_step(..., donate=False).")
        if self.apply_fn is None:
            raise ValueError("hyperjax.TargetSpec.apply: this spec describes a parameter tree and has no apply "
                             "function; build it with spec_from_params(apply_fn, params).")
        if self.abstract_state is not None:
            if not args:
                raise ValueError("hyperjax.TargetSpec.apply: this spec threads state; call "
                                 "apply(params, state, *args) -> (output, new_state).")
            state = self.abstract_state
            checks.tree_matches(args[0], dict(_paths.leaves_with_paths(state)),
                                jax.tree_util.tree_structure(state), "TargetSpec.apply", what="state",
                                hint=" This spec threads non-parameter state: call apply(params, state, *args) "
                                     "-> (output, new_state), with state from spec.init_state(key).")
        return self.apply_fn(params, *args, **kwargs)

    def init_state(self, key: PRNGKey) -> Any:
        """Initial non-parameter state.

        Raises:
          ValueError: the spec has no non-parameter state.
        """
        if self.init_state_fn is None:
            raise ValueError("hyperjax.TargetSpec.init_state: this spec has no non-parameter state.")
        return self.init_state_fn(key)

    def leaf_dict(self, params: Params) -> dict[str, Array]:
        """params -> {path: leaf}, in spec order.

        Raises:
          ValueError: `params` does not match the spec.
        """
        check_params(self, params, "TargetSpec.leaf_dict")
        return dict(_paths.leaves_with_paths(params))

    def from_leaves(self, leaves: Mapping[str, Array]) -> Params:
        """{path: leaf} -> params tree; every path must be present with the spec's shape and dtype.

        Raises:
          ValueError: missing or unexpected paths, or a leaf whose shape or dtype differs.
        """
        missing = [p for p in self.leaves if p not in leaves]
        unexpected = [p for p in leaves if p not in self.leaves]
        if missing or unexpected:
            raise ValueError("hyperjax.TargetSpec.from_leaves: "
                             + "; ".join(x for x in (f"missing: {', '.join(missing)}" if missing else "",
                                                     f"unexpected: {', '.join(unexpected)}" if unexpected else "")
                                         if x))
        for p, want in self.leaves.items():
            checks.leaf_like(p, leaves[p], want, "TargetSpec.from_leaves")
        return jax.tree_util.tree_unflatten(self.treedef, [leaves[p] for p in self.leaves])

    def flatten(self, params: Params) -> Array:
        """params -> f[size] vector in path order (`jax.flatten_util.ravel_pytree`).

        Mixed dtypes (e.g. a bfloat16 kernel beside float32 biases) are cast to their standard-promotion
        dtype explicitly, so this also works under `jax_numpy_dtype_promotion="strict"`; `unflatten` casts
        each leaf back.

        Raises:
          ValueError: `params` does not match the spec.
        """
        check_params(self, params, "TargetSpec.flatten")
        with jax.numpy_dtype_promotion("standard"):
            return ravel_pytree(params)[0]

    def unflatten(self, flat: Array, paths: Sequence[str] | None = None) -> Any:
        """f[n] vector -> params (or {path: leaf} for the leaves `paths`, in that order), each leaf cast to
        its dtype. Built on `ravel_pytree`'s unravel (one `lax.split`), after casting `flat` to the flat dtype.

        Raises:
          ValueError: `flat` is not a vector of exactly the number of scalars of the chosen leaves.
          KeyError: a path in `paths` is not a leaf of the spec.
        """
        chosen = self.paths if paths is None else tuple(paths)
        need = sum(math.prod(self.leaves[p].shape) for p in chosen)
        if jnp.ndim(flat) != 1 or jnp.shape(flat)[0] != need:
            raise ValueError(f"hyperjax.TargetSpec.unflatten: expected a vector of {need} values for "
                             f"{len(chosen)} leaves, got shape {tuple(jnp.shape(flat))}.")
        if paths is None:
            dtype, unravel = self._unravel
            return unravel(jnp.asarray(flat).astype(dtype))
        dtype, unravel = _unravel_for([self.leaves[p] for p in chosen])
        return dict(zip(chosen, unravel(jnp.asarray(flat).astype(dtype))))

    # ---------------------------------------------------------------- layer axes and statistics
    def leaf_axes(self, path: str) -> LeafAxes:
        """What each axis of leaf `path` is (see `LeafAxes`): the adapter's reading, else `heuristic_axes`.

        Raises:
          KeyError: `path` is not a leaf of the spec.
        """
        leaf = self.leaves[path]
        if self.axes is not None and path in self.axes:
            return self.axes[path]
        return heuristic_axes(tuple(leaf.shape), self.layout, path.rsplit("/", 1)[-1])

    def logical_names(self) -> dict[str, tuple[str | None, ...]]:
        """{path: logical axis names} of the leaves that carry them (`nn.with_logical_partitioning`)."""
        return {p: a.names for p in self.leaves if (a := self.leaf_axes(p)).names is not None}

    def rebox(self, params: Params) -> Any:
        """params (the spec's tree) -> the tree the framework's own apply and checkpoints expect: for a linen
        model with `nn.with_logical_partitioning`, the `nn.Partitioned` boxes with their names put back.
        Identity for every other target."""
        check_params(self, params, "TargetSpec.rebox")
        return params if self.rebox_fn is None else self.rebox_fn(params)

    def fans(self, path: str) -> tuple[int, int]:
        """(fan_in, fan_out) of a leaf from its layer axes (`leaf_axes`): inputs (outputs) times the conv
        spatial axes, stacked-layer axes excluded; a bias takes the fans of the kernel beside it. Each fan is
        at least 1, so zero-size leaves (legal pytree leaves with nothing to initialise) get finite statistics.

        Raises:
          KeyError: `path` is not a leaf of the spec.
        """
        shape = tuple(self.leaves[path].shape)
        ax = self.leaf_axes(path)
        if ax.kind in ("kernel", "embedding"):
            rf = math.prod(shape[a] for a in ax.receptive)
            return (max(rf * math.prod(shape[a] for a in ax.inputs), 1),
                    max(rf * math.prod(shape[a] for a in ax.outputs), 1))
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        for other in self.leaves:
            if (other != path and (other.rsplit("/", 1)[0] if "/" in other else "") == parent
                    and self.leaf_axes(other).kind == "kernel"):
                return self.fans(other)
        n = max(math.prod(shape[a] for a in ax.outputs), 1)
        return n, n

    def init_moments(self, path: str, mode: str = "fan_in") -> tuple[float, float]:
        """(mean, variance) a standard initialiser gives this leaf; generators match it at init.

        Kernels: mean 0, variance 1/fan_in ("fan_in", LeCun) or 1/fan_out ("fan_out"). Embeddings: variance
        1/features (Flax's `nn.Embed` default). Biases and other vectors: mean 0 (1 for norm scales), variance
        1/(3 fan_in), the variance of PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) bias.

        Raises:
          ValueError: unknown `mode`.
          KeyError: `path` is not a leaf of the spec.
        """
        checks.one_of(mode, ("fan_in", "fan_out"), "mode", "TargetSpec.init_moments")
        fan_in, fan_out = self.fans(path)
        ax = self.leaf_axes(path)
        if ax.kind == "kernel":
            return 0.0, 1.0 / (fan_in if mode == "fan_in" else fan_out)
        if ax.kind == "embedding":
            return 0.0, 1.0 / fan_out
        return (1.0 if ax.kind == "scale" else 0.0), 1.0 / (3.0 * fan_in)

    def __repr__(self) -> str:
        body = ", ".join(f"{p}: {tuple(l.shape)} {l.dtype.name}" for p, l in list(self.leaves.items())[:8])
        more = ", ..." if len(self.leaves) > 8 else ""
        return f"TargetSpec({self.framework}, {self.size} params, {{{body}{more}}})"


def select_paths(target: TargetSpec, where: _paths.Where, who: str) -> tuple[str, ...]:
    """Paths of `target`'s leaves matched by `where` (glob(s) or `(path, leaf) -> bool`), in flatten order.

    The internal form of `TargetSpec.select`: errors start with "hyperjax.<who>".

    Raises:
      TypeError: `where` is not a glob, a list of globs or a predicate.
      ValueError: nothing matches (the message lists the available paths).
    """
    sel = _paths.as_selector(where, who)
    chosen = tuple(p for p, l in target.leaves.items() if sel(p, l))
    if not chosen:
        raise checks.no_match(where, target.paths, who)
    return chosen


def check_params(target: TargetSpec, params: Params, who: str) -> None:
    """The internal form of `TargetSpec.check`: errors start with "hyperjax.<who>".

    Raises:
      ValueError: naming the missing / unexpected paths, or the first leaf whose shape or dtype differs.
    """
    checks.tree_matches(params, target.leaves, target.treedef, who,
                        hint=f" The spec was built from a {target.framework} target; rebuild it if the model "
                             f"or its example input changed.")


def leaves_and_treedef(abstract_params: Any, who: str = "TargetSpec"
                       ) -> tuple[Mapping[str, jax.ShapeDtypeStruct], Any]:
    """Pytree (arrays or ShapeDtypeStructs) -> (read-only {path: ShapeDtypeStruct}, treedef); errors start with
    "hyperjax.<who>".

    Raises:
      ValueError: two leaves have the same path string.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(_abstract(abstract_params))
    leaves = {_paths.path_str(kp): leaf for kp, leaf in flat}
    if len(leaves) != len(flat):
        counts = collections.Counter(_paths.path_str(kp) for kp, _ in flat)
        dup = [p for p, n in counts.items() if n > 1]
        raise ValueError(f"hyperjax.{who}: two leaves have the same path string "
                         f"{', '.join(repr(p) for p in dup)} (a key containing '/' beside nested keys); "
                         f"rename one.")
    return types.MappingProxyType(leaves), treedef


def spec_from_params(apply_fn: Callable[..., Any] | None, example_params: Any, *,
                     init_fn: Callable[[PRNGKey], Params] | None = None, layout: str = "in_out",
                     framework: str = "function", abstract_state: Any = None,
                     init_state_fn: Callable[[PRNGKey], Any] | None = None, params: Any = None,
                     axes: Mapping[str, LeafAxes] | None = None,
                     rebox_fn: Callable[[Params], Any] | None = None,
                     module_fn: Callable[[Params], Any] | None = None) -> TargetSpec:
    """The one way a TargetSpec is built: from `apply_fn(params, *args)` and example params (arrays or
    ShapeDtypeStructs, only their shapes and dtypes are kept).

    Without `init_fn`, `init(key)` draws LeCun-normal kernels and PyTorch-style uniform vectors
    using `TargetSpec.init_moments`. `params`: base weights kept as `spec.params` (checked against the tree).
    `axes`: {path: LeafAxes} for leaves whose axes the shape alone does not tell; `rebox_fn`, `module_fn`: see
    TargetSpec.

    Raises:
      TypeError: apply_fn / init_fn not callable.
      ValueError: two leaves with one path string, no leaves, a non-floating leaf, an unknown layout, base
        params of another tree, shape or dtype.
    """
    leaves, treedef = leaves_and_treedef(example_params)
    return TargetSpec(apply_fn=apply_fn, leaves=leaves, treedef=treedef, init_fn=init_fn, layout=layout,
                      framework=framework, abstract_state=None if abstract_state is None else _abstract(abstract_state),
                      init_state_fn=init_state_fn, params=params,
                      axes=None if axes is None else types.MappingProxyType(dict(axes)), rebox_fn=rebox_fn,
                      module_fn=module_fn)


def _moment_init(spec: TargetSpec, key: PRNGKey) -> Params:
    """Default init: LeCun-normal kernels and uniform vectors with the moments of `spec.init_moments`."""
    keys = jax.random.split(key, len(spec.leaves))
    out = {}
    for k, (p, s) in zip(keys, spec.leaves.items()):
        mean, var = spec.init_moments(p)
        if spec.leaf_axes(p).kind in ("kernel", "embedding"):
            out[p] = (jax.random.normal(k, s.shape, jnp.float32) * np.sqrt(var)).astype(s.dtype)
        else:
            lim = np.sqrt(3.0 * var)
            out[p] = (mean + jax.random.uniform(k, s.shape, jnp.float32, -lim, lim)).astype(s.dtype)
    return spec.from_leaves(out)


# ---------------------------------------------------------------- the 2-D view of a kernel
def matrix_shape(target: TargetSpec, path: str) -> tuple[tuple[int, ...], int, int]:
    """(stack shape, n_in, n_out) of a kernel's 2-D view: one (n_in, n_out) matrix per stacked layer, n_in
    the conv spatial axes times the input axes (Flax's flattening order), n_out the output axes.

    Raises:
      KeyError: `path` is not a leaf; ValueError: the leaf is not a kernel or embedding.
    """
    shape = tuple(target.leaves[path].shape)
    ax = target.leaf_axes(path)
    if ax.kind not in ("kernel", "embedding"):
        raise ValueError(f"hyperjax.targets.matrix_shape: leaf '{path}' (shape {shape}) is a {ax.kind}, not a "
                         f"kernel; only kernels have a 2-D (in, out) view.")
    size = lambda axs: math.prod(shape[a] for a in axs)
    return tuple(shape[a] for a in ax.stack), size(ax.receptive) * size(ax.inputs), size(ax.outputs)


def as_matrix(target: TargetSpec, path: str, leaf: Array) -> Array:
    """A kernel leaf (the spec's shape) -> f[*stack, n_in, n_out], its 2-D view (`matrix_shape`).

    For Dense (in, out) the identity; DenseGeneral (d, heads, head_dim) -> (d, heads * head_dim);
    (heads, head_dim, d) -> (heads * head_dim, d); conv (kh, kw, c_in, c_out) -> (kh * kw * c_in, c_out);
    Equinox (out, in) -> (in, out); an nn.scan stack (L, ...) -> (L, n_in, n_out).

    Raises:
      ValueError: the leaf is not a kernel, or `leaf` does not have the spec's shape.
    """
    stack, n_in, n_out = matrix_shape(target, path)
    want = tuple(target.leaves[path].shape)
    if tuple(jnp.shape(leaf)) != want:
        raise ValueError(f"hyperjax.targets.as_matrix: leaf '{path}' must have shape {want}, got "
                         f"{tuple(jnp.shape(leaf))}.")
    return jnp.transpose(leaf, target.leaf_axes(path).order).reshape(*stack, n_in, n_out)


def from_matrix(target: TargetSpec, path: str, matrix: Array) -> Array:
    """The inverse of `as_matrix`: f[*stack, n_in, n_out] -> the leaf in the spec's shape and axis order
    (extra leading axes, e.g. a batch of per-example matrices, are kept in front).

    Raises:
      ValueError: the leaf is not a kernel, or `matrix` does not end in the view's shape.
    """
    stack, n_in, n_out = matrix_shape(target, path)
    view = (*stack, n_in, n_out)
    got = tuple(jnp.shape(matrix))
    if got[len(got) - len(view):] != view:
        raise ValueError(f"hyperjax.targets.from_matrix: leaf '{path}' has the 2-D view {view}; got a matrix "
                         f"of shape {got}.")
    shape = tuple(target.leaves[path].shape)
    order = target.leaf_axes(path).order
    lead = got[:len(got) - len(view)]
    x = jnp.reshape(matrix, (*lead, *(shape[a] for a in order)))
    inverse = np.argsort(order)
    return jnp.transpose(x, (*range(len(lead)), *(len(lead) + int(i) for i in inverse)))
