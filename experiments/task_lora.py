"""Task-conditioned LoRA: a hypernetwork maps a task descriptor to the adapters of a frozen transformer.

    python -m experiments.task_lora                      # 3 seeds in one vmapped program, ~5-7 min on 2 CPU cores
    python -m experiments.task_lora --adapt attention    # adapters on the attention kernels only

Tasks (a parametrised family over sequences of L = 8 symbols from V = 10): y_i = (x_{(s i + k) mod L} + a)
mod V, with the operation "rotate" (s = +1: copy with offset k) or "reverse" (s = -1: read backwards from k)
and a value shift a ("add a mod V"). A task's descriptor is f32[6]: the operation one-hot, then (cos, sin) of
2 pi k / L and of 2 pi a / V. Training tasks: rotate with a in {0, 1, 3} and reverse with a = 0, every offset
but k = 5 (28 tasks). Held out (6): the unseen offset k = 5 (rotate and reverse), the unseen value a = 2
(rotate by 2 and by 6), and the unseen combination reverse + add (reverse by 1 add 1, reverse by 4 add 3):
reverse and each of those add values are trained, never together.

Format: tokens [x_0 .. x_{L-1}, SEP, QUERY * L], the answer y_i read at the i-th QUERY (all L at once; loss and
accuracy on the answer tokens only). Answers are not fed back as inputs, so no method can read the task off
the first answer tokens in context: only the descriptor says which task it is.

Model (Flax linen, lm1b style): a decoder-only transformer with causal mask, `nn.SelfAttention` (DenseGeneral
query/key/value/out kernels), GELU MLP, pre-LayerNorm, the layers in one `nn.scan`, every param under
`nn.with_logical_partitioning`. Tokens and positions enter through fixed circular codes (symbol v ->
[cos, sin](2 pi v / V), position j of x and of the queries -> [cos, sin](2 pi j / L), plus segment and
SEP/QUERY dims) and a learned linear embedding; the output is scored against the token codes (lm1b's logits
via the embedding). In these codes "read position s i + k" is a rotation/reflection of the query's position
code and "add a" a rotation of the value code, so an adapter that depends linearly on (cos, sin) of k and a
can reach offsets and values it was not trained on (see the design probes below).

Pretraining: the model learns the mixture of the training tasks WITHOUT the descriptor (ambiguous: it can
only hedge between the tasks), then is frozen. Four methods on the same held-out tasks, every adapter a
rank-r LoRA (`hj.generators.lora`) on the query, key, value and out kernels and both MLP kernels of every
layer (one adapter per scanned layer; `--adapt attention`: the attention kernels only), zero at init, trained
with Adam while the base gets no update:

* base: the frozen pretrained model alone.
* shared_lora: one static LoRA trained on the mixture of all training tasks (no descriptor).
* hyper_lora: `hj.generators.lora(spec, cond_dim=6, ...)` maps the descriptor to the A, B of every adapted
  kernel (a linear map by default, `--hidden` for an MLP), trained on the training tasks (each step
  `--tasks-per-step` tasks, `--batch-size / tasks-per-step` examples each, one vmap over the tasks); held-out
  tasks get their adapters from their descriptors, zero-shot, with no gradient step on them.
* per_task_lora: a static LoRA trained on each held-out task's own data (the upper bound, given its data).

Metrics on `--n-test` fresh examples per held-out task: token accuracy and exact-match sequence accuracy (all
L answer tokens right), averaged over the held-out tasks, per seed and the mean over seeds; trainable
parameters and seconds per method; gap_closed = (hyper - shared) / (per_task - shared) on the mean token
accuracy (target >= 0.7). Seeds `--seed`, `--seed` + 1, ... (`--seeds`) run as one vmapped program (each its
own pretraining, adapters and data). Writes results/task_lora.json and a PNG of the learning curves and the
per-task accuracies.

Result (seeds 0-2, defaults): held-out token accuracy / exact match, mean of 3 seeds: base 14.7% / 0.0%,
shared_lora 14.7% / 0.0%, hyper_lora 81.4% / 59.1% (seeds 76.7, 73.0, 94.6%), per_task_lora 100.0% / 100.0%;
gap_closed 0.782 (seeds 0.727, 0.683, 0.936): the >= 0.7 target is met on the mean, not on every seed. Per
held-out task (hyper_lora token accuracy): unseen value a = 2 100% and 100%, reverse by 1 add 1 98%,
unseen offset k = 5 70% (rotate) and 63% (reverse), reverse by 4 add 3 58%. `--adapt attention`: 78.8%
(seeds 74.0, 92.0, 70.4%), gap_closed 0.751. Design probes (one seed, a hand-written LoRA, not this script):
with learned token and position embeddings an MLP hypernetwork fitted all 28 training tasks and reached 2-55%
token accuracy on the held-out ones; with the circular codes a ReLU MLP (hidden 64) scored 0-100% per task
(reverse tasks failed) where a linear map scored 76-100%, hence the linear default.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import hyperjax as hj
from experiments import _common

NAME = "task_lora"
OPS = ("rotate", "reverse")
METHODS = ("base", "shared_lora", "hyper_lora", "per_task_lora")
COLORS = {"base": "tab:gray", "shared_lora": "tab:blue", "hyper_lora": "tab:orange", "per_task_lora": "tab:green"}
ADAPTED = ("layers/attention/query/kernel", "layers/attention/key/kernel", "layers/attention/value/kernel",
           "layers/attention/out/kernel", "layers/mlp_in/kernel", "layers/mlp_out/kernel")


# ------------------------------------------------------------------------------------------------ tasks
class Task(NamedTuple):
    """y_i = (x_{(s*i + k) mod L} + a) mod V with s = +1 for "rotate", -1 for "reverse"."""

    op: str
    k: int
    a: int


def apply_task(task: Task, x: np.ndarray, symbols: int) -> np.ndarray:
    """The answer of `task` for inputs x: i32[..., L] (the reference, in NumPy)."""
    L = x.shape[-1]
    s = 1 if task.op == "rotate" else -1
    src = (s * np.arange(L) + task.k) % L
    return (x[..., src] + task.a) % symbols


def descriptor(task: Task, length: int, symbols: int) -> np.ndarray:
    """f32[6]: [one-hot op (rotate, reverse), cos, sin of 2 pi k / L, cos, sin of 2 pi a / V]."""
    onehot = [float(task.op == op) for op in OPS]
    tk, ta = 2 * np.pi * task.k / length, 2 * np.pi * task.a / symbols
    return np.asarray([*onehot, np.cos(tk), np.sin(tk), np.cos(ta), np.sin(ta)], np.float32)


def split(length: int) -> tuple[list[Task], list[tuple[Task, str]]]:
    """(training tasks, held-out tasks with why each is unseen).

    Training: rotate by k with a in {0, 1, 3}, reverse by k with a = 0, every offset k but 5. Held out: the
    offset k = 5 (never trained), the value a = 2 (never trained), and reverse with a != 0 (reverse and each
    add value are trained, never together).
    """
    hold_k = 5 % length
    train = [Task("rotate", k, a) for k in range(length) if k != hold_k for a in (0, 1, 3)]
    train += [Task("reverse", k, 0) for k in range(length) if k != hold_k]
    held = [(Task("rotate", hold_k, 0), "unseen offset"), (Task("reverse", hold_k, 0), "unseen offset"),
            (Task("rotate", 2 % length, 2), "unseen value"), (Task("rotate", 6 % length, 2), "unseen value"),
            (Task("reverse", 1 % length, 1), "unseen combination"),
            (Task("reverse", 4 % length, 3), "unseen combination")]
    return train, held


class Table(NamedTuple):
    """A set of tasks as arrays: src i32[T, L] (source position of each answer token), add i32[T],
    desc f32[T, 6]."""

    src: jax.Array
    add: jax.Array
    desc: jax.Array


def table(tasks: list[Task], length: int, symbols: int) -> Table:
    src = [(np.arange(length) * (1 if t.op == "rotate" else -1) + t.k) % length for t in tasks]
    return Table(jnp.asarray(np.stack(src), jnp.int32), jnp.asarray([t.a for t in tasks], jnp.int32),
                 jnp.asarray(np.stack([descriptor(t, length, symbols) for t in tasks])))


def sample(key: jax.Array, tab: Table, ids: jax.Array, symbols: int) -> tuple[jax.Array, jax.Array]:
    """Examples of tasks `ids` i32[n]: tokens i32[n, 2L + 1] = [x, SEP, QUERY * L], answers y i32[n, L].

    x is uniform over the `symbols` data tokens; SEP = symbols, QUERY = symbols + 1.
    """
    n, length = ids.shape[0], tab.src.shape[1]
    x = jax.random.randint(key, (n, length), 0, symbols)
    y = (jnp.take_along_axis(x, tab.src[ids], axis=1) + tab.add[ids][:, None]) % symbols
    tokens = jnp.concatenate([x, jnp.full((n, 1), symbols), jnp.full((n, length), symbols + 1)], axis=1)
    return tokens.astype(jnp.int32), y.astype(jnp.int32)


# ------------------------------------------------------------------------------------------------ model
def logical(init, names):
    return nn.with_logical_partitioning(init, names)


class DecoderBlock(nn.Module):
    """Pre-norm causal self-attention + GELU MLP (Flax lm1b's DecoderLayer, no dropout)."""

    width: int
    heads: int
    mlp: int

    @nn.compact
    def __call__(self, x, _):
        kernel = nn.initializers.xavier_uniform()

        def norm():
            return nn.LayerNorm(scale_init=logical(nn.initializers.ones, ("embed",)),
                                bias_init=logical(nn.initializers.zeros, ("embed",)))
        mask = nn.make_causal_mask(jnp.ones(x.shape[:2], jnp.int32))
        h = nn.SelfAttention(num_heads=self.heads, qkv_features=self.width, use_bias=False, deterministic=True,
                             kernel_init=logical(kernel, ("embed", "kv")), name="attention")(norm()(x), mask)
        x = x + h
        h = nn.Dense(self.mlp, kernel_init=logical(kernel, ("embed", "mlp")),
                     bias_init=logical(nn.initializers.zeros, ("mlp",)), name="mlp_in")(norm()(x))
        h = nn.Dense(self.width, kernel_init=logical(kernel, ("mlp", "embed")),
                     bias_init=logical(nn.initializers.zeros, ("embed",)), name="mlp_out")(nn.gelu(h))
        return x + h, None


def circle(index: np.ndarray, period: int) -> np.ndarray:
    """f32[n, 2]: [cos, sin](2 pi index / period): index mod period on the unit circle (a shift by k is the
    rotation by 2 pi k / period, a reflection index -> -index flips the sine)."""
    angle = 2 * np.pi * np.asarray(index, np.float64) / period
    return np.stack([np.cos(angle), np.sin(angle)], axis=1).astype(np.float32)


def token_code(symbols: int) -> np.ndarray:
    """f32[symbols + 2, 4]: the fixed code of each token: data symbol v -> circle(v, symbols) (so "add a mod V"
    rotates it), then one dim each for SEP and QUERY."""
    out = np.zeros((symbols + 2, 4), np.float32)
    out[:symbols, :2] = circle(np.arange(symbols), symbols)
    out[symbols, 2] = out[symbols + 1, 3] = 1.0
    return out


def position_code(length: int) -> np.ndarray:
    """f32[2L + 1, 5]: the fixed code of each position of [x, SEP, QUERY * L]: x_j and the j-th query share
    circle(j, L) (so "read position s*i + k" is a rotation or reflection of the query's code), then one dim
    each for the segments x, SEP, query."""
    index = np.concatenate([np.arange(length), [0], np.arange(length)])
    segment = np.concatenate([np.zeros(length, int), [1], np.full(length, 2)])
    out = np.zeros((2 * length + 1, 5), np.float32)
    out[:, :2] = np.where(segment[:, None] == 1, 0.0, circle(index, length))
    out[np.arange(2 * length + 1), 2 + segment] = 1.0
    return out


class Transformer(nn.Module):
    """Decoder-only LM tokens i32[batch, 2L + 1] -> logits f[batch, 2L + 1, symbols + 2] (Flax lm1b style).

    Input: a learned linear map `embed` of the fixed [token_code, position_code]; `layers` DecoderBlocks in one
    `nn.scan` (params 'layers/...' f[layers, ...]); output: a learned map `logits` into the token-code space,
    scored against every token's code (lm1b's logits via the embedding, through the fixed code). Every param
    is boxed with logical axis names.
    """

    symbols: int
    length: int
    width: int = 64
    heads: int = 4
    mlp: int = 128
    layers: int = 2

    @nn.compact
    def __call__(self, tokens):
        tok, pos = jnp.asarray(token_code(self.symbols)), jnp.asarray(position_code(self.length))
        code = jnp.concatenate([tok[tokens], jnp.broadcast_to(pos[:tokens.shape[1]], (*tokens.shape, pos.shape[1]))],
                               axis=-1)
        x = nn.Dense(self.width, use_bias=False, name="embed",
                     kernel_init=logical(nn.initializers.normal(1.0), ("code", "embed")))(code)
        scan = nn.scan(DecoderBlock, variable_axes={"params": 0}, split_rngs={"params": True},
                       length=self.layers, metadata_params={nn.PARTITION_NAME: "layers"})
        x, _ = scan(self.width, self.heads, self.mlp, name="layers")(x, None)
        x = nn.LayerNorm(scale_init=logical(nn.initializers.ones, ("embed",)),
                         bias_init=logical(nn.initializers.zeros, ("embed",)), name="final_norm")(x)
        out = nn.Dense(tok.shape[1], kernel_init=logical(nn.initializers.xavier_uniform(), ("embed", "code")),
                       bias_init=logical(nn.initializers.zeros, ("code",)), name="logits")(x)
        return out @ tok.T


# ------------------------------------------------------------------------------------------------ losses
def answer_logits(logits: jax.Array, length: int) -> jax.Array:
    """f[n, 2L + 1, vocab] -> the logits at the L query positions f[n, L, vocab]."""
    return logits[:, length + 1:]


def xent(logits: jax.Array, y: jax.Array, length: int) -> jax.Array:
    """Mean cross-entropy of the answer tokens."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(answer_logits(logits, length), y))


def accuracies(logits: jax.Array, y: jax.Array, length: int) -> tuple[jax.Array, jax.Array]:
    """(token accuracy, exact-match sequence accuracy) of the answers' argmax."""
    hit = jnp.argmax(answer_logits(logits, length), axis=-1) == y
    return jnp.mean(hit), jnp.mean(jnp.all(hit, axis=-1))


# ------------------------------------------------------------------------------------------------ training
def build_parser():
    p = _common.parser(NAME, __doc__.splitlines()[0], steps=500, images=False)
    p.set_defaults(steps_per_call=25)
    p.add_argument("--seeds", type=int, default=3, help="seeds --seed, --seed + 1, ... (one vmapped program)")
    p.add_argument("--length", type=int, default=8, help="L, the length of x and of the answer")
    p.add_argument("--symbols", type=int, default=10, help="V, the number of data symbols")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--mlp", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--rank", type=int, default=4, help="LoRA rank of every adapter")
    p.add_argument("--hidden", type=int, nargs="*", default=[],
                   help="hidden widths of the hypernetwork (none: a linear map descriptor -> A, B)")
    p.add_argument("--pretrain-steps", type=int, default=500)
    p.add_argument("--per-task-steps", type=int, default=200, help="steps of each held-out task's own LoRA")
    p.add_argument("--batch-size", type=int, default=128, help="examples per step (pretraining, shared, hyper)")
    p.add_argument("--tasks-per-step", type=int, default=8, help="training tasks in each hypernetwork step")
    p.add_argument("--per-task-batch", type=int, default=64)
    p.add_argument("--pretrain-lr", type=float, default=3e-3)
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate of shared_lora and hyper_lora")
    p.add_argument("--per-task-lr", type=float, default=1e-2)
    p.add_argument("--adapt", choices=("all", "attention"), default="all",
                   help="adapted kernels: attention query/key/value/out and both MLP kernels, or attention only")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--n-test", type=int, default=256, help="test examples per held-out task")
    return p


