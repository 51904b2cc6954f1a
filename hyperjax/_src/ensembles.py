"""Ensembles and predictive uncertainty from hypernetworks, built on the existing generators.

* `batch_ensemble`: BatchEnsemble (Wen, Tran & Ba, ICLR 2020), W_m = W0 * (r_m s_m^T) for member m, is exactly
  `scale_modulation` (mode "rowcol") over M member ids; its factorised path runs all M members on a batch
  with one shared x @ W0 per layer and never builds M weight sets.
* `deep_ensemble`: M independently initialised copies of the target (Lakshminarayanan et al., 2017) as one
  stacked params tree, trained and applied in one `jax.vmap`.
* `stochastic`: a generator conditioned on noise z ~ N(0, I) (a stochastic hypernetwork, as in Krueger et al.
  2017 and HyperGAN, Ratzlaff & Fuxin 2019): K samples per batch through `vmap`; `kde_repulsion` is the
  diversity term that keeps samples from collapsing onto one network (the kernel-density repulsion of
  D'Angelo & Fortuin, "Repulsive Deep Ensembles are Bayesian", NeurIPS 2021, on the generated weights).
* Metrics of the averaged predictive distribution: `mean_probs`, `nll`, `ece` / `reliability` (equal-width
  confidence bins), `entropy`, `auroc` (out-of-distribution detection from a score).

A factorised forward is a function `fn(params_or_factors, x)` written with
`hyperjax.generators.modulated_matmul` (which takes a plain kernel as well as factors), so the same function
runs materialised params and factors; `members_apply(fn, factors, x)` runs it for every member.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from hyperjax._src import checks
from hyperjax._src.generators import common
from hyperjax._src.generators.modulation import LowRankFactors, Modulated, ScaleFactors, scale_modulation
from hyperjax._src.spec import TargetSpec
from hyperjax._src.types import Array, HParams, Params, PRNGKey

_FACTORS = (LowRankFactors, ScaleFactors)


def _is_factors(x: Any) -> bool:
    return isinstance(x, _FACTORS)


# ---------------------------------------------------------------- running members
def _member_parts(f: Any) -> tuple[str, ...]:
    """Names of the per-member fields of a factors leaf (the rest, base / u / v, are shared)."""
    return ("s",) if isinstance(f, LowRankFactors) else ("scale_in", "scale_out")


def num_members(factors: Any, who: str = "ensembles.members_apply") -> int:
    """The member axis length M of a factors tree (per-member parts f[M, k]); raises if there is none or they differ."""
    sizes = {}
    for f in jax.tree.leaves(factors, is_leaf=_is_factors):
        if _is_factors(f):
            for name in _member_parts(f):
                part = getattr(f, name)
                if part is not None:
                    sizes[tuple(jnp.shape(part))] = name
    if not sizes:
        raise ValueError(f"hyperjax.{who}: `factors` holds no LowRankFactors / ScaleFactors; pass the tree from "
                         f"BatchEnsemble.factors(hparams), Stochastic.factors(hparams, z) or Modulated.factors(hparams, "
                         f"conds) with one cond per member.")
    shapes = list(sizes)
    if any(len(s) != 2 for s in shapes) or len({s[0] for s in shapes}) != 1:
        raise ValueError(f"hyperjax.{who}: every per-member part of `factors` must be f[M, k] with one M, got "
                         + ", ".join(f"{sizes[s]} {s}" for s in shapes[:6])
                         + ". Build the factors from a batch of M conds (ids f[M] or vectors f[M, cond_dim]).")
    return int(shapes[0][0])


def members_apply(fn: Callable[[Any, Any], Any], factors: Any, x: Any) -> Any:
    """Every member of a factors tree on the same batch: out[m] = fn(factors of member m, x).

    fn: (params-shaped tree whose modulated leaves are factors, x) -> y f[B, ...], written with
      `hyperjax.generators.modulated_matmul`. factors: from `BatchEnsemble.factors` / `Stochastic.factors`
      (per-member parts f[M, k], shared base). x: an array (or pytree of arrays) f[B, ...] shared by all members.
    Returns fn's output with a leading member axis, f[M, B, ...]. One `jax.vmap` over members: each layer is one
    matmul (M B, n_in) @ W0 with the shared base, plus elementwise scalings; no member weight is built.
    """
    m = num_members(factors)
    xs = jax.tree.leaves(x)
    if not xs or any(jnp.ndim(a) < 1 for a in xs) or len({jnp.shape(a)[0] for a in xs}) != 1:
        raise ValueError(f"hyperjax.ensembles.members_apply: `x` must be an array (or pytree of arrays) with one "
                         f"leading batch axis B, got shapes {[tuple(jnp.shape(a)) for a in xs][:6]}.")
    b = jnp.shape(xs[0])[0]

    def spread(f: Any) -> tuple[Any, Any]:
        """(f with per-member parts broadcast to f[M, B, k], the matching vmap in_axes)."""
        if not _is_factors(f):
            return f, None
        parts = _member_parts(f)
        fields = {n: (jnp.broadcast_to(v[:, None, :], (m, b, v.shape[-1])) if n in parts and v is not None else v)
                  for n, v in f._asdict().items()}
        axes = {n: (0 if n in parts and v is not None else None) for n, v in f._asdict().items()}
        return type(f)(**fields), type(f)(**axes)

    pairs = jax.tree.map(spread, factors, is_leaf=_is_factors)
    outer = jax.tree.structure(factors, is_leaf=_is_factors)
    flat = outer.flatten_up_to(pairs)
    spread_tree = outer.unflatten([p[0] for p in flat])
    axes_tree = outer.unflatten([p[1] for p in flat])
    return jax.vmap(fn, in_axes=(axes_tree, None))(spread_tree, x)


# ---------------------------------------------------------------- BatchEnsemble
class BatchEnsemble(NamedTuple):
    """BatchEnsemble over a target: `(init, apply, factors, members)`.

    init(key) -> hparams (scale_modulation's: "base" W0, "hyper" the linear map from member embeddings to
      r_m, s_m, "embedding" the member embeddings f[M, M], "direct" the shared ordinary params).
    apply(hparams, member) -> params of member `member` (an int id in [0, M)), materialised.
    factors(hparams) -> the target's params tree with every modulated leaf a ScaleFactors whose per-member
      scales are f[M, n]; run it with `members_apply(fn, factors, x)` -> f[M, B, ...].
    members: M.
    """

    init: Callable[[PRNGKey], HParams]
    apply: Callable[..., Params]
    factors: Callable[[HParams], Any]
    members: int

    def predict(self, hparams: HParams, fn: Callable[[Any, Any], Array], x: Any) -> Array:
        """Averaged predictive distribution f[B, C] of all members: mean over m of softmax(fn(factors_m, x))."""
        return mean_probs(members_apply(fn, self.factors(hparams), x))


def batch_ensemble(target: TargetSpec, *, members: int, mode: str = "rowcol", where: Any = common.matrices,
                   init_scale: float = 0.5, dtype: Any = jnp.float32) -> BatchEnsemble:
    """BatchEnsemble (Wen et al. 2020): member m's kernel W0 * (r_m s_m^T), one shared W0 per selected matrix.

    Built as `hyperjax.generators.scale_modulation(target, cond_dim=members, num_conds=members, hidden=(),
    mode=mode, where=where, init_scale=init_scale)`: a linear map from M learned member embeddings (f[M]) to
    every r_m, s_m, which can express any M rank-1 factors (the M embeddings span R^M). At init the scales are
    N(1, init_scale^2) (the paper initialises the fast weights around 1; 0.5 keeps members apart); leaves not
    selected (biases) are shared ordinary params.

    Trainable: sum of the selected W0 sizes + other leaves + M^2 (embeddings) + (M + 1) K, with K = sum over
    selected leaves of rows + cols ("rowcol"); the paper's free r_m, s_m are M K.
    Raises: TypeError / ValueError as `scale_modulation` (not a TargetSpec, unknown mode, non-2-D leaf),
    and for `members` that is not a positive int.
    """
    who = "ensembles.batch_ensemble"
    members = checks.positive_int(members, "members", who)
    gen = scale_modulation(target, cond_dim=members, num_conds=members, hidden=(), mode=mode, where=where,
                           init_scale=init_scale, dtype=dtype)
    ids = np.arange(members, dtype=np.int32)

    def factors(hparams: HParams) -> Any:
        return gen.factors(hparams, jnp.asarray(ids))

    return BatchEnsemble(gen.init, gen.apply, factors, members)


# ---------------------------------------------------------------- deep ensemble
class DeepEnsemble(NamedTuple):
    """M independent copies of a target as one stacked params tree: `(init, apply, members)`.

    init(key) -> params with a leading member axis on every leaf (target.init of M split keys, one vmap).
    apply(params, *args, per_member=False) -> target.apply for every member, outputs f[M, ...]; args are
      shared by all members, or (per_member=True) carry their own leading member axis (a batch per member).
    """

    init: Callable[[PRNGKey], Params]
    apply: Callable[..., Any]
    members: int

    def predict(self, params: Params, *args: Any) -> Array:
        """Averaged predictive distribution f[B, C]: mean over members of softmax(target.apply(params_m, *args))."""
        return mean_probs(self.apply(params, *args))


def deep_ensemble(target: TargetSpec, *, members: int) -> DeepEnsemble:
    """A deep ensemble (Lakshminarayanan, Pritzel & Blundell, 2017) of `members` copies of `target`.

    Each member starts from the target's own init with its own key; training the stacked tree with one Optax
    transform trains every member independently (the loss is a sum over members, Adam is elementwise).
    Raises: TypeError for a target that is not a TargetSpec, `members` that is not a positive int.
    """
    who = "ensembles.deep_ensemble"
    if not isinstance(target, TargetSpec):
        raise TypeError(f"hyperjax.{who}: `target` must be a TargetSpec (from hyperjax.targets), got "
                        f"{type(target).__name__}.")
    members = checks.positive_int(members, "members", who)

    @jax.jit
    def init(key: PRNGKey) -> Params:
        return jax.vmap(target.init)(jax.random.split(key, members))

    def apply(params: Params, *args: Any, per_member: bool = False) -> Any:
        lead = {jnp.shape(l)[0] if jnp.ndim(l) else None for l in jax.tree.leaves(params)}
        if lead != {members}:
            raise ValueError(f"hyperjax.{who}: params must carry a leading member axis of {members} on every leaf "
                             f"(from DeepEnsemble.init), got leading sizes {sorted(map(str, lead))}.")
        axes = 0 if per_member else None
        return jax.vmap(target.apply, in_axes=(0, *([axes] * len(args))))(params, *args)

    return DeepEnsemble(init, apply, members)


# ---------------------------------------------------------------- stochastic hypernetwork
class Stochastic(NamedTuple):
    """A generator conditioned on noise z ~ N(0, I_noise_dim): `(init, apply, factors, noise_dim)`.

    init(key) -> hparams; apply(hparams, z f[noise_dim]) -> params (one sample);
    factors(hparams, z f[K, noise_dim]) -> factors tree with per-sample parts f[K, n] (None unless the generator
      is a `Modulated` one: low_rank or scale_modulation).
    """

    init: Callable[[PRNGKey], HParams]
    apply: Callable[..., Params]
    factors: Callable[..., Any] | None
    noise_dim: int

    def noise(self, key: PRNGKey, samples: int) -> Array:
        """z f[samples, noise_dim] ~ N(0, I): the generators' conditioning assumes unit second moment."""
        return jax.random.normal(key, (checks.positive_int(samples, "samples", "ensembles.Stochastic.noise"),
                                       self.noise_dim), jnp.float32)

    def sample(self, hparams: HParams, key: PRNGKey, samples: int) -> Params:
        """`samples` materialised weight sets: params with a leading axis K (one vmap over the noise)."""
        return jax.vmap(self.apply, in_axes=(None, 0))(hparams, self.noise(key, samples))

    def predict(self, hparams: HParams, key: PRNGKey, fn: Callable[[Any, Any], Array], x: Any,
                samples: int) -> Array:
        """Averaged predictive distribution f[B, C] of `samples` networks drawn with `key`.

        fn(params_or_factors, x) -> logits f[B, C]. A `Modulated` generator runs the factorised path
        (`members_apply`); any other generator materialises the samples and vmaps fn over them.
        """
        z = self.noise(key, samples)
        if self.factors is not None:
            return mean_probs(members_apply(fn, self.factors(hparams, z), x))
        return mean_probs(jax.vmap(fn, in_axes=(0, None))(self.sample(hparams, key, samples), x))


