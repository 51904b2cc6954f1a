"""Learned weight sharing with `hj.generators.codebook`: a digits MLP on K shared values, and discovering convolution.

    python -m experiments.learned_sharing                     # scikit-learn digits, ~2-4 min on 2 cores
    python -m experiments.learned_sharing --mnist mnist.npz   # part (a) on real MNIST from a local file

(a) An MLP 64 -> 128 -> 10 (784 -> 128 -> 10 on MNIST) whose kernels are all drawn from one shared codebook
    of K values (biases stay ordinary params): w = softmax(A / tau) . v, the temperature annealed
    geometrically from --tau-start to --tau-end (passed to the jitted step, no recompiling), plus
    --entropy-weight * mean row entropy and --usage-weight * KL(mean assignment || uniform). After training,
    `hj.generators.codebook_export` takes the argmax of every slot; we report the hard model's test accuracy,
    the number of distinct values and the compression (32-bit floats vs ceil(log2 K)-bit indices + the table),
    for each K in --values, against the same MLP trained without sharing.
(b) One fully connected layer 32 -> 32 detects a motif of length --motif-len placed anywhere in a noisy length-32
    signal: it emits a logit per position, trained with per-position labels (a translation-equivariant task; a
    pooled "anywhere" readout trained on the signal label alone barely left chance in 1,500 steps, shared or
    not), and a signal counts as detected when its largest logit is positive. The kernel is shared through a
    codebook of --conv-values values. A convolution would give W[i, j] = w(i - j), so we measure the fraction of diagonal
    neighbour pairs (W[i, j], W[i+1, j+1]) assigned to the same value, against the same fraction after randomly
    permuting the assignments (same usage of each value; mean and std over --perms permutations). Because one
    background value can dominate, the same fractions are also given over pairs whose first slot is not the most
    used value. For reference, the unshared layer's kernel is quantised to K levels by quantiles and measured alike.

Writes results/learned_sharing.json and results/learned_sharing.png (accuracy vs K; the learned assignment matrix).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hyperjax as hj
from experiments import _common, _data

NAME = "learned_sharing"
RULES = (("hyper/logits/*", "logits"), ("hyper/values", "values"), ("direct/*", "direct"), ("*", "direct"))


def build_parser():
    p = _common.parser(NAME, __doc__.splitlines()[0], steps=2000)
    p.add_argument("--values", type=int, nargs="+", default=[4, 16, 64], help="codebook sizes K for part (a)")
    p.add_argument("--hidden", type=int, default=128, help="hidden width of the part (a) MLP")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3, help="(a) Adam lr of the ordinary params and of the unshared MLP")
    p.add_argument("--conv-lr", type=float, default=1e-2, help="(b) Adam lr of the ordinary params and unshared layer")
    p.add_argument("--logit-lr", type=float, default=3e-2, help="Adam lr of the assignment logits A")
    p.add_argument("--value-lr", type=float, default=1e-3, help="(a) Adam lr of the codebook values v")
    p.add_argument("--conv-value-lr", type=float, default=1e-2, help="(b) Adam lr of the codebook values v")
    p.add_argument("--tau-start", type=float, default=1.0)
    p.add_argument("--tau-end", type=float, default=0.03)
    p.add_argument("--entropy-weight", type=float, default=1e-2)
    p.add_argument("--usage-weight", type=float, default=1e-3)
    p.add_argument("--conv-steps", type=int, default=3000, help="training steps of part (b)")
    p.add_argument("--conv-values", type=int, default=8, help="codebook size K of part (b)")
    p.add_argument("--motif-len", type=int, default=5)
    p.add_argument("--noise", type=float, default=0.6, help="std of the background noise of part (b)")
    p.add_argument("--perms", type=int, default=1000, help="random permutations for the part (b) baseline")
    p.add_argument("--eval-every", type=int, default=250)
    return p


def mlp_spec(widths):
    """Plain-function MLP: params {"l0": {"kernel", "bias"}, ...}; x f[B, widths[0]] -> logits f[B, widths[-1]]."""
    params = {f"l{i}": {"kernel": jax.ShapeDtypeStruct((a, b), jnp.float32), "bias": jax.ShapeDtypeStruct((b,), jnp.float32)}
              for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))}

    def apply(p, x):
        for i in range(len(widths) - 1):
            x = x @ p[f"l{i}"]["kernel"] + p[f"l{i}"]["bias"][None, :]
            if i < len(widths) - 2:
                x = jax.nn.relu(x)
        return x

    return hj.targets.from_fn(apply, params)


def detector_spec(length: int):
    """One fully connected layer x f[B, length] -> per-position motif logits f[B, length] (kernel (length, length))."""
    params = {"fc": {"kernel": jax.ShapeDtypeStruct((length, length), jnp.float32),
                     "bias": jax.ShapeDtypeStruct((length,), jnp.float32)}}

    def apply(p, x):
        return x @ p["fc"]["kernel"] + p["fc"]["bias"][None, :]

    return hj.targets.from_fn(apply, params)


def tau_at(step: int, steps: int, args) -> float:
    return float(args.tau_start * (args.tau_end / args.tau_start) ** (step / max(steps - 1, 1)))


def train(params, to_target, spec, loss_of_output, data, steps, opt, args, seed, regularise, desc):
    """Adam on `params`; the temperature is an argument of the one jitted step. Returns (params, curve)."""
    x_tr, y_tr, x_te, y_te = data

    def loss_fn(p, batch, rng):
        x, y, tau = batch
        loss = loss_of_output(spec.apply(to_target(p, tau), x), y)
        metrics = {"task": loss}
        if regularise:
            ent, kl = hj.generators.codebook_entropy(p, tau), hj.generators.codebook_usage_kl(p, tau)
            loss = loss + args.entropy_weight * ent + args.usage_weight * kl
            metrics.update(entropy=ent, usage_kl=kl)
        return loss, metrics

    step = hj.training.make_step(loss_fn, opt, has_aux=True, grad_norm=False)
    state = hj.training.init_state(params, opt)
    order = _data.batches(np.random.default_rng(seed), len(x_tr), args.batch_size)
    curve = {"step": [], "task_loss": [], "tau": []}
    for i in _common.progress(range(steps), steps, desc, disable=args.no_progress):
        idx = next(order)
        tau = tau_at(i, steps, args)
        state, m = step(state, (x_tr[idx], y_tr[idx], jnp.float32(tau)))
        if (i + 1) % args.eval_every == 0 or i == steps - 1:
            curve["step"].append(i + 1)
            curve["task_loss"].append(float(m["task"]))
            curve["tau"].append(tau)
    return state.params, curve


def codebook_optimizer(args, direct_lr=None, value_lr=None):
    """Adam per group: assignment logits, codebook values, ordinary params (the biases)."""
    return hj.training.multi_optimizer({"logits": optax.adam(args.logit_lr),
                                        "values": optax.adam(value_lr or args.value_lr),
                                        "direct": optax.adam(direct_lr or args.lr)}, rules=RULES)


# ---------------------------------------------------------------- (a) digits MLP
def part_a(args, data, dataset):
    x_tr, y_tr, x_te, y_te = data
    spec = mlp_spec((x_tr.shape[1], args.hidden, 10))
    ce = lambda logits, y: optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    acc = jax.jit(lambda params, x, y: jnp.mean(jnp.argmax(spec.apply(params, x), -1) == y))
    accuracy = lambda params: acc(params, x_te, y_te)
    key = jax.random.key(args.seed)
    out = {}

    params, curve = train(spec.init(key), lambda p, tau: p, spec, ce, data, args.steps, optax.adam(args.lr), args,
                          args.seed, False, "unshared")
    out["unshared"] = {"test_accuracy": float(accuracy(params)), "trainable_params": hj.training.count_params(params),
                       "distinct_values": int(len(np.unique(np.concatenate(
                           [np.asarray(params[l]["kernel"]).ravel() for l in params])))), "curve": curve}
    for k in args.values:
        gen = hj.generators.codebook(spec, num_values=k, where="*/kernel", tau=args.tau_start)
        hp = jax.jit(gen.init)(key)
        hp, curve = train(hp, lambda p, tau: gen.apply(p, tau=tau), spec, ce, data, args.steps, codebook_optimizer(args), args, args.seed, True,
                          f"codebook K={k}")
        soft = float(accuracy(gen.apply(hp, tau=jnp.float32(args.tau_end))))
        hard_params, info = hj.generators.codebook_export(gen, hp)
        out[f"K={k}"] = {"test_accuracy_hard": float(accuracy(hard_params)), "test_accuracy_soft": soft,
                         "trainable_params": hj.training.count_params(hp),
                         "final_entropy_nats": float(hj.generators.codebook_entropy(hp, args.tau_end)),
                         **{k_: v for k_, v in info.items() if k_ != "usage"}, "usage": info["usage"],
                         "curve": curve}
    return out


# ---------------------------------------------------------------- (b) discovering convolution
def motif_data(seed: int, n: int, length: int, motif: np.ndarray, noise: float):
    """Half the signals hold the motif at a uniform random start; all get N(0, noise^2) background.

    -> x f32[n, length], y f32[n, length] with y[i, p] = 1 where the motif of signal i starts.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, noise, (n, length)).astype(np.float32)
    y = np.zeros((n, length), np.float32)
    has = rng.random(n) < 0.5
    pos = rng.integers(0, length - len(motif) + 1, n)
    for i in np.flatnonzero(has):
        x[i, pos[i]:pos[i] + len(motif)] += motif
        y[i, pos[i]] = 1.0
    return x, y


