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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from hyperjax._src import checks
from hyperjax._src.generators import common
from hyperjax._src.spec import TargetSpec
from hyperjax._src.types import Array, HParams, HyperNetwork

WHO = "generators.rowwise"
_EPS = 1e-6


class _Emb(NamedTuple):
    """The feature embeddings: learned (shape None: they live in hparams) or fixed data f[D, E]."""

    d_feat: int
    e_dim: int
    learned: bool
    fixed: Any          # a concrete f[D, E] given at build time, or None (then apply must get feature_emb)

    def resolve(self, hparams: HParams, given: Any) -> Array:
        """The f[D, E] embeddings for one apply call."""
        if self.learned:
            if given is not None:
                raise ValueError(f"hyperjax.{WHO}: this generator learns its feature embeddings "
                                 f"(hparams['embedding']['feature_emb']); `feature_emb` cannot be given to apply. "
                                 f"Build it with feature_emb=... for fixed embeddings.")
            return hparams["embedding"]["feature_emb"]
        if given is None:
            if self.fixed is None:
                raise ValueError(f"hyperjax.{WHO}: this generator was built with the shape of the feature "
                                 f"embeddings only; pass them at apply time: apply(hparams, feature_emb=emb) "
                                 f"with emb of shape {(self.d_feat, self.e_dim)}.")
            given = self.fixed
        checks.feature_emb(given, (self.d_feat, self.e_dim), WHO)
        return given


def _embeddings(feature_emb: Any, emb_dim: Any, num_features: Any, path: str, shape: tuple[int, ...],
                feat_axis: int) -> _Emb:
    """Check feature_emb / emb_dim / num_features against the generated kernel."""
    checks.exclusive({"feature_emb": feature_emb, "emb_dim": emb_dim}, WHO,
                     "feature_emb=f[D, E] uses fixed embeddings; emb_dim=E learns them.")
    d_feat = shape[feat_axis]
    if feature_emb is None:
        e_dim = checks.positive_int(emb_dim, "emb_dim", WHO)
        if num_features is not None:
            checks.feature_count("num_features", checks.positive_int(num_features, "num_features", WHO),
                                 path, shape, feat_axis, WHO)
        return _Emb(d_feat, e_dim, True, None)
    is_shape = isinstance(feature_emb, jax.ShapeDtypeStruct)
    emb_shape = tuple(feature_emb.shape) if is_shape else tuple(jnp.shape(feature_emb))
    emb_dtype = feature_emb.dtype if is_shape else jnp.result_type(feature_emb)
    checks.emb_matrix(emb_shape, emb_dtype, WHO)
    checks.feature_count("feature_emb", emb_shape[0], path, shape, feat_axis, WHO)
    e_dim = checks.positive_int(emb_shape[1], "feature_emb.shape[1]", WHO)
    return _Emb(d_feat, e_dim, False, None if is_shape else feature_emb)


def _decoder_leaf(target: TargetSpec, decoder: str, path: str, feat_axis: int, d_feat: int
                  ) -> tuple[str, int, int]:
    """(path, output axis holding the D features, H_dec) of the generated decoder kernel."""
    dec_path = checks.single_leaf(common.generated_paths(target, decoder, WHO), decoder, WHO, "the decoder kernel")
    dec_shape = tuple(target.leaves[dec_path].shape)
    checks.matrix_leaf(dec_path, dec_shape, WHO, "rowwise(decoder=...)")
    if dec_path == path:
        raise ValueError(f"hyperjax.{WHO}: `decoder` and `where` both select '{path}'; the decoder is "
                         f"the reconstruction layer's kernel (H_dec x D), a different leaf.")
    dec_axis = 1 - feat_axis                                  # the decoder's output axis holds the features
    checks.decoder_features(dec_path, dec_shape, dec_axis, d_feat, path, WHO)
    return dec_path, dec_axis, dec_shape[1 - dec_axis]


