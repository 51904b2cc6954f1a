"""Trace-time validation. Every user-facing error message of hyperjax is written here.

Shapes and dtypes are static under `jit`, so these checks are plain Python and cost nothing
in the compiled program. Each names the leaf path or option, the expected and the actual value.

One rule for the exception class: `TypeError` when an argument has the wrong type (a float or bool where an
int option is expected, a floating `cond` where an integer id is expected, an integer `cond` vector, a
non-floating embedding or temperature, a non-callable), `ValueError` when it has the right type but a wrong
value (a size <= 0, an unknown option, a wrong shape, an id out of range, a params tree whose paths, shapes or
dtypes differ from the target's: the tree is checked as one value against the spec, as `jax.tree` does).
Every message starts with the public name, "hyperjax.<namespace>.<name>: ", and names paths, never a treedef.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hyperjax._src import paths as _paths


def _fmt(shape: Sequence[int], dtype: Any) -> str:
    return f"{tuple(shape)} {jnp.dtype(dtype).name}"


def _dtype(value: Any, what: str, who: str) -> Any:
    """The dtype of an array-like `value`; a TypeError naming `what` for anything else (a string, a dict)."""
    try:
        return jnp.result_type(value)
    except (TypeError, ValueError):
        raise TypeError(f"hyperjax.{who}: {what} must be an array or a number, got {type(value).__name__}.") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def positive_int(value: Any, option: str, who: str) -> int:
    """`value` must be a Python (or NumPy) int > 0.

    Raises:
      TypeError: not an int (a float such as 2.5 or 2.0, a bool, None, an array).
      ValueError: an int <= 0.
    """
    if not _is_int(value):
        raise TypeError(f"hyperjax.{who}: `{option}` must be a positive int, got {value!r} "
                        f"({type(value).__name__}).")
    if value <= 0:
        raise ValueError(f"hyperjax.{who}: `{option}` must be a positive int, got {value!r}.")
    return int(value)


def non_negative_int(value: Any, option: str, who: str) -> int:
    """`value` must be a Python (or NumPy) int >= 0 (0: the part is absent, e.g. cond_dim=0 in a count).

    Raises:
      TypeError: not an int (a float, a bool, None, an array).
      ValueError: an int < 0.
    """
    if not _is_int(value):
        raise TypeError(f"hyperjax.{who}: `{option}` must be an int >= 0, got {value!r} ({type(value).__name__}).")
    if value < 0:
        raise ValueError(f"hyperjax.{who}: `{option}` must be an int >= 0, got {value!r}.")
    return int(value)


def positive_ints(values: Any, option: str, who: str) -> tuple[int, ...]:
    """A sequence of positive ints (e.g. hidden widths); an int is taken as one width.

    Raises:
      TypeError: not an int or a sequence of ints (None, a string, a float width).
      ValueError: a width <= 0.
    """
    if _is_int(values):
        values = (values,)
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise TypeError(f"hyperjax.{who}: `{option}` must be a sequence of positive ints, got {values!r} "
                        f"({type(values).__name__}).")
    values = tuple(values)
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
    dtype = _dtype(cond, "conditioning input `cond`", who)
    shape = tuple(jnp.shape(cond))
    if shape != (cond_dim,):
        hint = ""
        if len(shape) == 2 and shape[-1] == cond_dim:
            hint = (" A leading batch axis was given: use hyperjax.per_sample(...) or "
                    "jax.vmap(hnet.apply, in_axes=(None, 0)) for per-example weights.")
        elif shape == () and jnp.issubdtype(dtype, jnp.integer):
            hint = (" An integer id was given, but this generator was built without `num_conds`: build it "
                    "with num_conds=N to look up a learned embedding per id.")
        raise ValueError(f"hyperjax.{who}: conditioning input `cond` must have shape ({cond_dim},) "
                         f"(cond_dim={cond_dim}), got {shape}.{hint}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"hyperjax.{who}: conditioning input `cond` must be floating point, got {dtype}. "
                        f"For integer task ids build the generator with num_conds=N.")


def cond_index(cond: Any, num_conds: int, who: str) -> None:
    """An id conditioning input must be an integer scalar (shape ()) in [0, num_conds) when concrete.

    Raises:
      ValueError: a shape other than () (a vector, a batch of ids), or a concrete id out of range.
      TypeError: a scalar that is not an integer (a float or bool id).
    """
    dtype = _dtype(cond, "conditioning input `cond`", who)
    shape = tuple(jnp.shape(cond))
    if shape != () or not jnp.issubdtype(dtype, jnp.integer):
        raise (ValueError if shape != () else TypeError)(f"hyperjax.{who}: this generator was built with num_conds={num_conds}, so `cond` "
                         f"must be an integer id of shape (), got shape {shape} dtype {dtype}. "
                         f"For per-example ids use jax.vmap over a batch of ids.")
    if not isinstance(cond, jax.core.Tracer):
        c = int(np.asarray(cond))
        if not 0 <= c < num_conds:
            raise ValueError(f"hyperjax.{who}: conditioning id {c} out of range [0, {num_conds}).")


def no_match(where: Any, available: Sequence[str], who: str, what: str = "the target") -> ValueError:
    shown = ", ".join(available[:40]) + (" ..." if len(available) > 40 else "")
    return ValueError(f"hyperjax.{who}: `where`={_paths.describe(where)} matches no leaf of {what}. "
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
        want = jax.tree_util.tree_unflatten(treedef, [0] * treedef.num_leaves)
        node, got_node, want_node = _first_container_difference(params, want)
        where = f"at '{node}'" if node else "at the root"
        raise ValueError(f"hyperjax.{who}: {what} tree has the target's leaf paths but different containers "
                         f"{where}: got {_container(got_node, want_node)}, expected "
                         f"{_container(want_node, got_node)}.{hint}")
    for (path, leaf) in got:
        want = leaves[path]
        shape, dtype = tuple(jnp.shape(leaf)), _dtype(leaf, f"leaf '{path}'", who)
        if shape != tuple(want.shape) or dtype != want.dtype:
            raise ValueError(f"hyperjax.{who}: leaf '{path}' expected {_fmt(want.shape, want.dtype)}, "
                             f"got {_fmt(shape, dtype)}.{hint}")


def _first_container_difference(a: Any, b: Any, prefix: tuple = ()) -> tuple[str, Any, Any]:
    """(path, node of a, node of b) of the first container whose own type or keys differ, level by level."""
    level_a = jax.tree_util.tree_structure(a, is_leaf=lambda x: x is not a)
    level_b = jax.tree_util.tree_structure(b, is_leaf=lambda x: x is not b)
    if level_a == level_b:
        kids_a = jax.tree_util.tree_flatten_with_path(a, is_leaf=lambda x: x is not a)[0]
        kids_b = jax.tree_util.tree_flatten(b, is_leaf=lambda x: x is not b)[0]
        for (kp, x), y in zip(kids_a, kids_b):
            if jax.tree_util.tree_structure(x) != jax.tree_util.tree_structure(y):
                return _first_container_difference(x, y, prefix + tuple(kp))
    return _paths.path_str(prefix), a, b


def _container(node: Any, other: Any) -> str:
    """'list', 'tuple', 'Pair', 'None' ...; the keys too when both nodes are dicts (keys 0 and '0' differ)."""
    if node is None:
        return "None"
    if isinstance(node, Mapping) and isinstance(other, Mapping) and type(node) is type(other):
        return f"{type(node).__name__} with keys {sorted(node, key=repr)!r}"
    return type(node).__name__


def leaf_like(path: str, value: Any, want: jax.ShapeDtypeStruct, who: str) -> None:
    shape, dtype = tuple(jnp.shape(value)), _dtype(value, f"leaf '{path}'", who)
    if shape != tuple(want.shape) or dtype != want.dtype:
        raise ValueError(f"hyperjax.{who}: leaf '{path}' expected {_fmt(want.shape, want.dtype)}, "
                         f"got {_fmt(shape, dtype)}.")


def hypernetwork(hnet: Any, who: str) -> None:
    """`hnet` must have a callable `apply` (a HyperNetwork from a factory in hyperjax.generators)."""
    if not callable(getattr(hnet, "apply", None)):
        raise TypeError(f"hyperjax.{who}: `hnet` must be a hypernetwork with an apply(hparams, cond) function "
                        f"(a factory's result from hyperjax.generators), got {type(hnet).__name__}.")


def missing_extra(extra: str, package: str, who: str) -> ImportError:
    return ImportError(f"hyperjax.{who}: needs {package}, which is not installed. "
                       f"Install it with: pip install 'hyperjax[{extra}]' (or pip install {package}).")


def unsupported_state(collections: Sequence[str], who: str, fix: str) -> ValueError:
    return ValueError(f"hyperjax.{who}: the target has non-parameter state ({', '.join(collections)}) that a "
                      f"stateless apply(params, x) would silently drop. {fix}")


# ---------------------------------------------------------------- structured generators (rowwise, codebook)
def positive_float(value: Any, option: str, who: str) -> float:
    """`value` must be a finite Python/NumPy number > 0 (e.g. a temperature).

    Raises:
      TypeError: not a real number (a bool, a string, None, an array).
      ValueError: a number <= 0, NaN or infinite.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"hyperjax.{who}: `{option}` must be a positive finite number, got {value!r} "
                        f"({type(value).__name__}).")
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"hyperjax.{who}: `{option}` must be a positive finite number, got {value!r}.")
    return float(value)