def diagonal_sharing(assign: np.ndarray, rng: np.random.Generator, perms: int) -> dict:
    """Fraction of pairs (i, j), (i+1, j+1) with the same assignment, overall and off the modal value, vs permutations."""
    def fractions(a):
        same = a[:-1, :-1] == a[1:, 1:]
        mode = np.bincount(a.ravel()).argmax()
        off = a[:-1, :-1] != mode
        return float(same.mean()), float(same[off].mean()) if off.any() else float("nan")

    observed = fractions(assign)
    base = np.array([fractions(rng.permutation(assign.ravel()).reshape(assign.shape)) for _ in range(perms)])
    return {"same_value_fraction": observed[0], "random_mean": float(base[:, 0].mean()),
            "random_std": float(base[:, 0].std()),
            "same_value_fraction_off_mode": observed[1], "random_off_mode_mean": float(np.nanmean(base[:, 1])),
            "random_off_mode_std": float(np.nanstd(base[:, 1])),
            "z_score": float((observed[0] - base[:, 0].mean()) / max(base[:, 0].std(), 1e-12))}


def part_b(args):
    length = 32
    motif = np.where(np.arange(args.motif_len) % 3 == 1, -1.0, 1.0).astype(np.float32) * 1.5
    x_tr, y_tr = motif_data(args.seed, 8000, length, motif, args.noise)
    x_te, y_te = motif_data(args.seed + 1, 2000, length, motif, args.noise)
    data = (x_tr, y_tr, x_te, y_te)
    spec = detector_spec(length)
    bce = lambda logits, y: optax.sigmoid_binary_cross_entropy(logits, y).sum(1).mean()
    # detection anywhere: the signal holds the motif iff some position's logit is positive
    acc = jax.jit(lambda params, x, y: jnp.mean((jnp.max(spec.apply(params, x), 1) > 0) == (jnp.max(y, 1) > 0)))
    accuracy = lambda params: acc(params, x_te, y_te)
    key = jax.random.key(args.seed + 7)
    rng = np.random.default_rng(args.seed)

    gen = hj.generators.codebook(spec, num_values=args.conv_values, where="fc/kernel", tau=args.tau_start)
    hp, curve = train(jax.jit(gen.init)(key), lambda p, tau: gen.apply(p, tau=tau), spec, bce, data, args.conv_steps,
                      codebook_optimizer(args, args.conv_lr, args.conv_value_lr), args, args.seed, True, f"conv K={args.conv_values}")
    hard, info = hj.generators.codebook_export(gen, hp)
    assign = np.asarray(jnp.argmax(hp["hyper"]["logits"]["fc"]["kernel"], -1))
    shared = {"test_accuracy_hard": float(accuracy(hard)), "distinct_values": info["distinct_values"],
              "usage": info["usage"], **diagonal_sharing(assign, rng, args.perms), "curve": curve}

    plain, _ = train(spec.init(key), lambda p, tau: p, spec, bce, data, args.conv_steps, optax.adam(args.conv_lr),
                     args, args.seed, False, "conv unshared")
    w = np.asarray(plain["fc"]["kernel"])
    edges = np.quantile(w, np.linspace(0, 1, args.conv_values + 1)[1:-1])
    unshared = {"test_accuracy": float(accuracy(plain)),
                **diagonal_sharing(np.digitize(w, edges), rng, args.perms)}
    return {"shared": shared, "unshared_quantised": unshared, "motif": motif.tolist(),
            "values": np.asarray(hp["hyper"]["values"]).tolist()}, np.asarray(hard["fc"]["kernel"]), w


