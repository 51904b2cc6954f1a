"""Per-example generated weights: a batch of conditioning inputs -> a batch of params, one per example."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hyperjax._src import checks
from hyperjax._src.spec import TargetSpec
from hyperjax._src.types import Array, HParams, HyperNetwork

# Frameworks whose modules are called on one unbatched example (Equinox: `jax.vmap(model)(xs)`); every other
# framework's apply takes a batch, so one example is given as a batch of one.
_UNBATCHED_FRAMEWORKS = ("equinox",)


_check_hnet = checks.hypernetwork


def _check_conds(conds: Any, who: str, need_axis: bool = True) -> Any:
    """conds must be one array (or ShapeDtypeStruct) with a leading batch axis (checked when `need_axis`).

    Returns conds, a NumPy array as a jax array: vmapping a NumPy constant under `jit` breaks `checkify`'s
    batching of the generators' traced id check (it indexes the NumPy payload with a tracer).
    """
    if conds is None:
        raise ValueError(f"hyperjax.{who}: `conds` is None, but per-example weights need one cond per example "
                         f"(f[B, cond_dim] or int[B] ids). A static generator (cond_dim=None) makes one weight set: "
                         f"call target.apply(hnet.apply(hparams), xs).")
    if not isinstance(conds, (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct)):
        raise TypeError(f"hyperjax.{who}: `conds` must be an array f[B, cond_dim] (or int[B] ids), got "
                        f"{type(conds).__name__}; convert it with jnp.asarray.")
    if need_axis and jnp.ndim(conds) == 0:
        raise ValueError(f"hyperjax.{who}: conds needs a leading batch axis (f[B, cond_dim] or int[B] ids), got "
                         f"shape (); for a single cond call hnet.apply(hparams, cond).")
    return jnp.asarray(conds) if isinstance(conds, (np.ndarray, np.generic)) else conds


def _default_batch_axis(target: TargetSpec) -> bool:
    """example_has_batch_axis from the target's framework: False for Equinox, True for linen, NNX, Haiku, functions.

    A tie across targets of several frameworks ("linen+equinox") has no single answer and raises.
    """
    parts = set(target.framework.split("+"))
    unbatched = parts & set(_UNBATCHED_FRAMEWORKS)
    if unbatched and parts - unbatched:
        raise ValueError(f"hyperjax.per_sample: the target mixes frameworks ({target.framework}) that take one "
                         f"example with and without a batch axis; pass example_has_batch_axis=True or False.")
    return not unbatched


def _empty_batch(fn: Callable[..., Any], args: tuple[Any, ...], batched: tuple[bool, ...]) -> Any:
    """fn vmapped over a batch of size 0: the output structure from one traced example, with a leading 0 axis.

    `jax.vmap` over an empty axis can fail inside traced checks (checkify), so the example is traced with
    `jax.eval_shape` (all trace-time checks run) and the outputs are built as empty arrays.
    """
    row = tuple(jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a)[1:], jnp.result_type(a)), x) if b else x
                for x, b in zip(args, batched))
    out = jax.eval_shape(fn, *row)
    return jax.tree.map(lambda s: jnp.zeros((0, *s.shape), s.dtype), out)


def per_sample(hnet: HyperNetwork, target: TargetSpec, *, example_has_batch_axis: bool | None = None
               ) -> Callable[..., Any]:
    """fn(hparams, conds, xs) -> ys: example i runs the target with the weights generated from conds[i].

    conds: f[B, cond_dim] (or int[B] ids); xs: an array or pytree of arrays, each f[B, ...]. One `jax.vmap`, no
    Python loop; the batch of params never leaves the compiled program. B may be 0 (empty outputs).

    example_has_batch_axis: how one example is given to the target. True: as a batch of one (x[None]), and the
    output's leading axis is dropped, so targets that expect a batch (a Flax Dense or NHWC convolution) work
    unchanged. False: as it is (x, unbatched). None (default): from the target's framework, `target.framework`:
    False for Equinox modules (they are written for one example), True for linen, NNX, Haiku and plain
    functions (`from_fn`: pass False for a function of one example).

    Raises:
      TypeError: `hnet` has no apply, `target` is not a TargetSpec, `example_has_batch_axis` is not a bool or
        None (at once); `conds` is not an array (when called).
      ValueError: (when called) conds and xs do not share one leading batch size, conds is None or has no batch
        axis; a tie across targets of several frameworks without an explicit `example_has_batch_axis` (at once).
    """
    who = "per_sample"
    _check_hnet(hnet, who)
    if not isinstance(target, TargetSpec):
        raise TypeError(f"hyperjax.{who}: `target` must be a TargetSpec (from hyperjax.targets), got "
                        f"{type(target).__name__}.")
    if example_has_batch_axis is None:
        example_has_batch_axis = _default_batch_axis(target)
    elif not isinstance(example_has_batch_axis, (bool, np.bool_)):
        raise TypeError(f"hyperjax.{who}: `example_has_batch_axis` must be True, False or None (from the target's "
                        f"framework), got {example_has_batch_axis!r}.")
    add_axis = bool(example_has_batch_axis)

    def run(params: Any, x: Any) -> Any:
        if not add_axis:
            return target.apply(params, x)
        y = target.apply(params, jax.tree.map(lambda a: a[None], x))
        return jax.tree.map(lambda a: a[0], y)

    def one(hparams: HParams, cond: Array, x: Any) -> Any:
        params = hnet.apply(hparams, cond)
        try:
            return run(params, x)
        except Exception as e:     # the target's own error: say how per_sample called it
            if not str(e).startswith("hyperjax."):
                e.add_note(f"(hyperjax.per_sample called the {target.framework} target on one example "
                           + ("as a batch of one, x[None]" if add_axis else "without a batch axis")
                           + f": example_has_batch_axis={add_axis}; xs rows have shapes "
                           + f"{jax.tree.map(lambda a: tuple(jnp.shape(a)), x)}.)")
            raise

    batched = jax.vmap(one, in_axes=(None, 0, 0))

    def fn(hparams: HParams, conds: Array, xs: Any) -> Any:
        conds = _check_conds(conds, who, need_axis=False)
        n_cond = jnp.shape(conds)[0] if jnp.ndim(conds) else None
        n_x = {jnp.shape(a)[0] if jnp.ndim(a) else None for a in jax.tree.leaves(xs)}
        if n_cond is None or n_x != {n_cond}:
            raise ValueError(f"hyperjax.per_sample: conds and xs need the same leading batch axis, got conds "
                             f"{tuple(jnp.shape(conds))} and xs with leading sizes {sorted(n_x, key=str)}.")
        if n_cond == 0:
            return _empty_batch(one, (hparams, conds, xs), (False, True, True))
        return batched(hparams, conds, xs)

    return fn


def generate_batch(hnet: HyperNetwork, hparams: HParams, conds: Array) -> Any:
    """conds f[B, cond_dim] (or int[B] ids) -> params with a leading axis B on every leaf (`jax.vmap` of
    `hnet.apply`). B may be 0 (every leaf then has a leading axis of size 0).

    Raises:
      TypeError: `hnet` has no apply, or conds is not an array.
      ValueError: conds is None or has no leading batch axis; the generator rejects one row of conds.
    """
    who = "generate_batch"
    _check_hnet(hnet, who)
    conds = _check_conds(conds, who)
    if math.prod(jnp.shape(conds)[:1]) == 0:
        return _empty_batch(hnet.apply, (hparams, conds), (False, True))
    return jax.vmap(hnet.apply, in_axes=(None, 0))(hparams, conds)