def vmapped_steps(loss_fn, opt, k: int, axes: list[tuple]) -> tuple[Any, Any]:
    """(one-step, k-step or None) jitted `make_step`s vmapped by `axes` (innermost first), state donated."""
    def build(n: int):
        f = hj.training.make_step(loss_fn, opt, jit=False, grad_norm=False, steps_per_call=n)
        for ax in axes:
            f = jax.vmap(f, in_axes=ax)
        return jax.jit(f, donate_argnums=(0,))
    return build(1), (build(k) if k > 1 else None)


def train(steps_fns, state, steps: int, k: int, batch_fn, evaluate, eval_every: int, desc: str, disable: bool):
    """Run `steps` updates (runs of k in one call where they fit before the next evaluation, else one).

    batch_fn(i, n) -> the batch of steps i..i+n (n = 1: one step's). evaluate(params) -> f[seeds] held-out
    token accuracy. Returns (state, curve {"step", "loss", "heldout_token_accuracy" (mean over seeds),
    "heldout_token_accuracy_per_seed"}, seconds). Losses stay on the device between evaluations.
    """
    step_1, step_k = steps_fns
    acc = np.asarray(evaluate(state.params))
    curve = {"step": [0], "loss": [float("nan")], "heldout_token_accuracy": [float(acc.mean())],
             "heldout_token_accuracy_per_seed": [acc.tolist()]}
    losses, i = [], 0
    t0 = time.perf_counter()
    bar = _common.progress(None, steps, desc, disable=disable)
    while i < steps:
        next_eval = min(steps, (i // eval_every + 1) * eval_every)
        n = k if step_k is not None and next_eval - i >= k else 1
        state, metrics = (step_k if n > 1 else step_1)(state, batch_fn(i, n))
        losses.append(metrics["loss"])
        i += n
        bar.update(n)
        if i == next_eval:
            acc = np.asarray(evaluate(state.params))
            curve["step"].append(i)
            curve["loss"].append(float(np.mean([np.mean(np.asarray(l)) for l in losses])))
            curve["heldout_token_accuracy"].append(float(acc.mean()))
            curve["heldout_token_accuracy_per_seed"].append(acc.tolist())
            losses = []
    bar.close()
    jax.block_until_ready(state.params)
    return state, curve, time.perf_counter() - t0


def stack(trees: list) -> Any:
    return jax.tree.map(lambda *x: jnp.stack(x), *trees)


def unstack(tree: Any, n: int) -> list:
    return jax.jit(lambda t: [jax.tree.map(lambda x: x[i], t) for i in range(n)])(tree)   # one program


def step_batch(i: int, n: int) -> jax.Array:
    """The batch of the mixture methods: the step numbers (data come from each step's key)."""
    return jnp.arange(i, i + n, dtype=jnp.int32) if n > 1 else jnp.int32(i)


def evaluator(spec, params_of, test: tuple[jax.Array, jax.Array], length: int, stacked: bool = False):
    """-> jitted hp [seeds, ...] -> (token accuracy, exact match) f[seeds, tasks] on test = (tokens
    [seeds, tasks, n, 2L + 1], answers [seeds, tasks, n, L]); params_of(hp, t) -> the params of task t.
    stacked: hp has a leading task axis (one adapter per task)."""
    def on(hp, tok, y):
        def one(h, t, x, z):
            return accuracies(spec.apply(params_of(h, t), x), z, length)
        return jax.vmap(one, in_axes=(0 if stacked else None, 0, 0, 0))(hp, jnp.arange(tok.shape[0]), tok, y)
    fn = jax.jit(jax.vmap(on))
    return lambda hp: fn(hp, *test)


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    t_start = time.perf_counter()
    L, V, S, k_call = args.length, args.symbols, args.seeds, args.steps_per_call
    if args.batch_size % args.tasks_per_step:
        raise ValueError(f"task_lora: --batch-size {args.batch_size} must be a multiple of --tasks-per-step "
                         f"{args.tasks_per_step} (each step takes batch_size / tasks_per_step examples per task).")
    train_tasks, held = split(L)
    held_tasks = [t for t, _ in held]
    tr, ho = table(train_tasks, L, V), table(held_tasks, L, V)
    n_tr, H = len(train_tasks), len(held_tasks)
    if args.tasks_per_step > n_tr:
        raise ValueError(f"task_lora: --tasks-per-step {args.tasks_per_step} exceeds the {n_tr} training tasks.")
    model = Transformer(symbols=V, length=L, width=args.width, heads=args.heads, mlp=args.mlp, layers=args.layers)
    example = jnp.zeros((1, 2 * L + 1), jnp.int32)
    spec = hj.targets.from_linen(model, example)
    seed_keys = [jax.random.key(args.seed + s) for s in range(S)]

    def keys(tag: int) -> jax.Array:
        return jnp.stack([jax.random.fold_in(k, tag) for k in seed_keys])

    def test_set(tab: Table, n: int, tag: int) -> tuple[jax.Array, jax.Array]:
        """Fixed examples per seed and task: tokens [S, T, n, 2L + 1], answers [S, T, n, L]."""
        ids = jnp.repeat(jnp.arange(tab.src.shape[0]), n)
        tok, y = jax.vmap(lambda key: sample(key, tab, ids, V))(keys(tag))
        return tok.reshape(S, -1, n, 2 * L + 1), y.reshape(S, -1, n, L)
    held_test, train_test = test_set(ho, args.n_test, 1), test_set(tr, 64, 2)

    def run(name, loss_fn, opt, state, steps, evaluate, axes=((0, None),), batch_fn=step_batch):
        fns = vmapped_steps(loss_fn, opt, k_call, list(axes))
        return train(fns, state, steps, k_call, batch_fn, lambda p: evaluate(p)[0].mean(-1), args.eval_every, name,
                     args.no_progress)

    results: dict[str, dict[str, Any]] = {}

    def record(name, held_eval, train_eval, params, curve, seconds, n_params, **extra):
        tok, exact = (np.asarray(a) for a in held_eval(params))
        out = {"heldout_token_accuracy_per_task": tok.tolist(), "heldout_exact_match_per_task": exact.tolist(),
               "curve": curve, "seconds": seconds, "trainable_params": n_params, **extra}
        if train_eval is not None:
            out["train_token_accuracy_per_seed"] = np.asarray(train_eval(params)[0]).mean(-1).tolist()
        results[name] = out

    # ---------------------------------------------------------------- pretraining (no descriptor)
    def mixture_loss(params, _, rng):
        k_ids, k_x = jax.random.split(rng)
        tok, y = sample(k_x, tr, jax.random.randint(k_ids, (args.batch_size,), 0, n_tr), V)
        return xent(spec.apply(params, tok), y, L)

    sched = optax.warmup_cosine_decay_schedule(0.0, args.pretrain_lr, max(1, args.pretrain_steps // 10),
                                               max(1, args.pretrain_steps))
    opt = optax.adamw(sched, weight_decay=0.01)
    state = jax.jit(lambda: jax.vmap(lambda p, key: hj.training.init_state(p, opt, key))(   # one program
        stack([spec.init(jax.random.fold_in(k, 10)) for k in seed_keys]), keys(11)))()
    base_held = evaluator(spec, lambda p, t: p, held_test, L)
    state, curve, seconds = run("pretrain", mixture_loss, opt, state, args.pretrain_steps, base_held)
    base_params = state.params
    bases = unstack(base_params, S)
    record("base", base_held, evaluator(spec, lambda p, t: p, train_test, L), base_params, curve, seconds,
           hj.training.count_params(bases[0]))

    # ---------------------------------------------------------------- adapters on the frozen base
    specs = [hj.targets.from_linen(model, example, params=b) for b in bases]    # W0 = each seed's base
    adam = hj.training.multi_optimizer({"hyper": optax.adam(args.lr), "embedding": optax.adam(args.lr)})
    where = list(ADAPTED if args.adapt == "all" else ADAPTED[:4])

    def lora(**kw) -> list:
        return [hj.generators.lora(sp, rank=args.rank, where=where, **kw) for sp in specs]

    def init_states(hnets, opt, tag: int, tasks: int = 0):
        """Stacked TrainStates [S] (or [S, tasks], one adapter per task), each seed's base in its "frozen"."""
        def one(s: int, t: int):
            return hj.training.init_state(hnets[s].init(jax.random.fold_in(seed_keys[s], 1000 * tag + t)), opt,
                                          jax.random.fold_in(seed_keys[s], 1000 * tag + 500 + t))
        if not tasks:                  # one compiled program, not hundreds of eager ops
            return jax.jit(lambda: stack([one(s, 0) for s in range(S)]))()
        return jax.jit(lambda: stack([stack([one(s, t) for t in range(tasks)]) for s in range(S)]))()

    def unchanged(hp, lead: int = 1) -> bool:
        """Whether every frozen base weight in the trained hparams [S, (tasks,) ...] is bitwise the base's."""
        def same(f, b):
            return jnp.array_equal(f, b.reshape(b.shape[:1] + (1,) * (lead - 1) + b.shape[1:]) * jnp.ones_like(f))
        flags = jax.jit(lambda fr, bp: jax.tree.leaves(jax.tree.map(same, fr, bp)))(hp["frozen"], base_params)
        return all(bool(x) for x in flags)           # one compiled comparison, not one per leaf

    def n_trainable(params, lead: int = 1) -> int:
        first = jax.tree.map(lambda x: x[(0,) * lead], params)
        return hj.training.count_params({r: v for r, v in first.items() if r != "frozen"})

    # shared_lora: one static LoRA trained on the mixture (no descriptor)
    static = lora()
    apply_static = static[0].apply                   # the same function for every seed: W0 is read from hparams

    def shared_loss(hp, _, rng):
        return mixture_loss(apply_static(hp), None, rng)

    shared_held = evaluator(spec, lambda hp, t: apply_static(hp), held_test, L)
    state, curve, seconds = run("shared_lora", shared_loss, adam, init_states(static, adam, 2), args.steps,
                                shared_held)
    record("shared_lora", shared_held, evaluator(spec, lambda hp, t: apply_static(hp), train_test, L), state.params,
           curve, seconds, n_trainable(state.params), base_unchanged=unchanged(state.params))

    # hyper_lora: the descriptor -> A, B of every adapted kernel, trained on the training tasks
    hyper = lora(cond_dim=int(tr.desc.shape[1]), hidden=tuple(args.hidden))
    apply_hyper = hyper[0].apply
    per = args.batch_size // args.tasks_per_step

    def hyper_loss(hp, _, rng):
        k_ids, k_x = jax.random.split(rng)
        ids = jax.random.choice(k_ids, n_tr, (args.tasks_per_step,), replace=False)

        def one(t, key):
            tok, y = sample(key, tr, jnp.full((per,), t), V)
            return xent(spec.apply(apply_hyper(hp, tr.desc[t]), tok), y, L)
        return jnp.mean(jax.vmap(one)(ids, jax.random.split(k_x, args.tasks_per_step)))

    hyper_held = evaluator(spec, lambda hp, t: apply_hyper(hp, ho.desc[t]), held_test, L)
    state, curve, seconds = run("hyper_lora", hyper_loss, adam, init_states(hyper, adam, 3), args.steps, hyper_held)
    record("hyper_lora", hyper_held, evaluator(spec, lambda hp, t: apply_hyper(hp, tr.desc[t]), train_test, L),
           state.params, curve, seconds, n_trainable(state.params), base_unchanged=unchanged(state.params))

    # per_task_lora: a static LoRA per held-out task on that task's own data (the upper bound)
    adam_pt = hj.training.multi_optimizer({"hyper": optax.adam(args.per_task_lr)})

    def per_task_loss(hp, task, rng):
        tok, y = sample(rng, ho, jnp.full((args.per_task_batch,), task), V)
        return xent(spec.apply(apply_static(hp), tok), y, L)

    def task_batch(i: int, n: int) -> jax.Array:
        ids = jnp.arange(H, dtype=jnp.int32)
        return jnp.broadcast_to(ids[:, None], (H, n)) if n > 1 else ids

    pt_held = evaluator(spec, lambda hp, t: apply_static(hp), held_test, L, stacked=True)
    state, curve, seconds = run("per_task_lora", per_task_loss, adam_pt, init_states(static, adam_pt, 4, tasks=H),
                                args.per_task_steps, pt_held, axes=((0, 0), (0, None)), batch_fn=task_batch)
    record("per_task_lora", pt_held, None, state.params, curve, seconds, H * n_trainable(state.params, 2),
           trainable_params_per_task=n_trainable(state.params, 2), base_unchanged=unchanged(state.params, 2))

    metrics = summarise(results, args, train_tasks, held)
    metrics.update({"frozen_base_params": results["base"]["trainable_params"], "n_train_tasks": n_tr,
                    "n_heldout_tasks": H, "wall_time_s": time.perf_counter() - t_start})
    path = _common.write_json(args.out, NAME, vars(args), metrics)
    png = plot(metrics, _common.png_path(args.out), f"task-conditioned LoRA, {S} seeds: held-out tasks")
    print_table(metrics)
    print(f"wrote {path} and {png}")
    summary = ", ".join(f"{m} {100 * metrics[m]['heldout_token_accuracy']:.1f}%" for m in METHODS)
    print(f"{NAME} [seeds {args.seed}..{args.seed + S - 1}]: held-out token accuracy {summary}; gap closed "
          f"{metrics['gap_closed']:.3f}; {metrics['wall_time_s']:.0f}s wall")
    return metrics


def summarise(results: dict, args, train_tasks: list[Task], held: list[tuple[Task, str]]) -> dict:
    """Per method: means over seeds of the held-out task means, per seed, per task; gap_closed; targets."""
    out: dict[str, Any] = {}
    for name in METHODS:
        r = dict(results[name])
        tok = np.asarray(r.pop("heldout_token_accuracy_per_task"))         # [seeds, held-out tasks]
        exact = np.asarray(r.pop("heldout_exact_match_per_task"))
        out[name] = {"heldout_token_accuracy": float(tok.mean()), "heldout_exact_match": float(exact.mean()),
                     "heldout_token_accuracy_per_seed": tok.mean(1).tolist(),
                     "heldout_exact_match_per_seed": exact.mean(1).tolist(),
                     "heldout_token_accuracy_per_task": tok.mean(0).tolist(),
                     "heldout_exact_match_per_task": exact.mean(0).tolist(), **r}
        if "train_token_accuracy_per_seed" in r:
            out[name]["train_token_accuracy"] = float(np.mean(r["train_token_accuracy_per_seed"]))
    acc = {m: out[m]["heldout_token_accuracy"] for m in METHODS}
    seeds = {m: np.asarray(out[m]["heldout_token_accuracy_per_seed"]) for m in METHODS}
    gap = acc["per_task_lora"] - acc["shared_lora"]
    out["gap_closed"] = float((acc["hyper_lora"] - acc["shared_lora"]) / gap) if gap > 0 else float("nan")
    gaps = seeds["per_task_lora"] - seeds["shared_lora"]
    out["gap_closed_per_seed"] = [float(g) if d > 0 else float("nan") for g, d in
                                  zip((seeds["hyper_lora"] - seeds["shared_lora"]) / np.where(gaps > 0, gaps, 1), gaps)]
    out["train_tasks"] = [t._asdict() for t in train_tasks]
    out["heldout_tasks"] = [{**t._asdict(), "why": why} for t, why in held]
    out["targets"] = {"hyper_closes_70pct_of_gap": {"gap_closed": out["gap_closed"],
                                                    "met": bool(out["gap_closed"] >= 0.7)}}
    return out


def task_label(task: dict) -> str:
    return f"{task['op'][:3]} k={task['k']} a={task['a']}\n({task['why'].replace('unseen ', 'new ')})"


def plot(metrics: dict, path: str, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_c, ax_t) = plt.subplots(1, 2, figsize=(13, 4), gridspec_kw={"width_ratios": [1, 1.6]})
    for name in METHODS:
        c = metrics[name]["curve"]
        if name == "base":
            ax_c.axhline(metrics[name]["heldout_token_accuracy"], color=COLORS[name], ls="--", label=name)
        else:
            ax_c.plot(c["step"], c["heldout_token_accuracy"], "o-", ms=3, color=COLORS[name], label=name)
    ax_c.set(xlabel="adapter training steps", ylabel="held-out token accuracy (mean of seeds)", ylim=(0, 1.02),
             title="learning curves")
    tasks = metrics["heldout_tasks"]
    width = 0.8 / len(METHODS)
    for i, name in enumerate(METHODS):
        ax_t.bar(np.arange(len(tasks)) + i * width, metrics[name]["heldout_token_accuracy_per_task"], width,
                 color=COLORS[name], label=name)
    ax_t.set(xticks=np.arange(len(tasks)) + 0.4 - width / 2, ylim=(0, 1.02), ylabel="token accuracy",
             title="per held-out task")
    ax_t.set_xticklabels([task_label(t) for t in tasks], fontsize=7)
    return _common.finish_figure(fig, (ax_c, ax_t), title, path)


def print_table(metrics: dict) -> None:
    print(f"{'method':<15}{'token acc':>10}{'exact':>8}   per seed (token)          {'params':>9}{'seconds':>9}")
    for name in METHODS:
        m = metrics[name]
        seeds = " ".join(f"{100 * a:5.1f}" for a in m["heldout_token_accuracy_per_seed"])
        print(f"{name:<15}{100 * m['heldout_token_accuracy']:9.1f}%{100 * m['heldout_exact_match']:7.1f}%   "
              f"{seeds:<26}{m['trainable_params']:>9,}{m['seconds']:9.1f}")


if __name__ == "__main__":
    main()
