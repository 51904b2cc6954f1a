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

from hyperjax._src import checks as _checks
from hyperjax._src import paths as _paths
from hyperjax._src.spec import _abstract as abstract
from hyperjax._src.types import Array, PRNGKey

# The roles of a generator's hparams, its top-level keys (the generators build that layout):
#   "hyper" generator weights, "embedding" learned embeddings, "base" modulated base weights,
#   "direct" ordinary target params that are not generated, "frozen" weights read but never trained (lora's
#   pretrained base; multi_optimizer gives them optax.set_to_zero unless told otherwise).
LABELS = ("hyper", "embedding", "base", "direct", "frozen")
_FALLBACK = "direct"

Rules = Sequence[tuple[_paths.Where, str]]


class TrainState(NamedTuple):
    """Everything a step changes, as one pytree (checkpointable as is).

    step: int32[]. params: hparams ({"hyper", "embedding", "base", "direct"}) or any trainable pytree.
    opt_state: the optimizer's state. rng: base PRNG key (step t draws fold_in(rng, t)) or None.
    model_state: the target's non-parameter state (BatchNorm statistics from `from_linen(..., with_state=True)`
      or `from_haiku(..., with_state=True)`, e.g. {"batch_stats": ...}) or None; make_step threads it.
    skipped: int32[] count of updates skipped by `make_step(..., skip_nonfinite=True)`, or None.
    """

    step: Array
    params: Any
    opt_state: Any
    rng: Array | None = None
    model_state: Any = None
    skipped: Array | None = None


def _optimizer(optimizer: Any, option: str, who: str) -> optax.GradientTransformation:
    if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
        raise TypeError(f"hyperjax.{who}: `{option}` must be an optax.GradientTransformation (e.g. "
                        f"optax.adam(1e-3)), got {type(optimizer).__name__}.")
    return optimizer


