"""Implicit neural representations of rendered glyphs: a CNN + hyperjax generator maps an image to a SIREN.

    python -m experiments.inr_glyphs                # 32x32 glyphs of matplotlib's bundled fonts

Data (`experiments._data.glyphs`): 0-9 A-Z a-z rendered with 21 TTF fonts that ship inside matplotlib,
seeded random rotation / scale / offset. Held out: whole fonts (`--test-fonts`, one per family by
default), never seen in training; the training fonts' renderings use seed `seed`, the held-out ones
`seed + 1`.

Target: a SIREN coordinate network (x, y) -> intensity (`hj.inr.siren`: sine layers, omega_0 = 30, its
paper's init). Hypernetwork: a small CNN encoder (image -> latent f[latent_dim], LayerNorm) followed by a
generator of the SIREN's weights, one kind per run, all trained with the same batches, steps and Adam:

* shift:    functa's shift modulation: every bias generated from the latent (`dense(where="*/bias")`), the
            kernels one shared base learned with it (Dupont et al., 2022);
* scale:    `scale_modulation` (rowcol) of a shared base, with SIREN's uniform base init;
* low_rank: `low_rank` (W0 + U diag(s) V^T) of a shared base, with SIREN's uniform base init;
* chunked:  `chunked`: every SIREN weight generated in chunks;
* spatial:  spatial functa (Bauer et al., 2023): `hj.inr.siren(latent_grid=(8, 8))`, a latent grid f[8, 8, 8]
            interpolated at every coordinate shifts each sine layer of a shared base through shared latent
            kernels; only the grid is generated (`dense(where="latent/grid")`, a linear map of the latent as in
            functa). Its shared base is wider (`--latent-siren`, 64 by default): only the grid is per image.

Rendering a batch of images at any resolution is one call (`hj.inr.render`: the factorised path for
scale / low_rank, `hj.per_sample` otherwise). Also measured, on the same held-out glyphs: the SIREN fitted
per image with Adam (fixed steps, all images in one vmap: the per-image upper bound), a convolutional
autoencoder (same encoder, deconvolution decoder of about the generators' size), the all-background floor,
and weight-space classification (an MLP on the generated shift modulations vs the same MLP on pixels).
PSNR is the mean over images of 10 log10(1 / MSE) with outputs clipped to [0, 1].

Writes results/inr_glyphs.json and results/inr_glyphs.png (held-out glyphs, reconstructions at 32x32
and 4x super-resolved 128x128 renders, learning curves).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import hyperjax as hj
from experiments import _common, _data

NAME = "inr_glyphs"
KINDS = ("shift", "scale", "low_rank", "chunked", "spatial")
TEST_FONTS = ("DejaVuSansMono-Oblique.ttf", "DejaVuSerif-Italic.ttf", "STIXGeneralBol.ttf", "cmss10.ttf")


def build_parser():
    p = _common.parser(NAME, __doc__.splitlines()[0], steps=2000, images=False)
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, help="generator kinds compared")
    p.add_argument("--size", type=int, default=32, help="glyph resolution (training and PSNR)")
    p.add_argument("--n-per", type=int, default=2, help="random renderings per (training font, char)")
    p.add_argument("--test-fonts", nargs="+", default=list(TEST_FONTS), help="held-out fonts (TTF names)")
    p.add_argument("--siren", type=int, nargs="+", default=[32, 32, 32], help="SIREN hidden widths")
    p.add_argument("--omega-0", type=float, default=30.0)
    p.add_argument("--latent-dim", type=int, default=64)
    p.add_argument("--rank", type=int, default=16, help="rank of the low_rank kind")
    p.add_argument("--latent-grid", type=int, nargs=2, default=[8, 8], metavar=("G", "C"),
                   help="spatial kind: latent grid of G x G cells with C channels")
    p.add_argument("--latent-hidden", type=int, nargs="*", default=[],
                   help="spatial kind: hidden widths of its generator (none: a linear map, as functa's)")
    p.add_argument("--latent-siren", type=int, nargs="+", default=[64, 64, 64],
                   help="spatial kind: hidden widths of its shared SIREN base (modulated by the latent grid)")
    p.add_argument("--hidden", type=int, default=128, help="hidden width of every generator's MLP")
    p.add_argument("--chunk-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3, help="peak Adam learning rate (cosine decay)")
    p.add_argument("--fit-steps", type=int, default=300, help="Adam steps of the per-image fit")
    p.add_argument("--fit-lr", type=float, default=3e-3, help="Adam learning rate of the per-image fit")
    p.add_argument("--fit-images", type=int, default=62, help="held-out images fitted per image")
    p.add_argument("--clf-steps", type=int, default=400, help="full-batch Adam steps of each classifier")
    p.add_argument("--clf-hidden", type=int, default=256)
    p.add_argument("--sr", type=int, default=4, help="super-resolution factor of the rendered figure")
    p.add_argument("--eval-every", type=int, default=100)
    return p


# ---------------------------------------------------------------- models
class Encoder(nn.Module):
    """f[B, S, S, 1] image -> f[B, latent] (three stride-2 convolutions, a dense layer, LayerNorm)."""
    latent: int

    @nn.compact
    def __call__(self, x):
        for c in (16, 32, 64):
            x = nn.gelu(nn.Conv(c, (3, 3), strides=(2, 2))(x))
        x = nn.Dense(self.latent)(x.reshape(x.shape[0], -1))
        return nn.LayerNorm(use_scale=False, use_bias=False)(x)


class Decoder(nn.Module):
    """f[B, latent] -> f[B, S, S, 1]: a dense layer to (S/8)^2 x c0, three stride-2 transposed convolutions."""
    size: int
    widths: tuple[int, ...]

    @nn.compact
    def __call__(self, z):
        s = self.size // 8
        x = nn.Dense(s * s * self.widths[0])(z).reshape(z.shape[0], s, s, self.widths[0])
        for c in self.widths[1:]:
            x = nn.gelu(nn.ConvTranspose(c, (3, 3), strides=(2, 2))(x))
        return nn.Conv(1, (3, 3))(x)


def classifier(hidden: int, n_classes: int) -> nn.Module:
    return nn.Sequential([nn.Dense(hidden), nn.gelu, nn.Dense(hidden), nn.gelu, nn.Dense(n_classes)])


def make_generator(kind: str, siren: hj.inr.Siren, args) -> Any:
    spec, d, h = siren.spec, args.latent_dim, (args.hidden,)
    if kind == "shift":
        return hj.generators.dense(spec, cond_dim=d, where="*/bias", hidden=h)
    if kind == "scale":
        return hj.inr.with_target_base(hj.generators.scale_modulation(spec, cond_dim=d, hidden=h), siren)
    if kind == "low_rank":
        return hj.inr.with_target_base(hj.generators.low_rank(spec, rank=args.rank, cond_dim=d, hidden=h), siren)
    if kind == "chunked":
        return hj.generators.chunked(spec, chunk_size=args.chunk_size, cond_dim=d, hidden=h)
    if kind == "spatial":
        return hj.generators.dense(spec, cond_dim=d, where="latent/grid", hidden=tuple(args.latent_hidden))
    raise ValueError(f"--kinds: unknown kind {kind!r}; choose from {KINDS}.")


def modulations(kind: str, hnet: Any, gen_params: Any, z: jax.Array) -> jax.Array:
    """The per-image part of the generated weights, flattened: f[B, k] (what weight-space classifiers see)."""
    if kind == "shift":
        params = hj.generate_batch(hnet, gen_params, z)
        return jnp.concatenate([params[k]["bias"] for k in sorted(params)], axis=1)
    if kind in ("scale", "low_rank"):
        is_f = lambda x: isinstance(x, (hj.generators.ScaleFactors, hj.generators.LowRankFactors))
        parts = []
        for f in jax.tree.leaves(hnet.factors(gen_params, z), is_leaf=is_f):
            if isinstance(f, hj.generators.ScaleFactors):
                parts += [v for v in (f.scale_in, f.scale_out) if v is not None]
            elif isinstance(f, hj.generators.LowRankFactors):
                parts.append(f.s)
        return jnp.concatenate(parts, axis=1)
    if kind == "spatial":
        return hj.generate_batch(hnet, gen_params, z)["latent"]["grid"].reshape(z.shape[0], -1)
    params = hj.generate_batch(hnet, gen_params, z)
    return jnp.concatenate([x.reshape(z.shape[0], -1) for x in jax.tree.leaves(params)], axis=1)


# ---------------------------------------------------------------- metrics
def psnr(pred: jax.Array, x: jax.Array) -> jax.Array:
    """Mean over images of 10 log10(1 / MSE), predictions clipped to [0, 1]. pred, x: f[B, ...]."""
    mse = jnp.mean(jnp.square(jnp.clip(pred, 0.0, 1.0) - x).reshape(x.shape[0], -1), axis=1)
    return jnp.mean(10.0 * jnp.log10(1.0 / jnp.maximum(mse, 1e-10)))


def median_time(fn: Callable[[], Any], repeats: int = 5) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def train(loss_fn, params, x_tr, args, rng, desc: str, evaluate: Callable[[Any], float]):
    """Adam (cosine decay) on shuffled batches of x_tr; k steps per compiled call. -> (params, curve, seconds)."""
    opt = optax.adam(optax.cosine_decay_schedule(args.lr, args.steps, alpha=0.05))
    k = max(1, min(args.steps_per_call, args.eval_every))
    step1 = hj.training.make_step(loss_fn, opt, grad_norm=False)
    stepk = hj.training.make_step(loss_fn, opt, grad_norm=False, steps_per_call=k) if k > 1 else None
    state = hj.training.init_state(params, opt)
    order = _data.batches(rng, len(x_tr), args.batch_size)
    curve = {"step": [0], "train_loss": [float("nan")], "test_psnr_db": [evaluate(state.params)]}
    losses, i = [], 0
    bar = _common.progress(None, args.steps, desc, disable=args.no_progress)
    t0 = time.perf_counter()
    while i < args.steps:
        nxt = min(args.steps, (i // args.eval_every + 1) * args.eval_every)
        if stepk is not None and nxt - i >= k:
            idx = np.stack([next(order) for _ in range(k)])
            state, m = stepk(state, jnp.asarray(x_tr[idx]))
            n = k
        else:
            state, m = step1(state, jnp.asarray(x_tr[next(order)]))
            n = 1
        losses.append(m["loss"])
        i += n
        bar.update(n)
        if i == nxt:
            curve["step"].append(i)
            curve["train_loss"].append(float(np.mean([np.mean(np.asarray(v)) for v in losses])))
            curve["test_psnr_db"].append(evaluate(state.params))
            losses = []
    bar.close()
    jax.block_until_ready(state.params)
    return state.params, curve, time.perf_counter() - t0


def fit_classifier(feat_tr, y_tr, feat_te, y_te, n_classes: int, args, key) -> tuple[float, int]:
    """Full-batch Adam on standardised features (train statistics); -> (test accuracy, params)."""
    mean, std = feat_tr.mean(0), feat_tr.std(0) + 1e-6
    f_tr, f_te = (feat_tr - mean) / std, (feat_te - mean) / std
    model = classifier(args.clf_hidden, n_classes)
    params = model.init(key, f_tr[:1])
    opt = optax.adamw(1e-3, weight_decay=1e-2)

    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, f_tr), y_tr).mean()

    def body(carry, _):
        p, s = carry
        g = jax.grad(loss)(p)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    @jax.jit
    def run(p):
        (p, _), _ = jax.lax.scan(body, (p, opt.init(p)), None, length=args.clf_steps)
        return jnp.mean(jnp.argmax(model.apply(p, f_te), -1) == y_te)

    with jax.numpy_dtype_promotion("standard"):
        return float(run(params)), hj.training.count_params(params)


# ---------------------------------------------------------------- experiment
def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    t_start = time.perf_counter()
    key = jax.random.key(args.seed)
    rng = np.random.default_rng(args.seed)
    unknown = [f for f in args.test_fonts if f not in _data.GLYPH_FONTS]
    if unknown:
        raise ValueError(f"--test-fonts: {unknown} are not among experiments._data.GLYPH_FONTS {_data.GLYPH_FONTS}.")
    train_fonts = tuple(f for f in _data.GLYPH_FONTS if f not in args.test_fonts)
    t0 = time.perf_counter()
    g_tr = _data.glyphs(args.size, fonts=train_fonts, n_per=args.n_per, seed=args.seed)
    g_te = _data.glyphs(args.size, fonts=tuple(args.test_fonts), n_per=1, seed=args.seed + 1)
    render_s = time.perf_counter() - t0
    x_tr, y_tr, x_te, y_te = np.asarray(g_tr.images), np.asarray(g_tr.labels), np.asarray(g_te.images), np.asarray(g_te.labels)
    n_classes = len(g_tr.chars)
    xte = jnp.asarray(x_te)
    background = float(psnr(jnp.zeros_like(xte), xte))

    siren = hj.inr.siren(hidden=tuple(args.siren), omega_0=args.omega_0)
    siren_grid = hj.inr.siren(hidden=tuple(args.latent_siren), omega_0=args.omega_0,
                              latent_grid=tuple(args.latent_grid))
    grid = hj.inr.grid(args.size)
    grid_sr = hj.inr.grid(args.size * args.sr)
    encoder = Encoder(args.latent_dim)
    s = args.size

    metrics: dict[str, Any] = {"background_psnr_db": background, "hypernet": {},
                               "inr_params": siren.spec.size, "n_train": int(len(x_tr)), "n_test": int(len(x_te)),
                               "glyph_render_s": render_s}
    curves, shows = {}, {}
    mods, recs = {}, {}

    # ---- hypernetwork kinds
    for kind in args.kinds:
        key, k_enc, k_gen = jax.random.split(key, 3)
        target = siren_grid if kind == "spatial" else siren
        hnet = make_generator(kind, target, args)
        params = {"enc": encoder.init(k_enc, jnp.zeros((1, s, s, 1))), "gen": hnet.init(k_gen)}

        def recon(p, x, coords=grid, hnet=hnet, target=target):
            z = encoder.apply(p["enc"], x)
            return hj.inr.render(hnet, target, p["gen"], z, coords)          # f[B, P, 1]

        def loss_fn(p, x, rng, recon=recon):
            return jnp.mean(jnp.square(recon(p, x) - x.reshape(x.shape[0], -1, 1)))

        rec_jit = jax.jit(recon)
        evaluate = lambda p, rec_jit=rec_jit: float(psnr(rec_jit(p, xte), xte.reshape(len(xte), -1, 1)))
        params, curve, secs = train(loss_fn, params, x_tr, args, np.random.default_rng(args.seed), kind, evaluate)
        final = evaluate(params)
        ms = 1e3 * median_time(lambda: rec_jit(params, xte)) / len(xte)
        sr = jax.jit(lambda p, x: recon(p, x, grid_sr))(params, xte[:8])
        z_all = jax.jit(encoder.apply)(params["enc"], jnp.asarray(x_tr)), jax.jit(encoder.apply)(params["enc"], xte)
        mods[kind] = tuple(np.asarray(jax.jit(lambda g, z, hnet=hnet, kind=kind: modulations(kind, hnet, g, z))(
            params["gen"], z)) for z in z_all)
        metrics["hypernet"][kind] = {
            "psnr_db": final, "ms_per_image": ms, "train_s": secs,
            "generator_params": hj.training.count_params(params["gen"]),
            "encoder_params": hj.training.count_params(params["enc"]),
            "params_per_image": int(mods[kind][0].shape[1]),
            "factorised_render": callable(getattr(hnet, "factors", None)),
            "siren_hidden": list(args.latent_siren if kind == "spatial" else args.siren),
            "inr_params": target.spec.size,
        }
        curves[kind] = curve
        recs[kind] = (rec_jit, params)
        shows[kind] = (np.asarray(rec_jit(params, xte[:8])).reshape(-1, s, s),
                       np.asarray(sr).reshape(-1, s * args.sr, s * args.sr))

    # ---- convolutional autoencoder: the same encoder, a deconvolution decoder of about the generators' size
    gen_sizes = [metrics["hypernet"][k]["generator_params"] for k in args.kinds]
    target = int(np.median(gen_sizes))
    decoder, dec_params = None, None
    best = None
    for c0 in range(4, 129, 2):
        widths = (c0, 2 * max(c0 // 2, 4), max(c0 // 2, 4), max(c0 // 4, 4))
        d = Decoder(s, widths)
        n = hj.training.count_params(jax.eval_shape(d.init, jax.random.key(0), jnp.zeros((1, args.latent_dim))))
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (widths, n)
    decoder = Decoder(s, best[0])
    key, k_enc, k_dec = jax.random.split(key, 3)
    ae = {"enc": encoder.init(k_enc, jnp.zeros((1, s, s, 1))), "dec": decoder.init(k_dec, jnp.zeros((1, args.latent_dim)))}
    ae_fwd = jax.jit(lambda p, x: decoder.apply(p["dec"], encoder.apply(p["enc"], x)))
    ae_loss = lambda p, x, rng: jnp.mean(jnp.square(decoder.apply(p["dec"], encoder.apply(p["enc"], x)) - x))
    ae_eval = lambda p: float(psnr(ae_fwd(p, xte), xte))
    ae, curves["cnn_autoencoder"], ae_secs = train(ae_loss, ae, x_tr, args, np.random.default_rng(args.seed),
                                                   "autoencoder", ae_eval)
    metrics["cnn_autoencoder"] = {"psnr_db": ae_eval(ae), "train_s": ae_secs,
                                  "decoder_params": hj.training.count_params(ae["dec"]),
                                  "decoder_widths": list(best[0]),
                                  "ms_per_image": 1e3 * median_time(lambda: ae_fwd(ae, xte)) / len(xte)}
    shows["cnn_autoencoder"] = (np.asarray(ae_fwd(ae, xte[:8]))[..., 0], None)

    # ---- per-image direct fit of the same SIREN (Adam, fixed steps, every image in one vmap)
    n_fit = min(args.fit_images, len(x_te))
    x_fit = xte[:n_fit]
    fit_opt = optax.adam(args.fit_lr)

    def fit_one(k, x):
        p = siren.spec.init(k)
        target_px = x.reshape(-1, 1)
        lossf = lambda q: jnp.mean(jnp.square(siren.spec.apply(q, grid) - target_px))

        def body(carry, _):
            q, st = carry
            g = jax.grad(lossf)(q)
            u, st = fit_opt.update(g, st, q)
            return (optax.apply_updates(q, u), st), None

        (p, _), _ = jax.lax.scan(body, (p, fit_opt.init(p)), None, length=args.fit_steps)
        return siren.spec.apply(p, grid)

    key, k_fit = jax.random.split(key)
    fit_keys = jax.random.split(k_fit, n_fit)
    with jax.numpy_dtype_promotion("standard"):     # optax's float learning rate meets int32 step counts
        fit = jax.jit(jax.vmap(fit_one)).lower(fit_keys, x_fit).compile()
    t0 = time.perf_counter()
    fitted = jax.block_until_ready(fit(fit_keys, x_fit))
    fit_s = time.perf_counter() - t0
    metrics["per_image_fit"] = {"psnr_db": float(psnr(fitted, x_fit.reshape(n_fit, -1, 1))),
                                "ms_per_image": 1e3 * fit_s / n_fit, "steps": args.fit_steps, "images": n_fit}
    for kind in args.kinds:   # the hypernetwork on exactly the fitted images, for a like-for-like comparison
        rec_jit, p = recs[kind]
        metrics["hypernet"][kind]["psnr_db_fit_images"] = float(psnr(rec_jit(p, x_fit), x_fit.reshape(n_fit, -1, 1)))
    shows["per_image_fit"] = (np.asarray(fitted[:8]).reshape(-1, s, s), None)

    # ---- weight-space classification (functa) vs the same MLP on pixels
    key, k1, k2 = jax.random.split(key, 3)
    pix_acc, pix_params = fit_classifier(x_tr.reshape(len(x_tr), -1), y_tr, x_te.reshape(len(x_te), -1), y_te,
                                         n_classes, args, k1)
    for kind in args.kinds:
        acc, n = fit_classifier(*mods[kind][:1], y_tr, mods[kind][1], y_te, n_classes, args, k2)
        metrics["hypernet"][kind]["weight_space_accuracy"] = acc
        metrics["hypernet"][kind]["weight_space_classifier_params"] = n
    ws_kind = "shift" if "shift" in args.kinds else args.kinds[0]
    metrics["weight_space_accuracy"] = metrics["hypernet"][ws_kind]["weight_space_accuracy"]
    metrics["weight_space_kind"] = ws_kind
    metrics["pixel_accuracy"] = pix_acc
    metrics["pixel_classifier_params"] = pix_params

    # ---- targets
    best_kind = max(args.kinds, key=lambda k: metrics["hypernet"][k]["psnr_db"])
    b = metrics["hypernet"][best_kind]
    metrics["best_kind"] = best_kind
    metrics["targets"] = {
        "above_background_db": b["psnr_db"] - background, "above_background_8db": b["psnr_db"] >= background + 8.0,
        "vs_autoencoder_db": b["psnr_db"] - metrics["cnn_autoencoder"]["psnr_db"],
        "within_1db_of_autoencoder": b["psnr_db"] >= metrics["cnn_autoencoder"]["psnr_db"] - 1.0,
        "speedup_vs_per_image_fit": metrics["per_image_fit"]["ms_per_image"] / b["ms_per_image"],
        "speedup_100x": metrics["per_image_fit"]["ms_per_image"] >= 100.0 * b["ms_per_image"],
    }
    metrics["wall_time_s"] = time.perf_counter() - t_start

    config = {k: v for k, v in vars(args).items() if k not in ("no_progress", "compilation_cache")}
    config.update(train_fonts=list(train_fonts), test_fonts=list(args.test_fonts), chars=g_tr.chars,
                  held_out="fonts (every character of the held-out fonts; training fonts never include them)",
                  psnr="mean over images of 10 log10(1/MSE), outputs clipped to [0, 1]")
    _common.write_json(args.out, NAME, config, metrics, curves=curves)
    figure(x_te[:8, ..., 0], shows, curves, args, _common.png_path(args.out))
    print(summary(metrics, args.kinds))
    return metrics


def summary(m: dict, kinds) -> str:
    rows = [f"{'method':18s} {'PSNR dB':>8s} {'ms/img':>9s}"]
    for k in kinds:
        rows.append(f"{'hypernet ' + k:18s} {m['hypernet'][k]['psnr_db']:8.2f} {m['hypernet'][k]['ms_per_image']:9.3f}")
    rows.append(f"{'cnn autoencoder':18s} {m['cnn_autoencoder']['psnr_db']:8.2f} {m['cnn_autoencoder']['ms_per_image']:9.3f}")
    rows.append(f"{'per-image fit':18s} {m['per_image_fit']['psnr_db']:8.2f} {m['per_image_fit']['ms_per_image']:9.1f}")
    rows.append(f"{'background':18s} {m['background_psnr_db']:8.2f}")
    rows.append(f"weight-space accuracy {m['weight_space_accuracy']:.3f} ({m['weight_space_kind']}) vs pixels "
                f"{m['pixel_accuracy']:.3f}; best kind {m['best_kind']}; {m['wall_time_s']:.0f} s")
    return "\n".join(rows)


def figure(x, shows, curves, args, path: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("held-out", x)] + [(k, v[0]) for k, v in shows.items()] + [
        (f"{k} {args.sr}x", v[1]) for k, v in shows.items() if v[1] is not None]
    n = min(len(imgs) for _, imgs in rows)
    fig = plt.figure(figsize=(1.3 * n + 4, 1.3 * len(rows)))
    gs = fig.add_gridspec(len(rows), n + 3)
    for r, (label, imgs) in enumerate(rows):
        for c in range(n):
            ax = fig.add_subplot(gs[r, c])
            ax.imshow(np.clip(imgs[c], 0, 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=7)
    ax = fig.add_subplot(gs[:, n:])
    for k, c in curves.items():
        ax.plot(c["step"][1:], c["test_psnr_db"][1:], label=k)
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle("SIREN weights from a hypernetwork: held-out fonts, 32x32 and super-resolved renders")
    _common.savefig(fig, path)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
