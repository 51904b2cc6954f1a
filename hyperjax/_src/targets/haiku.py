"""Haiku transformed function -> TargetSpec."""

from __future__ import annotations

import inspect
from typing import Any

import jax

from hyperjax._src import checks
from hyperjax._src.spec import TargetSpec, spec_from_params


def from_haiku(transformed: Any, *example_args: Any, with_state: bool = False, **example_kwargs: Any) -> TargetSpec:
    """TargetSpec of `hk.transform(f)` (or `hk.transform_with_state(f)`).

    Params are Haiku's two-level dict; paths look like 'mlp/~/linear_0/w'. `apply(params, *args, rng=None)`
    passes `rng` to Haiku unless the function came from `hk.without_apply_rng`. Non-empty Haiku state
    raises unless `with_state=True`: then `apply(params, state, *args) -> (y, new_state)`.

    Raises:
      ImportError: dm-haiku is not installed (names the extra).
      TypeError: `transformed` is not the result of hk.transform / hk.transform_with_state (hk.multi_transform
        and linen modules, which also have init/apply, included).
      ValueError: non-empty Haiku state without with_state=True.
    """
    try:
        import haiku as hk
    except ImportError as e:
        raise checks.missing_extra("haiku", "dm-haiku", "targets.from_haiku") from e

    if not isinstance(transformed, (hk.Transformed, hk.TransformedWithState)):   # not just any object with
        # init/apply: a linen module and hk.multi_transform have both and failed (or ran) far from here
        kind = type(transformed)
        hint = (" For a flax.linen module use from_linen." if kind.__module__.startswith("flax") else
                " hk.multi_transform results are not supported; transform each function." if
                kind.__name__.startswith("MultiTransformed") else "")
        raise TypeError(f"hyperjax.targets.from_haiku: expected the result of hk.transform, got {kind.__name__}.{hint}")
    stateful = isinstance(transformed, hk.TransformedWithState)

    def init_all(key, args, kwargs):
        out = transformed.init(key, *args, **kwargs)
        return out if stateful else (out, {})

    abs_params, abs_state = jax.eval_shape(init_all, jax.random.key(0), example_args, example_kwargs)
    if jax.tree_util.tree_leaves(abs_state) and not with_state:
        raise checks.unsupported_state(
            sorted(abs_state), "targets.from_haiku",
            "Pass with_state=True to thread it explicitly: spec.apply(params, state, x) -> (y, new_state).")
    takes_rng = "rng" in inspect.signature(transformed.apply).parameters

    def init_fn(key):
        return init_all(key, example_args, example_kwargs)[0]

    def call(params, state, args, kwargs):
        rng = kwargs.pop("rng", None)
        lead = (params, state) if stateful else (params,)
        if takes_rng:
            lead = lead + (rng,)
        return transformed.apply(*lead, *args, **kwargs)

    if not stateful or not with_state:
        def apply_fn(params, *args, **kwargs):
            out = call(params, {}, args, dict(kwargs))
            return out[0] if stateful else out
        return spec_from_params(apply_fn, abs_params, init_fn=init_fn, framework="haiku")

    def apply_with_state(params, state, *args, **kwargs):
        return call(params, state, args, dict(kwargs))

    return spec_from_params(apply_with_state, abs_params, init_fn=init_fn, framework="haiku", abstract_state=abs_state,
                            init_state_fn=lambda key: init_all(key, example_args, example_kwargs)[1])
