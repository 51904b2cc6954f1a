"""What the continual-learning experiments share: data as task sequences, the target MLP and its
task-conditioned hypernetwork, the multi-head baseline network, the four methods (hypernet, finetune, ewc,
joint) run through `hj.continual`, CL3 accuracies by entropy task inference, and the summary metrics."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hyperjax as hj
import hyperjax.continual as cl
from experiments import _common, _data

METHODS = ("hypernet", "finetune", "ewc", "joint")


def add_arguments(p, *, lr: float, beta: float, ewc_lambda: float, batch_size: int) -> None:
    """The options both digit experiments take (hypernetwork, baselines, optimisation)."""
    p.add_argument("--widths", type=int, nargs="+", default=[100, 100], help="hidden widths of the target MLP")
    p.add_argument("--chunk-size", type=int, default=1000, help="scalars per chunk of the chunked hypernetwork")
    p.add_argument("--chunk-emb-dim", type=int, default=16, help="size of the learned chunk embeddings")
    p.add_argument("--hidden", type=int, nargs="+", default=[200, 200], help="hidden widths of the hypernetwork")
    p.add_argument("--cond-dim", type=int, default=32, help="size of the learned task embeddings")
    p.add_argument("--beta", type=float, default=beta, help="output-regulariser strength of the hypernetwork")
    p.add_argument("--ewc-lambda", type=float, default=ewc_lambda, help="EWC penalty strength")
    p.add_argument("--ewc-gamma", type=float, default=1.0, help="online EWC decay of the running Fisher")
    p.add_argument("--lr", type=float, default=lr, help="Adam learning rate (every method)")
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--joint-steps", type=int, default=None,
                   help="steps of joint training (default: --steps times the number of tasks: the same examples)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--validation", action="store_true",
                   help="hold out 20%% of the training set (seeded) and report on it instead of the test set: "
                        "for choosing hyperparameters without looking at the test set")
    p.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help="checkpoint each sequential method after every task under DIR/<method>; a re-run resumes")


def load_flat(mnist: str | None, seed: int, validation: bool = False):
    """-> standardised x_tr f32[n, d], y_tr i32[n], x_te f32[m, d], y_te i32[m], dataset name.

    validation: the "test" arrays are 20% of the training set held out (seeded), the test set is not read."""
    x_tr, y_tr, x_te, y_te, name = _data.load_images(mnist, seed=seed)
    x_tr, x_te = x_tr.reshape(len(x_tr), -1), x_te.reshape(len(x_te), -1)
    if validation:
        perm = np.random.default_rng([seed, 17]).permutation(len(x_tr))
        n_val = len(x_tr) // 5
        x_te, y_te, x_tr, y_tr = x_tr[perm[:n_val]], y_tr[perm[:n_val]], x_tr[perm[n_val:]], y_tr[perm[n_val:]]
        name = f"{name} (validation split)"
    mean, std = x_tr.mean(0), np.maximum(x_tr.std(0), 0.1)   # floor: constant border pixels stay finite
    return ((x_tr - mean) / std).astype(np.float32), y_tr, ((x_te - mean) / std).astype(np.float32), y_te, name


def ce(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def target_spec(n_in: int, widths: Sequence[int], n_out: int) -> hj.TargetSpec:
    """The linen MLP n_in -> *widths -> n_out whose every weight the hypernetwork generates."""
    return hj.targets.from_linen(hj.testing.MLP(features=(*widths, n_out)), jnp.zeros((1, n_in), jnp.float32))


def hypernetwork(args, spec: hj.TargetSpec, n_tasks: int) -> hj.HyperNetwork:
    return hj.generators.chunked(spec, chunk_size=args.chunk_size, chunk_emb_dim=args.chunk_emb_dim,
                                 hidden=tuple(args.hidden), cond_dim=args.cond_dim, num_conds=n_tasks)


def multihead(n_in: int, widths: Sequence[int], n_out: int, n_tasks: int):
    """The baselines' network: the target MLP's trunk n_in -> *widths (ReLU) shared, one linear head per task.

    Returns (init(key) -> {"trunk", "heads"}, apply(params, x, task) -> logits f[B, n_out]).
    """
    trunk = hj.targets.from_linen(hj.testing.MLP(features=tuple(widths)), jnp.zeros((1, n_in), jnp.float32))
    width = widths[-1]

    def init(key):
        k_t, k_h = jax.random.split(key)
        w = jax.random.normal(k_h, (n_tasks, width, n_out), jnp.float32) / np.sqrt(width)
        return {"trunk": trunk.init(k_t), "heads": {"w": w, "b": jnp.zeros((n_tasks, n_out), jnp.float32)}}

    def apply(p, x, task):
        h = jax.nn.relu(trunk.apply(p["trunk"], x))
        return h @ p["heads"]["w"][task] + p["heads"]["b"][task][None]

    return init, apply


def build_methods(args, n_in: int, n_out: int, n_tasks: int) -> tuple[dict[str, cl.Method], dict[str, int]]:
    """-> ({method name: Method}, {method name: trainable params}) for METHODS (joint trains the multi-head net)."""
    spec = target_spec(n_in, args.widths, n_out)
    hnet = hypernetwork(args, spec, n_tasks)
    init, apply = multihead(n_in, args.widths, n_out, n_tasks)
    methods = {
        "hypernet": cl.hypernet_method(hnet, spec.apply, ce, max_tasks=n_tasks, beta=args.beta),
        "finetune": cl.finetune_method(init, apply, ce),
        "ewc": cl.ewc_method(init, apply, ce, lam=args.ewc_lambda, gamma=args.ewc_gamma),
    }
    methods["joint"] = methods["finetune"]
    n_params = {name: hj.training.count_params(jax.eval_shape(m.init, jax.random.key(0)))
                for name, m in methods.items()}
    n_params["target_mlp"] = spec.size
    return methods, n_params


def run_methods(args, tasks: list[cl.Task], methods: dict[str, cl.Method], desc: str
                ) -> tuple[dict[str, cl.SequenceResult], dict[str, float]]:
    """Every method of args.methods on `tasks` (seed args.seed, Adam(args.lr)), one progress bar.

    Returns ({name: SequenceResult}, {name: wall seconds}).
    """
    n_tasks = len(tasks)
    joint_steps = args.joint_steps or args.steps * n_tasks
    total = sum(joint_steps if m == "joint" else args.steps * n_tasks for m in args.methods)
    bar = _common.progress(None, total, desc, disable=args.no_progress)
    results, wall = {}, {}
    for name in args.methods:
        bar.set_postfix_str(name)
        t0 = time.perf_counter()
        common = dict(batch_size=args.batch_size, key=jax.random.key(args.seed), steps_per_call=args.steps_per_call,
                      on_steps=bar.update)
        if name == "joint":
            results[name] = cl.train_joint(methods[name], tasks, optax.adam(args.lr), steps=joint_steps, **common)
        else:
            ckpt = os.path.join(os.path.abspath(args.checkpoint_dir), name) if args.checkpoint_dir else None
            results[name] = cl.train_sequence(methods[name], tasks, optax.adam(args.lr), steps=args.steps,
                                              checkpoint_dir=ckpt, **common)
        wall[name] = time.perf_counter() - t0
    bar.close()
    return results, wall


def cl3_accuracy(method: cl.Method, params, tasks: list[cl.Task], n_tasks: int,
                 to_label: Callable[[np.ndarray, np.ndarray], np.ndarray], global_labels: list[np.ndarray]
                 ) -> tuple[list[float], list[float]]:
    """CL3: the task is not given; `infer_task` picks the head / generated network of lowest entropy.

    to_label(task_hat i32[B], class_within_task i32[B]) -> predicted global label; global_labels[j]: the
    test labels of task j in the same space. Returns (per-task CL3 accuracy, per-task task-inference accuracy).
    """
    infer = jax.jit(lambda p, x: cl.infer_task(method.apply, p, x, n_tasks))
    accs, task_accs = [], []
    for j, task in enumerate(tasks):
        t_hat, _, logits = infer(params, jnp.asarray(task.x_test))
        t_hat = np.asarray(t_hat)
        within = np.asarray(jnp.argmax(logits, -1))[t_hat, np.arange(len(t_hat))]
        accs.append(float(np.mean(to_label(t_hat, within) == global_labels[j])))
        task_accs.append(float(np.mean(t_hat == j)))
    return accs, task_accs


def summarise(results: dict[str, cl.SequenceResult], wall: dict[str, float], n_params: dict[str, int],
              cl3: dict[str, tuple[list[float], list[float]]] | None = None) -> dict[str, Any]:
    """metrics.<method>: final_mean_accuracy (CL1), per_task, cl3_mean_accuracy (+ per task), the accuracy
    matrix, seconds, params."""
    out = {}
    for name, r in results.items():
        m = {"final_mean_accuracy": float(np.mean(r.final)), "per_task": r.final, "accuracy_matrix": r.scores,
             "train_seconds_per_task": r.seconds, "wall_time_s": wall[name], "trainable_params": n_params[name],
             "resumed_from_task": r.resumed_from}
        if cl3 and name in cl3:
            m["cl3_mean_accuracy"] = float(np.mean(cl3[name][0]))
            m["cl3_per_task"] = cl3[name][0]
            m["task_inference_accuracy"] = float(np.mean(cl3[name][1]))
        out[name] = m
    return out


def targets_block(metrics: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, computed from the metrics (None where a method was not run)."""
    acc = {k: metrics[k]["final_mean_accuracy"] for k in METHODS if k in metrics}
    t = {}
    if "hypernet" in acc and "joint" in acc:
        gap = 100 * (acc["joint"] - acc["hypernet"])
        t["hypernet_within_3pt_of_joint"] = {"gap_points": gap, "met": bool(gap <= 3.0)}
    if "hypernet" in acc and "ewc" in acc:
        t["hypernet_at_or_above_ewc"] = {"margin_points": 100 * (acc["hypernet"] - acc["ewc"]),
                                         "met": bool(acc["hypernet"] >= acc["ewc"])}
    if "finetune" in acc and "joint" in acc:
        t["finetune_below_joint"] = {"gap_points": 100 * (acc["joint"] - acc["finetune"])}
    return t


def print_table(metrics: dict[str, Any], n_tasks: int) -> None:
    print(f"\n{'method':<10} {'params':>9} {'CL1 mean':>9} {'CL3 mean':>9}  per task (CL1, after task {n_tasks})")
    for name in METHODS:
        if name not in metrics:
            continue
        m = metrics[name]
        cl3 = f"{100 * m['cl3_mean_accuracy']:8.2f}%" if "cl3_mean_accuracy" in m else f"{'-':>9}"
        print(f"{name:<10} {m['trainable_params']:>9,} {100 * m['final_mean_accuracy']:8.2f}% {cl3}  "
              + " ".join(f"{100 * a:.1f}" for a in m["per_task"]))
