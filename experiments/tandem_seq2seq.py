"""Tandem seq2seq: few A->B pairs, many unpaired B words, one shared character-level RNN decoder.

    python -m experiments.tandem_seq2seq                    # 2,641 English words, GRU cells, ~3-4 min on 2 cores
    python -m experiments.tandem_seq2seq --cell lstm

Data (fixed seed). B = the distinct lowercase alphabetic words of length 3-10 in the help text that ships
with Python (`pydoc_data.topics`; letter runs of the text, lowercased). A = a deterministic respelling of
each B word: a fixed substitution cipher (a seeded permutation of a-z) followed by reversal, e.g. with
seed 0 "python" -> cipher "ktoqch" -> A "hcqotk". The split holds out `--n-test` words for testing,
takes `--n-pairs` of the rest as the only A->B pairs, and uses every non-test word as the unpaired B set
(the paired words' B side included). Test words are in neither training set. The help topics hold only
2,641 distinct words of 3-10 letters, so with the defaults B has 2,241 words (not ~10,000), 500 of them paired.

Models (Flax linen): each encoder is an embedding, a bidirectional `nn.RNN` (GRU or LSTM cells, masked
with `seq_lengths`), and a tanh Dense to a code z f32[z_dim]; the decoder maps z to its initial carry
and runs an `nn.RNN` over [BOS, y_1..y_L] with teacher forcing to predict [y_1..y_L, EOS]. Evaluation
decodes greedily with `jax.lax.scan` over the decoder cell (jitted). All runs share one params tree
layout {"enc_a": ..., "enc_b": ..., "dec": ...}: the decoder used for A->B and B->B is one subtree.

Three ways to train, same architecture, optimizer (AdamW, weight decay 0.5 -- the best of 1e-4, 0.05,
0.2, 0.5, 1.0 for all three methods alike --, cosine decay, clipping) and batch size:

* two_stage: (1) train the B autoencoder enc_b -> dec for `--steps` steps; (2) freeze it and train
  enc_a for `--steps` steps to regress (MSE) onto the frozen enc_b codes of the paired words; decode
  A with dec.
* tandem: `--steps` rounds, each one A->B batch (updates enc_a + dec) then one B->B batch (updates
  enc_b + dec). Each phase has its own Optax transform: `optax.multi_transform` over the label tree
  `hj.training.labels(params, rules)` with `optax.set_to_zero()` on the other encoder; both phase
  steps come from `hj.training.make_step(jit=False)` and one round runs as one jitted function.
* pairs_only: enc_a -> dec trained on the pairs alone for 2 * `--steps` steps (as many updates as
  the other two make in total).
* tandem_align (only with `--methods ... tandem_align`): tandem whose A->B loss also pulls z_a towards
  stop_gradient(z_b) (the two-stage regression term, weight `--align-weight`), a diagnostic.

Metrics on the held-out words: exact-word accuracy (every letter and the EOS right) and per-character
accuracy (mean over the L letter positions of each word); also B->B accuracy of the same decoder from
enc_b, exact-word accuracy on the training pairs, and the code gap E|z_a - z_b|^2 / Var(z_b) between
the two encoders' codes of the same held-out words. Writes results/tandem_seq2seq.json and a PNG of
the learning curves of all of these.

Result (seed 0, GRU, 500 pairs): the target "tandem above both" is met against pairs_only but missed
against two_stage. Held-out exact-word accuracy two_stage / tandem / pairs_only: 92.2 / 83.0 / 64.5% at
1,500 steps, 93.3 / 91.7 / 68.5% at 3,000 (the default: tandem's curve is still rising at 1,500) and
96.0 / 92.2 / 67.5% at 6,000. The curves show why. This respelling is a letter bijection plus reversal,
so regressing enc_a onto the frozen enc_b codes is nearly lossless (code gap ~0.001) and two_stage's
A->B accuracy equals its B->B autoencoder's; tandem's decoder is as good or better (B->B 96.5% vs 94.0%
at 3,000 steps), but enc_a, taught only through the decoder's loss on 500 words, fits every training
pair and still lands off the code manifold on new words (gap ~0.06). With 1,500 pairs
(`--n-pairs 1500`) tandem wins, 95.2% vs 94.0%. Weight decay 0.05 instead of 0.5 lowers all three
(85.2 / 69.7 / 44.0% at 3,000 steps).
"""

