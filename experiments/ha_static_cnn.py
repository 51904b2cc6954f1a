"""Ha, Dai & Le (2016) static hypernetwork: a small CNN whose second conv kernel is generated, against the plain CNN.

    python -m experiments.ha_static_cnn                     # scikit-learn digits, 8x8 (5x5 kernels)
    python -m experiments.ha_static_cnn --mnist mnist.npz   # real MNIST from a local file (7x7 kernels, as the paper)

CNN: conv k x k (1 -> 16, SAME, ReLU) -> 2x2 max-pool -> conv k x k (16 -> 16, SAME, ReLU) -> 2x2 max-pool
-> dense 10. k = 5 on digits, 7 on MNIST (the paper's 7 x 7 x 16 x 16 second layer, 12,544 weights).

* hyper: `hj.generators.per_layer(spec, where="Conv_1/kernel", z_dim=4, d=4)` generates the second conv
  kernel from a learned layer embedding z (N_z = 4) by the paper's two-stage linear generator
  (a_i = W_i z + B_i per input channel, K_i = W_out a_i + B_out); every other leaf (first conv, biases,
  dense) is an ordinary parameter in hparams["direct"]; everything trains jointly (partial generation).
* plain: the same CNN with all its parameters trained directly.

Same batches, optimizer (Adam with warm-up + cosine decay) and steps for both; `--repeats` seeds each.
Writes results/ha_static_cnn.json (accuracies per seed, mean and std, parameter counts of both models
and of the generated layer against its generator, learning curves) and results/ha_static_cnn.png.
"""

from __future__ import annotations

import math
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import hyperjax as hj
from experiments import _common, _data

NAME = "ha_static_cnn"


class CNN(nn.Module):
    """x: f32[batch, H, W, 1] -> logits f32[batch, 10]."""

    kernel: int = 5
    channels: int = 16

    @nn.compact
    def __call__(self, x):
        k = (self.kernel, self.kernel)
        x = nn.max_pool(nn.relu(nn.Conv(self.channels, k, padding="SAME")(x)), (2, 2), (2, 2))
        x = nn.max_pool(nn.relu(nn.Conv(self.channels, k, padding="SAME")(x)), (2, 2), (2, 2))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def build_parser():
    p = _common.parser(NAME, __doc__.splitlines()[0], steps=2000)
    p.add_argument("--repeats", type=int, default=3, help="seeds seed, seed+1, ... per model")
    p.add_argument("--kernel", type=int, default=None, help="conv kernel size (default 5 on digits, 7 on MNIST)")
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--z-dim", type=int, default=4, help="N_z, size of the layer embedding")
    p.add_argument("--d", type=int, default=4, help="width of the per-input-channel code a_i")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (both models)")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--eval-every", type=int, default=100)
    return p


def optimizer(lr: float, steps: int, warmup: int) -> optax.GradientTransformation:
    warmup = max(0, min(warmup, steps - 1))
    return optax.adam(optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1), lr * 1e-2))