def stochastic(hnet: Any, *, noise_dim: int) -> Stochastic:
    """A stochastic hypernetwork: `hnet` (built with cond_dim=noise_dim, num_conds=None) fed z ~ N(0, I).

    Any generator of `hyperjax.generators` with vector conditioning works; a `Modulated` one (low_rank,
    scale_modulation) keeps its factorised path as `Stochastic.factors`. Train it on the mean loss of K
    samples per batch plus a diversity term, e.g. `kde_repulsion(flatten_members(...))` on the generated weights.
    Raises: TypeError if `hnet` is not a hypernetwork (no apply, or a TargetSpec); ValueError if its apply does not take cond f[noise_dim]
    (checked once with `jax.eval_shape`, nothing allocated).
    """
    who = "ensembles.stochastic"
    checks.hypernetwork(hnet, who)
    if isinstance(hnet, TargetSpec):
        raise TypeError(f"hyperjax.{who}: `hnet` must be a hypernetwork, got a TargetSpec; build a generator on it, "
                        f"e.g. hyperjax.generators.scale_modulation(spec, cond_dim=noise_dim).")
    noise_dim = checks.positive_int(noise_dim, "noise_dim", who)
    try:
        abstract = jax.eval_shape(lambda: hnet.init(jax.random.key(0)))
        jax.eval_shape(hnet.apply, abstract, jax.ShapeDtypeStruct((noise_dim,), jnp.float32))
    except Exception as err:   # the generator's own error says why; re-raised naming noise_dim
        raise ValueError(f"hyperjax.{who}: the generator must take a noise vector cond f[{noise_dim}] (build it with "
                         f"cond_dim={noise_dim}, num_conds=None); calling its apply on one failed: {err}") from err
    factors = hnet.factors if isinstance(hnet, Modulated) else None
    return Stochastic(hnet.init, hnet.apply, factors, noise_dim)