from __future__ import annotations

import re
import string
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import hyperjax as hj
from experiments import _common

NAME = "tandem_seq2seq"
PAD, BOS, EOS = 0, 1, 2
OFFSET = 3                                       # letter i of a-z has token id OFFSET + i
VOCAB = OFFSET + 26
COLORS = {"two_stage": "tab:blue", "tandem": "tab:orange", "pairs_only": "tab:green", "tandem_align": "tab:red"}


# ------------------------------------------------------------------------------------------------ data
def load_words(min_len: int = 3, max_len: int = 10) -> list[str]:
    """Sorted distinct lowercase letter runs of length min_len..max_len in Python's pydoc help topics."""
    from pydoc_data.topics import topics

    text = " ".join(topics[k] for k in sorted(topics))
    return sorted({w.lower() for w in re.findall(r"[A-Za-z]+", text) if min_len <= len(w) <= max_len})


def make_cipher(seed: int) -> dict[str, str]:
    """A fixed substitution cipher: a seeded permutation of a-z."""
    perm = np.random.default_rng(10_000 + seed).permutation(26)
    return {a: string.ascii_lowercase[int(p)] for a, p in zip(string.ascii_lowercase, perm)}


def respell(word: str, cipher: dict[str, str]) -> str:
    """B word -> A word: substitute every letter with the cipher, then reverse."""
    return "".join(cipher[c] for c in word)[::-1]


