"""Codebook soft weight sharing: every weight slot is a learned soft choice among K shared values.

w_i = softmax(A_i / tau) . v, with per-slot logits A_i: f[K] and codebook values v: f[K], trained jointly.
As tau -> 0 (annealed at apply time, no recompiling) each slot commits to one value; `codebook_export`
then replaces the soft choice by the argmax, so the selected leaves hold at most K distinct values
(a K-entry table plus a log2(K)-bit index per weight). Regularisers: `codebook_entropy` (mean row
entropy: push each slot to one value) and `codebook_usage_kl` (KL from the mean assignment to a prior).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hyperjax._src import checks
from hyperjax._src import paths as _paths
from hyperjax._src.generators import common
from hyperjax._src.spec import TargetSpec
from hyperjax._src.types import Array, HParams, HyperNetwork, Params

WHO = "generators.codebook"


def codebook(target: TargetSpec, *, num_values: int, cond_dim: None = None, num_conds: None = None,
             where: Any = None, tau: float = 1.0, shared: bool = True, init: str = "hyperfan_in",
             init_spread: float = 0.5, dtype: Any = jnp.float32) -> HyperNetwork:
    """Soft weight sharing: each scalar of the selected leaves is softmax(A_i / tau) . v.

    Args:
      target: the TargetSpec; leaves not matched by `where` are ordinary params in hparams["direct"].
      num_values: K, the number of shared values.
      cond_dim, num_conds: must be None: soft sharing learns one set of weights, so there is no conditioned
        form (for conditioned weights, generate the logits' target with another generator). Given, they raise.
      where: glob(s) or `(path, leaf) -> bool` choosing the shared leaves (e.g. "*/kernel"); None: all.
      tau: default temperature (> 0), used when apply gets tau=None.
      shared: True (default): one codebook v: f[K] for all selected leaves, so the exported model holds
        at most K distinct values in total. False: one codebook per leaf (hparams["codebook"]["values"]
        nested by path), at most K distinct values per leaf.
      init: "hyperfan_in" / "hyperfan_out". A reference weight w0 is drawn per slot with the variance a
        fan-in (fan-out) init gives its leaf; v starts at the K quantiles (k + 1/2) / K of all w0 of its
        codebook, and A_ik = -(w0_i - v_k)^2 / (2 s^2) with s = init_spread * std(w0): a soft nearest-value
        assignment. The values are then mapped affinely so that the soft weights have the mean and
        variance of w0 (the soft average of neighbouring values would otherwise shrink it).
      init_spread: width of that initial assignment in units of std(w0) (> 0). Narrow (e.g. half a codebook
        spacing) pins each slot near its first value, where the gradient to distant values vanishes; on the
        digits MLP 0.5 trained best (experiments/learned_sharing.py) and the width does not depend on K.
      dtype: of the logits and values; generated leaves are cast to the target's dtypes.

    hparams: {"hyper": {"logits": {path parts: f[*leaf_shape, K]}, "values": f[K] (or per leaf)},
              "direct": ...}.
    apply(hparams, cond=None, *, tau=None): cond must be None (static). tau: the temperature, a floating
      scalar f[] (a traced value, so an annealed tau needs no recompiling; must be > 0) or None for the
      factory's `tau`. The weights are materialised once per call (n x K for n shared scalars), never per
      example: call apply once per step, then run the target on a batch.
    Trainable parameters: n * K + K (shared) or n * K + K * num_leaves (per leaf); plus the ordinary params.
    Raises: TypeError for a non-TargetSpec target; ValueError for num_values <= 0, tau <= 0, a cond_dim or
    num_conds (no conditioned form), or `where` matching no leaf.
    """
    paths = common.generated_paths(target, where, WHO)
    _no_conditioned_form(cond_dim, num_conds)
    k = checks.positive_int(num_values, "num_values", WHO)
    default_tau = checks.positive_float(tau, "tau", WHO)
    spread = checks.positive_float(init_spread, "init_spread", WHO)
    mean, std = common.leaf_moments(target, paths, init, WHO)
    shapes = {p: tuple(target.leaves[p].shape) for p in paths}

    def core_init(key):
        w0 = _reference_weights(key, paths, shapes, mean, std)
        init_one = functools.partial(_values_and_logits, k=k, spread=spread, dtype=dtype)
        logits, values = (_shared_book if shared else _per_leaf_books)(w0, shapes, paths, init_one)
        return {"hyper": {"logits": _paths.nest(logits), "values": values}}

    def core_apply(hparams, _, *, tau=None):
        if tau is not None:
            checks.temperature(tau, WHO)
        t = jnp.asarray(default_tau if tau is None else tau, jnp.float32)
        return _soft_weights(hparams["hyper"], target, paths, shared, t)

    assembled = common.assemble(target, paths, common.Core(core_init, core_apply), common.NoCond(), dtype, WHO)

    def apply(hparams: HParams, cond: None = None, *, tau: Array | float | None = None) -> Params:
        """cond: None (static); tau: the temperature f[] > 0, or None for the factory's tau -> params."""
        return assembled.apply(hparams, cond, tau=tau)

    return HyperNetwork(assembled.init, apply)


def _no_conditioned_form(cond_dim: Any, num_conds: Any) -> None:
    """codebook is static only: a cond_dim or num_conds raises, saying why and what to use instead."""
    if cond_dim is not None or num_conds is not None:
        raise ValueError(f"hyperjax.{WHO}: codebook has no conditioned form (cond_dim={cond_dim!r}, "
                         f"num_conds={num_conds!r}): soft sharing learns one set of weights, w = softmax(A / tau) "
                         f". v. Build it with cond_dim=None and num_conds=None; for task-conditioned weights use "
                         f"dense, chunked, per_layer or low_rank.")


def _reference_weights(key: Array, paths: tuple[str, ...], shapes: dict[str, tuple[int, ...]], mean: Any,
                       std: Any) -> dict[str, Array]:
    """{path: w0 f32[leaf size]}: one reference weight per slot with its leaf's init mean and std."""
    z = common.normals(key, [(math.prod(shapes[p]),) for p in paths], jnp.float32)
    return {p: mean[i] + std[i] * z[i] for i, p in enumerate(paths)}


def _values_and_logits(w0: Array, *, k: int, spread: float, dtype: Any) -> tuple[Array, Array]:
    """Reference weights f[m] -> (codebook f[K] at the quantiles of w0, soft nearest-value logits f[m, K])."""
    v = jnp.quantile(w0, (jnp.arange(k, dtype=jnp.float32) + 0.5) / k)
    s = spread * jnp.std(w0) + 1e-12
    logits = -jnp.square(w0[:, None] - v[None, :]) / (2.0 * s * s)
    logits = logits - jnp.max(logits, axis=1, keepdims=True)
    # the soft choice averages neighbouring values, which shrinks the variance (to ~0.62x at K=16 for the
    # default spread): an affine map of the values (rows of softmax sum to 1) restores mean and variance
    soft = jax.nn.softmax(logits, axis=1) @ v
    gain = jnp.std(w0) / jnp.maximum(jnp.std(soft), 1e-12)
    v = (v - jnp.mean(soft)) * gain + jnp.mean(w0)
    return v.astype(dtype), logits.astype(dtype)


def _shared_book(w0: dict[str, Array], shapes: dict[str, tuple[int, ...]], paths: tuple[str, ...],
                 init_one: Any) -> tuple[dict[str, Array], Array]:
    """One codebook f[K] from all reference weights -> ({path: logits f[*shape, K]}, values f[K])."""
    v, a = init_one(jnp.concatenate([w0[p] for p in paths]))
    offsets = np.cumsum([0] + [w0[p].shape[0] for p in paths])
    k = a.shape[-1]
    return {p: a[offsets[i]:offsets[i + 1]].reshape(*shapes[p], k) for i, p in enumerate(paths)}, v


def _per_leaf_books(w0: dict[str, Array], shapes: dict[str, tuple[int, ...]], paths: tuple[str, ...],
                    init_one: Any) -> tuple[dict[str, Array], Any]:
    """One codebook per leaf -> ({path: logits f[*shape, K]}, values nested by path {parts: f[K]})."""
    logits, values = {}, {}
    for p in paths:
        v, a = init_one(w0[p])
        logits[p], values[p] = a.reshape(*shapes[p], a.shape[-1]), v
    return logits, _paths.nest(values)


def _soft_weights(book: dict[str, Any], target: TargetSpec, paths: tuple[str, ...], shared: bool,
                  t: Array) -> dict[str, Array]:
    """{path: softmax(A / t) . v}, cast to the leaf's dtype; the n x K assignment is made once per call."""
    logits = _paths.unnest(book["logits"], paths)
    values = book["values"] if shared else _paths.unnest(book["values"], paths)
    out = {}
    for p in paths:
        v = values if shared else values[p]
        out[p] = _soft_choice(logits[p], v, t).astype(target.leaves[p].dtype)
    return out


def _soft_choice(a: Array, v: Array, t: Array) -> Array:
    """softmax(a / t) @ v for logits a: f[..., K], values v: f[K], temperature t: f[] -> f[...].

    Written with dots where the textbook form reduces: the sums over K are matrix-vector products, and the
    logits enter through `common.shared`, so under `jax.vmap` over t their cotangent is summed over the
    vmapped axis by a dot instead of a reduce over it. Same values (softmax is shift invariant,
    so the max is only for range and carries no gradient). `benchmarks/codebook_grad.py`: on 2 CPU cores the
    gradient over 8 temperatures of the quickstart MLP's kernels (85,504 slots, K = 16) is 2.8x faster than
    the textbook `jax.nn.softmax(a / t) @ v`, in a loop and vmapped.
    """
    z = common.shared(a, jnp.asarray(t)) * (1.0 / t).astype(a.dtype)
    e = jnp.exp(z - jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True)))
    return (e @ v) / (e @ jnp.ones_like(v))


