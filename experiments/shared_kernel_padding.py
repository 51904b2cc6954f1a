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


def train(name, spec_like, params, data, opt, args):
    """Train params of `spec_like` (a TargetSpec or the Tied spec). Returns (state, curve, seconds, step fn)."""
    x_tr, y_tr, x_te, y_te = data

    def loss_fn(p, batch, rng):
        x, y = batch
        return optax.softmax_cross_entropy_with_integer_labels(spec_like.apply(p, x), y).mean()

    @jax.jit
    def accuracy(p):
        return jnp.mean(jnp.argmax(spec_like.apply(p, x_te), -1) == y_te)

    step, multi = _common.make_steps(loss_fn, opt, args.steps_per_call)
    state = hj.training.init_state(params, opt, jax.random.key(args.seed))
    order = _data.batches(np.random.default_rng(args.seed), len(x_tr), args.batch_size)
    state, curve, seconds = _common.train_loop(step, state, order, (x_tr, y_tr), args.steps, args.eval_every, accuracy,
                                               name, disable=args.no_progress, multi=multi)
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


def trainable_summary(spec, tied, seed: int) -> dict:
    """(1) Initial params and what the tied model stores: one kernel and one bias for the two layers."""
    full_init = jax.jit(spec.init)(jax.random.key(seed))
    free_init = tied.collapse(full_init)
    free_paths = {p: list(v.shape) for p, v in tied.leaves.items()}
    print("trainable leaves of the tied model:")
    for p, shape in free_paths.items():
        print(f"  {p:<20} {tuple(shape)}")
    print(f"  tied (rebuilt from conv_same, not stored): {', '.join(tied.tied_paths)}")
    return {"full_init": full_init, "free_init": free_init, "free_paths": free_paths,
            "n_tied": hj.training.count_params(free_init), "n_untied": hj.training.count_params(full_init),
            "kernels": [p for p in free_paths if p.endswith("kernel") and p.startswith("conv_")]}


def save_tied(ckpt_dir: str, state, config: dict, acc_tied: float) -> int:
    """(3) Save the tied training state, its JSON config and its test accuracy; returns the saved step."""
    saved_step = int(state.step)
    with hj.checkpoint.manager(ckpt_dir, max_to_keep=2, best_metric="test_accuracy", best_mode="max") as mgr:
        hj.checkpoint.save(mgr, saved_step, state, config=config, metrics={"test_accuracy": acc_tied})
        mgr.wait()
    return saved_step


def restore_tied(ckpt_dir: str, opt):
    """(4) A new manager: rebuild the model from the stored config, restore against an abstract state.

    Returns (config, spec, tied, restored state).
    """
    with hj.checkpoint.manager(ckpt_dir, best_metric="test_accuracy", best_mode="max") as mgr:
        config = hj.checkpoint.load_config(mgr)
        spec, tied = build(config, tuple(config["image_shape"]))
        abstract = jax.eval_shape(lambda: hj.training.init_state(tied.init(jax.random.key(0)), opt,
                                                                 jax.random.key(0)))
        restored, _ = hj.checkpoint.restore(mgr, abstract, best=True)
    return config, spec, tied, restored


def update_after_restore(spec, tied, restored, batch, opt) -> dict:
    """One gradient of the untied view and of the shared leaf, and one update of the restored state.

    Returns the per-layer gradients ("g_full"), the shared gradient ("g_free") and the largest kernel and bias
    change of each layer ("moves", "bias_moves"), and the full trees before and after the update.
    """
    x_b, y_b = batch
    full_before = tied.expand(restored.params)

    def full_loss(full):   # the untied view of the same function: one gradient per layer
        return optax.softmax_cross_entropy_with_integer_labels(spec.apply(full, x_b), y_b).mean()
    g_full = jax.grad(full_loss)(full_before)
    g_free = jax.grad(lambda f: full_loss(tied.expand(f)))(restored.params)
    step_after = hj.training.make_step(lambda p, b, r: optax.softmax_cross_entropy_with_integer_labels(
        tied.apply(p, b[0]), b[1]).mean(), opt, donate=False)
    updated, _ = step_after(restored, (x_b, y_b))
    full_after = tied.expand(updated.params)
    moves = {name: float(jnp.max(jnp.abs(full_after[name]["kernel"] - full_before[name]["kernel"])))
             for name in SHARED}
    bias_moves = {name: float(jnp.max(jnp.abs(full_after[name]["bias"] - full_before[name]["bias"])))
                  for name in SHARED}
    return {"g_full": g_full, "g_free": g_free, "moves": moves, "bias_moves": bias_moves,
            "full_before": full_before, "full_after": full_after}


