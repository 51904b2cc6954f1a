"""Three 1-D polynomial regressions on disjoint input ranges learned in sequence (von Oswald et al. 2020, Fig. 2).

    python -m experiments.cl_polynomials

Tasks (increasing degree): y = x + 3 on [-4, -2], y = 2x^2 - 1 on [-1, 1], y = (x - 3)^3 on [2, 4], each from
--train-points noisy samples (Gaussian noise, std --noise). A dense hypernetwork maps a learned 2-d task
embedding to all weights of a 1 -> 10 -> 10 -> 1 MLP (the paper's sizes) and learns the tasks one after another:

* hypernet: with the output regulariser (beta = --beta), targets precomputed once per task;
* no_regularizer: the same hypernetwork with beta = 0 (its task embeddings alone cannot keep old tasks);
* finetune: the MLP itself trained on each task in turn;
* joint: the MLP trained on all three tasks at once (one function fits the three disjoint ranges).

Reported: each task's test MSE (noise-free targets on a grid of its range) after all tasks
(`metrics.<method>.per_task`, `final_mean_mse`), and the fits plotted. Writes results/cl_polynomials.json and .png.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hyperjax as hj
import hyperjax.continual as cl
from experiments import _common

NAME = "cl_polynomials"
TASKS = ((lambda x: x + 3.0, (-4.0, -2.0), "x + 3"), (lambda x: 2.0 * x ** 2 - 1.0, (-1.0, 1.0), "2x^2 - 1"),
         (lambda x: (x - 3.0) ** 3, (2.0, 4.0), "(x - 3)^3"))
METHODS = ("hypernet", "no_regularizer", "finetune", "joint")


def build_parser():
    p = _common.parser(NAME, __doc__.splitlines()[0], steps=4000, images=False)
    p.add_argument("--train-points", type=int, default=20, help="noisy training samples per task")
    p.add_argument("--test-points", type=int, default=100, help="grid points per task for the test MSE")
    p.add_argument("--noise", type=float, default=0.05, help="std of the Gaussian noise on the training targets")
    p.add_argument("--widths", type=int, nargs="+", default=[10, 10], help="hidden widths of the target MLP")
    p.add_argument("--hidden", type=int, nargs="+", default=[10, 10], help="hidden widths of the hypernetwork")
    p.add_argument("--cond-dim", type=int, default=2, help="size of the learned task embeddings")
    p.add_argument("--beta", type=float, default=0.5, help="output-regulariser strength")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (every method)")
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--joint-steps", type=int, default=None, help="joint training steps (default 3 x --steps)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    return p


def make_tasks(n_train: int, n_test: int, noise: float, seed: int) -> tuple[list[cl.Task], np.ndarray]:
    """-> (tasks: x f32[n, 1], y f32[n, 1]; the test grids stacked f32[3, n_test])."""
    rng = np.random.default_rng([seed, 3])
    tasks, grids = [], []
    for f, (lo, hi), _ in TASKS:
        x = rng.uniform(lo, hi, (n_train, 1)).astype(np.float32)
        y = (f(x) + noise * rng.standard_normal(x.shape)).astype(np.float32)
        g = np.linspace(lo, hi, n_test, dtype=np.float32)[:, None]
        tasks.append(cl.Task(x, y, g, f(g).astype(np.float32)))
        grids.append(g[:, 0])
    return tasks, np.stack(grids)


def mse(outputs, y):
    return jnp.mean(cl.squared_error(outputs, y))


def build(args, n_tasks: int) -> tuple[dict[str, cl.Method], dict[str, int]]:
    spec = hj.targets.from_linen(hj.testing.MLP(features=(*args.widths, 1)), jnp.zeros((1, 1), jnp.float32))
    hnet = hj.generators.dense(spec, cond_dim=args.cond_dim, num_conds=n_tasks, hidden=tuple(args.hidden))
    net = cl.finetune_method(spec.init, lambda p, x, t: spec.apply(p, x), mse)
    methods = {"hypernet": cl.hypernet_method(hnet, spec.apply, mse, max_tasks=n_tasks, beta=args.beta),
               "no_regularizer": cl.hypernet_method(hnet, spec.apply, mse, max_tasks=n_tasks, beta=0.0),
               "finetune": net, "joint": net}
    n_params = {k: hj.training.count_params(jax.eval_shape(m.init, jax.random.key(0))) for k, m in methods.items()}
    n_params["target_mlp"] = spec.size
    return methods, n_params


def plot(tasks, fits: dict, path: str, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(fits)
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.4), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, name in zip(axes, names):
        for i, task in enumerate(tasks):
            ax.plot(task.x_test[:, 0], task.y_test[:, 0], "k-", lw=1, label="truth" if i == 0 else None)
            ax.plot(task.x_train[:, 0], task.y_train[:, 0], "k.", ms=3, label="train" if i == 0 else None)
            ax.plot(task.x_test[:, 0], fits[name][i], "-", lw=2, color=f"C{i}", label=f"task {i + 1}")
        ax.set(title=name, xlabel="x")
    axes[0].set(ylabel="y (after all tasks)")
    return _common.finish_figure(fig, axes, title, path)


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    t_start = time.perf_counter()
    tasks, _ = make_tasks(args.train_points, args.test_points, args.noise, args.seed)
    methods, n_params = build(args, len(tasks))
    joint_steps = args.joint_steps or args.steps * len(tasks)
    total = sum(joint_steps if m == "joint" else args.steps * len(tasks) for m in args.methods)
    bar = _common.progress(None, total, NAME, disable=args.no_progress)
    metrics, fits = {}, {}
    for name in args.methods:
        bar.set_postfix_str(name)
        t0 = time.perf_counter()
        common = dict(batch_size=args.batch_size, key=jax.random.key(args.seed), metric=cl.squared_error,
                      steps_per_call=args.steps_per_call, on_steps=bar.update)
        opt = optax.adam(args.lr)
        if name == "joint":
            r = cl.train_joint(methods[name], tasks, opt, steps=joint_steps, **common)
        else:
            r = cl.train_sequence(methods[name], tasks, opt, steps=args.steps, **common)
        apply = jax.jit(methods[name].apply)
        fits[name] = [np.asarray(apply(r.params, jnp.asarray(t.x_test), jnp.int32(i)))[:, 0].tolist()
                      for i, t in enumerate(tasks)]
        metrics[name] = {"per_task": r.final, "final_mean_mse": float(np.mean(r.final)), "mse_matrix": r.scores,
                         "trainable_params": n_params[name], "wall_time_s": time.perf_counter() - t0}
    bar.close()
    metrics.update({"tasks": [{"f": label, "range": list(rg)} for _, rg, label in TASKS],
                    "target_params": n_params["target_mlp"], "wall_time_s": time.perf_counter() - t_start})
    if "hypernet" in metrics and "no_regularizer" in metrics:
        metrics["regularizer_lowers_mse_of_earlier_tasks"] = bool(
            np.mean(metrics["hypernet"]["per_task"][:-1]) < np.mean(metrics["no_regularizer"]["per_task"][:-1]))
    path = _common.write_json(args.out, NAME, vars(args), metrics,
                              fits={"x": [t.x_test[:, 0].tolist() for t in tasks], **fits})
    png = plot(tasks, fits, _common.png_path(args.out), "three polynomials learned in sequence: fits after task 3")
    print(f"\n{'method':<15} {'params':>7} {'mean MSE':>10}  per task (after task 3)")
    for name in args.methods:
        m = metrics[name]
        print(f"{name:<15} {m['trainable_params']:>7,} {m['final_mean_mse']:>10.4f}  "
              + " ".join(f"{v:.4f}" for v in m["per_task"]))
    print(f"wrote {path} and {png}")
    print(f"{NAME} [seed {args.seed}]: mean test MSE after all tasks "
          + ", ".join(f"{k} {metrics[k]['final_mean_mse']:.4f}" for k in args.methods)
          + f"; {metrics['wall_time_s']:.0f}s wall")
    return metrics


if __name__ == "__main__":
    main()