def make_trainer(spec, to_target, opt, x_te, y_te, steps_per_call=1):
    """-> ((jitted step, train_loop's multi), jitted accuracy(params)); built once per model, reused per seed."""
    def loss_fn(p, batch, rng):
        x, y = batch
        return optax.softmax_cross_entropy_with_integer_labels(spec.apply(to_target(p), x), y).mean()

    @jax.jit
    def accuracy(p):
        def chunk(xy):
            return jnp.sum(jnp.argmax(spec.apply(to_target(p), xy[0]), -1) == xy[1])
        n = (len(x_te) // 500) * 500 or len(x_te)
        hits = jax.lax.map(chunk, (x_te[:n].reshape(-1, min(500, n), *x_te.shape[1:]),
                                   y_te[:n].reshape(-1, min(500, n))))
        rest = chunk((x_te[n:], y_te[n:])) if n < len(x_te) else 0
        return (jnp.sum(hits) + rest) / len(x_te)

    return _common.make_steps(loss_fn, opt, steps_per_call), accuracy


def train(name, params, steps, accuracy, opt, data, args, seed):
    step, multi = steps
    x_tr, y_tr = data
    state = jax.jit(lambda p: hj.training.init_state(p, opt))(params)
    order = _data.batches(np.random.default_rng(seed), len(x_tr), args.batch_size)
    state, curve, seconds = _common.train_loop(step, state, order, (x_tr, y_tr), args.steps, args.eval_every, accuracy,
                                               f"{name} seed {seed}", disable=args.no_progress, multi=multi)
    return state.params, curve, seconds


def plot(runs: dict, path: str, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 3.8))
    for (name, rs), color in zip(runs.items(), ("tab:blue", "tab:orange")):
        steps = np.array(rs[0]["curve"]["step"])
        loss = np.array([r["curve"]["train_loss"] for r in rs])[:, 1:]
        acc = np.array([r["curve"]["test_accuracy"] for r in rs])
        ax_l.plot(steps[1:], loss.mean(0), color=color, label=name)
        ax_a.plot(steps, acc.mean(0), color=color, label=f"{name} (mean of {len(rs)})")
        ax_a.fill_between(steps, acc.min(0), acc.max(0), color=color, alpha=0.2)
    ax_l.set(xlabel="step", ylabel="train cross-entropy", yscale="log", title="train loss (mean over seeds)")
    ax_a.set(xlabel="step", ylabel="test accuracy", ylim=(0.85, 1.0), title="test accuracy (band: min-max)")
    return _common.finish_figure(fig, (ax_l, ax_a), title, path)


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    t_start = time.perf_counter()
    x_tr, y_tr, x_te, y_te, dataset = _data.load_images(args.mnist, seed=args.seed)
    kernel = args.kernel or (7 if dataset == "mnist" else 5)
    spec = hj.targets.from_linen(CNN(kernel, args.channels), jnp.zeros((1, *x_tr.shape[1:]), jnp.float32))
    gen = hj.generators.per_layer(spec, where="Conv_1/kernel", z_dim=args.z_dim, d=args.d)
    x_te_j, y_te_j = jnp.asarray(x_te), jnp.asarray(y_te)
    opt = optimizer(args.lr, args.steps, args.warmup)
    models = {"hyper": (jax.jit(gen.init), gen.apply), "plain": (jax.jit(spec.init), lambda p: p)}

    runs: dict[str, list] = {k: [] for k in models}
    counts = {}
    for name, (init, to_target) in models.items():
        step, accuracy = make_trainer(spec, to_target, opt, x_te_j, y_te_j, args.steps_per_call)
        for r in range(args.repeats):
            seed = args.seed + r
            params = init(jax.random.key(seed))
            counts[name] = hj.training.count_params(params)
            _, curve, seconds = train(name, params, step, accuracy, opt, (x_tr, y_tr), args, seed)
            runs[name].append({"seed": seed, "curve": curve, "train_time_s": seconds,
                               "test_accuracy": curve["test_accuracy"][-1]})

    hp = jax.eval_shape(gen.init, jax.random.key(0))
    (group, generator), = hp["hyper"]["per_layer"].items()
    kernel_params = math.prod(spec.leaves["Conv_1/kernel"].shape)
    gen_weights = sum(int(v.size) for v in generator.values())
    layer_emb = int(hp["embedding"]["layer_emb"][group].size)
    acc = {k: np.array([r["test_accuracy"] for r in rs]) for k, rs in runs.items()}
    gap = 100.0 * (acc["plain"].mean() - acc["hyper"].mean())
    metrics = {
        "dataset": dataset, "n_train": int(len(x_tr)), "n_test": int(len(x_te)), "kernel": kernel,
        **{name: {"test_accuracy_mean": float(acc[name].mean()), "test_accuracy_std": float(acc[name].std()),
                  "test_accuracy_per_seed": acc[name].tolist(), "trainable_params": counts[name],
                  "train_time_s": float(np.mean([r["train_time_s"] for r in runs[name]]))} for name in models},
        "generated_layer": {"path": "Conv_1/kernel", "shape": list(spec.leaves["Conv_1/kernel"].shape),
                            "kernel_params": kernel_params, "generator_weights_and_biases": gen_weights,
                            "layer_embedding": layer_emb,
                            "formula": f"N_in (d N_z + d) + k*k*N_out (d + 1) = {args.channels} ({args.d}*{args.z_dim}"
                                       f" + {args.d}) + {kernel * kernel}*{args.channels} ({args.d} + 1)",
                            "compression": kernel_params / (gen_weights + layer_emb)},
        "accuracy_gap_points": gap,
        "target_met": bool(gap <= 1.0),
        "wall_time_s": time.perf_counter() - t_start,
    }
    config = {**vars(args), "kernel": kernel, "target": f"CNN conv{kernel}x{kernel}x{args.channels} -> pool -> "
                                                        f"conv{kernel}x{kernel}x{args.channels} -> pool -> dense 10"}
    path = _common.write_json(args.out, NAME, config, metrics,
                              curves={k: [r["curve"] for r in rs] for k, rs in runs.items()})
    png = plot(runs, _common.png_path(args.out),
               f"{dataset}: conv-2 kernel generated by per_layer ({gen_weights + layer_emb:,} params for a "
               f"{kernel_params:,}-weight kernel) vs plain CNN")

    print(f"\n{'model':<6} {'trainable params':>17} {'test acc (mean +- std over ' + str(args.repeats) + ' seeds)':>40}")
    for name in models:
        m = metrics[name]
        print(f"{name:<6} {m['trainable_params']:>17,} {100 * m['test_accuracy_mean']:>32.2f}% +- "
              f"{100 * m['test_accuracy_std']:.2f}")
    g = metrics["generated_layer"]
    print(f"generated layer Conv_1/kernel {tuple(g['shape'])}: {g['kernel_params']:,} weights <- generator "
          f"{g['generator_weights_and_biases']:,} weights+biases + {g['layer_embedding']} embedding "
          f"({g['compression']:.1f}x fewer)")
    print(f"wrote {path} and {png}")
    print(f"{NAME} [{dataset}]: hyper {100 * acc['hyper'].mean():.2f}% vs plain {100 * acc['plain'].mean():.2f}% "
          f"(gap {gap:+.2f} pts), target {'met' if metrics['target_met'] else 'MISSED'}; "
          f"{metrics['wall_time_s']:.0f}s wall")
    return metrics


if __name__ == "__main__":
    main()
