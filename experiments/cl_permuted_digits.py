"""Permuted digits: 10 tasks, each the digits under a fixed random permutation of the 64 pixels, in sequence
(von Oswald et al. 2020, PermutedMNIST-10 at digits scale).

    python -m experiments.cl_permuted_digits                     # scikit-learn digits (8x8 -> 64 inputs)
    python -m experiments.cl_permuted_digits --mnist mnist.npz   # PermutedMNIST-10 from a local MNIST file

Task 1 is the unpermuted data; tasks 2..10 permute the pixels with permutations drawn from --seed. The four
methods of `experiments.cl_split_digits` (hypernet with the output regulariser, fine-tuning, online EWC, joint
training; the baselines have a shared trunk and one 10-way head per task) on the same sequence, batches and
optimizer. Reported: the mean test accuracy over the 10 tasks after the last one with the task id given (CL1,
`metrics.<method>.final_mean_accuracy`), the accuracy of task 1 after each later task (plotted), and CL3 by
entropy task inference (`metrics.<method>.cl3_mean_accuracy`). Writes results/cl_permuted_digits.json and .png.
"""

from __future__ import annotations

import time

import numpy as np

import hyperjax.continual as cl
from experiments import _common, _continual

NAME = "cl_permuted_digits"


def build_parser():
    p = _common.parser(NAME, __doc__.splitlines()[0], steps=1000)
    p.add_argument("--tasks", type=int, default=10, help="number of tasks (task 1 unpermuted)")
    _continual.add_arguments(p, lr=1e-3, beta=0.01, ewc_lambda=10.0, batch_size=64)
    return p


def permuted_tasks(x_tr, y_tr, x_te, y_te, n_tasks: int, seed: int) -> tuple[list[cl.Task], np.ndarray]:
    """-> (tasks, permutations i64[n_tasks, d]); permutation 0 is the identity."""
    d = x_tr.shape[1]
    rng = np.random.default_rng([seed, 2020])
    perms = np.stack([np.arange(d)] + [rng.permutation(d) for _ in range(n_tasks - 1)])
    return [cl.Task(x_tr[:, p], y_tr, x_te[:, p], y_te) for p in perms], perms


def plot(metrics: dict, path: str, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m for m in _continual.METHODS if m in metrics]
    fig, (ax_1, ax_t) = plt.subplots(1, 2, figsize=(11, 3.8))
    for name in names:
        first = metrics[name]["task1_accuracy_after_each_task"]
        if len(first) > 1:
            ax_1.plot(range(1, len(first) + 1), first, "o-", label=name)
        else:
            ax_1.axhline(first[0], ls="--", color="k", lw=1, label=f"{name} (all tasks at once)")
        ax_t.plot(range(1, len(metrics[name]["per_task"]) + 1), metrics[name]["per_task"], "o-", label=name)
    ax_1.set(xlabel="tasks learned", ylabel="task 1 test accuracy", title="task 1 during the sequence")
    ax_t.set(xlabel="task", ylabel="test accuracy after the last task (CL1)", title="per task")
    return _common.finish_figure(fig, (ax_1, ax_t), title, path)


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.tasks < 2:
        raise SystemExit(f"{NAME}: --tasks must be >= 2, got {args.tasks}")
    t_start = time.perf_counter()
    x_tr, y_tr, x_te, y_te, dataset = _continual.load_flat(args.mnist, args.seed, args.validation)
    tasks, perms = permuted_tasks(x_tr, y_tr, x_te, y_te, args.tasks, args.seed)
    methods, n_params = _continual.build_methods(args, x_tr.shape[1], 10, len(tasks))
    results, wall = _continual.run_methods(args, tasks, methods, NAME)
    cl3 = {name: _continual.cl3_accuracy(methods[name], r.params, tasks, len(tasks), lambda t, c: c,
                                         [t.y_test for t in tasks]) for name, r in results.items()}
    metrics = _continual.summarise(results, wall, n_params, cl3)
    for name, r in results.items():
        metrics[name]["task1_accuracy_after_each_task"] = [row[0] for row in r.scores]
    metrics.update({"dataset": dataset, "n_tasks": len(tasks), "n_train_per_task": int(len(x_tr)),
                    "n_test_per_task": int(len(x_te)), "permutations_sha": _common.params_sha256({"p": perms}),
                    "target_params": n_params["target_mlp"], "wall_time_s": time.perf_counter() - t_start})
    metrics["targets"] = _continual.targets_block(metrics)
    path = _common.write_json(args.out, NAME, vars(args), metrics)
    png = plot(metrics, _common.png_path(args.out), f"permuted {dataset}: {len(tasks)} tasks in sequence")
    _continual.print_table(metrics, len(tasks))
    print(f"wrote {path} and {png}")
    summary = ", ".join(f"{k} {100 * metrics[k]['final_mean_accuracy']:.2f}%" for k in _continual.METHODS
                        if k in metrics)
    print(f"{NAME} [{dataset}, seed {args.seed}]: CL1 mean accuracy {summary}; {metrics['wall_time_s']:.0f}s wall")
    return metrics


if __name__ == "__main__":
    main()
