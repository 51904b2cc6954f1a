"""Run-time checks of traced values (out-of-range ids) with `jax.experimental.checkify`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
from jax.experimental import checkify


def checked(fn: Callable[..., Any], *, jit: bool = True, **jit_kwargs: Any) -> Callable[..., Any]:
    """`fn` with hyperjax's run-time checks on: a failed check raises a ValueError naming the offending value.

    Without it, an out-of-range traced id (under `jit` or `vmap`, e.g. in `generate_batch`, `per_sample`
    or a jitted loss) gives NaN weights silently. `checked(fn)(*args)` runs
    `jax.jit(checkify.checkify(fn))(*args)` (jit=False: without the jit; `jit_kwargs` go to `jax.jit`) and
    raises when any check failed, e.g. "hyperjax.generators.dense: conditioning id 7 out of range [0, 4)".
    The checks cost a few ops per lookup; leave them off in production steps once the inputs are trusted.

    Raises:
      TypeError: `fn` is not callable.
      ValueError: a check failed (the message is that check's, naming the id).
    """
    if not callable(fn):
        raise TypeError(f"hyperjax.checked: `fn` must be callable (e.g. a generator's apply or a loss), got "
                        f"{type(fn).__name__}.")
    functionalized = checkify.checkify(fn, errors=checkify.user_checks)
    run = jax.jit(functionalized, **jit_kwargs) if jit else functionalized

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        err, out = run(*args, **kwargs)
        message = err.get()
        if message is not None:
            raise ValueError(message.replace(" (`check` failed)", ""))
        return out

    return wrapper