def init_state(params: Any, optimizer: optax.GradientTransformation, key: PRNGKey | None = None, *,
               model_state: Any = None, skip_nonfinite: bool = False) -> TrainState:
    """Step 0 state. Params, model state and key are copied, so a donating step never invalidates the
    caller's arrays.

    params: any pytree of arrays (e.g. hparams). key: a PRNG key (typed or uint32[2]) or None.
    key=None keeps no PRNG key in the state (loss_fn then receives rng=None): for deterministic losses it
    saves passing a key through every jitted step (a typed key costs ~5-30 us of dispatch per step on CPU).
    model_state: the target's non-parameter state (e.g. `spec.init_state(key)`), threaded by
      `make_step(..., with_model_state=True)`.
    skip_nonfinite: keep a counter of skipped updates (`state.skipped`) for `make_step(..., skip_nonfinite=True)`.
    Returns TrainState(step=int32[] 0, params, optimizer.init(params), key, model_state, skipped).

    Raises:
      TypeError: `optimizer` is not an Optax transformation, or `key` is not an array or None.
    """
    who = "training.init_state"
    _optimizer(optimizer, "optimizer", who)
    if key is not None and not isinstance(key, jax.Array):
        raise TypeError(f"hyperjax.{who}: `key` must be a PRNG key (jax.random.key(seed)) or None, "
                        f"got {type(key).__name__}.")

    def build(params: Any, key: PRNGKey | None, model_state: Any) -> TrainState:
        params = jax.tree.map(jnp.copy, params)
        with jax.numpy_dtype_promotion("standard"):
            opt_state = optimizer.init(params)
        return TrainState(jnp.zeros((), jnp.int32), params, opt_state, None if key is None else jnp.copy(key),
                          None if model_state is None else jax.tree.map(jnp.copy, model_state),
                          jnp.zeros((), jnp.int32) if skip_nonfinite else None)

    # one compiled program: run eagerly, each copy and each zeros_like of the optimizer state is dispatched and
    # compiled on its own (one XLA compilation per distinct leaf shape and dtype)
    return jax.jit(build)(params, key, model_state)


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
    (from the root) that is one of LABELS = ("hyper", "embedding", "base", "direct", "frozen"); a leaf with none
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

    transforms: {label: transform}, e.g. {"hyper": adam(1e-4), "embedding": adam(1e-3), "direct": sgd(1e-2)};
      "frozen" (lora's pretrained base) defaults to `optax.set_to_zero()`: never updated, no optimizer state.
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

    transforms = dict(transforms)
    with_frozen = {"frozen": optax.set_to_zero(), **transforms}   # frozen weights: no update, no optimizer state

    def label_fn(params: Any) -> Any:
        tree = labels(params, rules)
        missing = sorted(set(jax.tree.leaves(tree)) - set(with_frozen))
        if missing:
            raise ValueError(f"hyperjax.{who}: no transform for label(s) {missing}; given: {sorted(transforms)}.")
        return tree

    def partition(frozen: bool) -> optax.GradientTransformation:
        return optax.partition(with_frozen if frozen else transforms, label_fn)

    def init(params: Any) -> Any:
        return partition("frozen" in jax.tree.leaves(label_fn(params))).init(params)

    def update(updates: Any, state: Any, params: Any = None) -> Any:
        return partition("frozen" in state.inner_states).update(updates, state, params)
    # exactly optax.partition(transforms, labels) unless a leaf is labelled "frozen" and none is given for it
    return optax.GradientTransformation(init, update)


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
    _checks.array_leaves(tree, "tree", "training.global_norm")
    leaves = jax.tree.leaves(tree)
    acc = jnp.float64 if any(jnp.result_type(x) in (jnp.float64, jnp.complex128) for x in leaves) else jnp.float32
    total = jnp.zeros((), acc)
    for x in leaves:
        v = jnp.ravel(jnp.real(x * jnp.conj(x)).astype(acc) if jnp.iscomplexobj(x) else jnp.square(x.astype(acc)))
        if v.shape[0] > _NORM_ROW:
            v = jnp.sum(jnp.pad(v, (0, -v.shape[0] % _NORM_ROW)).reshape(-1, _NORM_ROW), axis=1)
        total = total + jnp.sum(v).astype(acc)
    return jnp.sqrt(total)


def _checked_loss(loss_fn: Callable[..., Any], has_aux: bool, with_model_state: bool, who: str
                  ) -> Callable[..., tuple[Array, tuple[Any, Any]]]:
    """loss_fn -> f(params, batch, rng, model_state) -> (loss, (aux dict, new model state)), checked at trace."""
    def shape_of_out() -> str:
        if with_model_state:
            return "(loss, (new_model_state, aux))" if has_aux else "(loss, new_model_state)"
        return "(loss, aux)" if has_aux else "loss"

    def f(params: Any, batch: Any, rng: Any, model_state: Any) -> Any:
        out = loss_fn(params, model_state, batch, rng) if with_model_state else loss_fn(params, batch, rng)
        pair = isinstance(out, tuple) and len(out) == 2
        if (has_aux or with_model_state) and not pair:
            raise ValueError(f"hyperjax.{who}: with {'has_aux' if has_aux else 'with_model_state'}=True, loss_fn "
                             f"must return {shape_of_out()}, got "
                             f"{'a tuple of ' + str(len(out)) if isinstance(out, tuple) else 'a single value'}; "
                             f"return that or pass {'has_aux' if has_aux else 'with_model_state'}=False.")
        if not (has_aux or with_model_state) and isinstance(out, tuple):
            raise ValueError(f"hyperjax.{who}: loss_fn returned a tuple; for (loss, aux) pass has_aux=True.")
        loss, rest = out if pair else (out, None)
        if jnp.ndim(loss) != 0:
            raise ValueError(f"hyperjax.{who}: loss_fn must return a scalar loss, got shape "
                             f"{tuple(jnp.shape(loss))}.")
        if with_model_state:
            if has_aux:
                if not (isinstance(rest, tuple) and len(rest) == 2):
                    raise ValueError(f"hyperjax.{who}: with has_aux and with_model_state, loss_fn must return "
                                     f"(loss, (new_model_state, aux)).")
                new_state, aux = rest
            else:
                new_state, aux = rest, {}
            _checks.tree_matches(new_state, dict(_paths.leaves_with_paths(abstract(model_state))),
                                jax.tree_util.tree_structure(model_state), who, what="new model_state",
                                hint=" loss_fn must return the model state in the layout it was given.")
        else:
            new_state, aux = model_state, (rest if has_aux else {})
        return loss, (dict(aux), new_state)
    return f


def _finite(tree: Any) -> Array:
    """bool[n_leaves]: whether every value of each leaf is finite."""
    leaves = jax.tree.leaves(tree)
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]) if leaves else jnp.ones((0,), bool)