def encode(words: list[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """words -> tokens i32[n, max_len] (letters, PAD after), lengths i32[n]."""
    toks = np.full((len(words), max_len), PAD, np.int32)
    for i, w in enumerate(words):
        toks[i, :len(w)] = [OFFSET + ord(c) - ord("a") for c in w]
    return toks, np.array([len(w) for w in words], np.int32)


def decoder_io(toks: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Teacher forcing: inputs [BOS, y_1..y_L, PAD..] and targets [y_1..y_L, EOS, PAD..], i32[n, max_len + 1]."""
    n = toks.shape[0]
    inputs = np.concatenate([np.full((n, 1), BOS, np.int32), toks], axis=1)
    targets = np.concatenate([toks, np.full((n, 1), PAD, np.int32)], axis=1)
    targets[np.arange(n), lengths] = EOS
    return inputs, targets


def split(words: list[str], n_test: int, n_pairs: int, seed: int):
    """-> (test words, paired words, unpaired B words = every non-test word), from a seeded shuffle."""
    perm = np.random.default_rng(seed).permutation(len(words))
    if n_test + n_pairs > len(words):
        raise ValueError(f"--n-test {n_test} + --n-pairs {n_pairs} exceeds the {len(words)} available words.")
    test = [words[i] for i in perm[:n_test]]
    pairs = [words[i] for i in perm[n_test:n_test + n_pairs]]
    b_set = [words[i] for i in perm[n_test:]]
    return test, pairs, b_set


def make_set(b_words: list[str], cipher: dict[str, str], max_len: int) -> dict[str, np.ndarray]:
    """Arrays for a word list: A and B tokens/lengths, decoder inputs and targets (all i32)."""
    b_tok, b_len = encode(b_words, max_len)
    a_tok, a_len = encode([respell(w, cipher) for w in b_words], max_len)
    dec_in, dec_tgt = decoder_io(b_tok, b_len)
    return {"a_tok": a_tok, "a_len": a_len, "b_tok": b_tok, "b_len": b_len, "dec_in": dec_in, "dec_tgt": dec_tgt}


# ------------------------------------------------------------------------------------------------ models
def make_cell(kind: str, hidden: int) -> nn.RNNCellBase:
    return {"gru": nn.GRUCell, "lstm": nn.OptimizedLSTMCell}[kind](features=hidden)


def last_hidden(carry):
    """GRU carry h, or LSTM carry (c, h) -> h."""
    return carry[1] if isinstance(carry, tuple) else carry


class Encoder(nn.Module):
    """tokens i32[B, T], lengths i32[B] -> code z f32[B, z_dim] (bidirectional RNN, final carries, tanh Dense)."""

    cell: str = "gru"
    embed_dim: int = 32
    hidden: int = 128
    z_dim: int = 128
    unroll: int = 1

    @nn.compact
    def __call__(self, tokens, lengths):
        x = nn.Embed(VOCAB, self.embed_dim)(tokens)
        fwd = nn.RNN(make_cell(self.cell, self.hidden), return_carry=True, unroll=self.unroll)
        bwd = nn.RNN(make_cell(self.cell, self.hidden), return_carry=True, reverse=True, keep_order=True,
                     unroll=self.unroll)
        (c_f, c_b), _ = nn.Bidirectional(fwd, bwd, return_carry=True)(x, seq_lengths=lengths)
        h = jnp.concatenate([last_hidden(c_f), last_hidden(c_b)], axis=-1)
        return jnp.tanh(nn.Dense(self.z_dim)(h))


class Decoder(nn.Module):
    """z f32[B, z_dim], teacher-forcing inputs i32[B, T+1], lengths i32[B] -> logits f32[B, T+1, VOCAB].

    One GRU/LSTM cell shared by the teacher-forced `nn.RNN` (__call__) and the one-token `step` used by
    greedy decoding, so both paths read the same parameters.
    """

    cell_kind: str = "gru"
    embed_dim: int = 32
    hidden: int = 128
    unroll: int = 1

    def setup(self):
        self.embed = nn.Embed(VOCAB, self.embed_dim)
        n_carry = 2 if self.cell_kind == "lstm" else 1
        self.bridge = nn.Dense(n_carry * self.hidden)
        self.cell = make_cell(self.cell_kind, self.hidden)
        self.rnn = nn.RNN(self.cell, unroll=self.unroll)
        self.out = nn.Dense(VOCAB)

    def init_carry(self, z):
        h0 = jnp.tanh(self.bridge(z))
        return tuple(jnp.split(h0, 2, axis=-1)) if self.cell_kind == "lstm" else h0

    def __call__(self, z, inputs, lengths):
        y = self.rnn(self.embed(inputs), initial_carry=self.init_carry(z), seq_lengths=lengths)
        return self.out(y)

    def step(self, carry, token):
        """carry, token i32[B] -> carry, logits f32[B, VOCAB]."""
        carry, h = self.cell(carry, self.embed(token))
        return carry, self.out(h)


class Model:
    """The three modules as pure functions of one params tree {"enc_a", "enc_b", "dec"}."""

    def __init__(self, cell: str, embed_dim: int, hidden: int, z_dim: int, max_len: int, unroll: int = 1):
        self.enc = Encoder(cell, embed_dim, hidden, z_dim, unroll)
        self.dec = Decoder(cell, embed_dim, hidden, unroll)
        self.max_len = max_len

    def init(self, key) -> dict:
        ka, kb, kd = jax.random.split(key, 3)
        tok, lens = jnp.zeros((1, self.max_len), jnp.int32), jnp.ones((1,), jnp.int32)
        z = jnp.zeros((1, self.enc.z_dim), jnp.float32)
        dec_in = jnp.zeros((1, self.max_len + 1), jnp.int32)
        return {"enc_a": self.enc.init(ka, tok, lens)["params"], "enc_b": self.enc.init(kb, tok, lens)["params"],
                "dec": self.dec.init(kd, z, dec_in, lens + 1)["params"]}

    def encode(self, params: dict, side: str, tokens, lengths):
        """side "a" or "b": tokens i32[B, T], lengths i32[B] -> z f32[B, z_dim]."""
        return self.enc.apply({"params": params[f"enc_{side}"]}, tokens, lengths)

    def xent(self, params: dict, z, batch: dict):
        """Teacher-forced masked cross-entropy of decoding batch's B word from z, per token; and token mask."""
        logits = self.dec.apply({"params": params["dec"]}, z, batch["dec_in"], batch["b_len"] + 1)
        mask = (jnp.arange(self.max_len + 1)[None, :] <= batch["b_len"][:, None]).astype(logits.dtype)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["dec_tgt"])
        return jnp.sum(ce * mask) / jnp.sum(mask)

    def greedy(self, params: dict, z):
        """z f32[B, z_dim] -> predicted tokens i32[B, max_len + 1] (argmax each step, `lax.scan`)."""
        dec = lambda *a, **k: self.dec.apply({"params": params["dec"]}, *a, **k)
        carry = dec(z, method=Decoder.init_carry)

        def body(state, _):
            carry, tok = state
            carry, logits = dec(carry, tok, method=Decoder.step)
            nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            return (carry, nxt), nxt

        start = jnp.full((z.shape[0],), BOS, jnp.int32)
        _, toks = jax.lax.scan(body, (carry, start), None, length=self.max_len + 1)
        return toks.T

    def accuracy(self, params: dict, side: str, data: dict):
        """Greedy decoding of data's B words from side's encoder -> (exact-word acc, per-character acc)."""
        pred = self.greedy(params, self.encode(params, side, data[f"{side}_tok"], data[f"{side}_len"]))
        pos = jnp.arange(self.max_len + 1)[None, :]
        lens = data["b_len"][:, None]
        right = pred == data["dec_tgt"]
        exact = jnp.all(right | (pos > lens), axis=1)                   # letters and EOS
        per_char = jnp.sum(right & (pos < lens), axis=1).astype(jnp.float32) / data["b_len"].astype(jnp.float32)
        return jnp.mean(exact), jnp.mean(per_char)

    def code_gap(self, params: dict, data: dict):
        """How far enc_a's codes lie from enc_b's codes of the same words: E|z_a - z_b|^2 / E|z_b - mean z_b|^2.

        0 when A and B words land on the same code; about 2 or more when the two code sets are unrelated.
        """
        z_a = self.encode(params, "a", data["a_tok"], data["a_len"])
        z_b = self.encode(params, "b", data["b_tok"], data["b_len"])
        spread = jnp.mean(jnp.sum(jnp.square(z_b - jnp.mean(z_b, axis=0, keepdims=True)), -1))
        return jnp.mean(jnp.sum(jnp.square(z_a - z_b), -1)) / spread


def paths_of(tree) -> list[str]:
    """Leaf path strings, e.g. 'dec/cell/hn/kernel'."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return ["/".join(str(getattr(k, "key", k)) for k in kp) for kp, _ in flat]


# ------------------------------------------------------------------------------------------------ training
def make_optimizer(args, steps: int) -> optax.GradientTransformation:
    warmup = max(1, min(args.warmup, steps // 10))
    sched = optax.warmup_cosine_decay_schedule(0.0, args.lr, warmup, max(steps, warmup + 1), end_value=args.lr * 0.05)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=args.weight_decay))


def only(opt: optax.GradientTransformation, params: dict, train: tuple[str, ...]) -> optax.GradientTransformation:
    """`opt` on the subtrees named in `train`, `set_to_zero` elsewhere, via a hyperjax label tree."""
    rules = tuple((f"{name}/*", "train") for name in train) + (("*", "frozen"),)
    label_tree = hj.training.labels(params, rules)
    return optax.multi_transform({"train": opt, "frozen": optax.set_to_zero()}, label_tree)


class Sampler:
    """Seeded endless shuffled batches of a set of arrays (numpy, host side)."""

    def __init__(self, data: dict, batch_size: int, seed: int):
        self.data, self.bs = data, batch_size
        self.n = len(next(iter(data.values())))
        self.rng = np.random.default_rng(seed)
        self.perm, self.i = self.rng.permutation(self.n), 0

    def __call__(self) -> dict:
        if self.i + self.bs > self.n:
            self.perm, self.i = self.rng.permutation(self.n), 0
        idx = self.perm[self.i:self.i + self.bs]
        self.i += self.bs
        return {k: v[idx] for k, v in self.data.items()}


def evaluator(model: Model, sets: dict):
    """-> jitted evaluate(params) -> {metric: scalar} on the held-out words and the first training pairs."""
    return jax.jit(lambda p: {
        **dict(zip(("test_exact", "test_char"), model.accuracy(p, "a", sets["test"]))),
        **dict(zip(("train_pairs_exact", "train_pairs_char"), model.accuracy(p, "a", sets["pairs_eval"]))),
        **dict(zip(("test_b_autoenc_exact", "test_b_autoenc_char"), model.accuracy(p, "b", sets["test"]))),
        "test_code_gap": model.code_gap(p, sets["test"]),
    })


def run_method(method: str, model: Model, params0: dict, sets: dict, args, evaluate) -> dict:
    """Train one method from params0 on sets["pairs"] / sets["b"] (numpy); returns {"curve", "params",
    "train_time_s"}. `evaluate` is `evaluator(model, sets)`, shared by the methods (compiled once)."""
    s = args.steps
    pairs_s = Sampler(sets["pairs"], args.batch_size, args.seed + 1)
    b_s = Sampler(sets["b"], args.batch_size, args.seed + 2)

    def noisy(z, rng):
        """Training-time Gaussian noise on the code (--code-noise), the same for every method that decodes."""
        return z if args.code_noise == 0 else z + args.code_noise * jax.random.normal(rng, z.shape, z.dtype)

    ab_loss = lambda p, batch, rng: model.xent(p, noisy(model.encode(p, "a", batch["a_tok"], batch["a_len"]), rng),
                                               batch)
    bb_loss = lambda p, batch, rng: model.xent(p, noisy(model.encode(p, "b", batch["b_tok"], batch["b_len"]), rng),
                                               batch)

    def reg_loss(p, batch, rng):
        target = jax.lax.stop_gradient(model.encode(p, "b", batch["b_tok"], batch["b_len"]))
        return jnp.mean(jnp.sum(jnp.square(model.encode(p, "a", batch["a_tok"], batch["a_len"]) - target), -1))

    # phases: (name, loss, sampler(s), trained subtrees, number of steps); tandem runs two losses per step
    if method == "two_stage":
        phases = [("stage1_b_autoencoder", [(bb_loss, b_s, ("enc_b", "dec"))], s),
                  ("stage2_regress_a", [(reg_loss, pairs_s, ("enc_a",))], s)]
    elif method == "tandem":
        phases = [("tandem", [(ab_loss, pairs_s, ("enc_a", "dec")), (bb_loss, b_s, ("enc_b", "dec"))], s)]
    elif method == "tandem_align":
        ab_align = lambda p, batch, rng: ab_loss(p, batch, rng) + args.align_weight * reg_loss(p, batch, rng)
        phases = [("tandem", [(ab_align, pairs_s, ("enc_a", "dec")), (bb_loss, b_s, ("enc_b", "dec"))], s)]
    elif method == "pairs_only":
        phases = [("pairs_only", [(ab_loss, pairs_s, ("enc_a", "dec"))], 2 * s)]
    else:
        raise ValueError(f"unknown method {method!r}")

    params = params0
    curve = {"update": [], "phase": [], "loss": []}
    ev = {k: float(v) for k, v in evaluate(params).items()}
    for k, v in ev.items():
        curve[k] = [v]
    curve["update"].append(0), curve["phase"].append("init"), curve["loss"].append(float("nan"))
    updates, t0 = 0, time.perf_counter()
    for phase, parts, n_steps in phases:
        opts = [only(make_optimizer(args, n_steps), params, train) for _, _, train in parts]
        steps = [hj.training.make_step(loss, opt, jit=False, grad_norm=False) for (loss, _, _), opt in zip(parts, opts)]
        keys = jax.random.split(jax.random.fold_in(jax.random.key(args.seed), len(curve["update"])), len(opts))
        states = tuple(hj.training.init_state(params, opt, k) for opt, k in zip(opts, keys))

        round_ = _common.alternating_round(steps)
        acc_loss = []
        for i in _common.progress(range(1, n_steps + 1), n_steps, f"{method}:{phase}", disable=args.no_progress):
            states, metrics = round_(states, tuple(sampler() for _, sampler, _ in parts))
            losses = metrics["loss"]
            updates += len(parts)
            acc_loss.append(losses)
            if i % args.eval_every == 0 or i == n_steps:
                ev = {k: float(v) for k, v in evaluate(states[0].params).items()}
                for k, v in ev.items():
                    curve[k].append(v)
                curve["update"].append(updates), curve["phase"].append(phase)
                curve["loss"].append(float(np.mean(np.stack([np.asarray(l) for l in acc_loss])[:, 0])))
                acc_loss = []
        params = states[0].params
    jax.block_until_ready(params)
    return {"curve": curve, "params": params, "train_time_s": time.perf_counter() - t0}


# ------------------------------------------------------------------------------------------------ report
def plot(runs: dict, path: str, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("test_exact", "held-out A->B exact-word acc"), ("test_char", "held-out A->B per-char acc"),
              ("train_pairs_exact", "train pairs A->B exact-word acc"),
              ("test_b_autoenc_exact", "held-out B->B exact-word acc (same decoder)"),
              ("test_code_gap", "held-out code gap |z_a - z_b|^2 / var(z_b)")]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.2))
    axes = axes.ravel()
    axes[-1].axis("off")
    rows = ["final, held-out words:", f"{'method':<13}{'A->B exact':>11}{'char':>7}{'B->B':>7}{'gap':>7}"]
    for name, r in runs.items():
        c = r["curve"]
        b2b = "n/a" if name == "pairs_only" else f"{100 * c['test_b_autoenc_exact'][-1]:.1f}%"
        gap = "n/a" if name == "pairs_only" else f"{c['test_code_gap'][-1]:.3f}"
        rows.append(f"{name:<13}{100 * c['test_exact'][-1]:>10.1f}%{100 * c['test_char'][-1]:>6.1f}%{b2b:>7}{gap:>7}")
    axes[-1].text(0.0, 0.95, "\n".join(rows), family="monospace", fontsize=8.5, va="top", transform=axes[-1].transAxes)
    for ax, (key, label) in zip(axes, panels):
        for name, r in runs.items():
            c = r["curve"]
            if key in ("test_code_gap", "test_b_autoenc_exact") and name == "pairs_only":
                continue                                     # enc_b is never trained there
            ax.plot(c["update"], c[key], label=name, color=COLORS.get(name))
        ax.set(xlabel="parameter updates (all phases)", title=label,
               **({"yscale": "log"} if key == "test_code_gap" else {"ylim": (-0.02, 1.02)}))
        ax.grid(alpha=0.3)
    if "two_stage" in runs:
        c = runs["two_stage"]["curve"]
        switch = max(u for u, ph in zip(c["update"], c["phase"]) if ph in ("init", "stage1_b_autoencoder"))
        for ax in axes[:len(panels)]:
            ax.axvline(switch, color="gray", ls=":", lw=1)
        axes[0].text(switch, 0.97, " two_stage: stage 2", fontsize=7, color="gray", va="top")
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    path = _common.savefig(fig, path)
    plt.close(fig)
    return path


def build_parser():
    p = _common.parser(NAME, __doc__.splitlines()[0], steps=3000, images=False)
    p.add_argument("--cell", default="gru", choices=["gru", "lstm"])
    p.add_argument("--hidden", type=int, default=128, help="RNN hidden size (encoders and decoder)")
    p.add_argument("--embed-dim", type=int, default=32, help="character embedding size")
    p.add_argument("--z-dim", type=int, default=128, help="size of the code passed from encoder to decoder")
    p.add_argument("--n-test", type=int, default=400, help="held-out test words")
    p.add_argument("--n-pairs", type=int, default=500, help="paired A->B training words")
    p.add_argument("--max-words", type=int, default=None, help="use only this many words (tiny runs)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.5, help="AdamW decoupled weight decay (all methods)")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--code-noise", type=float, default=0.0, help="std of Gaussian noise on the code while decoding "
                                                                    "in training (all methods)")
    p.add_argument("--eval-every", type=int, default=100, help="steps (rounds for tandem) between evaluations")
    p.add_argument("--methods", nargs="+", default=["two_stage", "tandem", "pairs_only"],
                   choices=["two_stage", "tandem", "pairs_only", "tandem_align"],
                   help="tandem_align (not in the default set): tandem whose A->B loss adds --align-weight * "
                        "|z_a - stop_gradient(z_b)|^2, the two-stage regression term")
    p.add_argument("--align-weight", type=float, default=1.0)
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    t_start = time.perf_counter()
    words = load_words()
    if args.max_words:
        words = [words[i] for i in sorted(np.random.default_rng(args.seed).permutation(len(words))[:args.max_words])]
    cipher = make_cipher(args.seed)
    test, pairs, b_set = split(words, args.n_test, args.n_pairs, args.seed)
    max_len = max(len(w) for w in words)
    sets = {"test": make_set(test, cipher, max_len), "pairs": make_set(pairs, cipher, max_len),
            "b": make_set(b_set, cipher, max_len), "pairs_eval": make_set(pairs[:args.n_test], cipher, max_len)}
    sets_j = {k: jax.tree.map(jnp.asarray, v) for k, v in sets.items()}
    model = Model(args.cell, args.embed_dim, args.hidden, args.z_dim, max_len)
    params0 = jax.jit(model.init)(jax.random.key(args.seed))
    param_paths = paths_of(params0)
    n_params = {k: hj.training.count_params(v) for k, v in params0.items()}
    print("params tree (one decoder, shared by A->B and B->B):")
    for top in params0:
        sub = [p for p in param_paths if p.startswith(top + "/")]
        print(f"  {top:<6} {n_params[top]:>8,} scalars  {len(sub)} leaves, e.g. {', '.join(sub[:3])}, ...")

    evaluate = evaluator(model, sets_j)
    runs = {m: run_method(m, model, params0, sets, args, evaluate) for m in args.methods}

    metrics = {"n_words": len(words), "n_test": len(test), "n_pairs": len(pairs), "n_b_unpaired": len(b_set),
               "max_len": max_len, "param_paths": param_paths, "n_params": n_params,
               "dec_subtrees": sorted(k for k in params0 if k.startswith("dec")),
               "examples": {w: respell(w, cipher) for w in (test[:5] + ["python"])},
               "wall_time_s": 0.0}
    for m, r in runs.items():
        c = r["curve"]
        metrics[m] = {"test_exact": c["test_exact"][-1], "test_char": c["test_char"][-1],
                      "best_test_exact": max(c["test_exact"]),
                      "train_pairs_exact": c["train_pairs_exact"][-1],
                      "test_b_autoenc_exact": c["test_b_autoenc_exact"][-1],
                      # pairs_only never trains enc_b, so its code gap measures nothing
                      "test_code_gap": None if m == "pairs_only" else c["test_code_gap"][-1],
                      "updates": c["update"][-1], "train_time_s": r["train_time_s"]}
        dec = r["params"]["dec"]
        metrics[m]["dec_leaves"] = len(jax.tree.leaves(dec))
    if {"tandem", "two_stage", "pairs_only"} <= set(runs):
        t = metrics["tandem"]["test_exact"]
        metrics["tandem_above_two_stage"] = bool(t > metrics["two_stage"]["test_exact"])
        metrics["tandem_above_pairs_only"] = bool(t > metrics["pairs_only"]["test_exact"])
        metrics["target_met"] = metrics["tandem_above_two_stage"] and metrics["tandem_above_pairs_only"]
    metrics["wall_time_s"] = time.perf_counter() - t_start
    config = {**vars(args), "respelling": "A = reverse(cipher(B)), cipher = seeded permutation of a-z",
              "cipher": "".join(cipher[c] for c in string.ascii_lowercase),
              "source": "pydoc_data.topics (letter runs, lowercased, length 3-10, deduplicated)",
              "b_set": "all non-test words (includes the paired words' B side)"}
    curves = {m: r["curve"] for m, r in runs.items()}
    path = _common.write_json(args.out, NAME, config, metrics, curves=curves)
    png = plot(runs, _common.png_path(args.out),
               f"{len(pairs)} A->B pairs + {len(b_set)} B words, {len(test)} held-out words ({args.cell.upper()})")

    print(f"\n{'method':<11} {'test exact':>10} {'test char':>10} {'best exact':>10} {'train-pair exact':>17} "
          f"{'B->B exact':>10} {'updates':>8} {'train s':>8}")
    for m in runs:
        r = metrics[m]
        print(f"{m:<11} {100 * r['test_exact']:>9.1f}% {100 * r['test_char']:>9.1f}% {100 * r['best_test_exact']:>9.1f}% "
              f"{100 * r['train_pairs_exact']:>16.1f}% {100 * r['test_b_autoenc_exact']:>9.1f}% {r['updates']:>8} "
              f"{r['train_time_s']:>8.1f}")
    print(f"wrote {path} and {png}; {metrics['wall_time_s']:.0f}s wall"
          + (f"; target (tandem above both) {'met' if metrics['target_met'] else 'MISSED'} (above two_stage: "
             f"{metrics['tandem_above_two_stage']}, above pairs_only: {metrics['tandem_above_pairs_only']})"
             if "target_met" in metrics else ""))
    return metrics


if __name__ == "__main__":
    main()