# ---------------------------------------------------------------- regularisers
def _book(hparams: HParams, who: str) -> dict[str, Any]:
    """hparams["hyper"] of a codebook generator ({"logits", "values"}), or a clear error."""
    hyper = checks.hparams_entry(hparams, "hyper", who, "hyperjax.generators.codebook")
    if not isinstance(hyper, dict) or "logits" not in hyper or "values" not in hyper:
        raise ValueError(f"hyperjax.{who}: hparams['hyper'] has no codebook 'logits' and 'values'; pass the "
                         f"hparams made by hyperjax.generators.codebook(...).init(key).")
    return hyper


def _logit_leaves(hparams: HParams, who: str) -> list[Array]:
    book = _book(hparams, who)
    return [a.reshape(-1, a.shape[-1]) for a in jax.tree.leaves(book["logits"])]


def _tau(tau: Any, who: str) -> Any:
    if isinstance(tau, (int, float, np.integer, np.floating)) and not isinstance(tau, bool):
        return checks.positive_float(tau, "tau", who)
    checks.temperature(tau, who)
    return tau


def codebook_entropy(hparams: HParams, tau: Any = 1.0) -> Array:
    """Mean over all slots of the entropy (nats) of softmax(A_i / tau): 0 when every slot picks one value.

    hparams: from `codebook(...).init`; tau: a positive float or a floating scalar array. Returns f32[].
    """
    who = "generators.codebook_entropy"
    tau = _tau(tau, who)
    total, n = jnp.zeros((), jnp.float32), 0
    for a in _logit_leaves(hparams, who):
        z = a.astype(jnp.float32) / tau
        logp = jax.nn.log_softmax(z, axis=-1)
        total = total - jnp.sum(jnp.exp(logp) * logp)
        n += a.shape[0]
    return total / n


