"""Joint training of hypernetwork params, ordinary params and embeddings with Optax.

Only wires Optax pieces together: leaves are labelled by role (`labels`), `optax.partition` gives each role
its own optimizer (`multi_optimizer`) or freezes leaves with `optax.set_to_zero` (`frozen`), and `make_step`
is one jitted step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hyperjax._src import checks
from hyperjax._src import paths as _paths
from hyperjax._src.types import Array, PRNGKey

# The roles of a generator's hparams, its top-level keys (the generators build that layout):
#   "hyper" generator weights, "embedding" learned embeddings, "base" modulated base weights,
#   "direct" ordinary target params that are not generated.
LABELS = ("hyper", "embedding", "base", "direct")
_FALLBACK = "direct"

Rules = Sequence[tuple[_paths.Where, str]]


class TrainState(NamedTuple):
    """Everything a step changes, as one pytree (checkpointable as is)."""

    step: Array        # int32[]
    params: Any        # hparams ({"hyper", "embedding", "base", "direct"}) or any trainable pytree
    opt_state: Any
    rng: Array | None  # base PRNG key, step t draws fold_in(rng, t); None: no randomness, loss_fn gets None


def _optimizer(optimizer: Any, option: str, who: str) -> optax.GradientTransformation:
    if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
        raise TypeError(f"hyperjax.{who}: `{option}` must be an optax.GradientTransformation (e.g. "
                        f"optax.adam(1e-3)), got {type(optimizer).__name__}.")
    return optimizer


def init_state(params: Any, optimizer: optax.GradientTransformation, key: PRNGKey | None = None) -> TrainState:
    """Step 0 state. Params and key are copied, so a donating step never invalidates the caller's arrays.

    params: any pytree of arrays (e.g. hparams). key: a PRNG key (typed or uint32[2]) or None.
    key=None keeps no PRNG key in the state (loss_fn then receives rng=None): for deterministic losses it
    saves passing a key through every jitted step (a typed key costs ~5-30 us of dispatch per step on CPU).
    Returns TrainState(step=int32[] 0, params, optimizer.init(params), key).

    Raises:
      TypeError: `optimizer` is not an Optax transformation, or `key` is not an array or None.
    """
    who = "training.init_state"
    _optimizer(optimizer, "optimizer", who)
    if key is not None and not isinstance(key, jax.Array):
        raise TypeError(f"hyperjax.{who}: `key` must be a PRNG key (jax.random.key(seed)) or None, "
                        f"got {type(key).__name__}.")
    params = jax.tree.map(jnp.copy, params)
    with jax.numpy_dtype_promotion("standard"):
        opt_state = optimizer.init(params)
    return TrainState(jnp.zeros((), jnp.int32), params, opt_state, None if key is None else jnp.copy(key))


def _compile_rules(rules: Rules | None, who: str) -> list[tuple[_paths.Selector, str]]:
    """(glob or predicate, label) pairs -> [(selector, label)], checked once."""
    if rules is None:
        return []
    if isinstance(rules, (str, Mapping)) or not isinstance(rules, Sequence):
        raise TypeError(f"hyperjax.{who}: `rules` must be a sequence of (glob, label) pairs, e.g. "
                        f"[('hyper/mlp/0/*', 'first')], got {type(rules).__name__}.")
    out = []
    for rule in rules:
        if not isinstance(rule, (tuple, list)) or len(rule) != 2:
            raise TypeError(f"hyperjax.{who}: each rule must be a (glob, label) pair, got {rule!r}.")
        where, label = rule
        if not isinstance(label, str):
            raise TypeError(f"hyperjax.{who}: the label of rule {rule!r} must be a str, got "
                            f"{type(label).__name__}.")
        out.append((_paths.as_selector(where, who), label))
    return out


def _role(key_path: Sequence[Any]) -> str:
    """The first key-path entry (from the root) that is one of LABELS; "direct" when there is none."""
    return next((name for name in map(_paths.key_name, key_path) if name in LABELS), _FALLBACK)


def labels(tree: Any, rules: Rules | None = None) -> Any:
    """Label each leaf of `tree` by its role, for `optax.partition` / `optax.multi_transform`.

    tree: any pytree, e.g. hparams {"hyper": ..., "embedding": ..., "base": ..., "direct": ...}.
    Returns a pytree of the same structure with one str per leaf: the first component of the leaf's path
    (from the root) that is one of LABELS = ("hyper", "embedding", "base", "direct"); a leaf with none
    (ordinary params, e.g. a tied target's free params trained directly) is "direct".
    rules: optional (glob, label) pairs (a glob, a list of globs or a `(path, leaf) -> bool` predicate, see
    `hyperjax.select`) tried first, first match wins; leaves no rule matches keep their role label.

    Raises:
      TypeError: `rules` is not a sequence of (glob, str label) pairs.
    """
    compiled = _compile_rules(rules, "training.labels")

    def label(key_path: Any, leaf: Any) -> str:
        if compiled:
            path = _paths.path_str(key_path)
            for sel, name in compiled:
                if sel(path, leaf):
                    return name
        return _role(key_path)
    return jax.tree_util.tree_map_with_path(label, tree)


def multi_optimizer(transforms: Mapping[str, optax.GradientTransformation],
                    rules: Rules | None = None) -> optax.GradientTransformation:
    """One Optax transform with its own optimizer per label: `optax.partition(transforms, labels(., rules))`.

    transforms: {label: transform}, e.g. {"hyper": adam(1e-4), "embedding": adam(1e-3), "direct": sgd(1e-2)}.
    rules: as for `labels` (custom labels, e.g. ("hyper/mlp/0/*", "first")).

    Raises:
      TypeError: `transforms` is not a dict of Optax transforms, or `rules` is malformed (at once).
      ValueError: `transforms` is empty (at once), or, when the transform is initialised, some leaves get a
        label that has no transform (the message names those labels and the given ones).
    """
    who = "training.multi_optimizer"
    if not isinstance(transforms, Mapping):
        raise TypeError(f"hyperjax.{who}: `transforms` must be a dict {{label: optax transform}}, got "
                        f"{type(transforms).__name__}.")
    if not transforms:
        raise ValueError(f"hyperjax.{who}: `transforms` is empty; give one per label, e.g. "
                         f"{{{', '.join(repr(l) + ': optax.adam(1e-3)' for l in LABELS[:2])}}}.")
    for name, t in transforms.items():
        _optimizer(t, f"transforms[{name!r}]", who)
    _compile_rules(rules, who)   # malformed rules raise now, not at init

    def label_fn(params: Any) -> Any:
        tree = labels(params, rules)
        missing = sorted(set(jax.tree.leaves(tree)) - set(transforms))
        if missing:
            raise ValueError(f"hyperjax.{who}: no transform for label(s) {missing}; given: {sorted(transforms)}.")
        return tree
    return optax.partition(dict(transforms), label_fn)


_NORM_ROW = 1024


def global_norm(tree: Any) -> Array:
    """sqrt(sum of |x|^2) over every leaf, as `optax.tree_utils.tree_norm`, summed per leaf in rows of 1,024
    values and accumulated in float32 (float64 if any leaf is 64-bit), so mixed dtypes work under strict
    promotion. tree: any pytree of arrays -> f32[] (f64[]).

    Kept instead of `optax.tree_utils.tree_norm` / `optax.global_norm`, measured slower: on XLA CPU a single
    full reduction of a large 2-D gradient (the f[100, 7510] output layer of a dense hypernetwork) is rewritten
    into reduce-windows (6 in the step with optax's norm, 4 with this one). make_step of dense(spec,
    cond_dim=8, hidden=100) for a 64-100-10 target MLP, batch 128, adam, one process, interleaved, median of
    60 rounds x 20 steps (2 CPU cores shared, load 8-10): this norm 6.1 ms/step, tree_norm 10.9 ms,
    optax.global_norm 11.1 ms, no norm 4.6 ms; a second run (load ~6): 3.4 / 7.5 / 6.9 / 2.6 ms.
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

    loss_fn(params, batch, rng) -> f[] loss (or (loss, aux) with has_aux, aux a dict of scalars).
    metrics: {"loss": f[], "grad_norm": f32[], **aux}. With `jit`, the step is compiled once; with `donate`,
    the incoming state's buffers are reused for the new one (do not use a state after passing it in).
    `grad_norm=False` drops that metric: it is one more pass over every gradient, which on CPU costs
    ~20% of the step of a small model (benchmarks/overhead.py). The step key is
    `jax.random.fold_in(state.rng, state.step)`, so it is dead code (free) when loss_fn ignores rng.

    Raises:
      TypeError: `loss_fn` is not callable or `optimizer` is not an Optax transformation (at once).
      ValueError: (when the step is traced) loss_fn returns a non-scalar loss, or a tuple without has_aux /
        a single value with has_aux.
    """
    who = "training.make_step"
    if not callable(loss_fn):
        raise TypeError(f"hyperjax.{who}: `loss_fn` must be callable as loss_fn(params, batch, rng), got "
                        f"{type(loss_fn).__name__}.")
    _optimizer(optimizer, "optimizer", who)

    def checked_loss(params: Any, batch: Any, rng: Any) -> Any:
        out = loss_fn(params, batch, rng)
        if has_aux and not (isinstance(out, tuple) and len(out) == 2):
            raise ValueError(f"hyperjax.{who}: with has_aux=True, loss_fn must return (loss, aux), "
                             "got a single value; return a pair or pass has_aux=False.")
        if not has_aux and isinstance(out, tuple):
            raise ValueError(f"hyperjax.{who}: loss_fn returned a tuple; for (loss, aux) pass has_aux=True.")
        loss = out[0] if has_aux else out
        if jnp.ndim(loss) != 0:
            raise ValueError(f"hyperjax.{who}: loss_fn must return a scalar loss, got shape "
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
    """Number of scalars in a pytree of arrays or ShapeDtypeStructs (`optax.tree_utils.tree_size`)."""
    return int(optax.tree_utils.tree_size(tree))


def frozen(optimizer: optax.GradientTransformation, where: _paths.Where) -> optax.GradientTransformation:
    """`optimizer` on every leaf except those matched by `where`, which stay fixed (`optax.set_to_zero`).

    where: a glob, a list of globs or a `(path, leaf) -> bool` predicate (see `hyperjax.select`).
    One label tree {"train", "frozen"} routes the leaves with `optax.partition`; the frozen leaves get no
    optimizer state.

    Raises:
      TypeError: `optimizer` is not an Optax transformation or `where` is not a glob/predicate (at once).
      ValueError: (when the transform is initialised) `where` matches no leaf (lists the paths).
    """
    who = "training.frozen"
    _optimizer(optimizer, "optimizer", who)
    sel = _paths.as_selector(where, who)

    def label_fn(params: Any) -> Any:
        flat = _paths.leaves_with_paths(params)
        if not any(sel(p, x) for p, x in flat):
            raise checks.no_match(where, [p for p, _ in flat], who, what="the trainable params")
        return jax.tree_util.tree_map_with_path(
            lambda kp, x: "frozen" if sel(_paths.path_str(kp), x) else "train", params)
    return optax.partition({"train": optimizer, "frozen": optax.set_to_zero()}, label_fn)