def single_leaf(chosen: Sequence[str], where: Any, who: str, need: str) -> str:
    """`where` must pick exactly one leaf (a generator of one kernel's rows)."""
    if len(chosen) != 1:
        raise ValueError(f"hyperjax.{who}: `where`={_paths.describe(where)} must select exactly one leaf ({need}); "
                         f"it matched {len(chosen)}: {', '.join(chosen[:20])}. Name one path, e.g. "
                         f"where='Dense_0/kernel'.")
    return chosen[0]


def non_negative_float(value: Any, option: str, who: str) -> float:
    """`value` must be a finite Python/NumPy number >= 0 (0: the part starts switched off, e.g. init_scale).

    Raises:
      TypeError: not a real number (a bool, a string, None, an array).
      ValueError: a number < 0, NaN or infinite.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"hyperjax.{who}: `{option}` must be a finite number >= 0, got {value!r} "
                        f"({type(value).__name__}).")
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(f"hyperjax.{who}: `{option}` must be a finite number >= 0, got {value!r}.")
    return float(value)


def matrix_leaf(path: str, shape: Sequence[int], who: str, need: str) -> None:
    """A leaf generated row by row must be 2-D."""
    if len(shape) != 2:
        raise ValueError(f"hyperjax.{who}: leaf '{path}' has shape {tuple(shape)}, but {need} needs a 2-D kernel "
                         f"(D input features x H units). Select a Dense/Linear kernel with `where`.")


def feature_count(option: str, got: int, path: str, shape: Sequence[int], axis: int, who: str) -> None:
    """One embedding row per input feature: `got` must equal the leaf's feature axis."""
    if got != shape[axis]:
        raise ValueError(f"hyperjax.{who}: `{option}` gives {got} features but leaf '{path}' {tuple(shape)} has "
                         f"D={shape[axis]} features along axis {axis}; give one embedding row per feature.")


