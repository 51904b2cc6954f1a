"""Ensembles and uncertainty on digits: single MLP, deep ensemble, BatchEnsemble, stochastic hypernetwork.

    python -m experiments.ensembles_digits                     # scikit-learn digits, 3 seeds
    python -m experiments.ensembles_digits --mnist mnist.npz   # real MNIST from a local file

The same linen MLP (64 -> 128 -> 128 -> 10 on digits, `hj.testing.mlp_spec`) everywhere, the same Adam
schedule, steps and batch size, trained with plain cross-entropy (no label smoothing: it changes calibration):

* single:              one network.
* deep_ensemble:       M = 8 independently initialised networks (`hj.ensembles.deep_ensemble`), each on its own
                       shuffled batches, all trained in one `jax.vmap` step.
* batch_ensemble:      `hj.ensembles.batch_ensemble` (BatchEnsemble, Wen et al. 2020: W_m = W0 * r_m s_m^T over M = 8
                       member ids, scale_modulation's factorised path: no member weight is ever built); every member
                       sees the batch.
* stochastic_hypernet: `hj.ensembles.stochastic(hj.generators.scale_modulation(spec, cond_dim=8, hidden=(32,)))`:
                       noise z ~ N(0, I_8) -> row/column scales of a shared base; K = 8 samples per batch (one vmap),
                       loss = mean cross-entropy + diversity * kde_repulsion(generated weights) (D'Angelo & Fortuin,
                       NeurIPS 2021: the KDE repulsive force of weight-space WGD), diversity = 1 / n_train by
                       default (their posterior N * mean NLL + repulsion, divided by N); K = 8 samples at test time.

Metrics of the averaged predictive distribution on the test split: accuracy, NLL, ECE (15 equal-width
bins), and OOD AUROC of predictive entropy for test digits vs 8x8 letter glyphs (A-Z a-z rendered with
matplotlib's fonts at digits' 0-16 levels, `experiments._data.glyphs`) and vs uniform-noise images; trainable
parameters and training time. Means (and std) over 3 seeds; the data split is fixed by --seed, the seeds change
initialisation, batch order and noise. `--eval-on val` holds 20% of the training split out and reports on it
instead (used to choose --diversity without looking at the test set).

Writes results/ensembles_digits.json (`metrics.<method>.{accuracy, nll, ece, auroc_letters, auroc_noise,
params}` for single, deep_ensemble, batch_ensemble, stochastic_hypernet) and a PNG beside it (reliability
diagram, entropy histograms).
"""

from __future__ import annotations

import string
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hyperjax as hj
from experiments import _common, _data

NAME = "ensembles_digits"
METHODS = ("single", "deep_ensemble", "batch_ensemble", "stochastic_hypernet")
LETTERS = string.ascii_uppercase + string.ascii_lowercase


