"""Quickstart: a chunked hypernetwork generates every weight of a Flax MLP and matches direct training.

    python -m experiments.quickstart                     # scikit-learn digits (8x8 -> 64 inputs)
    python -m experiments.quickstart --mnist mnist.npz   # real MNIST from a local file (784 inputs)
    python -m experiments.quickstart --devices 8         # data-parallel over 8 devices (simulated on CPU)

Target: a linen MLP in -> 256 -> 256 -> 10 (85,002 params on digits). Two runs on the same batches:

* hypernet: `hj.generators.chunked` (one shared MLP [task_emb, chunk_emb_i] -> chunk i, vmapped over
  learned chunk embeddings) emits ALL of the MLP's kernels and biases; its weights and embeddings are the
  only trainable parameters, trained jointly with Optax through `hj.training.make_step`.
* direct: the same MLP's own parameters trained with the same loss, batches and schedule.

Writes results/quickstart.json (accuracies, trainable parameter counts, compression ratio = direct /
hypernet trainable params, wall time, learning curves, and `params_sha256`, a hash of the raw bytes of the
final params: two runs with the same seed on CPU write the same hashes and metrics) and results/quickstart.png
(both curves).

--devices N (N > 1) runs the same job data-parallel over an N x 1 ("data" x "model") mesh: state replicated,
every batch split over "data". When JAX has fewer than N devices, N CPU devices are simulated: set before
JAX's backend starts (`jax_num_cpu_devices`), or, when it has already started (main() called in a process
that used JAX), the script re-runs itself in a fresh process with
XLA_FLAGS=--xla_force_host_platform_device_count=N and returns that run's metrics. The JSON records
`devices` and `mesh` ("8x1"; null for one device, the unsharded default run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hyperjax as hj
import hyperjax.sharding as hjs
from experiments import _common, _data

NAME = "quickstart"


def build_parser():
    p = _common.parser(NAME, __doc__.splitlines()[0], steps=3000)
    p.add_argument("--widths", type=int, nargs="+", default=[256, 256], help="hidden widths of the target MLP")
    p.add_argument("--chunk-size", type=int, default=512, help="scalars emitted per chunk")
    p.add_argument("--chunk-emb-dim", type=int, default=16, help="size of each learned chunk embedding")
    p.add_argument("--hidden", type=int, nargs="+", default=[64], help="hidden widths of the hypernetwork MLP")
    p.add_argument("--cond-dim", type=int, default=8, help="size of the learned task embedding (one task)")
    p.add_argument("--init", default="hyperfan_in", choices=["hyperfan_in", "hyperfan_out"])
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the hypernetwork")
    p.add_argument("--direct-lr", type=float, default=3e-3, help="peak learning rate of the direct MLP")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW decoupled weight decay")
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps before cosine decay")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--eval-every", type=int, default=50, help="steps between test-accuracy evaluations")
    p.add_argument("--devices", type=int, default=1,
                   help="data-parallel over N devices (N CPU devices simulated when JAX has fewer)")
    return p


def load(mnist: str | None, seed: int):
    """-> standardised x_tr f32[n, d], y_tr i32[n], x_te f32[m, d], y_te i32[m], dataset name."""
    x_tr, y_tr, x_te, y_te, name = _data.load_images(mnist, seed=seed)
    x_tr, x_te = x_tr.reshape(len(x_tr), -1), x_te.reshape(len(x_te), -1)
    mean, std = x_tr.mean(0), np.maximum(x_tr.std(0), 0.1)   # floor: constant border pixels stay finite
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    return x_tr.astype(np.float32), y_tr, x_te.astype(np.float32), y_te, name


def build(args, n_in: int):
    """-> (spec of the MLP n_in -> *widths -> 10, chunked hypernet, its initial hparams, direct MLP params)."""
    spec = hj.targets.from_linen(hj.testing.MLP(features=(*args.widths, 10)), jnp.zeros((1, n_in), jnp.float32))
    hnet = hj.generators.chunked(spec, cond_dim=args.cond_dim, chunk_size=args.chunk_size,
                                 chunk_emb_dim=args.chunk_emb_dim, hidden=tuple(args.hidden), num_conds=1,
                                 init=args.init)
    k_hnet, k_direct = jax.random.split(jax.random.key(args.seed))
    # jitted inits: one compile each instead of one per eager op
    return spec, hnet, jax.jit(hnet.init)(k_hnet), jax.jit(spec.init)(k_direct)


def optimizer(lr: float, steps: int, warmup: int, weight_decay: float) -> optax.GradientTransformation:
    warmup = max(0, min(warmup, steps - 1))
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1), end_value=lr * 1e-2)
    return optax.adamw(schedule, weight_decay=weight_decay)


def ensure_devices(n: int, argv) -> dict | None:
    """None when this process has >= n devices (simulating n CPU devices if JAX has not started yet);
    otherwise re-run the script with n simulated CPU devices and return its metrics."""
    try:
        jax.config.update("jax_num_cpu_devices", n)     # only before the backend starts
    except RuntimeError:
        pass
    if jax.device_count() >= n:
        return None
    flag = f"--xla_force_host_platform_device_count={n}"
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip(), JAX_PLATFORMS="cpu")
    argv = list(sys.argv[1:] if argv is None else argv)
    proc = subprocess.run([sys.executable, "-m", "experiments.quickstart", *argv], env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if proc.returncode:
        raise SystemExit(f"quickstart --devices {n}: the re-run with {n} simulated CPU devices failed "
                         f"(exit {proc.returncode})")
    args = build_parser().parse_args(argv)
    with open(args.out) as f:
        return json.load(f)["metrics"]


def train(name, params, to_target, spec, data, opt, args, seed, mesh=None):
    """Train `params` (target params = to_target(params)) on the batches drawn with `seed`.

    Returns (final params, curve {"step", "train_loss", "test_accuracy"}, seconds).
    """
    x_tr, y_tr, x_te, y_te = data
    x_te, y_te = jnp.asarray(x_te), jnp.asarray(y_te)

    def loss_fn(p, batch, rng):
        x, y = batch
        logits = spec.apply(to_target(p), x)
        labels = optax.smooth_labels(jax.nn.one_hot(y, logits.shape[-1]), args.label_smoothing)
        return optax.softmax_cross_entropy(logits, labels).mean()

    @jax.jit
    def accuracy(p):
        return jnp.mean(jnp.argmax(spec.apply(to_target(p), x_te), -1) == y_te)

    step, multi = _common.make_steps(loss_fn, opt, args.steps_per_call)
    state = jax.jit(lambda p, k: hj.training.init_state(p, opt, k))(params, jax.random.key(seed))  # one compile
    if mesh is not None:                     # data-parallel: replicated state, batches split over "data"
        state = hjs.place(state, mesh)
        one, many = hjs.batch_sharding(mesh), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data"))
        step = (lambda f: lambda st, b: f(st, jax.device_put(b, one)))(step)
        if multi is not None:
            multi = (multi[0], (lambda f: lambda st, b: f(st, jax.device_put(b, many)))(multi[1]))
    order = _data.batches(np.random.default_rng(seed), len(x_tr), args.batch_size)
    state, curve, seconds = _common.train_loop(step, state, order, (x_tr, y_tr), args.steps, args.eval_every, accuracy,
                                               name, disable=args.no_progress, multi=multi)
    return state.params, curve, seconds


def plot(curves: dict, path: str, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, c in curves.items():
        ax_l.plot(c["step"][1:], c["train_loss"][1:], label=name)
        ax_a.plot(c["step"], c["test_accuracy"], label=name)
    ax_l.set(xlabel="step", ylabel="train loss (label-smoothed CE)", yscale="log", title="train loss")
    ax_a.set(xlabel="step", ylabel="test accuracy", ylim=(0.8, 1.0), title="test accuracy")
    return _common.finish_figure(fig, (ax_l, ax_a), title, path)


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.devices < 1:
        raise SystemExit(f"quickstart: --devices must be >= 1, got {args.devices}")
    if args.devices > 1 and args.batch_size % args.devices:
        raise SystemExit(f"quickstart: --batch-size {args.batch_size} does not split over --devices {args.devices}")
    if args.devices > 1:
        forwarded = ensure_devices(args.devices, argv)
        if forwarded is not None:
            return forwarded
    mesh = hjs.make_mesh(args.devices, 1) if args.devices > 1 else None
    t_start = time.perf_counter()
    x_tr, y_tr, x_te, y_te, dataset = load(args.mnist, args.seed)
    data = (x_tr, y_tr, x_te, y_te)

    spec, hnet, hparams, direct = build(args, x_tr.shape[1])
    task = jnp.zeros((), jnp.int32)                       # the one task id -> learned task embedding
    n_hyper, n_direct = hj.training.count_params(hparams), hj.training.count_params(direct)

    runs = {}
    for name, params, to_target, lr in [
        ("hypernet", hparams, lambda hp: hnet.apply(hp, task), args.lr),
        ("direct", direct, lambda p: p, args.direct_lr),
    ]:
        opt = optimizer(lr, args.steps, args.warmup, args.weight_decay)
        final, curve, seconds = train(name, params, to_target, spec, data, opt, args, args.seed, mesh)
        runs[name] = {"curve": curve, "train_time_s": seconds, "params_sha256": _common.params_sha256(final),
                      "generated_params_sha256": _common.params_sha256(to_target(final))}

    acc_h, acc_d = runs["hypernet"]["curve"]["test_accuracy"][-1], runs["direct"]["curve"]["test_accuracy"][-1]
    gap = 100.0 * (acc_d - acc_h)
    ratio = n_direct / n_hyper
    wall = time.perf_counter() - t_start
    metrics = {
        "dataset": dataset, "n_train": int(len(x_tr)), "n_test": int(len(x_te)),
        "target_params": spec.size,
        "hypernet": {"test_accuracy": acc_h, "trainable_params": n_hyper,
                     "final_train_loss": runs["hypernet"]["curve"]["train_loss"][-1],
                     "train_time_s": runs["hypernet"]["train_time_s"],
                     "n_chunks": -(-spec.size // args.chunk_size),
                     "params_sha256": runs["hypernet"]["params_sha256"],            # generator weights, embeddings
                     "generated_params_sha256": runs["hypernet"]["generated_params_sha256"]},   # the MLP it emits
        "direct": {"test_accuracy": acc_d, "trainable_params": n_direct,
                   "final_train_loss": runs["direct"]["curve"]["train_loss"][-1],
                   "train_time_s": runs["direct"]["train_time_s"],
                   "params_sha256": runs["direct"]["params_sha256"]},
        "compression_ratio": ratio,
        "accuracy_gap_points": gap,
        "target_met": bool(gap <= 2.0 and 2 * n_hyper <= n_direct),
        "wall_time_s": wall,
        "devices": args.devices, "mesh": None if mesh is None else hjs.mesh_name(mesh),
    }
    curves = {k: v["curve"] for k, v in runs.items()}
    config = {**vars(args), "target": f"MLP {x_tr.shape[1]}->" + "->".join(map(str, (*args.widths, 10)))}
    path = _common.write_json(args.out, NAME, config, metrics, curves=curves)
    png = plot(curves, _common.png_path(args.out),
               f"{dataset}: chunked hypernet ({n_hyper:,} params) vs direct MLP ({n_direct:,} params)")

    print(f"\n{'model':<10} {'trainable params':>17} {'test acc':>9} {'train s':>8}")
    for name, n, acc in [("hypernet", n_hyper, acc_h), ("direct", n_direct, acc_d)]:
        print(f"{name:<10} {n:>17,} {100 * acc:>8.2f}% {runs[name]['train_time_s']:>8.1f}")
    print(f"final params sha256: hypernet {runs['hypernet']['params_sha256'][:16]}, "
          f"direct {runs['direct']['params_sha256'][:16]}")
    print(f"wrote {path} and {png}")
    print(f"quickstart [{dataset}, seed {args.seed}]: hypernet {100 * acc_h:.2f}% vs direct {100 * acc_d:.2f}% "
          f"(gap {gap:+.2f} pts) with {n_hyper:,} vs {n_direct:,} trainable params ({ratio:.2f}x compression), "
          f"{wall:.0f}s wall, target {'met' if metrics['target_met'] else 'MISSED'}")
    return metrics


if __name__ == "__main__":
    main()