def plot(a: dict, ks: list[int], w_shared: np.ndarray, w_plain: np.ndarray, b: dict, path: str, dataset: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), gridspec_kw={"wspace": 0.35})
    ax = axes[0]
    ax.plot(ks, [100 * a[f"K={k}"]["test_accuracy_hard"] for k in ks], "o-", label="codebook, hard export")
    ax.plot(ks, [100 * a[f"K={k}"]["test_accuracy_soft"] for k in ks], "s--", label="codebook, soft (final tau)")
    ax.axhline(100 * a["unshared"]["test_accuracy"], color="k", ls=":", label="unshared MLP")
    ax.set(xscale="log", xlabel="K shared values", ylabel="test accuracy (%)", title=f"(a) {dataset} MLP")
    ax.minorticks_off()
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.grid(alpha=0.3)
    ax.legend()
    lim = float(np.abs(w_shared).max())
    for ax, w, title in ((axes[1], w_shared, f"(b) shared FC kernel, {len(np.unique(w_shared))} values\n"
                          f"diagonal same-value {100 * b['shared']['same_value_fraction']:.1f}% "
                          f"(random {100 * b['shared']['random_mean']:.1f}%)"),
                         (axes[2], w_plain, "(b) unshared FC kernel (reference)")):
        im = ax.imshow(w, cmap="RdBu_r", vmin=-lim if w is w_shared else None, vmax=lim if w is w_shared else None)
        ax.set(xlabel="hidden unit j", ylabel="input position i", title=title)
        fig.colorbar(im, ax=ax, fraction=0.046)
    path = _common.savefig(fig, path)
    plt.close(fig)
    return path


