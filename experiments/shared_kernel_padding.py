"""Shared kernel, two paddings: one conv kernel and bias used by a 'SAME' and a 'VALID' layer, trained, saved
with hyperjax.checkpoint, restored, and still one shared parameter.

    python -m experiments.shared_kernel_padding                     # scikit-learn digits (8x8)
    python -m experiments.shared_kernel_padding --mnist mnist.npz   # real MNIST from a local file (28x28)

Model (flax.linen): stem Conv(16, 3x3, SAME) -> relu -> conv_same: Conv(16, 3x3, SAME) -> relu ->
conv_valid: Conv(16, 3x3, VALID) -> relu -> 2x2 average pool -> Dense(10). conv_same and conv_valid
differ only in padding; `hj.tie` stores conv_valid's kernel and bias as conv_same's (one leaf each), so
the trainable tree holds one 3x3x16x16 kernel, and gradients from both layers add up in it.

Steps: (1) print the trainable paths and counts (tied vs untied); (2) train the tied model and, as a
reference, the untied one (separate kernels) on the same batches; (3) save the tied TrainState plus a
JSON config with `hj.checkpoint`; (4) open a new manager, rebuild the model from the stored config and
restore against `jax.eval_shape` of the initial state; (5) check that the restored tree still holds one
kernel, that test logits are bitwise equal before and after, and that one update after restore moves
both layers by the same amount (the gradient being the sum of the two layers' gradients).

Writes results/shared_kernel_padding.json and .png (learning curves and the shared filters).
"""

from __future__ import annotations

import os
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import hyperjax as hj
from experiments import _common, _data

NAME = "shared_kernel_padding"
SHARED = ("conv_same", "conv_valid")


class TwoPaddings(nn.Module):
    """x: f32[batch, H, W, 1] -> logits f32[batch, 10]; conv_same and conv_valid differ only in padding."""

    features: int = 16

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(self.features, (3, 3), padding="SAME", name="stem")(x))
        x = nn.relu(nn.Conv(self.features, (3, 3), padding="SAME", name="conv_same")(x))     # H x W
        x = nn.relu(nn.Conv(self.features, (3, 3), padding="VALID", name="conv_valid")(x))   # (H-2) x (W-2)
        x = nn.pool(x, 0.0, jax.lax.add, (2, 2), (2, 2), "VALID") / 4.0   # avg_pool, without an int divisor
        return nn.Dense(10, name="head")(x.reshape(x.shape[0], -1))


def build_parser():
    p = _common.parser(NAME, __doc__.splitlines()[0], steps=800)
    p.add_argument("--features", type=int, default=16, help="channels of every conv layer")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--ckpt-dir", default=None, help="empty or new directory for the checkpoint (default: a temp dir)")
    return p


def build(config: dict, image_shape: tuple[int, ...]):
    """(spec, tied) from the JSON config alone: what a restoring process does."""
    spec = hj.targets.from_linen(TwoPaddings(config["features"]), jnp.zeros((1, *image_shape), jnp.float32))
    tied = hj.tie(spec, ties=[hj.Tie(f"{SHARED[0]}/kernel", f"{SHARED[1]}/kernel"),
                              hj.Tie(f"{SHARED[0]}/bias", f"{SHARED[1]}/bias")])
    return spec, tied


def leaves(tree) -> dict[str, jax.Array]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(str(getattr(k, "key", k)) for k in kp): v for kp, v in flat}


def train(name, spec_like, params, data, opt, args):
    """Train params of `spec_like` (a TargetSpec or the Tied spec). Returns (state, curve, seconds, step fn)."""
    x_tr, y_tr, x_te, y_te = data

    def loss_fn(p, batch, rng):
        x, y = batch
        return optax.softmax_cross_entropy_with_integer_labels(spec_like.apply(p, x), y).mean()

    @jax.jit
    def accuracy(p):
        return jnp.mean(jnp.argmax(spec_like.apply(p, x_te), -1) == y_te)

    step = hj.training.make_step(loss_fn, opt)
    state = hj.training.init_state(params, opt, jax.random.key(args.seed))
    order = _data.batches(np.random.default_rng(args.seed), len(x_tr), args.batch_size)
    state, curve, seconds = _common.train_loop(step, state, order, (x_tr, y_tr), args.steps, args.eval_every, accuracy,
                                               name, disable=args.no_progress)
    return state, curve, seconds, step