def restore_checks(state, restored, config, config2, spec2, tied2, logits_before, batch, opt) -> dict:
    """(5) Still one kernel, still shared: the restored tree, logits, state, and one update after restore."""
    restored_paths = {p: list(v.shape) for p, v in hj.testing.leaf_dict(restored.params).items()}
    logits_after = np.asarray(jax.jit(tied2.apply)(restored.params, batch["x_test"]))
    same_state = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
                     zip(jax.tree.leaves(restored.params) + jax.tree.leaves(restored.opt_state),
                         jax.tree.leaves(state.params) + jax.tree.leaves(state.opt_state)))
    u = update_after_restore(spec2, tied2, restored, batch["train"], opt)
    g_full, g_free, full_after = u["g_full"], u["g_free"], u["full_after"]
    g_sum = g_full[SHARED[0]]["kernel"] + g_full[SHARED[1]]["kernel"]
    return {
        "restored_step": int(restored.step),
        "restored_trainable_paths": restored_paths,
        "restored_kernel_leaves_of_shared_layers": [p for p in restored_paths
                                                    if p.endswith("kernel") and p.startswith("conv_")],
        "restored_trainable_params": hj.training.count_params(restored.params),
        "restored_state_bitwise_equal": bool(same_state),
        "test_logits_max_abs_diff_before_vs_after": float(np.max(np.abs(logits_before - logits_after))),
        "test_logits_bitwise_equal": bool(np.array_equal(logits_before, logits_after)),
        "config_round_trip": config2 == config,
        "update_after_restore_max_kernel_change": u["moves"],
        "update_after_restore_max_bias_change": u["bias_moves"],
        "layers_equal_after_update": bool(np.array_equal(full_after[SHARED[0]]["kernel"],
                                                         full_after[SHARED[1]]["kernel"])),
        "grad_norm_from_conv_same": float(jnp.linalg.norm(g_full[SHARED[0]]["kernel"])),
        "grad_norm_from_conv_valid": float(jnp.linalg.norm(g_full[SHARED[1]]["kernel"])),
        "grad_norm_of_shared_kernel": float(jnp.linalg.norm(g_free[SHARED[0]]["kernel"])),
        "grad_shared_minus_sum_max_abs": float(jnp.max(jnp.abs(g_free[SHARED[0]]["kernel"] - g_sum))),
    }


def is_shared_after_restore(checks: dict) -> bool:
    return (checks["restored_kernel_leaves_of_shared_layers"] == [f"{SHARED[0]}/kernel"]
            and checks["test_logits_bitwise_equal"] and checks["layers_equal_after_update"]
            and min(checks["update_after_restore_max_kernel_change"].values()) > 0
            and checks["restored_state_bitwise_equal"])