def load(mnist, seed):
    x_tr, y_tr, x_te, y_te, name = _data.load_images(mnist, seed=seed)
    x_tr, x_te = x_tr.reshape(len(x_tr), -1), x_te.reshape(len(x_te), -1)
    mean, std = x_tr.mean(0), np.maximum(x_tr.std(0), 0.1)
    return ((x_tr - mean) / std).astype(np.float32), y_tr, ((x_te - mean) / std).astype(np.float32), y_te, name


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    x_tr, y_tr, x_te, y_te, dataset = load(args.mnist, args.seed)
    a = part_a(args, (x_tr, y_tr, x_te, y_te), dataset)
    b, w_shared, w_plain = part_b(args)
    base = a["unshared"]["test_accuracy"]
    for k in args.values:
        a[f"K={k}"]["gap_points"] = 100 * (base - a[f"K={k}"]["test_accuracy_hard"])
    target_k = a.get("K=16")
    metrics = {"dataset": dataset, "a": a, "b": b, "wall_time_s": time.perf_counter() - t0,
               "target_met_K16": None if target_k is None else bool(target_k["gap_points"] <= 1.5)}
    path = _common.write_json(args.out, NAME, vars(args), metrics)
    png = plot(a, args.values, w_shared, w_plain, b, _common.png_path(args.out), dataset)

    print(f"\n(a) {dataset} MLP {x_tr.shape[1]}->{args.hidden}->10, every kernel through one codebook")
    print(f"{'model':<10} {'hard acc':>9} {'soft acc':>9} {'gap':>7} {'distinct':>9} {'used':>5} {'compression':>12}")
    print(f"{'unshared':<10} {100 * base:>8.2f}% {'':>9} {'':>7} {a['unshared']['distinct_values']:>9,} {'':>5} {'1.0x':>12}")
    for k in args.values:
        r = a[f"K={k}"]
        print(f"{'K=' + str(k):<10} {100 * r['test_accuracy_hard']:>8.2f}% {100 * r['test_accuracy_soft']:>8.2f}% "
              f"{r['gap_points']:>+6.2f} {r['distinct_values']:>9} {r['used_values']:>5} {r['compression']:>11.1f}x")
    s, u = b["shared"], b["unshared_quantised"]
    print(f"(b) motif detector, FC 32x32 on K={args.conv_values}: hard test acc {100 * s['test_accuracy_hard']:.2f}% "
          f"(unshared {100 * u['test_accuracy']:.2f}%); diagonal pairs with the same value "
          f"{100 * s['same_value_fraction']:.1f}% vs random {100 * s['random_mean']:.1f} +- {100 * s['random_std']:.1f}% "
          f"(z = {s['z_score']:.1f}); off the modal value {100 * s['same_value_fraction_off_mode']:.1f}% vs "
          f"{100 * s['random_off_mode_mean']:.1f}%; unshared quantised {100 * u['same_value_fraction']:.1f}% vs "
          f"{100 * u['random_mean']:.1f}%")
    print(f"wrote {path} and {png}")
    if target_k is not None:
        print(f"{NAME} [{dataset}, seed {args.seed}]: K=16 hard export {100 * target_k['test_accuracy_hard']:.2f}% vs "
              f"unshared {100 * base:.2f}% (gap {target_k['gap_points']:+.2f} pts, {target_k['distinct_values']} "
              f"distinct values, {target_k['compression']:.1f}x smaller), {metrics['wall_time_s']:.0f}s wall, "
              f"target {'met' if metrics['target_met_K16'] else 'MISSED'}")
    return metrics


if __name__ == "__main__":
    main()
