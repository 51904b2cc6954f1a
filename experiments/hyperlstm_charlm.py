"""HyperLSTM vs layer-normed LSTM: character-level language modelling on Python's own help text.

    python -m experiments.hyperlstm_charlm                 # 3 seeds, both models (minutes on 2 CPU cores)
    python -m experiments.hyperlstm_charlm --steps 200 --seeds 1

Data: the stdlib's help topics (`from pydoc_data import topics`; the strings of `topics.topics` joined in
sorted key order), characters as ids over the sorted set of characters in the whole text. The text is cut
into `--blocks` contiguous blocks; a fixed permutation (SPLIT_SEED, not the model seed) sends 90% of the
blocks to train, 5% to validation and 5% to test, each split the concatenation of its blocks in text order.

Models: embedding (vocab -> `--embed`) -> one recurrent cell -> linear softmax over the vocabulary.
* hyperlstm: `hj.recurrent.hyperlstm_cell` (main `--hidden`, hyper-cell `--hyper-hidden`, signals `--emb-dim`).
* lstm: `hj.recurrent.lstm_cell`, the same layer-normed LSTM without the hyper-cell, its width chosen
  (`--lstm-hidden 0`, the default) so that its total parameter count is the closest to the HyperLSTM's.
Both train with the same optimizer (Adam, global-norm clipping `--clip`, warm-up + cosine decay), steps,
batch and truncated BPTT: the training split is `--batch` contiguous rows, each step reads the next `--seq`
characters of every row and carries the hidden state across steps (no gradient through it); every epoch
restarts at a random offset < seq (drawn from the seed) with a zero state. Seeds differ in init and
offsets; the seeds of one model train as one `jax.vmap`ped program (`--steps-per-call` updates per call,
`hj.training.make_step(with_model_state=True)`).

Evaluation: bits per character (mean NLL / ln 2) of the final params over a whole split (or its first
`--eval-chars`), run as 8 contiguous rows with the state carried through (every character predicted except
the first of each row).
Validation bpc is the learning curve; the test split is read once, at the end.

Writes results/hyperlstm_charlm.json (`metrics.<model>.test_bpc` mean over seeds, `test_bpc_per_seed`,
`val_bpc`, `params`, curves) and results/hyperlstm_charlm.png (train and validation bpc against steps).
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hyperjax as hj
from experiments import _common

NAME = "hyperlstm_charlm"
SPLIT_SEED = 20161  # fixed: the same split for every model seed
EVAL_ROWS = 8
MODELS = ("lstm", "hyperlstm")


def build_parser():
    p = _common.parser(NAME, __doc__.splitlines()[0], steps=1000, images=False)
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (seed, seed + 1, ...) per model")
    p.add_argument("--hidden", type=int, default=96, help="HyperLSTM main LSTM width")
    p.add_argument("--hyper-hidden", type=int, default=32, help="HyperLSTM hyper-cell width")
    p.add_argument("--emb-dim", type=int, default=8, help="HyperLSTM signal size N_z per gate")
    p.add_argument("--lstm-hidden", type=int, default=0, help="LSTM width; 0: match the HyperLSTM's parameters")
    p.add_argument("--embed", type=int, default=32, help="character embedding size")
    p.add_argument("--batch", type=int, default=16, help="parallel rows of the training stream")
    p.add_argument("--seq", type=int, default=100, help="truncated-BPTT length (characters per step)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak Adam learning rate")
    p.add_argument("--warmup", type=int, default=50, help="linear warm-up steps before the cosine decay")
    p.add_argument("--clip", type=float, default=1.0, help="global gradient-norm clipping")
    p.add_argument("--blocks", type=int, default=100, help="contiguous blocks of the 90/5/5 split")
    p.add_argument("--eval-every", type=int, default=100, help="steps between validation evaluations")
    p.add_argument("--eval-chars", type=int, default=0,
                   help="evaluate on the first N characters of the validation and test splits (0: all of them)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    return p


# ---------------------------------------------------------------------------------------------- data
def load_text() -> str:
    from pydoc_data import topics

    return "".join(topics.topics[k] for k in sorted(topics.topics))


def split(text: str, blocks: int) -> tuple[dict[str, np.ndarray], list[str]]:
    """-> ({"train", "val", "test": int32 ids}, vocab): 90/5/5 of `blocks` contiguous blocks (SPLIT_SEED)."""
    if blocks < 20:
        raise ValueError(f"--blocks must be >= 20 (5% of them per held-out split), got {blocks}.")
    vocab = sorted(set(text))
    lookup = {c: i for i, c in enumerate(vocab)}
    all_ids = np.fromiter((lookup[c] for c in text), np.int32, len(text))
    bounds = np.linspace(0, len(text), blocks + 1).astype(int)
    perm = np.random.default_rng(SPLIT_SEED).permutation(blocks)
    n_held = round(0.05 * blocks)
    parts = {"test": perm[:n_held], "val": perm[n_held:2 * n_held], "train": perm[2 * n_held:]}
    out = {k: np.concatenate([all_ids[bounds[b]:bounds[b + 1]] for b in sorted(v)]) for k, v in parts.items()}
    return out, vocab


def epoch_rows(train: np.ndarray, batch: int, offset: int) -> np.ndarray:
    """train[offset:] as `batch` contiguous rows int32[batch, L + 1] (row b continues where b - 1 stops)."""
    n = (len(train) - offset - 1) // batch
    return np.stack([train[offset + b * n: offset + (b + 1) * n + 1] for b in range(batch)])


class Batches:
    """Truncated-BPTT windows for several seeds: next(k) -> (tokens int32[S, k, B, seq + 1], reset bool[S, k]).

    Each seed walks its own epochs (a random offset < seq per epoch from its own generator); reset marks a
    window that starts an epoch (the carried state is zeroed there).
    """

    def __init__(self, train: np.ndarray, seeds: list[int], batch: int, seq: int):
        self.train, self.batch, self.seq = train, batch, seq
        self.rngs = [np.random.default_rng([SPLIT_SEED, s]) for s in seeds]
        self.pos = [None] * len(seeds)     # (rows, next window index)

    def _window(self, s: int) -> tuple[np.ndarray, bool]:
        rows, j = self.pos[s] if self.pos[s] is not None else (None, 0)
        reset = rows is None or (j + 1) * self.seq + 1 > rows.shape[1]
        if reset:
            rows, j = epoch_rows(self.train, self.batch, int(self.rngs[s].integers(self.seq))), 0
        self.pos[s] = (rows, j + 1)
        return rows[:, j * self.seq: (j + 1) * self.seq + 1], reset

    def next(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        out = [[self._window(s) for _ in range(k)] for s in range(len(self.rngs))]
        tokens = np.stack([np.stack([w for w, _ in seed]) for seed in out])
        resets = np.asarray([[r for _, r in seed] for seed in out], bool)
        return tokens, resets


# --------------------------------------------------------------------------------------------- model
def sizes(args, vocab: int) -> dict[str, Any]:
    """Hidden sizes and total parameter counts of both models (the LSTM width matched when --lstm-hidden 0)."""
    head = lambda h: vocab * args.embed + h * vocab + vocab      # embedding + softmax layer
    n_hyper = hj.recurrent.hyperlstm_param_count(args.embed, args.hidden, args.hyper_hidden, args.emb_dim) + \
        head(args.hidden)
    total_lstm = lambda h: hj.recurrent.lstm_param_count(args.embed, h) + head(h)
    lstm_hidden = args.lstm_hidden or min(range(1, 4 * args.hidden + 64), key=lambda h: abs(total_lstm(h) - n_hyper))
    return {"hyperlstm": {"hidden": args.hidden, "hyper_hidden": args.hyper_hidden, "emb_dim": args.emb_dim,
                          "params": n_hyper},
            "lstm": {"hidden": lstm_hidden, "params": total_lstm(lstm_hidden)}}


def init(kind: str, key: jax.Array, args, vocab: int, hidden: int) -> dict[str, Any]:
    k_emb, k_cell, k_out = jax.random.split(key, 3)
    if kind == "hyperlstm":
        cell = hj.recurrent.hyperlstm_init(k_cell, in_dim=args.embed, hidden=hidden, hyper_hidden=args.hyper_hidden,
                                           emb_dim=args.emb_dim)
    else:
        cell = hj.recurrent.lstm_init(k_cell, in_dim=args.embed, hidden=hidden)
    return {"embed": jax.random.normal(k_emb, (vocab, args.embed)) / math.sqrt(args.embed), "cell": cell,
            "out": {"kernel": jax.nn.initializers.lecun_normal()(k_out, (hidden, vocab)), "bias": jnp.zeros(vocab)}}


def init_seeds(kind: str, seeds: list[int], args, vocab: int, hidden: int) -> dict[str, Any]:
    """Params for every seed, stacked on a leading axis: one jitted init per seed (compiled once), not a
    vmapped one (XLA CPU compiles the batched QR of the orthogonal init several times slower)."""
    one = jax.jit(lambda key: init(kind, key, args, vocab, hidden))
    return jax.tree.map(lambda *x: jnp.stack(x), *[one(jax.random.key(s)) for s in seeds])


def cell_fn(kind: str):
    return hj.recurrent.hyperlstm_cell if kind == "hyperlstm" else hj.recurrent.lstm_cell


def nll(kind: str, params: dict, carry: Any, tokens: jax.Array) -> tuple[jax.Array, Any]:
    """tokens int32[B, L + 1] -> (summed NLL in nats over the B x L next-character predictions, final carry)."""
    xs = jnp.swapaxes(params["embed"][tokens[:, :-1]], 0, 1)                 # (L, B, E), time first
    carry, hs = hj.recurrent.scan(cell_fn(kind), params["cell"], carry, xs)
    logits = hs @ params["out"]["kernel"] + params["out"]["bias"][None, None, :]
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:].T).sum(), carry


def optimizer(args) -> optax.GradientTransformation:
    warmup = max(0, min(args.warmup, args.steps - 1))
    sched = optax.warmup_cosine_decay_schedule(0.0, args.lr, warmup, max(args.steps, warmup + 1),
                                               end_value=args.lr * 0.1)
    return optax.chain(optax.clip_by_global_norm(args.clip), optax.adam(sched))


def trainer(kind: str, args, opt: optax.GradientTransformation):
    """-> jitted, donated run(states, (tokens, resets)) over k = steps_per_call steps, vmapped over seeds."""
    def loss_fn(params, carry, batch, rng):
        tokens, reset = batch
        carry = jax.tree.map(lambda c: jnp.where(reset, jnp.zeros_like(c), jax.lax.stop_gradient(c)), carry)
        total, carry = nll(kind, params, carry, tokens)
        return total / tokens[:, 1:].size, carry

    k = args.steps_per_call
    one = hj.training.make_step(loss_fn, opt, with_model_state=True, jit=False, grad_norm=False)
    multi = hj.training.make_step(loss_fn, opt, with_model_state=True, jit=False, grad_norm=False,
                                  steps_per_call=k) if k > 1 else None
    run_one = jax.jit(jax.vmap(lambda st, b: one(st, jax.tree.map(lambda x: x[0], b))), donate_argnums=0)
    run_k = jax.jit(jax.vmap(multi), donate_argnums=0) if multi is not None else None
    return run_one, run_k


def evaluator(kind: str):
    """-> jitted bpc(params stacked over seeds, ids int32[N]) -> f32[S]: 8 rows, the state carried through."""
    @jax.jit
    def bpc(params, rows):
        def one(p):
            carry = hj.recurrent.zero_state(p["cell"], (rows.shape[0],))
            total, _ = nll(kind, p, carry, rows)
            return total / (rows[:, 1:].size * math.log(2.0))
        return jax.vmap(one)(params)
    return lambda params, ids: bpc(params, jnp.asarray(epoch_rows(ids, EVAL_ROWS, 0)))


# --------------------------------------------------------------------------------------------- train
def train(kind: str, args, data: dict[str, np.ndarray], vocab: int, hidden: int, seeds: list[int]):
    """Train one model for every seed at once. -> (final params stacked over seeds, curve, seconds)."""
    opt = optimizer(args)
    params = init_seeds(kind, seeds, args, vocab, hidden)
    carry0 = jax.vmap(lambda p: hj.recurrent.zero_state(p["cell"], (args.batch,)))(params)
    states = jax.jit(jax.vmap(lambda p, c: hj.training.init_state(p, opt, None, model_state=c)))(params, carry0)
    run_one, run_k = trainer(kind, args, opt)
    val_bpc = evaluator(kind)
    batches = Batches(data["train"], seeds, args.batch, args.seq)
    curve = {"step": [0], "train_bpc": [[float("nan")] * len(seeds)],
             "val_bpc": [val_bpc(states.params, data["val"]).tolist()]}
    losses, i, k = [], 0, args.steps_per_call
    bar = _common.progress(None, args.steps, kind, disable=args.no_progress)
    t0 = time.perf_counter()
    while i < args.steps:
        next_eval = min(args.steps, (i // args.eval_every + 1) * args.eval_every)
        n = k if run_k is not None and next_eval - i >= k else 1
        tokens, resets = batches.next(n)
        states, metrics = (run_k if n > 1 else run_one)(states, (jnp.asarray(tokens), jnp.asarray(resets)))
        losses.append(metrics["loss"].reshape(len(seeds), -1))
        i += n
        bar.update(n)
        if i == next_eval:
            curve["step"].append(i)
            curve["train_bpc"].append((np.concatenate([np.asarray(l) for l in losses], 1).mean(1)
                                       / math.log(2.0)).tolist())
            curve["val_bpc"].append(val_bpc(states.params, data["val"]).tolist())
            losses = []
    bar.close()
    jax.block_until_ready(states.params)
    return states.params, curve, time.perf_counter() - t0


def plot(curves: dict, path: str, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_v) = plt.subplots(1, 2, figsize=(10, 3.8))
    for (name, c), color in zip(curves.items(), ("tab:blue", "tab:orange")):
        steps = np.asarray(c["step"])
        for ax, key in ((ax_t, "train_bpc"), (ax_v, "val_bpc")):
            v = np.asarray(c[key], float)[1 if key == "train_bpc" else 0:]
            s = steps[1 if key == "train_bpc" else 0:]
            for j in range(v.shape[1]):
                ax.plot(s, v[:, j], color=color, alpha=0.35, lw=0.8)
            ax.plot(s, v.mean(1), color=color, lw=1.8, label=f"{name} (mean of {v.shape[1]})")
    top = max(np.nanmax(np.asarray(c["val_bpc"])[1:]) if len(c["val_bpc"]) > 1 else 4.0 for c in curves.values())
    ax_t.set(xlabel="step", ylabel="bits per character", title="train (TBPTT windows)", ylim=(None, top + 0.3))
    ax_v.set(xlabel="step", ylabel="bits per character", title="validation", ylim=(None, top + 0.3))
    return _common.finish_figure(fig, (ax_t, ax_v), title, path)


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}.")
    if args.steps_per_call < 1:
        raise ValueError(f"--steps-per-call must be >= 1, got {args.steps_per_call}.")
    t_start = time.perf_counter()
    data, vocab = split(load_text(), args.blocks)
    if args.eval_chars:
        if args.eval_chars < 2 * EVAL_ROWS:
            raise ValueError(f"--eval-chars must be 0 (all) or >= {2 * EVAL_ROWS}, got {args.eval_chars}.")
        data = {**data, "val": data["val"][:args.eval_chars], "test": data["test"][:args.eval_chars]}
    size = sizes(args, len(vocab))
    seeds = [args.seed + i for i in range(args.seeds)]
    test_bpc_fn, metrics, curves = {}, {}, {}
    for kind in args.models:
        hidden = size[kind]["hidden"]
        params, curve, seconds = train(kind, args, data, len(vocab), hidden, seeds)
        n = hj.training.count_params(jax.tree.map(lambda x: x[0], params))
        assert n == size[kind]["params"], (kind, n, size[kind]["params"])
        test = evaluator(kind)(params, data["test"]).tolist()          # read once, after training
        val = curve["val_bpc"][-1]
        curves[kind] = curve
        metrics[kind] = {"test_bpc": float(np.mean(test)), "test_bpc_per_seed": test,
                         "test_bpc_std": float(np.std(test)), "val_bpc": float(np.mean(val)), "val_bpc_per_seed": val,
                         "final_train_bpc": float(np.mean(curve["train_bpc"][-1])), "params": n,
                         "train_time_s": seconds, "seeds": seeds, **{k: v for k, v in size[kind].items()
                                                                     if k != "params"}}
    wall = time.perf_counter() - t_start
    metrics.update({"dataset": "pydoc_data.topics", "vocab": len(vocab),
                    "chars": {k: int(len(v)) for k, v in data.items()}, "wall_time_s": wall})
    if set(MODELS) <= set(args.models):
        ratio = size["lstm"]["params"] / size["hyperlstm"]["params"]
        gap = metrics["lstm"]["test_bpc"] - metrics["hyperlstm"]["test_bpc"]
        wins = [bool(h < l) for h, l in zip(metrics["hyperlstm"]["test_bpc_per_seed"],
                                            metrics["lstm"]["test_bpc_per_seed"])]
        metrics.update({"params": {"lstm": size["lstm"]["params"], "hyperlstm": size["hyperlstm"]["params"],
                                   "ratio_lstm_over_hyperlstm": ratio},
                        "params_within_10pct": bool(abs(ratio - 1.0) <= 0.10),
                        "test_bpc_gap_lstm_minus_hyperlstm": gap,
                        "hyperlstm_wins_per_seed": wins,
                        "target_met": bool(gap > 0)})
    config = {**vars(args), "split_seed": SPLIT_SEED, "eval_rows": EVAL_ROWS}
    path = _common.write_json(args.out, NAME, config, metrics, curves=curves)
    png = plot(curves, _common.png_path(args.out),
               "pydoc_data char LM: " + ", ".join(f"{k} ({size[k]['params']:,} params, H={size[k]['hidden']})"
                                                 for k in args.models))
    print(f"\n{'model':<10} {'params':>9} {'hidden':>6} {'val bpc':>8} {'test bpc':>9}  per seed")
    for kind in args.models:
        m = metrics[kind]
        print(f"{kind:<10} {m['params']:>9,} {m['hidden']:>6} {m['val_bpc']:>8.4f} {m['test_bpc']:>9.4f}  "
              + " ".join(f"{v:.4f}" for v in m["test_bpc_per_seed"]))
    print(f"wrote {path} and {png}")
    if "target_met" in metrics:
        print(f"{NAME} [{len(seeds)} seeds, {args.steps} steps]: test bpc hyperlstm "
              f"{metrics['hyperlstm']['test_bpc']:.4f} "
              f"vs lstm {metrics['lstm']['test_bpc']:.4f} (gap {metrics['test_bpc_gap_lstm_minus_hyperlstm']:+.4f}), "
              f"params ratio {metrics['params']['ratio_lstm_over_hyperlstm']:.3f}, {wall:.0f}s wall, "
              f"target {'met' if metrics['target_met'] else 'MISSED'}")
    return metrics


if __name__ == "__main__":
    main()