def plot(curves, kernel, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(13, 3.8))
    ax_l, ax_a = fig.add_subplot(1, 3, 1), fig.add_subplot(1, 3, 2)
    for name, c in curves.items():
        ax_l.plot(c["step"][1:], c["train_loss"][1:], label=name)
        ax_a.plot(c["step"], c["test_accuracy"], label=name)
    ax_l.set(xlabel="step", ylabel="train cross-entropy", yscale="log", title="train loss")
    ax_a.set(xlabel="step", ylabel="test accuracy", ylim=(0.5, 1.0), title="test accuracy")
    k = np.asarray(kernel)                          # (3, 3, C_in, C_out): show in-channel-summed filters
    filters = k.sum(axis=2).transpose(2, 0, 1)      # (C_out, 3, 3)
    n = filters.shape[0]
    cols = int(np.ceil(np.sqrt(n)))
    grid = np.full((cols * 4 - 1, cols * 4 - 1), np.nan)
    for i, f in enumerate(filters):
        r, c = divmod(i, cols)
        grid[r * 4:r * 4 + 3, c * 4:c * 4 + 3] = f
    ax_k = fig.add_subplot(1, 3, 3)
    lim = float(np.nanmax(np.abs(grid)))
    ax_k.imshow(grid, cmap="coolwarm", vmin=-lim, vmax=lim)
    ax_k.set(title="shared kernel, summed over C_in", xticks=[], yticks=[])
    return _common.finish_figure(fig, (ax_l, ax_a), title, path)


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    t_start = time.perf_counter()
    x_tr, y_tr, x_te, y_te, dataset = _data.load_images(args.mnist, seed=args.seed)
    data = (jnp.asarray(x_tr), jnp.asarray(y_tr), jnp.asarray(x_te), jnp.asarray(y_te))
    config = {"features": args.features, "image_shape": list(x_tr.shape[1:]), "lr": args.lr, "seed": args.seed,
              "tied": [list(SHARED)]}
    spec, tied = build(config, x_tr.shape[1:])

    # (1) the trainable tree holds one kernel and one bias for the two layers
    full_init = jax.jit(spec.init)(jax.random.key(args.seed))
    free_init = tied.collapse(full_init)
    free_paths = {p: list(v.shape) for p, v in tied.leaves.items()}
    print("trainable leaves of the tied model:")
    for p, shape in free_paths.items():
        print(f"  {p:<20} {tuple(shape)}")
    print(f"  tied (rebuilt from conv_same, not stored): {', '.join(tied.tied_paths)}")
    n_tied, n_untied = hj.training.count_params(free_init), hj.training.count_params(full_init)
    kernels = [p for p in free_paths if p.endswith("kernel") and p.startswith("conv_")]

    # (2) train tied and untied on the same batches
    opt = optax.adam(args.lr)
    state, curve_tied, secs_tied, step = train("tied", tied, free_init, data, opt, args)
    _, curve_untied, secs_untied, _ = train("untied", spec, full_init, data, opt, args)

    # (3) save the tied training state and its config
    ckpt_dir = args.ckpt_dir or tempfile.mkdtemp(prefix="hj_shared_kernel_")
    if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
        raise SystemExit(f"--ckpt-dir {ckpt_dir} is not empty; give a new directory.")
    acc_tied = curve_tied["test_accuracy"][-1]
    logits_before = np.asarray(jax.jit(tied.apply)(state.params, data[2]))
    saved_step = int(state.step)
    with hj.checkpoint.manager(ckpt_dir, max_to_keep=2, best_metric="test_accuracy", best_mode="max") as mgr:
        hj.checkpoint.save(mgr, saved_step, state, config=config, metrics={"test_accuracy": acc_tied})
        mgr.wait()

    # (4) a new manager: rebuild from the stored config, restore against an abstract state
    with hj.checkpoint.manager(ckpt_dir, best_metric="test_accuracy", best_mode="max") as mgr:
        config2 = hj.checkpoint.load_config(mgr)
        spec2, tied2 = build(config2, tuple(config2["image_shape"]))
        abstract = jax.eval_shape(lambda: hj.training.init_state(tied2.init(jax.random.key(0)), opt,
                                                                 jax.random.key(0)))
        restored, _ = hj.checkpoint.restore(mgr, abstract, best=True)

    # (5) still one kernel, still shared
    restored_paths = {p: list(v.shape) for p, v in leaves(restored.params).items()}
    logits_after = np.asarray(jax.jit(tied2.apply)(restored.params, data[2]))
    same_state = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
                     zip(jax.tree.leaves(restored.params) + jax.tree.leaves(restored.opt_state),
                         jax.tree.leaves(state.params) + jax.tree.leaves(state.opt_state)))
    full_before = tied2.expand(restored.params)
    x_b, y_b = data[0][:args.batch_size], data[1][:args.batch_size]

    def full_loss(full):   # the untied view of the same function: one gradient per layer
        return optax.softmax_cross_entropy_with_integer_labels(spec2.apply(full, x_b), y_b).mean()
    g_full = jax.grad(full_loss)(full_before)
    g_free = jax.grad(lambda f: full_loss(tied2.expand(f)))(restored.params)
    g_sum = g_full[SHARED[0]]["kernel"] + g_full[SHARED[1]]["kernel"]
    step_after = hj.training.make_step(lambda p, b, r: optax.softmax_cross_entropy_with_integer_labels(
        tied2.apply(p, b[0]), b[1]).mean(), opt, donate=False)
    updated, _ = step_after(restored, (x_b, y_b))
    full_after = tied2.expand(updated.params)
    moves = {name: float(jnp.max(jnp.abs(full_after[name]["kernel"] - full_before[name]["kernel"])))
             for name in SHARED}
    bias_moves = {name: float(jnp.max(jnp.abs(full_after[name]["bias"] - full_before[name]["bias"])))
                  for name in SHARED}
    checks = {
        "restored_step": int(restored.step),
        "restored_trainable_paths": restored_paths,
        "restored_kernel_leaves_of_shared_layers": [p for p in restored_paths
                                                    if p.endswith("kernel") and p.startswith("conv_")],
        "restored_trainable_params": hj.training.count_params(restored.params),
        "restored_state_bitwise_equal": bool(same_state),
        "test_logits_max_abs_diff_before_vs_after": float(np.max(np.abs(logits_before - logits_after))),
        "test_logits_bitwise_equal": bool(np.array_equal(logits_before, logits_after)),
        "config_round_trip": config2 == config,
        "update_after_restore_max_kernel_change": moves,
        "update_after_restore_max_bias_change": bias_moves,
        "layers_equal_after_update": bool(np.array_equal(full_after[SHARED[0]]["kernel"],
                                                         full_after[SHARED[1]]["kernel"])),
        "grad_norm_from_conv_same": float(jnp.linalg.norm(g_full[SHARED[0]]["kernel"])),
        "grad_norm_from_conv_valid": float(jnp.linalg.norm(g_full[SHARED[1]]["kernel"])),
        "grad_norm_of_shared_kernel": float(jnp.linalg.norm(g_free[SHARED[0]]["kernel"])),
        "grad_shared_minus_sum_max_abs": float(jnp.max(jnp.abs(g_free[SHARED[0]]["kernel"] - g_sum))),
    }
    shared_ok = (checks["restored_kernel_leaves_of_shared_layers"] == [f"{SHARED[0]}/kernel"]
                 and checks["test_logits_bitwise_equal"] and checks["layers_equal_after_update"]
                 and min(moves.values()) > 0 and checks["restored_state_bitwise_equal"])

    wall = time.perf_counter() - t_start
    acc_untied = curve_untied["test_accuracy"][-1]
    metrics = {
        "dataset": dataset, "n_train": int(len(x_tr)), "n_test": int(len(x_te)),
        "trainable_paths_tied": free_paths, "tied_paths": list(tied.tied_paths),
        "shared_kernel_leaves_in_trainable_tree": kernels,
        "trainable_params": {"tied": n_tied, "untied": n_untied, "saved_by_tying": n_untied - n_tied},
        "test_accuracy": {"tied": acc_tied, "untied": acc_untied},
        "final_train_loss": {"tied": curve_tied["train_loss"][-1], "untied": curve_untied["train_loss"][-1]},
        "train_time_s": {"tied": secs_tied, "untied": secs_untied},
        "checkpoint": {"directory": ckpt_dir, "saved_step": saved_step, **checks},
        "shared_after_restore": bool(shared_ok),
        "wall_time_s": wall,
    }
    curves = {"tied (one kernel)": curve_tied, "untied (two kernels)": curve_untied}
    path = _common.write_json(args.out, NAME, {**vars(args), **config}, metrics, curves=curves)
    png = plot(curves, restored.params[SHARED[0]]["kernel"], _common.png_path(args.out),
               f"{dataset}: conv SAME + conv VALID sharing one kernel ({n_tied:,} params) vs untied "
               f"({n_untied:,})")

    print(f"\n{'model':<8} {'trainable params':>17} {'conv kernels stored':>20} {'test acc':>9} {'train s':>8}")
    print(f"{'tied':<8} {n_tied:>17,} {len(kernels):>20} {100 * acc_tied:>8.2f}% {secs_tied:>8.1f}")
    print(f"{'untied':<8} {n_untied:>17,} {2:>20} {100 * acc_untied:>8.2f}% {secs_untied:>8.1f}")
    print(f"after restore: trainable paths {list(restored_paths)}; logits max |diff| "
          f"{checks['test_logits_max_abs_diff_before_vs_after']:.1e}; one update moved conv_same by "
          f"{moves[SHARED[0]]:.2e} and conv_valid by {moves[SHARED[1]]:.2e} (equal after: "
          f"{checks['layers_equal_after_update']}); |grad| same {checks['grad_norm_from_conv_same']:.3f} + valid "
          f"{checks['grad_norm_from_conv_valid']:.3f} -> shared {checks['grad_norm_of_shared_kernel']:.3f} "
          f"(max |g - (g_same + g_valid)| {checks['grad_shared_minus_sum_max_abs']:.1e})")
    print(f"wrote {path} and {png}")
    print(f"shared_kernel_padding [{dataset}, seed {args.seed}]: tied {100 * acc_tied:.2f}% vs untied "
          f"{100 * acc_untied:.2f}% with {n_tied:,} vs {n_untied:,} params; one kernel after restore: "
          f"{'yes' if shared_ok else 'NO'}; {wall:.0f}s wall")
    return metrics


if __name__ == "__main__":
    main()