# ---------------------------------------------------------------- diversity
def flatten_members(params: Any) -> Array:
    """A tree with a leading member axis K on every leaf -> f[K, D], each member's leaves raveled (tree order)."""
    return jax.vmap(lambda p: ravel_pytree(p)[0])(params)


def kde_repulsion(w: Array, bandwidth: float | Array | None = None) -> Array:
    """Kernel-density repulsion of K samples f[K, D]: mean_i log(mean_j k(w_i, stop_gradient(w_j))).

    k(a, b) = exp(-|a - b|^2 / h) with h the median heuristic median_{i != j} |w_i - w_j|^2 / log(K) (not
    differentiated) unless `bandwidth` is given. Its gradient with respect to w_i is the KDE repulsive force
    of D'Angelo & Fortuin's weight-space WGD (NeurIPS 2021, eq. 8): adding it (times a weight) to the
    loss drives samples apart, an entropy-like term that keeps a stochastic hypernetwork from collapsing.
    Value in [-log K, 0]: 0 when every sample coincides, -log K when they are far apart. Returns f32[].
    Raises: ValueError for w that is not 2-D or has fewer than 2 samples.
    """
    if jnp.ndim(w) != 2 or jnp.shape(w)[0] < 2:
        raise ValueError(f"hyperjax.ensembles.kde_repulsion: `w` must be f[K, D] with K >= 2 samples (flatten "
                         f"them with flatten_members), got shape {tuple(jnp.shape(w))}.")
    k = w.shape[0]
    w = w.astype(jnp.float32)
    fixed = jax.lax.stop_gradient(w)
    d2 = jnp.sum(jnp.square(w[:, None, :] - fixed[None, :, :]), axis=-1)   # exact 0 for equal samples
    if bandwidth is None:
        off = jax.lax.stop_gradient(d2)[~np.eye(k, dtype=bool)]
        h = jnp.maximum(jnp.median(off) / np.log(k), 1e-12)
    else:
        h = jnp.asarray(bandwidth, jnp.float32)
    return jnp.mean(jax.nn.logsumexp(-d2 / h, axis=1) - np.log(k))