def feature_emb(value: Any, shape: Sequence[int], who: str, option: str = "feature_emb") -> None:
    """Fixed feature embeddings must be a floating f[D, E] of exactly `shape`."""
    dtype = _dtype(value, f"`{option}`", who)
    got = tuple(jnp.shape(value))
    if got != tuple(shape) or not jnp.issubdtype(dtype, jnp.floating):
        raise (ValueError if got != tuple(shape) else TypeError)(
            f"hyperjax.{who}: `{option}` must be a floating array of shape {tuple(shape)} "
            f"(D features x emb_dim), got {got} {dtype}.")


def exclusive(options: Mapping[str, Any], who: str, fix: str) -> None:
    """Exactly one of `options` must be given (not None)."""
    given = [k for k, v in options.items() if v is not None]
    if len(given) != 1:
        names = " or ".join(f"`{k}`" for k in options)
        raise ValueError(f"hyperjax.{who}: give exactly one of {names}, got "
                         f"{', '.join(f'`{k}`' for k in given) if given else 'neither'}. {fix}")


def temperature(tau: Any, who: str) -> None:
    """A temperature passed at apply time: a floating scalar, > 0 when concrete."""
    if isinstance(tau, (bool, np.bool_)):
        raise TypeError(f"hyperjax.{who}: the temperature `tau` must be a floating scalar, got {tau!r}.")
    dtype = _dtype(tau, "the temperature `tau`", who)
    shape = tuple(jnp.shape(tau))
    if shape != () or not jnp.issubdtype(dtype, jnp.floating):
        raise (ValueError if shape != () else TypeError)(f"hyperjax.{who}: the temperature `tau` must be a floating scalar of "
                         f"shape (), got shape {shape} dtype {dtype}. Pass e.g. tau=jnp.float32(0.5), or None "
                         f"for the factory's tau.")
    if not isinstance(tau, jax.core.Tracer) and not float(np.asarray(tau)) > 0:
        raise ValueError(f"hyperjax.{who}: the temperature `tau` must be > 0, got {float(np.asarray(tau))}.")


