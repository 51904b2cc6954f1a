"""Row-wise generator (Diet Networks, Romero et al. 2017): each row of a D x H kernel from per-feature embeddings.

For a first layer W in R^{D x H} with a huge number D of input features, row i (the weights leaving
feature i) is W_i = g(e_i): one small MLP g shared by all rows, applied to a per-feature embedding e_i.
The embeddings are either fixed data about the features (e.g. per-class genotype histograms; never
trained) or learned. g runs once over all rows as batched matmuls, so memory is O(D * (H + hidden)).
Optionally the reconstruction decoder's kernel (H_dec x D, the transposed layout) is generated from the
same embeddings and the same hidden features by a second output head, as in the paper.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from hyperjax._src import checks
from hyperjax._src.generators import common
from hyperjax._src.spec import TargetSpec
from hyperjax._src.types import Array, HParams, HyperNetwork

WHO = "generators.rowwise"
_EPS = 1e-6


class _RowConditioning:
    """Conditioning for `assemble`: optional cond vector plus the feature embeddings (fixed or learned).

    `assemble` calls vector(hparams, c, who) with c = (cond, feature_emb override) and hands the result
    (cond vector or None, embeddings f[D, E]) to the core.
    """

    def __init__(self, inner: common.Conditioning | None, fixed: Any, emb_shape: tuple[int, int] | None):
        self.inner, self.fixed, self.emb_shape = inner, fixed, emb_shape

    def init(self, key, dtype):
        return {} if self.inner is None else self.inner.init(key, dtype)

    def vector(self, hparams: HParams, c: Any, who: str) -> tuple[Array | None, Array]:
        cond, emb = c
        if self.inner is None:
            checks.no_cond(cond, who)
            vec = None
        else:
            vec = self.inner.vector(hparams, cond, who)
        if self.emb_shape is None:                       # learned embeddings live in hparams
            if emb is not None:
                raise ValueError(f"hyperjax.{who}: this generator learns its feature embeddings "
                                 f"(hparams['feature_emb']); `feature_emb` cannot be given to apply. Build it "
                                 f"with feature_emb=... for fixed embeddings.")
            return vec, checks.hparams_entry(hparams, "feature_emb", who, "hyperjax.generators.rowwise")
        if emb is None:
            if self.fixed is None:
                raise ValueError(f"hyperjax.{who}: this generator was built with the shape of the feature "
                                 f"embeddings only; pass them at apply time: apply(hparams, feature_emb=emb) "
                                 f"with emb of shape {self.emb_shape}.")
            emb = self.fixed
        checks.feature_emb(emb, self.emb_shape, who)
        return vec, emb


def rowwise(target: TargetSpec, cond_dim: int | None = None, *, where: Any, feature_emb: Any = None,
            emb_dim: int | None = None, num_features: int | None = None, hidden: int | Sequence[int] = (64,),
            decoder: str | None = None, num_conds: int | None = None, standardize: bool = True,
            normalize: bool = True, init: str = "hyperfan_in",
            activation: Callable[[jax.Array], jax.Array] = jax.nn.relu, dtype: Any = jnp.float32) -> HyperNetwork:
    """Generate the 2-D kernel at `where` row by row: W_i = g(e_i) (Diet Networks' parameter prediction).

    Args:
      target: the TargetSpec; leaves other than `where` (and `decoder`) are ordinary params in
        hparams["direct"], as with `partial`.
      cond_dim: None (default) for a static generator: `cond` must be None. With an int, each row is
        g([e_i, c]) for a conditioning vector c: f[cond_dim] (or an integer id with `num_conds`), so
        `jax.vmap(apply, in_axes=(None, 0))` gives per-example kernels (B x D x H in memory).
      where: path or glob selecting exactly one 2-D kernel, e.g. "Dense_0/kernel". Its feature axis (the
        input axis: 0 for in_out targets such as Flax, 1 for out_in targets such as Equinox) has D entries.
      feature_emb: fixed embeddings f[D, E] (e.g. per-class feature histograms). They are data, not
        parameters: they never enter hparams, so no gradient or optimizer touches them. A concrete array
        is used as a constant; a `jax.ShapeDtypeStruct((D, E), ...)` only fixes the shape, and every call
        passes them: apply(hparams, feature_emb=emb). An array given to apply always overrides the
        build-time one (e.g. embeddings recomputed per cross-validation fold, one compiled step for all).
      emb_dim: instead of feature_emb, learn embeddings hparams["feature_emb"]: f[D, emb_dim] ~ N(0, 1).
      num_features: optional with emb_dim; checked against D.
      hidden: hidden widths of g (() for a linear map from embeddings to rows).
      decoder: optional path of the reconstruction decoder's kernel (H_dec x D for in_out targets,
        D x H_dec for out_in). Its columns W_dec[:, i] come from a second output head on the same hidden
        features of e_i.
      standardize: centre and scale each column of fixed embeddings over the D features (in apply, so
        per-fold embeddings are treated alike). Learned embeddings are left as they are.
      normalize: centre the last hidden features over the D rows and scale them to unit mean second
        moment (a norm over features, no parameters). The common component of positive ReLU features
        would otherwise add one shared vector to every row; the output bias keeps a learned common part.
        It also fixes the output scale at init whatever the scale of the embeddings. Needs hidden != ().
      init: "hyperfan_in" / "hyperfan_out": generated kernels start with variance 1/fan_in (1/fan_out).
      activation, dtype: of g; generated leaves are cast to the target's dtypes.

    apply(hparams, cond=None, *, feature_emb=None) -> params shaped like `target`.
    Trainable generator parameters, with sizes = (E + cond_dim, *hidden):
      sum over consecutive sizes (n_in + 1) * n_out  +  (hidden[-1] + 1) * H  [+ (hidden[-1] + 1) * H_dec]
      [+ D * E if learned] [+ num_conds * cond_dim]; plus the ordinary params of the other leaves.
    Memory: one f[D, h] activation per hidden layer and the f[D, H] rows; no D x E x h intermediate.
    """
    paths_all = common.generated_paths(target, where, WHO)
    path = checks.single_leaf(paths_all, where, WHO, "the kernel generated row by row")
    shape = tuple(target.leaves[path].shape)
    checks.matrix_leaf(path, shape, WHO, "rowwise")
    feat_axis = 0 if target.layout == "in_out" else 1
    d_feat, n_units = shape[feat_axis], shape[1 - feat_axis]

    checks.exclusive({"feature_emb": feature_emb, "emb_dim": emb_dim}, WHO,
                     "feature_emb=f[D, E] uses fixed embeddings; emb_dim=E learns them.")
    if feature_emb is not None:
        is_shape = isinstance(feature_emb, jax.ShapeDtypeStruct)
        emb_shape = tuple(feature_emb.shape) if is_shape else tuple(jnp.shape(feature_emb))
        emb_dtype = feature_emb.dtype if is_shape else jnp.result_type(feature_emb)
        checks.emb_matrix(emb_shape, emb_dtype, WHO)
        checks.feature_count("feature_emb", emb_shape[0], path, shape, feat_axis, WHO)
        fixed = None if is_shape else feature_emb
        e_dim = checks.positive_int(emb_shape[1], "feature_emb.shape[1]", WHO)
    else:
        e_dim = checks.positive_int(emb_dim, "emb_dim", WHO)
        if num_features is not None:
            checks.feature_count("num_features", checks.positive_int(num_features, "num_features", WHO),
                                 path, shape, feat_axis, WHO)
        fixed, emb_shape = None, None
    if cond_dim is None and num_conds is not None:
        raise ValueError(f"hyperjax.{WHO}: `num_conds` needs `cond_dim` (the size of the learned embedding "
                         f"per id).")
    inner = None if cond_dim is None else common.conditioning(cond_dim, num_conds, WHO)
    c_dim = 0 if inner is None else inner.cond_dim
    hidden = checks.positive_ints(hidden, "hidden", WHO)

    gen_paths = [path]
    dec_axis = dec_units = None
    if decoder is not None:
        dec_paths = common.generated_paths(target, decoder, WHO)
        dec_path = checks.single_leaf(dec_paths, decoder, WHO, "the decoder kernel")
        dec_shape = tuple(target.leaves[dec_path].shape)
        checks.matrix_leaf(dec_path, dec_shape, WHO, "rowwise(decoder=...)")
        if dec_path == path:
            raise ValueError(f"hyperjax.{WHO}: `decoder` and `where` both select '{path}'; the decoder is "
                             f"the reconstruction layer's kernel (H_dec x D), a different leaf.")
        dec_axis = 1 - feat_axis                                  # the decoder's output axis holds the features
        checks.decoder_features(dec_path, dec_shape, dec_axis, d_feat, path, WHO)
        dec_units = dec_shape[1 - dec_axis]
        gen_paths.append(dec_path)

    mean, std = common.leaf_moments(target, gen_paths, init, WHO)
    sizes = (e_dim + c_dim, *hidden)
    d_k = sizes[-1]
    use_norm = normalize and bool(hidden)

    def head_init(key, n_out, i):
        w = jax.random.normal(key, (d_k, n_out), dtype) * jnp.asarray(std[i] / math.sqrt(d_k), dtype)
        return {"w": w, "b": jnp.full((n_out,), mean[i], dtype)}

    def core_init(key):
        k_trunk, k_head, k_dec, k_emb = jax.random.split(key, 4)
        trunk = common.mlp_init(k_trunk, sizes, dtype) if hidden else []     # He-normal hidden layers
        out = {"trunk": trunk, "head": head_init(k_head, n_units, 0)}
        if decoder is not None:
            out["decoder_head"] = head_init(k_dec, dec_units, 1)
        if emb_shape is None:
            out["feature_emb"] = jax.random.normal(k_emb, (d_feat, e_dim), dtype)
        return out

    def features(trunk, c, emb):
        """emb f[D, E], c f[cond_dim] or None -> hidden features f[D, d_k] (one matmul per layer over all rows)."""
        x = emb.astype(dtype)
        if emb_shape is not None and standardize:
            mu = jnp.mean(x, axis=0, keepdims=True)
            x = (x - mu) * jax.lax.rsqrt(jnp.maximum(jnp.mean(jnp.square(x - mu), axis=0, keepdims=True), _EPS))
        if not trunk:
            return x if c is None else jnp.concatenate([x, jnp.broadcast_to(c[None, :], (d_feat, c_dim))], 1)
        for i, layer in enumerate(trunk):
            w, b = layer["w"], layer["b"][None, :]
            if i == 0 and c is not None:      # [e_i, c] @ w without a D x (E + cond_dim) concatenation
                x = x @ w[:e_dim] + (c.astype(dtype) @ w[e_dim:])[None, :] + b
            else:
                x = x @ w + b
            x = activation(x)
        if use_norm:
            x = x - jnp.mean(x, axis=0, keepdims=True)
            x = x * jax.lax.rsqrt(jnp.maximum(jnp.mean(jnp.sum(jnp.square(x), axis=1)) / d_k, _EPS))
        return x

    def core_apply(hparams, vec_emb):
        c, emb = vec_emb
        h = features(hparams["trunk"], c, emb)
        rows = h @ hparams["head"]["w"] + hparams["head"]["b"][None, :]          # f[D, H]
        out = {path: (rows if feat_axis == 0 else rows.T).astype(target.leaves[path].dtype)}
        if decoder is not None:
            cols = h @ hparams["decoder_head"]["w"] + hparams["decoder_head"]["b"][None, :]   # f[D, H_dec]
            out[gen_paths[1]] = (cols if dec_axis == 0 else cols.T).astype(target.leaves[gen_paths[1]].dtype)
        return out

    cond = _RowConditioning(inner, fixed, None if emb_shape is None else (d_feat, e_dim))
    assembled = common.assemble(target, gen_paths, common.Core(core_init, core_apply), cond, dtype, WHO)

    def apply(hparams: HParams, cond: Array | None = None, *, feature_emb: Array | None = None) -> Any:
        """cond: None (static) or f[cond_dim] / int id; feature_emb: f[D, E] overriding the build-time one."""
        return assembled.apply(hparams, (cond, feature_emb))

    return HyperNetwork(assembled.init, apply)


def rowwise_param_count(*, emb_dim: int, units: int, hidden: Sequence[int] = (64,), cond_dim: int = 0,
                        decoder_units: int = 0, num_features: int = 0, num_conds: int = 0) -> int:
    """Trainable scalars of `rowwise`'s generator (excluding the ordinary params of other leaves).

    num_features: D when the embeddings are learned (adds D * emb_dim), 0 for fixed embeddings.
    """
    sizes = (emb_dim + cond_dim, *hidden)
    n = sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))
    n += (sizes[-1] + 1) * units + ((sizes[-1] + 1) * decoder_units if decoder_units else 0)
    return int(n + num_features * emb_dim + num_conds * cond_dim)