def first_nonfinite(params: Any, metrics: Mapping[str, Any]) -> str | None:
    """The name of what was first non-finite in a step of `make_step(..., skip_nonfinite=True)`: "loss", a
    gradient leaf's path (e.g. "hyper/mlp/0/w"), or None when the step was finite. Host-side (reads metrics).

    params: the state's params (for the leaf paths); metrics: that step's metrics (per step, not stacked).

    Raises:
      TypeError: `metrics` is not a dict, or `params` is not a pytree of arrays.
      ValueError: `metrics` has no "nonfinite_index" (the step was built without skip_nonfinite=True), holds
        it stacked over steps, or names a leaf `params` does not have.
    """
    who = "hyperjax.training.first_nonfinite"
    _checks.array_leaves(params, "params", "training.first_nonfinite")
    if not isinstance(metrics, Mapping):
        raise TypeError(f"{who}: `metrics` must be the metrics dict of one step of make_step(..., "
                        f"skip_nonfinite=True), got {type(metrics).__name__}.")
    if "nonfinite_index" not in metrics:
        raise ValueError(f"{who}: `metrics` has no 'nonfinite_index' (keys: {sorted(map(str, metrics))}); build "
                         f"the step with make_step(..., skip_nonfinite=True).")
    raw = metrics["nonfinite_index"]
    if jnp.ndim(raw) != 0:
        raise ValueError(f"{who}: metrics['nonfinite_index'] must be a scalar (the metrics of one step), got shape "
                         f"{tuple(jnp.shape(raw))}; index the stacked metrics per step first.")
    index = int(raw)
    if index < 0:
        return None
    if index == 0:
        return "loss"
    leaves = _paths.leaves_with_paths(params)
    if index > len(leaves):
        raise ValueError(f"{who}: metrics['nonfinite_index']={index} names gradient leaf {index - 1}, but `params` "
                         f"has {len(leaves)} leaves; pass the params of the state the step was run on.")
    return leaves[index - 1][0]


def _stacked_length(batch: Any, k: int, who: str) -> None:
    sizes = {tuple(jnp.shape(x))[:1] for x in jax.tree.leaves(batch)}
    if sizes != {(k,)}:
        raise ValueError(f"hyperjax.{who}: with steps_per_call={k} every batch leaf needs a leading axis of {k} "
                         f"(one batch per step, stacked), got leading sizes "
                         f"{sorted(s[0] if s else None for s in sizes)}.")