def no_cond(cond: Any, who: str) -> None:
    """A static generator takes no conditioning input."""
    if cond is not None:
        raise ValueError(f"hyperjax.{who}: this generator was built without conditioning (cond_dim=None), so "
                         f"`cond` must be None, got shape {tuple(jnp.shape(cond))}. Call apply(hparams) or "
                         f"rebuild it with cond_dim=N.")


def hparams_entry(hparams: Any, key: str, who: str, made_by: str) -> Any:
    """hparams[key], or a clear error naming the generator that makes it."""
    if not isinstance(hparams, Mapping):
        raise TypeError(f"hyperjax.{who}: hparams must be a dict with a {key!r} entry, got "
                        f"{type(hparams).__name__}; pass the hparams made by {made_by}(...).init(key).")
    if key not in hparams:
        raise ValueError(f"hyperjax.{who}: hparams has no {key!r} entry; pass the hparams made by "
                         f"{made_by}(...).init(key).")
    return hparams[key]


def emb_matrix(shape: Sequence[int], dtype: Any, who: str, option: str = "feature_emb") -> None:
    """Embeddings given to a factory must be a floating 2-D f[D, E] with E > 0."""
    bad_shape = len(shape) != 2 or shape[1] == 0
    if bad_shape or not jnp.issubdtype(dtype, jnp.floating):
        raise (ValueError if bad_shape else TypeError)(
            f"hyperjax.{who}: `{option}` must be a floating 2-D array f[D, E] (one embedding row "
            f"per input feature), got shape {tuple(shape)} dtype {jnp.dtype(dtype).name}.")


# ---------------------------------------------------------------- per_layer, low_rank, scale_modulation
def stacked_leaf(path: str, shape: Sequence[int], stack_axes: int, who: str) -> None:
    """A leaf with `stack_axes` leading layer axes must have at least one more axis."""
    if len(shape) <= stack_axes:
        raise ValueError(f"hyperjax.{who}: leaf '{path}' has shape {tuple(shape)}, too few axes for "
                         f"stack_axes={stack_axes} leading layer axes plus a kernel or bias. Lower `stack_axes` "
                         f"or exclude the leaf with `where`.")


_KERNEL_NDIM = {"conv": (4,), "dense": (2,)}


def kernel_ndim(path: str, shape: Sequence[int], ndim: int, stack_axes: int, mode: str, who: str) -> None:
    """per_layer: a leaf's rank without its stacked axes must suit `kernels=mode` ("auto": >= 1)."""
    allowed = _KERNEL_NDIM.get(mode)
    stacked = f" after {stack_axes} stacked axes" if stack_axes else ""
    if allowed is None and ndim >= 1:
        return
    if allowed is not None and ndim in allowed:
        return
    need = {"conv": "a 4-D convolution kernel (kh, kw, N_in, N_out for in_out targets; N_out, N_in, kh, kw "
                    "for out_in)", "dense": "a 2-D kernel (N_in, N_out; N_out, N_in for out_in targets)"}
    want = need.get(mode, "a kernel or a 1-D bias, not a scalar")
    raise ValueError(f"hyperjax.{who}: leaf '{path}' has shape {tuple(shape)} ({ndim}-D{stacked}), but "
                     f"kernels={mode!r} needs {want}. Select other leaves with `where`"
                     + (", or use kernels='auto'." if mode != "auto" else "."))


def block_multiple(path: str, shape: Sequence[int], what: str, size: int, option: str, block: int,
                   who: str) -> None:
    """A tiled leaf's channel count must be a multiple of the block size."""
    if size % block:
        raise ValueError(f"hyperjax.{who}: leaf '{path}' {tuple(shape)} has {size} {what}, not a multiple of "
                         f"{option}={block}. Choose a block that divides every selected leaf, select fewer "
                         f"leaves with `where`, or use block=None (one embedding per layer).")