def build_parser():
    p = _common.parser(NAME, __doc__.splitlines()[0], steps=1500)
    p.add_argument("--seeds", type=int, default=3, help="training seeds (seed, seed + 1, ...)")
    p.add_argument("--widths", type=int, nargs="+", default=[128, 128], help="hidden widths of the MLP")
    p.add_argument("--members", type=int, default=8, help="M of the deep ensemble and BatchEnsemble")
    p.add_argument("--samples", type=int, default=8, help="K noise samples per batch and at test time")
    p.add_argument("--noise-dim", type=int, default=8, help="size of the stochastic hypernetwork's noise z")
    p.add_argument("--hnet-hidden", type=int, nargs="*", default=[32], help="hidden widths of its noise MLP")
    p.add_argument("--init-scale", type=float, default=0.5, help="std of the scales around 1 at init (both)")
    p.add_argument("--diversity", type=float, default=None,
                   help="weight of kde_repulsion in the stochastic loss (default 1 / n_train: the repulsion per "
                        "example of the mean loss, as the posterior N * mean NLL + repulsion scales)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak Adam learning rate (warm-up, cosine decay)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--noise-images", type=int, default=1000, help="uniform-noise OOD images")
    p.add_argument("--eval-on", choices=["test", "val"], default="test",
                   help="val: hold out 20%% of the training split and report on it (for choosing options)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="methods to run")
    return p


# ---------------------------------------------------------------- data
def load(args) -> dict[str, Any]:
    """Standardised flat images: train / eval split, letter glyphs and uniform noise (train statistics)."""
    x_tr, y_tr, x_te, y_te, dataset = _data.load_images(args.mnist, seed=args.seed)
    side = x_tr.shape[1]
    if args.eval_on == "val":
        perm = np.random.default_rng(args.seed + 10_000).permutation(len(x_tr))
        n_val = len(x_tr) // 5
        x_te, y_te, x_tr, y_tr = x_tr[perm[:n_val]], y_tr[perm[:n_val]], x_tr[perm[n_val:]], y_tr[perm[n_val:]]
    glyph = _data.glyphs(side, chars=LETTERS, seed=args.seed, fit="glyph",
                         intensity="digits" if side == 8 else "unit")
    noise = np.random.default_rng(args.seed + 20_000).uniform(0.0, 1.0, (args.noise_images, side, side, 1))
    flat = lambda a: a.reshape(len(a), -1).astype(np.float32)
    mean, std = flat(x_tr).mean(0), np.maximum(flat(x_tr).std(0), 0.1)
    norm = lambda a: ((flat(a) - mean) / std).astype(np.float32)
    return {"x_tr": norm(x_tr), "y_tr": y_tr, "x_te": norm(x_te), "y_te": y_te, "letters": norm(glyph.images),
            "noise": norm(noise), "dataset": dataset, "fonts": list(glyph.fonts)}


# ---------------------------------------------------------------- models
def forward(p: Any, x: jax.Array) -> jax.Array:
    """The MLP with `modulated_matmul`: p holds plain kernels (== spec.apply) or ScaleFactors. x f[B, d] -> f[B, 10]."""
    n = len(p)
    for i in range(n):
        layer = p[f"Dense_{i}"]
        x = hj.generators.modulated_matmul(x, layer["kernel"]) + layer["bias"][None, :]
        x = jax.nn.relu(x) if i < n - 1 else x
    return x


def ce(logits: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


class Method:
    """init(key) -> params; loss(params, (x, y), rng) -> scalar; probs(params, x) -> f[B, C]; per_member batches."""

    def __init__(self, name: str, init, loss, probs, per_member: bool = False):
        self.name, self.init, self.loss, self.probs, self.per_member = name, init, loss, probs, per_member


def methods(args, n_in: int) -> tuple[Any, dict[str, Method]]:
    spec = hj.testing.mlp_spec((n_in, *args.widths, 10))
    m, k = args.members, args.samples
    de = hj.ensembles.deep_ensemble(spec, members=m)
    be = hj.ensembles.batch_ensemble(spec, members=m, init_scale=args.init_scale)
    st = hj.ensembles.stochastic(
        hj.generators.scale_modulation(spec, cond_dim=args.noise_dim, hidden=tuple(args.hnet_hidden),
                                       init_scale=args.init_scale), noise_dim=args.noise_dim)
    eval_key = jax.random.key(12345)

    def de_loss(p, batch, rng):
        x, y = batch                                   # x f[M, B, d]: a batch per member
        return jnp.mean(jax.vmap(ce)(de.apply(p, x, per_member=True), y))

    def be_loss(hp, batch, rng):
        x, y = batch
        logits = hj.ensembles.members_apply(forward, be.factors(hp), x)          # f[M, B, 10]
        return jnp.mean(jax.vmap(ce, in_axes=(0, None))(logits, y))

    def st_loss(hp, batch, rng):
        x, y = batch
        z = st.noise(rng, k)
        logits = hj.ensembles.members_apply(forward, st.factors(hp, z), x)       # f[K, B, 10]
        fit = jnp.mean(jax.vmap(ce, in_axes=(0, None))(logits, y))
        kernels = jax.vmap(st.apply, in_axes=(None, 0))(hp, z)                 # K weight sets (small) for the term
        return fit + args.diversity * hj.ensembles.kde_repulsion(hj.ensembles.flatten_members(kernels))

    return spec, {
        "single": Method("single", spec.init, lambda p, b, r: ce(spec.apply(p, b[0]), b[1]),
                         lambda p, x: jax.nn.softmax(spec.apply(p, x), -1)),
        "deep_ensemble": Method("deep_ensemble", de.init, de_loss, de.predict, per_member=True),
        "batch_ensemble": Method("batch_ensemble", be.init, be_loss, lambda hp, x: be.predict(hp, forward, x)),
        "stochastic_hypernet": Method("stochastic_hypernet", st.init, st_loss,
                                      lambda hp, x: st.predict(hp, eval_key, forward, x, k)),
    }


# ---------------------------------------------------------------- training and evaluation
def optimizer(args) -> optax.GradientTransformation:
    warmup = max(0, min(args.warmup, args.steps - 1))
    schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, warmup, max(args.steps, warmup + 1),
                                                  end_value=args.lr * 1e-2)
    return optax.adamw(schedule, weight_decay=args.weight_decay)


def member_batches(seed: int, n: int, batch_size: int, members: int):
    """Endless index batches i[M, B]: each member its own shuffle."""
    orders = [_data.batches(np.random.default_rng([seed, j]), n, batch_size) for j in range(members)]
    while True:
        yield np.stack([next(o) for o in orders])


def evaluate(probs_fn, params, data: dict[str, Any]) -> dict[str, Any]:
    E = hj.ensembles
    p_te = probs_fn(params, jnp.asarray(data["x_te"]))
    y_te = jnp.asarray(data["y_te"])
    h_in, h_let, h_noise = (E.entropy(p) for p in (p_te, probs_fn(params, jnp.asarray(data["letters"])),
                                                   probs_fn(params, jnp.asarray(data["noise"]))))
    rel = E.reliability(p_te, y_te, 15)
    return {"accuracy": float(jnp.mean(jnp.argmax(p_te, 1) == y_te)), "nll": float(E.nll(p_te, y_te)),
            "ece": float(E.ece(p_te, y_te, 15)), "auroc_letters": float(E.auroc(h_in, h_let)),
            "auroc_noise": float(E.auroc(h_in, h_noise)),
            "_plot": {"reliability": {k: np.asarray(v).tolist() for k, v in rel._asdict().items()},
                      "entropy": {"digits": np.asarray(h_in), "letters": np.asarray(h_let),
                                  "noise": np.asarray(h_noise)}}}


def compiled(method: Method, args) -> dict[str, Any]:
    """The jitted functions of a method, built once and shared by every seed (one compilation each)."""
    opt = optimizer(args)
    step, multi = _common.make_steps(method.loss, opt, args.steps_per_call)
    return {"init": jax.jit(method.init), "state": jax.jit(lambda p, k: hj.training.init_state(p, opt, k)),
            "step": step, "multi": multi, "probs": jax.jit(method.probs)}


def run_method(method: Method, fns: dict[str, Any], seed: int, data: dict[str, Any], args) -> dict[str, Any]:
    params = fns["init"](jax.random.key(seed))
    n_params = hj.training.count_params(params)
    step, multi, probs = fns["step"], fns["multi"], fns["probs"]
    state = fns["state"](params, jax.random.key(seed + 1))
    x_te, y_te = jnp.asarray(data["x_te"]), jnp.asarray(data["y_te"])
    accuracy = lambda p: jnp.mean(jnp.argmax(probs(p, x_te), 1) == y_te)
    n = len(data["x_tr"])
    order = (member_batches(seed, n, args.batch_size, args.members) if method.per_member
             else _data.batches(np.random.default_rng(seed), n, args.batch_size))
    state, curve, seconds = _common.train_loop(step, state, order, (data["x_tr"], data["y_tr"]), args.steps,
                                               args.eval_every, accuracy, f"{method.name} s{seed}",
                                               disable=args.no_progress, multi=multi)
    out = evaluate(probs, state.params, data)
    return {**out, "params": n_params, "train_time_s": seconds, "curve": curve,
            "params_sha256": _common.params_sha256(state.params)}


def summarise(runs: dict[str, list[dict]]) -> dict[str, Any]:
    keys = ("accuracy", "nll", "ece", "auroc_letters", "auroc_noise", "train_time_s")
    out = {}
    for name, rs in runs.items():
        m = {k: float(np.mean([r[k] for r in rs])) for k in keys}
        m.update({f"{k}_std": float(np.std([r[k] for r in rs])) for k in keys})
        m["per_seed"] = {k: [r[k] for r in rs] for k in (*keys, "params_sha256")}
        m["params"] = rs[0]["params"]
        out[name] = m
    return out


def targets(m: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, each with the measured numbers it compares (ECE and accuracy in points)."""
    be, de, single = m["batch_ensemble"], m["deep_ensemble"], m["single"]
    ens = ("deep_ensemble", "batch_ensemble", "stochastic_hypernet")
    t = {"be_accuracy_within_0.5pt_of_deep": {"gap_points": 100 * (de["accuracy"] - be["accuracy"]),
                                              "met": bool(100 * (de["accuracy"] - be["accuracy"]) <= 0.5)},
         "be_ece_within_deep_plus_1pt": {"be_points": 100 * be["ece"], "deep_points": 100 * de["ece"],
                                         "met": bool(100 * be["ece"] <= 100 * de["ece"] + 1.0)},
         "be_params_at_most_quarter_of_deep": {"ratio": be["params"] / de["params"],
                                               "met": bool(4 * be["params"] <= de["params"])},
         "ensembles_beat_single_nll": {k: bool(m[k]["nll"] < single["nll"]) for k in ens},
         "ensembles_beat_single_auroc_letters": {k: bool(m[k]["auroc_letters"] > single["auroc_letters"])
                                                 for k in ens}}
    t["all_met"] = bool(all(v["met"] for v in list(t.values())[:3])
                        and all(t["ensembles_beat_single_nll"].values())
                        and all(t["ensembles_beat_single_auroc_letters"].values()))
    return t


def plot(plots: dict[str, dict], metrics: dict, path: str, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 1 + len(plots), figsize=(4.2 * (1 + len(plots)), 3.8))
    ax = axes[0]
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    for name, p in plots.items():
        r = p["reliability"]
        keep = np.asarray(r["count"]) > 0
        ax.plot(np.asarray(r["confidence"])[keep], np.asarray(r["accuracy"])[keep], "o-", ms=3,
                label=f"{name} (ECE {100 * metrics[name]['ece']:.1f})")
    ax.set(xlabel="confidence", ylabel="accuracy", title="reliability (15 bins, seed 0)", xlim=(0, 1), ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    for ax, (name, p) in zip(axes[1:], plots.items()):
        hi = max(float(np.max(v)) for v in p["entropy"].values()) + 1e-3
        for kind, h in p["entropy"].items():
            ax.hist(h, bins=30, range=(0, hi), density=True, alpha=0.5, label=kind)
        ax.set(xlabel="predictive entropy (nats)", title=f"{name}\nAUROC letters {metrics[name]['auroc_letters']:.3f}, "
               f"noise {metrics[name]['auroc_noise']:.3f}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, y=1.04)
    path = _common.savefig(fig, path)
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    t_start = time.perf_counter()
    data = load(args)
    if args.diversity is None:
        args.diversity = 1.0 / len(data["x_tr"])
    spec, ms = methods(args, data["x_tr"].shape[1])
    chosen = [k for k in METHODS if k in args.methods]
    runs: dict[str, list[dict]] = {k: [] for k in chosen}
    fns = {k: compiled(ms[k], args) for k in chosen}
    for seed in range(args.seed, args.seed + args.seeds):
        for name in chosen:
            runs[name].append(run_method(ms[name], fns[name], seed, data, args))
    metrics = summarise(runs)
    if len(chosen) == len(METHODS):
        metrics["targets"] = targets(metrics)
    metrics.update({"dataset": data["dataset"], "eval_on": args.eval_on, "n_train": len(data["x_tr"]),
                    "n_eval": len(data["x_te"]), "n_letters": len(data["letters"]), "n_noise": len(data["noise"]),
                    "target_params": spec.size, "wall_time_s": time.perf_counter() - t_start})
    plots = {k: runs[k][0].pop("_plot") for k in chosen}
    for rs in runs.values():
        for r in rs:
            r.pop("_plot", None)
    curves = {k: [r["curve"] for r in rs] for k, rs in runs.items()}
    config = {**vars(args), "target": f"MLP {data['x_tr'].shape[1]}->" + "->".join(map(str, (*args.widths, 10))),
              "letter_fonts": data["fonts"], "letters": LETTERS}
    path = _common.write_json(args.out, NAME, config, metrics, curves=curves)
    png = plot(plots, metrics, _common.png_path(args.out),
               f"{data['dataset']} ({args.eval_on}): means over {args.seeds} seeds, M = {args.members}, K = {args.samples}")

    print(f"\n{'method':<20} {'params':>9} {'acc %':>7} {'NLL':>7} {'ECE %':>6} {'AUROC let':>9} {'AUROC noi':>9} "
          f"{'train s':>8}")
    for name in chosen:
        r = metrics[name]
        print(f"{name:<20} {r['params']:>9,} {100 * r['accuracy']:>7.2f} {r['nll']:>7.4f} {100 * r['ece']:>6.2f} "
              f"{r['auroc_letters']:>9.4f} {r['auroc_noise']:>9.4f} {r['train_time_s']:>8.1f}")
    print(f"wrote {path} and {png}")
    print(f"{NAME} [{data['dataset']}, {args.eval_on}, seeds {args.seed}..{args.seed + args.seeds - 1}]: targets "
          f"{'met' if metrics.get('targets', {}).get('all_met') else 'MISSED or not all methods run'}, {metrics['wall_time_s']:.0f}s wall")
    return metrics


if __name__ == "__main__":
    main()