def print_report(m: dict, seed: int, outputs: tuple[str, str]) -> None:
    """The table of both models, the restore checks and the one summary line."""
    ck, n, acc, secs = m["checkpoint"], m["trainable_params"], m["test_accuracy"], m["train_time_s"]
    moves, dataset = ck["update_after_restore_max_kernel_change"], m["dataset"]
    print(f"\n{'model':<8} {'trainable params':>17} {'conv kernels stored':>20} {'test acc':>9} {'train s':>8}")
    print(f"{'tied':<8} {n['tied']:>17,} {len(m['shared_kernel_leaves_in_trainable_tree']):>20} "
          f"{100 * acc['tied']:>8.2f}% {secs['tied']:>8.1f}")
    print(f"{'untied':<8} {n['untied']:>17,} {2:>20} {100 * acc['untied']:>8.2f}% {secs['untied']:>8.1f}")
    print(f"after restore: trainable paths {list(ck['restored_trainable_paths'])}; logits max |diff| "
          f"{ck['test_logits_max_abs_diff_before_vs_after']:.1e}; one update moved conv_same by "
          f"{moves[SHARED[0]]:.2e} and conv_valid by {moves[SHARED[1]]:.2e} (equal after: "
          f"{ck['layers_equal_after_update']}); |grad| same {ck['grad_norm_from_conv_same']:.3f} + valid "
          f"{ck['grad_norm_from_conv_valid']:.3f} -> shared {ck['grad_norm_of_shared_kernel']:.3f} "
          f"(max |g - (g_same + g_valid)| {ck['grad_shared_minus_sum_max_abs']:.1e})")
    print(f"wrote {outputs[0]} and {outputs[1]}")
    print(f"shared_kernel_padding [{dataset}, seed {seed}]: tied {100 * acc['tied']:.2f}% vs untied "
          f"{100 * acc['untied']:.2f}% with {n['tied']:,} vs {n['untied']:,} params; one kernel after restore: "
          f"{'yes' if m['shared_after_restore'] else 'NO'}; {m['wall_time_s']:.0f}s wall")


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    t_start = time.perf_counter()
    x_tr, y_tr, x_te, y_te, dataset = _data.load_images(args.mnist, seed=args.seed)
    data = (jnp.asarray(x_tr), jnp.asarray(y_tr), jnp.asarray(x_te), jnp.asarray(y_te))
    config = {"features": args.features, "image_shape": list(x_tr.shape[1:]), "lr": args.lr, "seed": args.seed,
              "tied": [list(SHARED)]}
    spec, tied = build(config, x_tr.shape[1:])
    t = trainable_summary(spec, tied, args.seed)                                         # (1)

    opt = optax.adam(args.lr)                                                            # (2) same batches
    state, curve_tied, secs_tied, _ = train("tied", tied, t["free_init"], data, opt, args)
    _, curve_untied, secs_untied, _ = train("untied", spec, t["full_init"], data, opt, args)

    ckpt_dir = args.ckpt_dir or tempfile.mkdtemp(prefix="hj_shared_kernel_")            # (3)
    if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
        raise SystemExit(f"--ckpt-dir {ckpt_dir} is not empty; give a new directory.")
    acc_tied, acc_untied = curve_tied["test_accuracy"][-1], curve_untied["test_accuracy"][-1]
    logits_before = np.asarray(jax.jit(tied.apply)(state.params, data[2]))
    saved_step = save_tied(ckpt_dir, state, config, acc_tied)
    config2, spec2, tied2, restored = restore_tied(ckpt_dir, opt)                        # (4)
    batch = {"x_test": data[2], "train": (data[0][:args.batch_size], data[1][:args.batch_size])}
    checks = restore_checks(state, restored, config, config2, spec2, tied2, logits_before, batch, opt)   # (5)

    metrics = {
        "dataset": dataset, "n_train": int(len(x_tr)), "n_test": int(len(x_te)),
        "trainable_paths_tied": t["free_paths"], "tied_paths": list(tied.tied_paths),
        "shared_kernel_leaves_in_trainable_tree": t["kernels"],
        "trainable_params": {"tied": t["n_tied"], "untied": t["n_untied"],
                             "saved_by_tying": t["n_untied"] - t["n_tied"]},
        "test_accuracy": {"tied": acc_tied, "untied": acc_untied},
        "final_train_loss": {"tied": curve_tied["train_loss"][-1], "untied": curve_untied["train_loss"][-1]},
        "train_time_s": {"tied": secs_tied, "untied": secs_untied},
        "checkpoint": {"directory": ckpt_dir, "saved_step": saved_step, **checks},
        "shared_after_restore": is_shared_after_restore(checks),
        "wall_time_s": time.perf_counter() - t_start,
    }
    curves = {"tied (one kernel)": curve_tied, "untied (two kernels)": curve_untied}
    path = _common.write_json(args.out, NAME, {**vars(args), **config}, metrics, curves=curves)
    png = plot(curves, restored.params[SHARED[0]]["kernel"], _common.png_path(args.out),
               f"{dataset}: conv SAME + conv VALID sharing one kernel ({t['n_tied']:,} params) vs untied "
               f"({t['n_untied']:,})")
    print_report(metrics, args.seed, (path, png))
    return metrics


if __name__ == "__main__":
    main()
