"""Joint training of hypernetwork params, ordinary params and embeddings with Optax.

Only wires Optax pieces together: `optax.multi_transform` for per-level optimizers, one jitted step.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hyperjax._src import checks
from hyperjax._src import paths as _paths
from hyperjax._src.types import Array, PRNGKey

LABELS = ("hyper", "direct", "embedding")
DEFAULT_RULES: tuple[tuple[str, str], ...] = (
    ("direct/*", "direct"), ("*/direct/*", "direct"),
    ("*emb", "embedding"), ("*emb/*", "embedding"),
    ("*", "hyper"),
)


class TrainState(NamedTuple):
    """Everything a step changes, as one pytree (checkpointable as is)."""

    step: Array        # int32[]
    params: Any        # hparams (generator, embeddings, hparams["direct"]) or any trainable pytree
    opt_state: Any
    rng: Array | None  # base PRNG key, step t draws fold_in(rng, t); None: no randomness, loss_fn gets None


def init_state(params: Any, optimizer: optax.GradientTransformation, key: PRNGKey | None = None) -> TrainState:
    """Step 0 state. Params and key are copied, so a donating step never invalidates the caller's arrays.

    key=None keeps no PRNG key in the state (loss_fn then receives rng=None): for deterministic losses it
    saves passing a key through every jitted step (a typed key costs ~5-30 us of dispatch per step on CPU).
    """
    params = jax.tree.map(jnp.copy, params)
    with jax.numpy_dtype_promotion("standard"):
        opt_state = optimizer.init(params)
    return TrainState(jnp.zeros((), jnp.int32), params, opt_state, None if key is None else jnp.copy(key))


def labels(params: Any, rules: Sequence[tuple[str, str]] = DEFAULT_RULES) -> Any:
    """Label each leaf by its path for `optax.multi_transform`: first matching (glob, label) rule wins.

    Default: leaves under "direct" -> "direct" (ordinary target params), paths ending in "emb"
    (cond_emb, chunk_emb, layer_emb) -> "embedding", everything else -> "hyper".
    """
    def label(kp, _):
        path = _paths.path_str(kp)
        for pattern, name in rules:
            if fnmatch.fnmatchcase(path, pattern):
                return name
        raise ValueError(f"hyperjax.training.labels: no rule matches leaf '{path}'; add a catch-all ('*', label).")
    return jax.tree_util.tree_map_with_path(label, params)


def multi_optimizer(transforms: Mapping[str, optax.GradientTransformation],
                    rules: Sequence[tuple[str, str]] = DEFAULT_RULES) -> optax.GradientTransformation:
    """One Optax transform with its own optimizer per level, e.g. {"hyper": adam(1e-4), "direct": sgd(1e-2),
    "embedding": adam(1e-3)}. Labels without a transform raise when the transform is initialised."""
    def label_fn(params):
        tree = labels(params, rules)
        used = set(jax.tree.leaves(tree))
        missing = sorted(used - set(transforms))
        if missing:
            raise ValueError(f"hyperjax.training.multi_optimizer: no transform for label(s) {missing}; "
                             f"given: {sorted(transforms)}.")
        return tree
    return optax.multi_transform(dict(transforms), label_fn)


_NORM_ROW = 1024


def global_norm(tree: Any) -> Array:
    """sqrt(sum of |x|^2) over every leaf, as `optax.global_norm`, summed per leaf in rows of 1,024 values
    and accumulated in float32 (float64 if any leaf is 64-bit).

    The two-stage sum matters for speed: on XLA CPU a single full reduction of a large 2-D gradient (e.g. the
    f[100, 7510] output layer of a dense hypernetwork) is rewritten into a 32x32 reduce-window that took
    1.3 ms of a 2.9 ms training step; reshaped to rows it fuses and costs about 0.1 ms.
    """
    leaves = jax.tree.leaves(tree)
    acc = jnp.float64 if any(jnp.result_type(x) in (jnp.float64, jnp.complex128) for x in leaves) else jnp.float32
    total = jnp.zeros((), acc)
    for x in leaves:
        v = jnp.ravel(jnp.real(x * jnp.conj(x)).astype(acc) if jnp.iscomplexobj(x) else jnp.square(x.astype(acc)))
        if v.shape[0] > _NORM_ROW:
            v = jnp.sum(jnp.pad(v, (0, -v.shape[0] % _NORM_ROW)).reshape(-1, _NORM_ROW), axis=1)
        total = total + jnp.sum(v).astype(acc)
    return jnp.sqrt(total)


def make_step(loss_fn: Callable[..., Any], optimizer: optax.GradientTransformation, *, has_aux: bool = False,
              jit: bool = True, donate: bool = True,
              grad_norm: bool = True) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
    """Training step `step(state, batch) -> (state, metrics)`.

    loss_fn(params, batch, rng) -> loss (or (loss, aux) with has_aux, aux a dict of scalars).
    metrics: {"loss", "grad_norm", **aux}. With `jit`, the step is compiled once; with `donate`, the
    incoming state's buffers are reused for the new one (do not use a state after passing it in).
    `grad_norm=False` drops that metric: it is one more pass over every gradient, which on CPU costs
    ~20% of the step of a small model (benchmarks/overhead.py). The step key is
    `jax.random.fold_in(state.rng, state.step)`, so it is dead code (free) when loss_fn ignores rng.
    """
    def checked_loss(params: Any, batch: Any, rng: Any) -> Any:
        out = loss_fn(params, batch, rng)
        if has_aux and not (isinstance(out, tuple) and len(out) == 2):
            raise ValueError("hyperjax.training.make_step: with has_aux=True, loss_fn must return (loss, aux), "
                             "got a single value; return a pair or pass has_aux=False.")
        if not has_aux and isinstance(out, tuple):
            raise ValueError("hyperjax.training.make_step: loss_fn returned a tuple; for (loss, aux) pass "
                             "has_aux=True.")
        loss = out[0] if has_aux else out
        if jnp.ndim(loss) != 0:
            raise ValueError(f"hyperjax.training.make_step: loss_fn must return a scalar loss, got shape "
                             f"{tuple(jnp.shape(loss))}.")
        return out

    def step(state: TrainState, batch: Any) -> tuple[TrainState, dict]:
        step_rng = None if state.rng is None else jax.random.fold_in(state.rng, state.step)
        grad_fn = jax.value_and_grad(checked_loss, has_aux=has_aux)
        out, grads = grad_fn(state.params, batch, step_rng)
        loss, aux = out if has_aux else (out, {})
        with jax.numpy_dtype_promotion("standard"):   # optax mixes Python floats with int32 step counters
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, **({"grad_norm": global_norm(grads)} if grad_norm else {}), **dict(aux)}
        return TrainState(state.step + 1, params, opt_state, state.rng), metrics

    if not jit:
        return step
    return jax.jit(step, donate_argnums=(0,) if donate else ())


def count_params(tree: Any) -> int:
    """Number of scalars in a pytree (e.g. trainable hparams)."""
    return int(sum(jnp.size(x) for x in jax.tree.leaves(tree)))


def frozen(optimizer: optax.GradientTransformation, where: Any) -> optax.GradientTransformation:
    """`optimizer` on every leaf except those matched by `where` (glob(s) or predicate), which stay fixed."""
    sel = _paths.as_selector(where)

    def mask(params):
        m = jax.tree_util.tree_map_with_path(lambda kp, x: not sel(_paths.path_str(kp), x), params)
        if all(jax.tree.leaves(m)):
            raise checks.no_match(where, [p for p, _ in _paths.leaves_with_paths(params)], "training.frozen",
                                   what="the trainable params")
        return m
    return optax.chain(optax.masked(optimizer, mask),
                       optax.masked(optax.set_to_zero(), lambda p: jax.tree.map(lambda b: not b, mask(p))))