def codebook_usage(hparams: HParams, tau: Any = 1.0) -> Array:
    """Mean soft assignment over all slots, q_k = mean_i softmax(A_i / tau)_k: f32[K], sums to 1."""
    who = "generators.codebook_usage"
    tau = _tau(tau, who)
    leaves = _logit_leaves(hparams, who)
    total = sum(jnp.sum(jax.nn.softmax(a.astype(jnp.float32) / tau, axis=-1), axis=0) for a in leaves)
    return total / sum(a.shape[0] for a in leaves)


def codebook_usage_kl(hparams: HParams, tau: Any = 1.0, prior: Any = None) -> Array:
    """KL(q || prior) = sum_k q_k log(q_k / prior_k) with q = `codebook_usage(hparams, tau)`.

    prior: f[K], positive, summing to 1; None for uniform (then KL = log K - H(q): 0 when all K values
    are used equally). With per-leaf codebooks the assignments of all leaves are pooled. Returns f32[].
    """
    who = "generators.codebook_usage_kl"
    q = codebook_usage(hparams, tau)
    k = q.shape[0]
    if prior is None:
        prior = jnp.full((k,), 1.0 / k, jnp.float32)
    else:
        if tuple(jnp.shape(prior)) != (k,):
            raise ValueError(f"hyperjax.{who}: `prior` must have shape ({k},) (num_values), got "
                             f"{tuple(jnp.shape(prior))}.")
        if not isinstance(prior, jax.core.Tracer):
            pr = np.asarray(prior, np.float64)
            if (pr <= 0).any() or abs(pr.sum() - 1.0) > 1e-4:
                raise ValueError(f"hyperjax.{who}: `prior` must be positive and sum to 1, got sum "
                                 f"{pr.sum():.6g} and minimum {pr.min():.6g}.")
        prior = jnp.asarray(prior, jnp.float32)
    return jnp.sum(q * (jnp.log(jnp.maximum(q, 1e-30)) - jnp.log(prior)))