def batch_prefix(x_shape: Sequence[int], f_shape: Sequence[int], n_in: int, what: str, who: str) -> None:
    """Factorised matmul: x f[..., n_in] and per-example factors f[..., k] must share their batch axes."""
    if not x_shape or x_shape[-1] != n_in:
        raise ValueError(f"hyperjax.{who}: input x has shape {tuple(x_shape)}, expected (..., {n_in}) to "
                         f"match the kernel's {n_in} input features.")
    if tuple(x_shape[:-1]) != tuple(f_shape[:-1]):
        raise ValueError(f"hyperjax.{who}: input x {tuple(x_shape)} and the per-example {what} "
                         f"{tuple(f_shape)} need the same leading batch axes ({tuple(x_shape[:-1])} vs "
                         f"{tuple(f_shape[:-1])}). Build the factors from a batch of conds (one per row of x), "
                         f"or a single cond for a single example.")


def same_stack(stacks: Mapping[str, Sequence[int]], stack_axes: int, who: str) -> None:
    """Leaves read with `stack_axes` leading layer axes must agree on them (one stack of L layers)."""
    if len({tuple(s) for s in stacks.values()}) > 1:
        shown = ", ".join(f"'{p}' {tuple(s)}" for p, s in list(stacks.items())[:10])
        raise ValueError(f"hyperjax.{who}: with stack_axes={stack_axes} every selected leaf must have the same "
                         f"leading layer axes, got {shown}. Select only the stacked (scanned) layers with "
                         f"`where`, e.g. where='ScanBlock_0/*'.")


def decoder_features(path: str, shape: Sequence[int], axis: int, d: int, enc_path: str, who: str) -> None:
    """A generated decoder kernel must have the encoder's D features along its output axis."""
    if shape[axis] != d:
        raise ValueError(f"hyperjax.{who}: `decoder` leaf '{path}' {tuple(shape)} must have D={d} features (one per "
                         f"row of '{enc_path}') along axis {axis}, got {shape[axis]}. The decoder maps the hidden "
                         f"layer back to the inputs: (H_dec, D) for in_out targets, (D, H_dec) for out_in.")


# ---------------------------------------------------------------- pytrees of arrays given by the user
def array_leaves(tree: Any, what: str, who: str) -> None:
    """Every leaf of `tree` must be an array, a `jax.ShapeDtypeStruct` or a Python / NumPy number, and the tree
    must flatten (dict keys of one sortable type).

    Raises:
      TypeError: naming `what` when JAX cannot flatten the tree (e.g. keys 0 and 'a' in one dict), or the path
        of the first leaf of another kind (a string, an object).
    """
    try:
        flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    except (TypeError, ValueError) as e:
        raise TypeError(f"hyperjax.{who}: `{what}` is not a pytree JAX can flatten ({e}); give each dict keys of "
                        f"one type, e.g. all str.") from None
    for key_path, leaf in flat:
        if isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct, np.ndarray, np.generic, int, float, complex)):
            continue
        raise TypeError(f"hyperjax.{who}: leaf '{_paths.path_str(key_path)}' of `{what}` must be an array, a "
                        f"jax.ShapeDtypeStruct or a number, got {type(leaf).__name__}.")


def leaf_axes(path: str, shape: tuple[int, ...] | None, axes: Any, kinds: Sequence[str], who: str) -> None:
    """A leaf's LeafAxes must name a known kind and split exactly its axes (each once), for a leaf that exists."""
    if shape is None:
        raise ValueError(f"{who}: `axes` names '{path}', which is not a leaf of the spec.")
    one_of(axes.kind, kinds, f"axes['{path}'].kind", "TargetSpec")
    order = axes.order
    if sorted(order) != list(range(len(shape))):
        raise ValueError(f"{who}: axes of leaf '{path}' (shape {shape}) must split its {len(shape)} axes into "
                         f"stack {axes.stack}, receptive {axes.receptive}, inputs {axes.inputs} and outputs "
                         f"{axes.outputs}, each axis once.")
    if axes.names is not None and len(axes.names) != len(shape):
        raise ValueError(f"{who}: leaf '{path}' (shape {shape}) has {len(axes.names)} logical axis names "
                         f"{axes.names}; expected one per axis.")