def make_step(loss_fn: Callable[..., Any], optimizer: optax.GradientTransformation, *, has_aux: bool = False,
              jit: bool = True, donate: bool = True, grad_norm: bool = True, with_model_state: bool = False,
              skip_nonfinite: bool = False, checks: bool = False,
              steps_per_call: int = 1) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
    """Training step `step(state, batch) -> (state, metrics)`.

    loss_fn(params, batch, rng) -> f[] loss (or (loss, aux) with has_aux, aux a dict of scalars). With
      `with_model_state`: loss_fn(params, model_state, batch, rng) -> (loss, new_model_state) (with has_aux:
      (loss, (new_model_state, aux))); the state's `model_state` is threaded through (checked tree).
    metrics: {"loss": f[], "grad_norm": f32[], **aux}. With `jit`, the step is compiled once; with `donate`,
      the incoming state's buffers are reused for the new one: do not use a state (nor params generated
      from it before the step, which may share its buffers) after passing it in.
    grad_norm=False drops that metric: one more pass over every gradient (~20% of a small CPU step).
    skip_nonfinite: when the loss or any gradient is NaN/Inf, params, optimizer and model state stay
      exactly as they were, `state.skipped` goes up by one (start from init_state(..., skip_nonfinite=True)),
      and metrics gain "skipped" (bool[]) and "nonfinite_index" (int32[]: -1 finite, 0 the loss, i + 1 the
      i-th gradient leaf; `first_nonfinite(params, metrics)` names it).
    checks: run hyperjax's run-time checks (`hyperjax.checked`: out-of-range traced ids) and raise a
      ValueError naming the failure; the state is then not donated, so the input state stays valid.
    steps_per_call: k > 1 runs k updates in one compiled `lax.scan` over a stacked batch (every batch leaf
      with a leading axis k, one batch per step) and returns metrics with a leading axis k: one dispatch for
      k steps, bitwise equal to k single steps.
    The step key is `jax.random.fold_in(state.rng, state.step)`, so it is dead code when loss_fn ignores rng.

    Raises:
      TypeError: `loss_fn` is not callable, `optimizer` is not an Optax transformation, or steps_per_call is
        not an int (at once).
      ValueError: steps_per_call < 1 (at once); skip_nonfinite with a state made without a counter, a batch
        whose leading axis is not steps_per_call, or (when traced) a loss_fn output of the wrong form, a
        non-scalar loss, a new model state of another structure; with checks=True, a failed check.
    """
    who = "training.make_step"
    if not callable(loss_fn):
        raise TypeError(f"hyperjax.{who}: `loss_fn` must be callable as loss_fn(params, batch, rng), got "
                        f"{type(loss_fn).__name__}.")
    _optimizer(optimizer, "optimizer", who)
    if isinstance(steps_per_call, bool) or not isinstance(steps_per_call, int):
        raise TypeError(f"hyperjax.{who}: `steps_per_call` must be an int >= 1, got {type(steps_per_call).__name__}.")
    if steps_per_call < 1:
        raise ValueError(f"hyperjax.{who}: `steps_per_call` must be an int >= 1, got {steps_per_call}.")
    value_and_grad = jax.value_and_grad(_checked_loss(loss_fn, has_aux, with_model_state, who), has_aux=True)

    def one(state: TrainState, batch: Any) -> tuple[TrainState, dict]:
        if with_model_state and state.model_state is None:
            raise ValueError(f"hyperjax.{who}: with_model_state=True needs a state with a model_state: "
                             f"init_state(params, optimizer, key, model_state=spec.init_state(key)).")
        if skip_nonfinite and state.skipped is None:
            raise ValueError(f"hyperjax.{who}: skip_nonfinite=True counts skipped updates in state.skipped: "
                             f"make the state with init_state(..., skip_nonfinite=True).")
        step_rng = None if state.rng is None else jax.random.fold_in(state.rng, state.step)
        (loss, (aux, model_state)), grads = value_and_grad(state.params, batch, step_rng, state.model_state)
        with jax.numpy_dtype_promotion("standard"):   # optax mixes Python floats with int32 step counters
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, **({"grad_norm": global_norm(grads)} if grad_norm else {}), **aux}
        skipped = state.skipped
        if skip_nonfinite:
            finite = jnp.concatenate([jnp.isfinite(loss)[None], _finite(grads)])
            ok = jnp.all(finite)
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
            params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
            model_state = keep(model_state, state.model_state)
            skipped = skipped + (~ok).astype(skipped.dtype)
            metrics["skipped"] = ~ok
            metrics["nonfinite_index"] = jnp.where(ok, -1, jnp.argmin(finite)).astype(jnp.int32)
        return TrainState(state.step + 1, params, opt_state, state.rng, model_state, skipped), metrics

    def step(state: TrainState, batch: Any) -> tuple[TrainState, dict]:
        if steps_per_call == 1:
            return one(state, batch)
        _stacked_length(batch, steps_per_call, who)
        return jax.lax.scan(one, state, batch)

    if checks:
        return _checked_step(step, jit)
    if not jit:
        return step
    return jax.jit(step, donate_argnums=(0,) if donate else ())


def _checked_step(step: Callable[..., Any], jit: bool) -> Callable[..., Any]:
    """`step` under checkify (not donated, so a failed step leaves the caller's state valid)."""
    from hyperjax._src.checked import checked
    return checked(step, jit=jit)


def count_params(tree: Any) -> int:
    """Number of scalars in a pytree of arrays or ShapeDtypeStructs (`optax.tree_utils.tree_size`).

    Raises:
      TypeError: the tree does not flatten, or a leaf is no array, ShapeDtypeStruct or number (naming its path).
    """
    _checks.array_leaves(tree, "tree", "training.count_params")
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
            raise _checks.no_match(where, [p for p, _ in flat], who, what="the trainable params")
        return jax.tree_util.tree_map_with_path(
            lambda kp, x: "frozen" if sel(_paths.path_str(kp), x) else "train", params)
    return optax.partition({"train": optimizer, "frozen": optax.set_to_zero()}, label_fn)
