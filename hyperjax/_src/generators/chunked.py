"""Chunked generator: one shared MLP, vmapped over learned chunk embeddings, emits the target in chunks."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from hyperjax._src import checks
from hyperjax._src.generators import common
from hyperjax._src.spec import TargetSpec
from hyperjax._src.types import HyperNetwork

_N_CALIBRATION = 16   # unit-normal conds averaged to scale the output layer at init


@jax.custom_vjp
def _output_layer(h: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """h f[n_chunks, d] @ w f[d, chunk_size] + b f[chunk_size]: every chunk through the shared output layer.

    The backward computes dw = h^T g with the small h as the left operand. JAX's own transpose of a matmul
    is dot_general(g, h): under `jax.vmap` over conds it contracts two axes (cond, chunk) of the big
    cotangent g f[B, n_chunks, chunk_size], and XLA CPU then copies g transposed to f[chunk_size,
    B * n_chunks] before the dot (a strided pass over every generated scalar of every cond). With h on the
    left, XLA transposes h (B x n_chunks x d) instead. Reverse mode only: jax.jvp / jacfwd through it raise.
    """
    return h @ w + b[None, :]


def _output_layer_fwd(h, w, b):
    return h @ w + b[None, :], (h, w)


def _output_layer_bwd(res, g):
    h, w = res
    dw = jax.lax.dot_general(h, g, (((0,), (0,)), ((), ())))
    return g @ w.T, dw.astype(w.dtype), jnp.sum(g, axis=0)


_output_layer.defvjp(_output_layer_fwd, _output_layer_bwd)


def _under_mesh() -> bool:
    """True while tracing under a multi-device mesh context (`with jax.set_mesh(mesh):`): then the flat
    vector is split with `_mesh_split`."""
    mesh = jax.sharding.get_abstract_mesh()
    return not mesh.empty and mesh.size > 1


def _mesh_split(target: TargetSpec, paths: Sequence[str], affine: Any, n: int,
                dtype: Any) -> Callable[[jax.Array], dict]:
    """`common.split_leaves` (the same forward) whose backward sums one zero-padded cotangent per leaf.

    The transpose of the split is a concatenate; with the flat vector sharded over chunks and a generated leaf
    sharded over its own axes, XLA's SPMD partitioner gathers that leaf's whole cotangent on every device
    before concatenating at an offset that is not a shard boundary (one full copy of the largest leaf per
    device). A pad at a constant offset is partitioned with a halo exchange instead, so the cotangent of the
    flat vector stays sharded. The values are the same as the concatenate's (each element is one leaf's
    cotangent plus zeros). Used only under a multi-device mesh: on one device, and under `jax.vmap` over conds,
    the concatenate is cheaper (issue 12).
    """
    sizes = [int(math.prod(target.leaves[p].shape)) for p in paths]
    offsets = [0, *itertools.accumulate(sizes)]
    std = [1.0] * len(paths) if affine is None else [float(v) for v in affine[1]]

    @jax.custom_vjp
    def split(flat):
        return common.split_leaves(target, paths, flat, affine=affine)

    def fwd(flat):
        return split(flat), None

    def bwd(_, g):
        total = None
        for p, off, size, s in zip(paths, offsets, sizes, std):
            part = g[p].astype(dtype).reshape(-1) * jnp.asarray(s, dtype)
            part = jax.lax.pad(part, jnp.zeros((), dtype), [(off, n - off - size, 0)])
            total = part if total is None else total + part
        return (jnp.zeros((n,), dtype) if total is None else total,)

    split.defvjp(fwd, bwd)
    return split


def chunked(target: TargetSpec, *, chunk_size: int, cond_dim: int | None = None, num_conds: int | None = None,
            chunk_emb_dim: int = 8, hidden: int | Sequence[int] = common.DEFAULT_HIDDEN, where: Any = None,
            init: str = "hyperfan_in", center: bool = True,
            activation: Callable[[jax.Array], jax.Array] = jax.nn.relu, z_dim: int = common.DEFAULT_Z_DIM,
            dtype: Any = jnp.float32) -> HyperNetwork:
    """MLP([cond, chunk_emb_i]) -> chunk i of the flat generated vector, for i < ceil(n / chunk_size).

    The chunks are concatenated, the ragged tail is dropped and the vector is split into leaves, so sizes
    that do not divide, biases and mixed leaf dtypes all work. The MLP runs once over all chunks as
    one batched matmul (`jax.vmap`), never a Python loop.

    Args:
      target, cond_dim, num_conds, hidden, where, activation, z_dim, dtype: as in `dense` (cond_dim=None:
        static, one learned code f[z_dim]; traced out-of-range ids give NaN weights).
      chunk_size: scalars emitted per chunk (> 0).
      chunk_emb_dim: size of each learned chunk embedding (hparams["embedding"]["chunk_emb"]:
        f[n_chunks, chunk_emb_dim]).
      init: "hyperfan_in" / "hyperfan_out". The output layer is shared by chunks that straddle leaves, so
        it is initialised (from the initial chunk embeddings and 16 unit-normal conds drawn from the init
        key, like learned cond embeddings) for unit output variance, and
        each leaf gets a fixed per-leaf affine map (mean_l + std_l * raw) to the variance a fan-in
        (fan-out) init gives it.
      center: subtract the mean over chunks of the last hidden features before the output layer. Without
        it the component all chunks share (ReLU features are positive) repeats with period chunk_size in
        every leaf: at init the generated kernels of a 64-256-256-10 MLP then have 4-8x the spectral norm
        and 10-50x the logit scale of a standard init. The output bias still gives a learned common part.
        Ignored when hidden=() (centring the input would remove the conditioning) and when there is a
        single chunk (the centred features would be zero: every output would be the output bias).

    apply(hparams, cond=None): cond f[cond_dim], an int id, or None (static) -> params shaped like `target`.
    hparams: {"hyper": {"mlp": [...]}, "embedding": {"chunk_emb", "cond_emb" | "code"}, "direct": ...}.
    Generator parameters: n_chunks * chunk_emb_dim + MLP with sizes (cond_dim + chunk_emb_dim, *hidden, chunk_size).
    Under a multi-device mesh context (`with jax.set_mesh(mesh):`), the backward pass of the
    split into leaves is partitioned without gathering a whole leaf's cotangent (`_mesh_split`); shard
    hparams["embedding"]["chunk_emb"] over the chunk axis for model-parallel generation.
    Raises: TypeError for a target that is not a TargetSpec; ValueError for non-positive sizes, an unknown
    init, or a `where` that matches nothing.
    """
    who = "generators.chunked"
    paths = common.generated_paths(target, where, who)
    z_dim = checks.positive_int(z_dim, "z_dim", who)
    cond = common.conditioning(cond_dim, num_conds, who, static=common.LearnedCode(z_dim))
    chunk_size = checks.positive_int(chunk_size, "chunk_size", who)
    chunk_emb_dim = checks.positive_int(chunk_emb_dim, "chunk_emb_dim", who)
    hidden = checks.positive_ints(hidden, "hidden", who)
    affine = common.leaf_moments(target, paths, init, who)
    n_out = common.num_outputs(target, paths)
    n_chunks = -(-n_out // chunk_size)
    sizes = (cond.dim + chunk_emb_dim, *hidden, chunk_size)
    center = center and bool(hidden) and n_chunks > 1
    mesh_split = _mesh_split(target, paths, affine, n_chunks * chunk_size, dtype)

    def features(mlp, c, chunk_emb):
        """Last hidden features f[n_chunks, d_k] for cond vector c (centred over chunks if `center`)."""
        def one_chunk(emb):
            x = jnp.concatenate([c, emb])
            return activation(common.mlp_apply(mlp[:-1], x, activation)) if len(mlp) > 1 else x
        h = jax.vmap(one_chunk)(chunk_emb)
        return h - jnp.mean(h, axis=0, keepdims=True) if center else h

    def core_init(key):
        k_emb, k_mlp = jax.random.split(key)
        chunk_emb, cal = common.normals(k_emb, [(n_chunks, chunk_emb_dim), (_N_CALIBRATION, cond.dim)], dtype)
        mlp = common.mlp_init(k_mlp, sizes, dtype, out_std=1.0)
        # data-dependent hyperfan: scale the output layer so raw outputs have unit variance over chunks and
        # over unit-normal conds (the distribution of learned cond embeddings; `dense` assumes the same)
        def moment(c):
            h = features(mlp, c, chunk_emb)
            return jnp.mean(jnp.sum(h * h, axis=1))
        second_moment = jnp.maximum(jnp.mean(jax.lax.map(moment, cal)), 1e-12)
        mlp[-1]["w"] = mlp[-1]["w"] * jax.lax.rsqrt(second_moment).astype(dtype)
        return {"hyper": {"mlp": mlp}, "embedding": {"chunk_emb": chunk_emb}}

    def core_apply(hparams, c):
        mlp = hparams["hyper"]["mlp"]
        h = features(mlp, c.astype(dtype), hparams["embedding"]["chunk_emb"])
        out = mlp[-1]
        flat = _output_layer(h, common.shared(out["w"], h), common.shared(out["b"], h)).reshape(-1)
        if _under_mesh():
            return mesh_split(flat)
        return common.split_leaves(target, paths, flat, affine=affine)

    return common.assemble(target, paths, common.Core(core_init, core_apply), cond, dtype, who)
