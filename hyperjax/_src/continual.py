"""Continual learning with task-conditioned hypernetworks (von Oswald et al., ICLR 2020) and its baselines.

A hypernetwork maps a learned task embedding e_t to the target's params. While task T is trained, an output
regulariser keeps the params generated for the earlier tasks where they were:

    L = L_task(T) + beta / (T - 1) * sum_{t < T} || f_h(e_t, Theta*) - f_h(e_t, Theta + dTheta) ||^2

with Theta* the generator before task T and the look-ahead dTheta optional (off by default).

* `output_regularizer`: that term, pure and jittable; the sum over earlier tasks is one `vmap` over a fixed
  number of task slots with a mask, so a jitted loss compiles once for every T. `regularizer_targets`
  precomputes f_h(e_t, Theta*) once per task (as the paper does).
* `train_sequence`: trains a `Method` on tasks in order (fresh optimizer state per task), updates the
  method's frozen context after each task (targets, Fisher), evaluates every task seen so far, and checkpoints
  params + context with `hyperjax.checkpoint` after each task, so a killed sequence resumes at the next task
  and ends bitwise where an uninterrupted run ends. `train_joint` trains on all tasks at once (upper bound).
* Methods: `hypernet_method` (the regulariser), `finetune_method` (plain fine-tuning), `ewc_method` (online
  EWC, Schwarz et al. 2018: diagonal Fisher F <- gamma F + F_t, penalty lam/2 sum F (theta - theta*)^2).
* Task inference without the id (the paper's CL3, HNET+ENT): `infer_task` picks, per example, the task whose
  network gives the lowest predictive entropy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hyperjax._src import checkpoint as _checkpoint
from hyperjax._src import checks
from hyperjax._src import paths as _paths
from hyperjax._src import training as _training
from hyperjax._src.types import Array, HParams, Params, PRNGKey

_NS = "continual"


# ------------------------------------------------------------------------------------------------ regulariser
def earlier_tasks(task: Any, max_tasks: int) -> tuple[Array, Array]:
    """Fixed-size task slots for the regulariser: (ids i32[max_tasks] = 0..max_tasks-1, mask bool[max_tasks]
    = ids < task). `task` (int or i32[]) is the task being trained; the earlier ones are masked in."""
    max_tasks = checks.positive_int(max_tasks, "max_tasks", f"{_NS}.earlier_tasks")
    ids = jnp.arange(max_tasks, dtype=jnp.int32)
    return ids, ids < jnp.asarray(task, jnp.int32)


def _num_conds(hparams: Any) -> int | None:
    """Rows of the learned id embedding table hparams["embedding"]["cond_emb"] (None: not id-conditioned)."""
    if isinstance(hparams, Mapping) and isinstance(hparams.get("embedding"), Mapping):
        emb = hparams["embedding"].get("cond_emb")
        if emb is not None and hasattr(emb, "shape"):
            return int(emb.shape[0])
    return None


def _check_ids(task_ids: Any, mask: Any, hparams: Any, who: str) -> tuple[Array, Array]:
    """-> (task_ids, mask bool[M]); raises naming the argument for a wrong rank, dtype, length or id range."""
    if not hasattr(task_ids, "shape"):
        task_ids = jnp.asarray(task_ids)
    ids_dtype = jnp.result_type(task_ids)
    integer = jnp.issubdtype(ids_dtype, jnp.integer)
    if integer and task_ids.ndim != 1:
        raise ValueError(f"hyperjax.{who}: `task_ids` must be integer ids of shape (M,) (one per task slot; pad "
                         f"to a fixed M and pass `mask`), got shape {tuple(task_ids.shape)}.")
    if not integer and (not jnp.issubdtype(ids_dtype, jnp.floating) or task_ids.ndim != 2):
        raise ValueError(f"hyperjax.{who}: `task_ids` must be integer ids i32[M] (generators built with "
                         f"num_conds=) or conditioning vectors f[M, cond_dim], got {tuple(task_ids.shape)} "
                         f"{jnp.dtype(ids_dtype).name}.")
    m = task_ids.shape[0]
    if m == 0:
        raise ValueError(f"hyperjax.{who}: `task_ids` is empty; give at least one task slot (mask it out when "
                         f"there is no earlier task).")
    if mask is None:
        mask = jnp.ones((m,), bool)
    elif not hasattr(mask, "shape"):
        mask = jnp.asarray(mask)
    if tuple(mask.shape) != (m,) or jnp.result_type(mask) != jnp.bool_:
        raise ValueError(f"hyperjax.{who}: `mask` must be bool[{m}] (one flag per entry of task_ids), got "
                         f"{tuple(mask.shape)} {jnp.dtype(jnp.result_type(mask)).name}.")
    k = _num_conds(hparams)
    if integer and k is not None and not isinstance(task_ids, jax.core.Tracer) \
            and not isinstance(mask, jax.core.Tracer):
        ids, on = np.asarray(task_ids), np.asarray(mask)
        bad = [(i, int(t)) for i, t in enumerate(ids) if on[i] and not 0 <= t < k]
        if bad:
            raise ValueError(f"hyperjax.{who}: task_ids[{bad[0][0]}] = {bad[0][1]} is out of range [0, {k}) of "
                             f"the generator's id embeddings (num_conds={k}); build the generator with "
                             f"num_conds >= the number of tasks.")
    return task_ids, mask


def _safe_ids(task_ids: Array, mask: Array) -> Array:
    """Masked-out slots read id 0 / a zero vector, so padding never produces NaN weights (or NaN gradients)."""
    if jnp.issubdtype(task_ids.dtype, jnp.integer):
        return jnp.where(mask, task_ids, jnp.zeros_like(task_ids))
    return jnp.where(mask[:, None], task_ids, jnp.zeros_like(task_ids))


def regularizer_targets(hnet: Any, snapshot: HParams, task_ids: Any, *, mask: Any = None) -> Params:
    """f_h(e_t, Theta*) for every task slot: the params the snapshot generates, stacked (leading axis M).

    snapshot: the hparams Theta* (the generator before the current task). task_ids: i32[M] ids or f[M, cond_dim].
    Returns a params tree whose leaves are f[M, *leaf_shape], gradient-stopped; masked slots hold the params of
    id 0. Compute it once per task and pass it as `output_regularizer(..., targets=)`.
    """
    who = f"{_NS}.regularizer_targets"
    checks.hypernetwork(hnet, who)
    task_ids, mask = _check_ids(task_ids, mask, snapshot, who)
    out = jax.vmap(lambda c: hnet.apply(snapshot, c))(_safe_ids(task_ids, mask))
    return jax.lax.stop_gradient(out)


def output_regularizer(hnet: Any, snapshot: HParams | None, task_ids: Any, beta: Any, hparams: HParams, *,
                       mask: Any = None, targets: Params | None = None, delta: HParams | None = None) -> Array:
    """beta / n * sum over the n masked-in slots t of ||f_h(e_t, Theta*) - f_h(e_t, Theta + dTheta)||^2.

    hnet: an id- (or vector-) conditioned HyperNetwork. snapshot: Theta*, the hparams before the current task
      (None when `targets` is given). task_ids: i32[M] ids (or f[M, cond_dim] conditioning vectors); a fixed M
      with `mask` (bool[M], default all True) keeps one compiled program for every number of earlier tasks
      (`earlier_tasks(task, M)`). beta: f[] or float. hparams: the current Theta.
    targets: precomputed `regularizer_targets(hnet, snapshot, task_ids)` (leaves f[M, ...]) instead of snapshot.
    delta: the look-ahead dTheta (a tree like hparams, e.g. an optimizer's proposed step on the task loss); it
      is gradient-stopped, as in the paper. None: no look-ahead.
    The squared norm runs over every generated leaf (the whole target params vector, in float32). With no
    slot masked in the result is 0. The earlier tasks' embeddings are read from `hparams`: stop their
    gradient (`freeze_other_embeddings`) to keep them fixed, as the paper does.
    Returns f32[].

    Raises:
      TypeError: `hnet` is not a hypernetwork.
      ValueError: neither or both of `snapshot` and `targets`; a `task_ids`/`mask` of the wrong shape or an
        eager id out of the generator's range; `targets` not shaped like the generated params with leading M;
        `delta` not shaped like `hparams`; a negative eager `beta`.
    """
    who = f"{_NS}.output_regularizer"
    checks.hypernetwork(hnet, who)
    if (snapshot is None) == (targets is None):
        raise ValueError(f"hyperjax.{who}: give exactly one of `snapshot` (the hparams before the current task) "
                         f"and `targets` (precomputed with regularizer_targets), got "
                         f"{'neither' if snapshot is None else 'both'}.")
    if isinstance(beta, (int, float)) and not isinstance(beta, bool) and beta < 0:
        raise ValueError(f"hyperjax.{who}: `beta` must be >= 0, got {beta!r}.")
    task_ids, mask = _check_ids(task_ids, mask, hparams, who)
    m = task_ids.shape[0]
    ids = _safe_ids(task_ids, mask)
    if delta is not None:
        _same_tree(delta, hparams, "delta", "hparams", who)
        hparams = jax.tree.map(lambda p, d: p + jax.lax.stop_gradient(d).astype(p.dtype), hparams, delta)
    current = jax.vmap(lambda c: hnet.apply(hparams, c))(ids)
    if targets is None:
        targets = jax.vmap(lambda c: hnet.apply(snapshot, c))(ids)
    else:
        stacked = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), current)
        _same_tree(targets, stacked, "targets", f"the generated params stacked over the {m} task slots", who)
    targets = jax.lax.stop_gradient(targets)

    def sq(a: Array, b: Array) -> Array:
        d = a.astype(jnp.float32) - b.astype(jnp.float32)
        d = jnp.where(mask.reshape((m,) + (1,) * (d.ndim - 1)), d, jnp.zeros_like(d))   # no NaN through padding
        return jnp.sum(jnp.square(d).reshape(m, -1), axis=1)

    per_task = sum(jax.tree.leaves(jax.tree.map(sq, current, targets)))
    n = jnp.maximum(jnp.sum(mask.astype(jnp.float32)), 1.0)
    return jnp.asarray(beta, jnp.float32) * jnp.sum(per_task) / n


def _same_tree(tree: Any, like: Any, what: str, like_what: str, who: str) -> None:
    """Raise naming the first path where `tree` differs from `like` (presence, shape, dtype)."""
    got = dict(_paths.leaves_with_paths(tree))
    want = dict(_paths.leaves_with_paths(like))
    missing, extra = [p for p in want if p not in got], [p for p in got if p not in want]
    if missing or extra:
        raise ValueError(f"hyperjax.{who}: `{what}` must have the tree of {like_what}; "
                         + "; ".join(s for s in (f"missing: {', '.join(missing[:3])}" if missing else "",
                                                 f"unexpected: {', '.join(extra[:3])}" if extra else "") if s)
                         + ".")
    for p, w in want.items():
        g = got[p]
        if tuple(jnp.shape(g)) != tuple(w.shape) or jnp.result_type(g) != w.dtype:
            raise ValueError(f"hyperjax.{who}: `{what}` leaf '{p}' expected {tuple(w.shape)} "
                             f"{jnp.dtype(w.dtype).name} (as {like_what}), got {tuple(jnp.shape(g))} "
                             f"{jnp.dtype(jnp.result_type(g)).name}.")


def freeze_other_embeddings(hparams: HParams, task: Any) -> HParams:
    """hparams with the gradient of every id embedding row except `task` stopped (hparams["embedding"]
    ["cond_emb"]: f[num_conds, cond_dim]); values unchanged. Earlier tasks keep their embeddings, as in the
    paper, while the regulariser and the task loss train the generator and the current embedding only.

    Raises: ValueError when hparams hold no id embeddings (a generator built without num_conds=).
    """
    k = _num_conds(hparams)
    if k is None:
        raise ValueError(f"hyperjax.{_NS}.freeze_other_embeddings: hparams have no id embeddings "
                         f"hparams['embedding']['cond_emb']; build the generator with cond_dim= and num_conds=.")
    emb = hparams["embedding"]["cond_emb"]
    own = (jnp.arange(k) == jnp.asarray(task, jnp.int32))[:, None]
    frozen = jnp.where(own, emb, jax.lax.stop_gradient(emb))
    return {**hparams, "embedding": {**hparams["embedding"], "cond_emb": frozen}}


# ------------------------------------------------------------------------------------------------ EWC
def fisher_diagonal(logits_fn: Callable[[Params, Array], Array], params: Params, x: Array, *,
                    labels: Array | None = None, weights: Array | None = None, batch_size: int = 64) -> Params:
    """Diagonal Fisher information of a classifier, per parameter: mean_i sum_c p(c|x_i) (d log p(c|x_i))^2.

    logits_fn(params, x_batch) -> f[B, C] logits. x: f[N, ...] inputs.
    labels: i32[N] to use the empirical Fisher (d log p(y_i|x_i))^2 at the observed labels instead of the
      expectation over the model's own predictive distribution (the default, exact, C gradients per example).
    weights: f[N] example weights (0 for padding); the mean is weighted. batch_size: examples per chunk of
      per-example gradients (one `lax.map` over chunks, so memory is batch_size * C * |params|).
    Returns a tree like params (float32 leaves).
    Raises: ValueError for x without a leading example axis, or labels/weights of another length.
    """
    who = f"{_NS}.fisher_diagonal"
    batch_size = checks.positive_int(batch_size, "batch_size", who)
    if jnp.ndim(x) < 1 or x.shape[0] == 0:
        raise ValueError(f"hyperjax.{who}: `x` must be f[N, ...] with N >= 1 examples, got shape {jnp.shape(x)}.")
    n = x.shape[0]
    for name, v in (("labels", labels), ("weights", weights)):
        if v is not None and tuple(jnp.shape(v)) != (n,):
            raise ValueError(f"hyperjax.{who}: `{name}` must have shape ({n},) (one per example of x), got "
                             f"{tuple(jnp.shape(v))}.")
    w = jnp.ones((n,), jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
    y = jnp.zeros((n,), jnp.int32) if labels is None else jnp.asarray(labels, jnp.int32)
    pad = (-n) % batch_size
    xs = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    ws = jnp.concatenate([w, jnp.zeros((pad,), jnp.float32)]) if pad else w
    ys = jnp.concatenate([y, jnp.zeros((pad,), jnp.int32)]) if pad else y
    chunks = (xs.reshape(-1, batch_size, *x.shape[1:]), ys.reshape(-1, batch_size), ws.reshape(-1, batch_size))

    def log_probs(p: Params, xi: Array) -> Array:
        return jax.nn.log_softmax(logits_fn(p, xi[None]).astype(jnp.float32)[0])

    def one(xi: Array, yi: Array) -> Params:
        if labels is not None:
            g = jax.grad(lambda p: log_probs(p, xi)[yi])(params)
            return jax.tree.map(lambda a: jnp.square(a.astype(jnp.float32)), g)
        probs = jax.lax.stop_gradient(jnp.exp(log_probs(params, xi)))
        jac = jax.jacrev(log_probs)(params, xi)            # leaves f[C, *leaf]
        return jax.tree.map(lambda a: jnp.tensordot(probs, jnp.square(a.astype(jnp.float32)), axes=1), jac)

    def chunk(args: tuple[Array, Array, Array]) -> Params:
        xb, yb, wb = args
        per = jax.vmap(one)(xb, yb)
        return jax.tree.map(lambda a: jnp.tensordot(wb, a, axes=1), per)

    sums = jax.lax.map(chunk, chunks)
    total = jnp.maximum(jnp.sum(w), 1e-12)
    return jax.tree.map(lambda a: jnp.sum(a, axis=0) / total, sums)


def online_fisher(previous: Params, new: Params, gamma: float = 1.0) -> Params:
    """Online EWC's running Fisher: gamma * previous + new (gamma = 1: plain accumulation over tasks)."""
    return jax.tree.map(lambda a, b: gamma * a + b, previous, new)


def ewc_penalty(params: Params, anchor: Params, fisher: Params, lam: Any) -> Array:
    """lam / 2 * sum_i F_i (theta_i - theta*_i)^2 over every leaf (float32). Returns f32[]."""
    terms = jax.tree.map(lambda p, a, f: jnp.sum(f * jnp.square(p.astype(jnp.float32) - a.astype(jnp.float32))),
                         params, anchor, fisher)
    return 0.5 * jnp.asarray(lam, jnp.float32) * sum(jax.tree.leaves(terms), jnp.zeros((), jnp.float32))


# ------------------------------------------------------------------------------------------------ CL3
def predictive_entropy(logits: Array) -> Array:
    """Entropy (nats) of softmax(logits) over the last axis: f[..., C] -> f32[...]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def infer_task(apply: Callable[[Any, Array, Array], Array], params: Any, x: Array, num_tasks: int
               ) -> tuple[Array, Array, Array]:
    """Task inference by lowest predictive entropy (HNET+ENT): for each example, the task whose network is
    most certain.

    apply(params, x, task) -> f[B, C] logits for task id `task` (i32[]); one `vmap` over the num_tasks ids.
    Returns (task i32[B], entropy f32[num_tasks, B], logits f[num_tasks, B, C]).
    """
    num_tasks = checks.positive_int(num_tasks, "num_tasks", f"{_NS}.infer_task")
    logits = jax.vmap(lambda t: apply(params, x, t))(jnp.arange(num_tasks, dtype=jnp.int32))
    ent = predictive_entropy(logits)
    return jnp.argmin(ent, axis=0).astype(jnp.int32), ent, logits


def accuracy(outputs: Array, y: Array) -> Array:
    """Per-example correctness f32[B] of logits f[B, C] against labels i32[B] (a `metric` for the runner)."""
    return (jnp.argmax(outputs, axis=-1) == y).astype(jnp.float32)


def squared_error(outputs: Array, y: Array) -> Array:
    """Per-example squared error summed over output axes: f[B, ...] vs f[B, ...] -> f32[B]."""
    d = outputs.astype(jnp.float32) - y.astype(jnp.float32)
    return jnp.sum(jnp.square(d).reshape(d.shape[0], -1), axis=1)


# ------------------------------------------------------------------------------------------------ methods
class Method(NamedTuple):
    """A continual-learning method for `train_sequence` / `train_joint`: pure functions.

    init(key) -> params: the trainable pytree.
    apply(params, x, task) -> outputs: the network for task id `task` (i32[]) on a batch x.
    loss(params, context, x, y, task) -> (f32[] loss, dict of f32[] metrics).
    init_context(params) -> context: the frozen, non-trained state before the first task (fixed shapes:
      padded to the maximum number of tasks, so one compiled step serves every task).
    end_task(params, context, task, x, y, weights) -> context: after training task `task` on its train set
      (x, y padded to a fixed size, weights f32[N] 1 for real examples, 0 for padding).
    """

    init: Callable[[PRNGKey], Any]
    apply: Callable[[Any, Array, Array], Array]
    loss: Callable[[Any, Any, Array, Array, Array], tuple[Array, dict]]
    init_context: Callable[[Any], Any]
    end_task: Callable[..., Any]


def _callable(f: Any, name: str, who: str, sig: str) -> None:
    if not callable(f):
        raise TypeError(f"hyperjax.{who}: `{name}` must be callable as {sig}, got {type(f).__name__}.")


def hypernet_method(hnet: Any, target_apply: Callable[[Params, Array], Array],
                    task_loss: Callable[[Array, Array], Array], *, max_tasks: int, beta: float = 0.01,
                    precompute: bool = True, lookahead: float | None = None,
                    freeze_embeddings: bool = True) -> Method:
    """The task-conditioned hypernetwork with the output regulariser (von Oswald et al., 2020).

    hnet: a generator built with cond_dim= and num_conds >= max_tasks. target_apply(params, x) -> outputs
    (e.g. spec.apply). task_loss(outputs, y) -> f32[]. beta: the regulariser's strength.
    precompute: keep f_h(e_t, Theta*) of every task slot in the context (computed once per task, as the paper);
      False keeps the snapshot Theta* itself and regenerates the targets every step.
    lookahead: None (default, the paper's main results) or a step size eta: dTheta = -eta * grad L_task
      (gradient-stopped), a plain-gradient version of the paper's look-ahead.
    freeze_embeddings: stop the gradient of every task embedding except the current one.
    Loss metrics: "task_loss", "reg".
    Raises: ValueError when hnet has no id embeddings or fewer than max_tasks, a negative beta or lookahead.
    """
    who = f"{_NS}.hypernet_method"
    checks.hypernetwork(hnet, who)
    _callable(target_apply, "target_apply", who, "target_apply(params, x)")
    _callable(task_loss, "task_loss", who, "task_loss(outputs, y)")
    max_tasks = checks.positive_int(max_tasks, "max_tasks", who)
    if beta < 0:
        raise ValueError(f"hyperjax.{who}: `beta` must be >= 0, got {beta!r}.")
    if lookahead is not None and lookahead <= 0:
        raise ValueError(f"hyperjax.{who}: `lookahead` must be None or a step size > 0, got {lookahead!r}.")
    k = _num_conds(jax.eval_shape(hnet.init, jax.random.key(0)))
    if k is None:
        raise ValueError(f"hyperjax.{who}: `hnet` must be conditioned on task ids: build it with cond_dim= and "
                         f"num_conds={max_tasks} (e.g. hyperjax.generators.chunked(spec, ..., cond_dim=8, "
                         f"num_conds={max_tasks})).")
    if k < max_tasks:
        raise ValueError(f"hyperjax.{who}: `hnet` has {k} task embeddings (num_conds={k}) but max_tasks="
                         f"{max_tasks}; build it with num_conds >= {max_tasks}.")

    def apply(hp: HParams, x: Array, task: Array) -> Array:
        return target_apply(hnet.apply(hp, task), x)

    def init_context(hp: HParams) -> dict:
        ids, _ = earlier_tasks(0, max_tasks)
        ref = regularizer_targets(hnet, hp, ids) if precompute else hp
        return {"num_prev": jnp.zeros((), jnp.int32), ("targets" if precompute else "snapshot"):
                jax.tree.map(jnp.zeros_like, ref)}

    def loss(hp: HParams, ctx: dict, x: Array, y: Array, task: Array) -> tuple[Array, dict]:
        hp_t = freeze_other_embeddings(hp, task) if freeze_embeddings else hp
        task_fn = lambda p: task_loss(apply(p, x, task), y)
        l_task = task_fn(hp_t)
        delta = None
        if lookahead is not None:
            delta = jax.tree.map(lambda g: -lookahead * g, jax.grad(task_fn)(hp_t))
        ids, mask = earlier_tasks(ctx["num_prev"], max_tasks)
        reg = output_regularizer(hnet, ctx.get("snapshot"), ids, beta, hp_t, mask=mask,
                                 targets=ctx.get("targets"), delta=delta)
        return l_task + reg, {"task_loss": l_task, "reg": reg}

    def end_task(hp: HParams, ctx: dict, task: Array, x: Array, y: Array, weights: Array) -> dict:
        ids, _ = earlier_tasks(0, max_tasks)
        ref = regularizer_targets(hnet, hp, ids) if precompute else jax.tree.map(jnp.copy, hp)
        return {"num_prev": jnp.asarray(task, jnp.int32) + 1, ("targets" if precompute else "snapshot"): ref}

    return Method(hnet.init, apply, loss, init_context, end_task)


def finetune_method(init: Callable[[PRNGKey], Params], apply: Callable[[Params, Array, Array], Array],
                    task_loss: Callable[[Array, Array], Array]) -> Method:
    """Plain fine-tuning of one network on each task in turn (the lower bound).

    init(key) -> params; apply(params, x, task) -> outputs (a multi-head net picks its head by `task`);
    task_loss(outputs, y) -> f32[]. Loss metrics: "task_loss".
    """
    who = f"{_NS}.finetune_method"
    for f, name, sig in ((init, "init", "init(key)"), (apply, "apply", "apply(params, x, task)"),
                         (task_loss, "task_loss", "task_loss(outputs, y)")):
        _callable(f, name, who, sig)

    def loss(p: Params, ctx: Any, x: Array, y: Array, task: Array) -> tuple[Array, dict]:
        l_task = task_loss(apply(p, x, task), y)
        return l_task, {"task_loss": l_task}

    return Method(init, apply, loss, lambda p: {"tasks_done": jnp.zeros((), jnp.int32)},
                  lambda p, ctx, task, x, y, w: {"tasks_done": jnp.asarray(task, jnp.int32) + 1})


def ewc_method(init: Callable[[PRNGKey], Params], apply: Callable[[Params, Array, Array], Array],
               task_loss: Callable[[Array, Array], Array], *, lam: float, gamma: float = 1.0,
               empirical: bool = False, batch_size: int = 64) -> Method:
    """Online elastic weight consolidation (Kirkpatrick et al. 2017; online form of Schwarz et al. 2018).

    After task t: F <- gamma F + F_t (`fisher_diagonal` of apply(., ., t) on the task's train set, exact
    expectation over classes unless `empirical`), theta* <- theta. Loss: task_loss + lam/2 sum F (theta - theta*)^2.
    apply(params, x, task) must return logits. Loss metrics: "task_loss", "ewc".
    Raises: ValueError for lam < 0 or gamma outside [0, 1].
    """
    who = f"{_NS}.ewc_method"
    for f, name, sig in ((init, "init", "init(key)"), (apply, "apply", "apply(params, x, task)"),
                         (task_loss, "task_loss", "task_loss(outputs, y)")):
        _callable(f, name, who, sig)
    if lam < 0:
        raise ValueError(f"hyperjax.{who}: `lam` must be >= 0, got {lam!r}.")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"hyperjax.{who}: `gamma` must be in [0, 1], got {gamma!r}.")
    batch_size = checks.positive_int(batch_size, "batch_size", who)

    def init_context(p: Params) -> dict:
        zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, jnp.float32), p)
        return {"fisher": zeros, "anchor": jax.tree.map(jnp.zeros_like, p)}

    def loss(p: Params, ctx: dict, x: Array, y: Array, task: Array) -> tuple[Array, dict]:
        l_task = task_loss(apply(p, x, task), y)
        pen = ewc_penalty(p, ctx["anchor"], ctx["fisher"], lam)
        return l_task + pen, {"task_loss": l_task, "ewc": pen}

    def end_task(p: Params, ctx: dict, task: Array, x: Array, y: Array, weights: Array) -> dict:
        f_t = fisher_diagonal(lambda q, xb: apply(q, xb, task), p, x, labels=y if empirical else None,
                              weights=weights, batch_size=batch_size)
        return {"fisher": online_fisher(ctx["fisher"], f_t, gamma), "anchor": jax.tree.map(jnp.copy, p)}

    return Method(init, apply, loss, init_context, end_task)


# ------------------------------------------------------------------------------------------------ runner
class Task(NamedTuple):
    """One task's data: x_train f[N, ...], y_train [N, ...], x_test f[M, ...], y_test [M, ...] (NumPy or JAX)."""

    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any


class SequenceResult(NamedTuple):
    """What `train_sequence` / `train_joint` return.

    params, context: after the last task. scores[i][j]: the metric on task j's test set after training task i
      (j <= i; `train_joint` has one row). seconds[i]: training seconds of task i. resumed_from: tasks restored
      from the checkpoint instead of trained (0 for a fresh run).
    """

    params: Any
    context: Any
    scores: list[list[float]]
    seconds: list[float]
    resumed_from: int

    @property
    def final(self) -> list[float]:
        """The metric of every task after the last one."""
        return list(self.scores[-1])


def _check_tasks(tasks: Sequence[Task], batch_size: int, who: str) -> list[Task]:
    if isinstance(tasks, (str, bytes)) or not isinstance(tasks, Sequence) or not tasks:
        raise ValueError(f"hyperjax.{who}: `tasks` must be a non-empty sequence of Task(x_train, y_train, x_test, "
                         f"y_test), got {type(tasks).__name__}.")
    out = []
    for i, t in enumerate(tasks):
        if not isinstance(t, tuple) or len(t) != 4:
            raise TypeError(f"hyperjax.{who}: tasks[{i}] must be a Task(x_train, y_train, x_test, y_test), got "
                            f"{type(t).__name__}.")
        t = Task(*(np.asarray(a) for a in t))
        for split in ("train", "test"):
            x, y = getattr(t, f"x_{split}"), getattr(t, f"y_{split}")
            if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
                raise ValueError(f"hyperjax.{who}: tasks[{i}] x_{split} {x.shape} and y_{split} {y.shape} must "
                                 f"share a leading example axis of length >= 1.")
        if t.x_train.shape[0] < batch_size:
            raise ValueError(f"hyperjax.{who}: tasks[{i}] has {t.x_train.shape[0]} training examples, fewer than "
                             f"batch_size={batch_size}; lower batch_size.")
        if out:
            ref = out[0]
            for name in Task._fields:
                a, b = getattr(t, name), getattr(ref, name)
                if a.shape[1:] != b.shape[1:] or a.dtype != b.dtype:
                    raise ValueError(f"hyperjax.{who}: tasks[{i}].{name} has example shape {a.shape[1:]} "
                                     f"{a.dtype}, tasks[0] has {b.shape[1:]} {b.dtype}; every task needs the same.")
        out.append(t)
    return out


def _pad(a: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([a, np.zeros((n - a.shape[0], *a.shape[1:]), a.dtype)]) if a.shape[0] < n else a


def _batches(key: PRNGKey, n: int, steps: int, batch_size: int) -> np.ndarray:
    """i32[steps, batch_size] example indices: consecutive shuffled epochs over range(n) (no repeats within one)."""
    per_epoch = n // batch_size
    epochs = -(-steps // per_epoch)
    perms = jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(key, epochs))
    idx = np.asarray(perms[:, :per_epoch * batch_size]).reshape(-1, batch_size)
    return idx[:steps]


def _run_steps(step1: Callable, stepk: Callable | None, k: int, state: Any, steps: int, batch_of: Callable,
               on_steps: Callable[[int], None] | None) -> tuple[Any, Array | None]:
    """`steps` updates, k per call where they fit; returns (state, last loss)."""
    i, last = 0, None
    while i < steps:
        n = k if (stepk is not None and steps - i >= k) else 1
        batch = batch_of(i, n)
        state, metrics = (stepk if n > 1 else step1)(state, batch)
        last = metrics["loss"]
        i += n
        if on_steps is not None:
            on_steps(n)
    return state, last


def _evaluator(method: Method, metric: Callable[[Array, Array], Array]) -> Callable:
    @jax.jit
    def evaluate(params: Any, x: Array, y: Array, w: Array, task: Array) -> Array:
        s = metric(method.apply(params, x, task), y).astype(jnp.float32)
        return jnp.sum(s * w) / jnp.sum(w)
    return evaluate


def _padded_tests(tasks: list[Task]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    n = max(t.x_test.shape[0] for t in tasks)
    return [(_pad(t.x_test, n), _pad(t.y_test, n),
             _pad(np.ones(t.x_test.shape[0], np.float32), n)) for t in tasks]


def _steps_fns(method: Method, optimizer: optax.GradientTransformation, steps_per_call: int, who: str):
    def loss_fn(params: Any, context: Any, batch: Any, rng: Any) -> tuple[Array, tuple[Any, dict]]:
        x, y, task = batch
        l, aux = method.loss(params, context, x, y, task)
        return l, (context, aux)

    kw = dict(has_aux=True, with_model_state=True, grad_norm=False)
    step1 = _training.make_step(loss_fn, optimizer, **kw)
    stepk = _training.make_step(loss_fn, optimizer, steps_per_call=steps_per_call, **kw) if steps_per_call > 1 \
        else None
    return step1, stepk


def _jitted(f: Callable) -> Callable:
    """f itself when it is already a jitted function (a generator's init), else jax.jit(f): one compile."""
    return f if callable(getattr(f, "lower", None)) else jax.jit(f)


def _check_method(method: Any, who: str) -> Method:
    if not isinstance(method, Method):
        raise TypeError(f"hyperjax.{who}: `method` must be a hyperjax.continual.Method (from hypernet_method, "
                        f"finetune_method or ewc_method), got {type(method).__name__}.")
    return method


def _common_args(steps: int, batch_size: int, steps_per_call: int, optimizer: Any, key: Any, who: str) -> None:
    checks.positive_int(steps, "steps", who)
    checks.positive_int(batch_size, "batch_size", who)
    checks.positive_int(steps_per_call, "steps_per_call", who)
    _training._optimizer(optimizer, "optimizer", who)
    if not isinstance(key, jax.Array):
        raise TypeError(f"hyperjax.{who}: `key` must be a PRNG key (jax.random.key(seed)), got {type(key).__name__}.")


def train_sequence(method: Method, tasks: Sequence[Task], optimizer: optax.GradientTransformation, *, steps: int,
                   batch_size: int, key: PRNGKey, metric: Callable[[Array, Array], Array] = accuracy,
                   checkpoint_dir: str | None = None, steps_per_call: int = 1,
                   on_steps: Callable[[int], None] | None = None,
                   on_task_end: Callable[[int, SequenceResult], None] | None = None,
                   config: Mapping[str, Any] | None = None) -> SequenceResult:
    """Train `method` on `tasks` in order: per task, a fresh optimizer state and `steps` updates on shuffled
    batches of `batch_size`; then `method.end_task` (snapshot / targets / Fisher) and `metric` on the test set
    of every task seen so far.

    key: split into the init key and the batch key; task t's batches come from fold_in(batch key, t), so a
      run (and a resumed run) is a function of its key. metric(outputs, y) -> f32[B] per-example scores (`accuracy`, `squared_error`),
      averaged over each test set. steps_per_call: k updates per compiled call (`make_step(steps_per_call=k)`).
    checkpoint_dir: after each task, params + context are saved with `hyperjax.checkpoint` as step t + 1 (with
      the scores so far and `config` in its JSON config); a run started on a directory holding steps resumes
      after the latest one (bitwise the same result as an uninterrupted run).
    on_steps(n): after every call of n updates (a progress bar). on_task_end(t, result_so_far): after task t is
      evaluated and saved.
    One compiled step, one end_task and one evaluation serve every task (contexts, train and test sets are
    padded to fixed shapes).
    Returns SequenceResult(params, context, scores, seconds, resumed_from).

    Raises:
      TypeError: `method` is not a Method, a bad optimizer or key.
      ValueError: empty tasks or tasks of different shapes, fewer training examples than batch_size; a
        checkpoint written for another number of tasks, steps, batch size or config.
    """
    who = f"{_NS}.train_sequence"
    method = _check_method(method, who)
    _common_args(steps, batch_size, steps_per_call, optimizer, key, who)
    tasks = _check_tasks(tasks, batch_size, who)
    n_tasks = len(tasks)
    run_config = {"num_tasks": n_tasks, "steps": steps, "batch_size": batch_size,
                  "user": _checkpoint._to_json(dict(config or {}), "config", who)}

    k_init, k_data = jax.random.split(key)
    params = _jitted(method.init)(k_init)
    context = jax.jit(method.init_context)(params)
    step1, stepk = _steps_fns(method, optimizer, steps_per_call, who)
    evaluate = _evaluator(method, metric)
    n_train = max(t.x_train.shape[0] for t in tasks)
    end_task = jax.jit(method.end_task)
    tests = _padded_tests(tasks)
    scores: list[list[float]] = []
    seconds: list[float] = []
    start = 0

    mgr = _checkpoint.manager(checkpoint_dir, max_to_keep=2, async_save=False) if checkpoint_dir else None
    try:
        if mgr is not None and mgr.latest_step() is not None:
            abstract = jax.eval_shape(lambda: {"params": params, "context": context})
            restored, saved = _checkpoint.restore(mgr, abstract)
            saved = saved or {}
            for field in ("num_tasks", "steps", "batch_size", "user"):
                if saved.get(field) != run_config[field]:
                    raise ValueError(f"hyperjax.{who}: the checkpoint in {mgr.directory} was written by a run with "
                                     f"{field}={saved.get(field)!r}, this run has {field}={run_config[field]!r}; "
                                     f"use another checkpoint_dir or the same settings.")
            params, context = restored["params"], restored["context"]
            scores, seconds = [list(r) for r in saved["scores"]], list(saved["seconds"])
            start = len(scores)
        for t in range(start, n_tasks):
            task = tasks[t]
            tid = jnp.asarray(t, jnp.int32)
            idx = _batches(jax.random.fold_in(k_data, t), task.x_train.shape[0], steps, batch_size)
            xs, ys = task.x_train, task.y_train

            def batch_of(i: int, n: int, xs=xs, ys=ys, idx=idx, t=t) -> tuple:
                if n == 1:
                    return xs[idx[i]], ys[idx[i]], np.int32(t)
                b = idx[i:i + n]
                return xs[b], ys[b], np.full((n,), t, np.int32)

            t0 = time.perf_counter()
            state = _training.init_state(params, optimizer, None, model_state=context)
            state, _ = _run_steps(step1, stepk, steps_per_call, state, steps, batch_of, on_steps)
            params = state.params
            jax.block_until_ready(params)
            seconds.append(time.perf_counter() - t0)
            w = _pad(np.ones(xs.shape[0], np.float32), n_train)
            context = end_task(params, state.model_state, tid, _pad(xs, n_train), _pad(ys, n_train), w)
            scores.append([float(evaluate(params, *tests[j], jnp.asarray(j, jnp.int32))) for j in range(t + 1)])
            if mgr is not None:
                _checkpoint.save(mgr, t + 1, {"params": params, "context": context},
                                 config={**run_config, "scores": scores, "seconds": seconds})
                mgr.wait()
            if on_task_end is not None:
                on_task_end(t, SequenceResult(params, context, [list(r) for r in scores], list(seconds), start))
    finally:
        if mgr is not None:
            mgr.close()
    return SequenceResult(params, context, scores, seconds, start)


def train_joint(method: Method, tasks: Sequence[Task], optimizer: optax.GradientTransformation, *, steps: int,
                batch_size: int, key: PRNGKey, metric: Callable[[Array, Array], Array] = accuracy,
                steps_per_call: int = 1, on_steps: Callable[[int], None] | None = None) -> SequenceResult:
    """Train `method` on every task at once (multi-task training, the usual upper bound of continual learning).

    Each update draws ceil(batch_size / T) examples from each of the T tasks and averages the T task losses
    (`method.loss` vmapped over tasks, with the method's initial context: no regulariser or penalty acts).
    Returns SequenceResult with one row of scores (every task after training) and seconds = [total].
    Raises as `train_sequence`.
    """
    who = f"{_NS}.train_joint"
    method = _check_method(method, who)
    _common_args(steps, batch_size, steps_per_call, optimizer, key, who)
    tasks = _check_tasks(tasks, 1, who)
    n_tasks = len(tasks)
    per_task = -(-batch_size // n_tasks)
    for i, t in enumerate(tasks):
        if t.x_train.shape[0] < per_task:
            raise ValueError(f"hyperjax.{who}: tasks[{i}] has {t.x_train.shape[0]} training examples, fewer than "
                             f"the {per_task} per task of batch_size={batch_size}; lower batch_size.")
    k_init, k_data = jax.random.split(key)
    params = _jitted(method.init)(k_init)
    context = jax.jit(method.init_context)(params)
    ids = jnp.arange(n_tasks, dtype=jnp.int32)

    def joint_loss(p: Any, ctx: Any, x: Array, y: Array, task: Array) -> tuple[Array, dict]:
        losses, aux = jax.vmap(method.loss, in_axes=(None, None, 0, 0, 0))(p, ctx, x, y, ids)
        return jnp.mean(losses), jax.tree.map(jnp.mean, aux)

    joint = method._replace(loss=joint_loss)
    step1, stepk = _steps_fns(joint, optimizer, steps_per_call, who)
    idx = [_batches(jax.random.fold_in(k_data, t), tk.x_train.shape[0], steps, per_task) for t, tk in enumerate(tasks)]

    def batch_of(i: int, n: int) -> tuple:
        rows = slice(i, i + n)
        x = np.stack([tk.x_train[ix[rows]] for tk, ix in zip(tasks, idx)], axis=1)   # [n, T, b, ...]
        y = np.stack([tk.y_train[ix[rows]] for tk, ix in zip(tasks, idx)], axis=1)
        if n == 1:
            return x[0], y[0], np.int32(0)
        return x, y, np.zeros((n,), np.int32)

    t0 = time.perf_counter()
    state = _training.init_state(params, optimizer, None, model_state=context)
    state, _ = _run_steps(step1, stepk, steps_per_call, state, steps, batch_of, on_steps)
    params = state.params
    jax.block_until_ready(params)
    seconds = [time.perf_counter() - t0]
    evaluate = _evaluator(method, metric)
    tests = _padded_tests(tasks)
    scores = [[float(evaluate(params, *tests[j], jnp.asarray(j, jnp.int32))) for j in range(n_tasks)]]
    return SequenceResult(params, state.model_state, scores, seconds, 0)