# ---------------------------------------------------------------- metrics
def mean_probs(logits: Array, axis: int = 0) -> Array:
    """Average of softmax(logits) over the member axis: f[M, B, C] -> f[B, C] (the ensemble's prediction)."""
    return jnp.mean(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), axis=axis)


def _probs_labels(probs: Array, labels: Array, who: str) -> None:
    if jnp.ndim(probs) != 2 or jnp.shape(labels) != jnp.shape(probs)[:1]:
        raise ValueError(f"hyperjax.ensembles.{who}: expected probs f[N, C] and integer labels i[N], got probs "
                         f"{tuple(jnp.shape(probs))} and labels {tuple(jnp.shape(labels))}.")


def nll(probs: Array, labels: Array) -> Array:
    """Mean negative log-likelihood -log p(y | x) of probs f[N, C] (clipped at 1e-12) for labels i[N]."""
    _probs_labels(probs, labels, "nll")
    p = jnp.take_along_axis(probs, labels[:, None].astype(jnp.int32), axis=1)[:, 0]
    return -jnp.mean(jnp.log(jnp.maximum(p, 1e-12)))


def entropy(probs: Array) -> Array:
    """Predictive entropy -sum_c p_c log p_c (nats) of probs f[..., C] -> f[...]."""
    return -jnp.sum(probs * jnp.log(jnp.maximum(probs, 1e-12)), axis=-1)