def _trunk(trunk: list[dict[str, Array]], c: Array | None, x: Array, e_dim: int, normalize: bool,
           activation: Callable[[Array], Array], dtype: Any) -> Array:
    """Embeddings x f[D, E] (+ c f[cond_dim]) -> hidden features f[D, d_k], one matmul per layer over all rows."""
    d_feat = x.shape[0]
    if not trunk:
        return x if c is None else jnp.concatenate([x, jnp.broadcast_to(c[None, :], (d_feat, c.shape[0]))], 1)
    for i, layer in enumerate(trunk):
        w, b = layer["w"], layer["b"][None, :]
        if i == 0 and c is not None:      # [e_i, c] @ w without a D x (E + cond_dim) concatenation
            cw = c.astype(dtype) @ w[e_dim:]                 # the cond's part; x @ w[:e_dim] is shared by every cond
            x = common.shared(x @ w[:e_dim] + b, cw) + cw[None, :]
        else:
            x = x @ w + b
        x = activation(x)
    if normalize:
        x = x - jnp.mean(x, axis=0, keepdims=True)
        x = x * jax.lax.rsqrt(jnp.maximum(jnp.mean(jnp.sum(jnp.square(x), axis=1)) / x.shape[1], _EPS))
    return x


def _standardized(x: Array) -> Array:
    """Centre and scale each column of f[D, E] over the D features."""
    mu = jnp.mean(x, axis=0, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(jnp.maximum(jnp.mean(jnp.square(x - mu), axis=0, keepdims=True), _EPS))


def rowwise(target: TargetSpec, *, where: Any, cond_dim: int | None = None, num_conds: int | None = None,
            feature_emb: Any = None, emb_dim: int | None = None, num_features: int | None = None,
            hidden: int | Sequence[int] = common.DEFAULT_HIDDEN, decoder: str | None = None,
            standardize: bool = True, normalize: bool = True, init: str = "hyperfan_in",
            activation: Callable[[jax.Array], jax.Array] = jax.nn.relu, dtype: Any = jnp.float32) -> HyperNetwork:
    """Generate the 2-D kernel at `where` row by row: W_i = g(e_i) (Diet Networks' parameter prediction).

    Args:
      target: the TargetSpec; leaves other than `where` (and `decoder`) are ordinary params in
        hparams["direct"], as with `partial`.
      where: path or glob selecting exactly one 2-D kernel, e.g. "Dense_0/kernel" (required). Its feature
        axis (the input axis: 0 for in_out targets such as Flax, 1 for out_in targets such as Equinox) has D
        entries.
      cond_dim: None (default) for a static generator: `cond` must be None. With an int, each row is
        g([e_i, c]) for a conditioning vector c: f[cond_dim] (or an integer id with `num_conds`; traced
        out-of-range ids give NaN weights), so `jax.vmap(apply, in_axes=(None, 0))` gives per-example
        kernels (B x D x H in memory).
      num_conds: with cond_dim, `cond` is an integer id in [0, num_conds) (hparams["embedding"]["cond_emb"]).
      feature_emb: fixed embeddings f[D, E] (e.g. per-class feature histograms). They are data, not
        parameters: they never enter hparams, so no gradient or optimizer touches them. A concrete array
        is used as a constant; a `jax.ShapeDtypeStruct((D, E), ...)` only fixes the shape, and every call
        passes them: apply(hparams, feature_emb=emb). An array given to apply always overrides the
        build-time one (e.g. embeddings recomputed per cross-validation fold, one compiled step for all).
      emb_dim: instead of feature_emb, learn embeddings hparams["embedding"]["feature_emb"]: f[D, emb_dim].
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
    hparams: {"hyper": {"trunk": [...], "head": {...}, ["decoder_head"]}, "embedding": {["feature_emb"],
    ["cond_emb"]}, "direct": ...}.
    Trainable generator parameters, with sizes = (E + cond_dim, *hidden):
      sum over consecutive sizes (n_in + 1) * n_out  +  (hidden[-1] + 1) * H  [+ (hidden[-1] + 1) * H_dec]
      [+ D * E if learned] [+ num_conds * cond_dim]; plus the ordinary params of the other leaves.
    Memory: one f[D, h] activation per hidden layer and the f[D, H] rows; no D x E x h intermediate.
    Raises: TypeError for a non-TargetSpec target; ValueError when `where` does not pick exactly one 2-D
    leaf, for both or neither of feature_emb / emb_dim, feature counts that differ from D, a bad decoder.
    """
    path = checks.single_leaf(common.generated_paths(target, where, WHO), where, WHO, "the kernel generated row by row")
    shape = tuple(target.leaves[path].shape)
    checks.matrix_leaf(path, shape, WHO, "rowwise")
    feat_axis = 0 if target.layout == "in_out" else 1
    n_units = shape[1 - feat_axis]
    emb = _embeddings(feature_emb, emb_dim, num_features, path, shape, feat_axis)
    cond = common.conditioning(cond_dim, num_conds, WHO, static=common.NoCond())
    hidden = checks.positive_ints(hidden, "hidden", WHO)
    dec = None if decoder is None else _decoder_leaf(target, decoder, path, feat_axis, emb.d_feat)
    gen_paths = [path] + ([] if dec is None else [dec[0]])
    mean, std = common.leaf_moments(target, gen_paths, init, WHO)
    sizes = (emb.e_dim + cond.dim, *hidden)
    d_k = sizes[-1]

    def head_init(z, n_out, i):
        return {"w": z * jnp.asarray(std[i] / math.sqrt(d_k), dtype), "b": jnp.full((n_out,), mean[i], dtype)}

    def core_init(key):
        k_trunk, k_rest = jax.random.split(key)
        shapes = [(d_k, n_units)] + ([(d_k, dec[2])] if dec is not None else []) \
            + ([(emb.d_feat, emb.e_dim)] if emb.learned else [])
        z = common.normals(k_rest, shapes, dtype)                            # heads and embeddings: one draw
        hyper = {"trunk": common.mlp_init(k_trunk, sizes, dtype) if hidden else [],     # He-normal hidden layers
                 "head": head_init(z[0], n_units, 0)}
        if dec is not None:
            hyper["decoder_head"] = head_init(z[1], dec[2], 1)
        learned = {"feature_emb": z[-1]} if emb.learned else {}
        return {"hyper": hyper, "embedding": learned}

    def core_apply(hparams, c, *, feature_emb=None):
        x = emb.resolve(hparams, feature_emb).astype(dtype)
        if not emb.learned and standardize:
            x = _standardized(x)
        hyper = hparams["hyper"]
        h = _trunk(hyper["trunk"], c, x, emb.e_dim, normalize and bool(hidden), activation, dtype)
        rows = h @ hyper["head"]["w"] + hyper["head"]["b"][None, :]          # f[D, H]
        out = {path: (rows if feat_axis == 0 else rows.T).astype(target.leaves[path].dtype)}
        if dec is not None:
            cols = h @ hyper["decoder_head"]["w"] + hyper["decoder_head"]["b"][None, :]   # f[D, H_dec]
            out[dec[0]] = (cols if dec[1] == 0 else cols.T).astype(target.leaves[dec[0]].dtype)
        return out

    assembled = common.assemble(target, gen_paths, common.Core(core_init, core_apply), cond, dtype, WHO)

    def apply(hparams: HParams, cond: Array | None = None, *, feature_emb: Array | None = None) -> Any:
        """cond: None (static) or f[cond_dim] / int id; feature_emb: f[D, E] overriding the build-time one."""
        return assembled.apply(hparams, cond, feature_emb=feature_emb)

    return HyperNetwork(assembled.init, apply)


def rowwise_param_count(*, emb_dim: int, units: int, hidden: Sequence[int] = (64,), cond_dim: int = 0,
                        decoder_units: int = 0, num_features: int = 0, num_conds: int = 0) -> int:
    """Trainable scalars of `rowwise`'s generator (excluding the ordinary params of other leaves).

    num_features: D when the embeddings are learned (adds D * emb_dim), 0 for fixed embeddings.

    Raises:
      TypeError: an option that is not an int (`hidden`: not a sequence of ints).
      ValueError: emb_dim / units or a hidden width <= 0; cond_dim, decoder_units, num_features, num_conds < 0.
    """
    who = "generators.rowwise_param_count"
    checks.positive_int(emb_dim, "emb_dim", who)
    checks.positive_int(units, "units", who)
    hidden = checks.positive_ints(hidden, "hidden", who)
    for option, value in (("cond_dim", cond_dim), ("decoder_units", decoder_units),
                          ("num_features", num_features), ("num_conds", num_conds)):
        checks.non_negative_int(value, option, who)
    sizes = (emb_dim + cond_dim, *hidden)
    n = sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))
    n += (sizes[-1] + 1) * units + ((sizes[-1] + 1) * decoder_units if decoder_units else 0)
    return int(n + num_features * emb_dim + num_conds * cond_dim)