# ---------------------------------------------------------------- hard export
def codebook_export(hnet: HyperNetwork, hparams: HParams) -> tuple[Params, dict[str, Any]]:
    """Hard assignment: every slot takes the value of its argmax logit. Not jittable (returns a report).

    Returns (params, info): params shaped like the target, the shared leaves holding only codebook values
    (at most K distinct values per codebook); info = {
      "num_values": K, "num_codebooks", "slots": n shared scalars, "used_values": codebook entries used,
      "distinct_values": distinct floats among the shared leaves, "usage": counts per entry (shared codebook),
      "bits_dense": n * bits of the leaf dtype, "bits_indexed": n * ceil(log2 K) + entries * value bits,
      "bits_entropy": n * H(usage) + used * value bits (ideal entropy-coded indices),
      "compression": bits_dense / bits_indexed, "compression_entropy": bits_dense / bits_entropy}.
    """
    who = "generators.codebook_export"
    checks.hypernetwork(hnet, who)
    book = _book(hparams, who)

    def harden(a):
        hard = jax.nn.one_hot(jnp.argmax(a, axis=-1), a.shape[-1], dtype=a.dtype)
        return jnp.where(hard > 0, jnp.zeros((), a.dtype), jnp.full((), -jnp.inf, a.dtype))

    hard_hp = {**hparams, "hyper": {**book, "logits": jax.tree.map(harden, book["logits"])}}
    params = jax.jit(hnet.apply)(hard_hp)     # one compile instead of op-by-op dispatch

    logits = [np.asarray(a) for a in jax.tree.leaves(book["logits"])]
    k = logits[0].shape[-1]
    shared = not isinstance(book["values"], dict)
    value_leaves = [np.asarray(book["values"])] * len(logits) if shared else \
        [np.asarray(v) for v in jax.tree.leaves(book["values"])]
    idx = [np.argmax(a, axis=-1).reshape(-1) for a in logits]
    chosen = np.concatenate([v[i] for v, i in zip(value_leaves, idx)])
    n = int(chosen.size)
    value_bits = 8 * np.dtype(value_leaves[0].dtype).itemsize
    gen_paths = [p for p, _ in _paths.leaves_with_paths(book["logits"])]
    dense_bits = 0
    flat_params = dict(_paths.leaves_with_paths(params))
    for p, a in zip(gen_paths, logits):
        dense_bits += int(np.prod(a.shape[:-1])) * 8 * np.dtype(flat_params[p].dtype).itemsize
    if shared:
        counts = np.bincount(np.concatenate(idx), minlength=k)
        used, groups = int((counts > 0).sum()), [counts]
    else:
        groups = [np.bincount(i, minlength=k) for i in idx]
        used = int(sum((c > 0).sum() for c in groups))
    entropy_bits = sum(float(-(c[c > 0] / c.sum() * np.log2(c[c > 0] / c.sum())).sum() * c.sum()) for c in groups)
    n_books = 1 if shared else len(logits)
    indexed_bits = n * math.ceil(math.log2(k)) + n_books * k * value_bits
    entropy_total = entropy_bits + used * value_bits
    info = {"num_values": k, "num_codebooks": n_books, "slots": n, "used_values": used,
            "distinct_values": int(np.unique(np.concatenate([np.asarray(flat_params[p]).reshape(-1)
                                                             for p in gen_paths])).size),
            "usage": [int(c) for c in groups[0]] if shared else None,
            "bits_dense": int(dense_bits), "bits_indexed": int(indexed_bits), "bits_entropy": float(entropy_total),
            "compression": dense_bits / indexed_bits, "compression_entropy": dense_bits / max(entropy_total, 1.0)}
    return params, info