class Reliability(NamedTuple):
    """Per confidence bin b (equal widths over (0, 1]): count i[bins], confidence and accuracy f[bins] (0 when empty)."""

    count: Array
    confidence: Array
    accuracy: Array


def reliability(probs: Array, labels: Array, bins: int = 15) -> Reliability:
    """Reliability diagram data: predictions binned by confidence max_c p_c into `bins` equal-width bins."""
    _probs_labels(probs, labels, "reliability")
    bins = checks.positive_int(bins, "bins", "ensembles.reliability")
    conf = jnp.max(probs, axis=1)
    correct = (jnp.argmax(probs, axis=1) == labels).astype(jnp.float32)
    idx = jnp.clip(jnp.ceil(conf * bins).astype(jnp.int32) - 1, 0, bins - 1)
    count = jax.ops.segment_sum(jnp.ones_like(conf), idx, bins)
    safe = jnp.maximum(count, 1.0)
    return Reliability(count.astype(jnp.int32), jax.ops.segment_sum(conf, idx, bins) / safe,
                       jax.ops.segment_sum(correct, idx, bins) / safe)


def ece(probs: Array, labels: Array, bins: int = 15) -> Array:
    """Expected calibration error: sum_b (n_b / N) |accuracy_b - confidence_b| over `bins` equal-width bins."""
    r = reliability(probs, labels, bins)
    n = r.count.astype(jnp.float32)
    return jnp.sum(n * jnp.abs(r.accuracy - r.confidence)) / jnp.maximum(jnp.sum(n), 1.0)


def auroc(scores_in: Array, scores_out: Array) -> Array:
    """Area under the ROC curve for telling out-of-distribution inputs (positives) by a higher score.

    scores_in f[N], scores_out f[P] (e.g. predictive entropy). Equals P(s_out > s_in) + P(s_out = s_in) / 2
    (Mann-Whitney U / (N P)): 1 separates perfectly, 0.5 is chance.
    """
    if jnp.ndim(scores_in) != 1 or jnp.ndim(scores_out) != 1 or not jnp.size(scores_in) or not jnp.size(scores_out):
        raise ValueError(f"hyperjax.ensembles.auroc: expected two non-empty score vectors, got shapes "
                         f"{tuple(jnp.shape(scores_in))} and {tuple(jnp.shape(scores_out))}.")
    s_in = jnp.sort(scores_in.astype(jnp.float32))
    s_out = scores_out.astype(jnp.float32)
    below = jnp.searchsorted(s_in, s_out, side="left").astype(jnp.float32)
    equal = jnp.searchsorted(s_in, s_out, side="right").astype(jnp.float32) - below
    return jnp.mean(below + 0.5 * equal) / s_in.shape[0]


__all__ = ["BatchEnsemble", "DeepEnsemble", "Reliability", "Stochastic", "auroc", "batch_ensemble", "deep_ensemble",
           "ece", "entropy", "flatten_members", "kde_repulsion", "mean_probs", "members_apply", "nll", "num_members",
           "reliability", "stochastic"]
