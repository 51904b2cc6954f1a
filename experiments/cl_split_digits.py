"""Split digits: 5 two-class tasks (0/1, 2/3, 4/5, 6/7, 8/9) learned in sequence (von Oswald et al. 2020, Split-MNIST).

    python -m experiments.cl_split_digits                     # scikit-learn digits (8x8 -> 64 inputs)
    python -m experiments.cl_split_digits --mnist mnist.npz   # Split-MNIST from a local file

Four methods on the same task sequence, batches and optimizer (Adam, a fresh state per task), all through
`hj.continual`:

* hypernet: a chunked hypernetwork generates every weight of a 2-way MLP from a learned task embedding; the
  output regulariser (beta / (T-1) sum_{t<T} ||f(e_t, Theta*) - f(e_t, Theta)||^2, targets precomputed once per
  task) keeps the earlier tasks' weights.
* finetune: one MLP trunk shared by all tasks with a 2-way head per task, trained on each task in turn.
* ewc: the same network with online EWC (diagonal Fisher, exact expectation over the classes).
* joint: the same network trained on all tasks at once (every step a batch from every task): the upper bound.

Reported after the last task: the mean test accuracy over the 5 tasks with the task id given (CL1,
`metrics.<method>.final_mean_accuracy`), the accuracy matrix after every task, and CL3 (task id not given:
`hj.continual.infer_task` picks the task of lowest predictive entropy, then its head's class, out of all 10
digits; `metrics.<method>.cl3_mean_accuracy`). Writes results/cl_split_digits.json and .png.
"""

from __future__ import annotations

import time

import numpy as np

import hyperjax.continual as cl
from experiments import _common, _continual

NAME = "cl_split_digits"
PAIRS = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))


def build_parser():
    p = _common.parser(NAME, __doc__.splitlines()[0], steps=600)
    _continual.add_arguments(p, lr=1e-3, beta=0.01, ewc_lambda=10.0, batch_size=32)
    return p


def split_tasks(x_tr, y_tr, x_te, y_te, pairs=PAIRS) -> tuple[list[cl.Task], list[np.ndarray]]:
    """-> (tasks with labels 0/1 within each pair, the test labels of each task as digits)."""
    tasks, digits = [], []
    for a, b in pairs:
        tr, te = np.isin(y_tr, (a, b)), np.isin(y_te, (a, b))
        tasks.append(cl.Task(x_tr[tr], (y_tr[tr] == b).astype(np.int32), x_te[te], (y_te[te] == b).astype(np.int32)))
        digits.append(y_te[te])
    return tasks, digits


def plot(metrics: dict, path: str, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m for m in _continual.METHODS if m in metrics]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 3.8))
    n = len(metrics[names[0]]["per_task"])
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        ax_t.bar(np.arange(n) + i * width, metrics[name]["per_task"], width, label=name)
        rows = metrics[name]["accuracy_matrix"]
        if len(rows) > 1:
            ax_m.plot(range(1, len(rows) + 1), [np.mean(r) for r in rows], "o-", label=name)
    ax_t.set(xticks=np.arange(n) + 0.4 - width / 2, xticklabels=[f"{a}/{b}" for a, b in PAIRS[:n]],
             ylim=(0.5, 1.0), ylabel="test accuracy after the last task (CL1)", title="per task")
    ax_m.set(xlabel="tasks learned", ylabel="mean accuracy over tasks seen", title="during the sequence")
    return _common.finish_figure(fig, (ax_t, ax_m), title, path)


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    t_start = time.perf_counter()
    x_tr, y_tr, x_te, y_te, dataset = _continual.load_flat(args.mnist, args.seed, args.validation)
    tasks, digits = split_tasks(x_tr, y_tr, x_te, y_te)
    methods, n_params = _continual.build_methods(args, x_tr.shape[1], 2, len(tasks))
    results, wall = _continual.run_methods(args, tasks, methods, NAME)
    pairs = np.asarray(PAIRS)
    cl3 = {name: _continual.cl3_accuracy(methods[name], r.params, tasks, len(tasks),
                                         lambda t, c: pairs[t, c], digits) for name, r in results.items()}
    metrics = _continual.summarise(results, wall, n_params, cl3)
    metrics.update({"dataset": dataset, "n_tasks": len(tasks), "tasks": [list(p) for p in PAIRS],
                    "n_train_per_task": [int(len(t.x_train)) for t in tasks],
                    "n_test_per_task": [int(len(t.x_test)) for t in tasks],
                    "target_params": n_params["target_mlp"], "wall_time_s": time.perf_counter() - t_start})
    metrics["targets"] = _continual.targets_block(metrics)
    path = _common.write_json(args.out, NAME, vars(args), metrics)
    png = plot(metrics, _common.png_path(args.out), f"split {dataset}: 5 two-class tasks in sequence")
    _continual.print_table(metrics, len(tasks))
    print(f"wrote {path} and {png}")
    summary = ", ".join(f"{k} {100 * metrics[k]['final_mean_accuracy']:.2f}%" for k in _continual.METHODS
                        if k in metrics)
    print(f"{NAME} [{dataset}, seed {args.seed}]: CL1 mean accuracy {summary}; {metrics['wall_time_s']:.0f}s wall")
    return metrics


if __name__ == "__main__":
    main()
