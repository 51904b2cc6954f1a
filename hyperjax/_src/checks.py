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
        elif shape == () and jnp.issubdtype(dtype, jnp.integer):
            hint = (" An integer id was given, but this generator was built without `num_conds`: build it "
                    "with num_conds=N to look up a learned embedding per id.")
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


# ---------------------------------------------------------------- structured generators (rowwise, codebook)
def positive_float(value: Any, option: str, who: str) -> float:
    """`value` must be a finite Python/NumPy number > 0 (e.g. a temperature)."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
          and np.isfinite(value) and value > 0)
    if not ok:
        raise ValueError(f"hyperjax.{who}: `{option}` must be a positive finite number, got {value!r}.")
    return float(value)


def single_leaf(chosen: Sequence[str], where: Any, who: str, need: str) -> str:
    """`where` must pick exactly one leaf (a generator of one kernel's rows)."""
    if len(chosen) != 1:
        raise ValueError(f"hyperjax.{who}: `where`={_paths.describe(where)} must select exactly one leaf ({need}); "
                         f"it matched {len(chosen)}: {', '.join(chosen[:20])}. Name one path, e.g. "
                         f"where='Dense_0/kernel'.")
    return chosen[0]


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
    got, dtype = tuple(jnp.shape(value)), jnp.result_type(value)
    if got != tuple(shape) or not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"hyperjax.{who}: `{option}` must be a floating array of shape {tuple(shape)} "
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
    shape, dtype = tuple(jnp.shape(tau)), jnp.result_type(tau)
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
    if not isinstance(hparams, Mapping) or key not in hparams:
        raise ValueError(f"hyperjax.{who}: hparams has no {key!r} entry; pass the hparams made by "
                         f"{made_by}(...).init(key).")
    return hparams[key]


def emb_matrix(shape: Sequence[int], dtype: Any, who: str, option: str = "feature_emb") -> None:
    """Embeddings given to a factory must be a floating 2-D f[D, E] with E > 0."""
    if len(shape) != 2 or shape[1] == 0 or not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"hyperjax.{who}: `{option}` must be a floating 2-D array f[D, E] (one embedding row "
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
