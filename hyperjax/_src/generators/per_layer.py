"""Per-layer static hypernetwork (Ha, Dai & Le 2016): a learned embedding per layer (or per kernel block)
goes through a two-stage linear generator to that layer's kernel.

For a kernel K in R^{f x f x N_in x N_out} (Flax HWIO layout) and its embedding z in R^{N_z}:

    a_i = W_i z + B_i               i = 1..N_in,   W_i: f[d, N_z], B_i: f[d]        (stage 1, per input slice)
    K_i = W_out a_i + B_out         W_out: f[f*f*N_out, d], B_out: f[f*f*N_out]      (stage 2, shared)
    K   = stack_i K_i               (K_i is the kernel slice of input channel i, reshaped to f x f x N_out)

The generator's weights and biases number N_in (d N_z + d) + f f N_out (d + 1): 4,240 for the paper's
7 x 7 x 16 x 16 MNIST kernel (12,544 weights) with N_z = d = 4. Large kernels can be tiled into blocks of
(in_block x out_block) channels, each block with its own embedding, as the paper does for its ResNets
(16 x 16 blocks of 3 x 3 kernels). All blocks (or layers) of equal block shape share one generator and are
generated together by one batched contraction over their stacked embeddings, so the compiled program
does not grow with the number of generated layers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hyperjax._src import checks
from hyperjax._src.generators import common
from hyperjax._src.spec import heuristic_axes, LeafAxes, TargetSpec
from hyperjax._src.types import Array, HyperNetwork, PRNGKey

WHO = "generators.per_layer"
KERNELS = ("auto", "conv", "dense")


class _Leaf:
    """How one generated leaf is cut into blocks: f[*stack, n_in_tiles, n_out_tiles, in_b, *spatial, out_b].

    Blocks are assembled in the view order (*stack, *spatial, N_in, N_out) of the leaf's axes (`LeafAxes`), then
    put back into the leaf's own axis order.
    """

    def __init__(self, path: str, shape: tuple[int, ...], axes: LeafAxes, in_b: int, out_b: int):
        self.path, self.shape, self.axes = path, shape, axes
        self.stack = tuple(shape[a] for a in axes.stack)
        self.spatial = tuple(shape[a] for a in axes.receptive)
        self.vector = axes.kind not in ("kernel", "embedding")      # a bias: one input slice (N_in = 1)
        n_in = 1 if self.vector else math.prod(shape[a] for a in axes.inputs)
        n_out = math.prod(shape[a] for a in axes.outputs)
        self.n_in, self.n_out = n_in, n_out
        self.n_it, self.n_ot, self.in_b, self.out_b = n_in // in_b, n_out // out_b, in_b, out_b
        self.n_blocks = math.prod(self.stack) * self.n_it * self.n_ot

    @property
    def group(self) -> tuple[int, ...]:
        return (*self.spatial, self.in_b, self.out_b)

    def assemble(self, blocks: Array) -> Array:
        """blocks f[n_blocks, in_b, prod(spatial) * out_b] -> the leaf, in its own axis order."""
        s, k = len(self.stack), len(self.spatial)
        g = blocks.reshape(*self.stack, self.n_it, self.n_ot, self.in_b, *self.spatial, self.out_b)
        stack_ax = tuple(range(s))
        it, ot, ib, ob = s, s + 1, s + 2, s + 3 + k
        sp = tuple(range(s + 3, s + 3 + k))
        order = (*stack_ax, it, ib, ot, ob) if self.vector else (*stack_ax, *sp, it, ib, ot, ob)
        ax = self.axes
        in_shape = () if self.vector else tuple(self.shape[a] for a in ax.inputs)
        view = jnp.transpose(g, order).reshape(*self.stack, *self.spatial, *in_shape,
                                               *(self.shape[a] for a in ax.outputs))
        return jnp.transpose(view, tuple(int(i) for i in np.argsort(ax.order)))


def _axes(target: TargetSpec, stack_axes: int | None) -> TargetSpec:
    """The target with every leaf's stacked axes as `stack_axes` says (None: as the adapter read them)."""
    if stack_axes is None:
        return target
    axes = {}
    for p, leaf in target.leaves.items():
        ax = target.leaf_axes(p)
        if ax.stack != tuple(range(stack_axes)) and len(leaf.shape) > stack_axes:
            ax = heuristic_axes(tuple(leaf.shape), target.layout, p.rsplit("/", 1)[-1], stack=stack_axes)
        axes[p] = ax
    return dataclasses.replace(target, axes=axes)


def _view(target: TargetSpec, path: str, stack_axes: int | None, mode: str, block: tuple[int, int] | None
          ) -> _Leaf:
    """Split a leaf into (stack, spatial, N_in, N_out) by its axes and check it fits `mode` and `block`."""
    shape = tuple(target.leaves[path].shape)
    if stack_axes is not None:
        checks.stacked_leaf(path, shape, stack_axes, WHO)
    ax = target.leaf_axes(path)
    vector = ax.kind not in ("kernel", "embedding")
    checks.kernel_ndim(path, shape, 1 if vector else 2 + len(ax.receptive), len(ax.stack), mode, WHO)
    leaf = _Leaf(path, shape, ax, 1, 1)
    if block is None:
        in_b, out_b = leaf.n_in, leaf.n_out
    else:
        in_b, out_b = (1 if vector else block[0]), block[1]
        checks.block_multiple(path, shape, "input channels N_in", leaf.n_in, "block[0]", in_b, WHO)
        checks.block_multiple(path, shape, "output channels N_out", leaf.n_out, "block[1]", out_b, WHO)
    return _Leaf(path, shape, ax, in_b, out_b)


def _group_shapes(members: list[_Leaf], z_dim: int, c_dim: int, d: int) -> list[tuple[int, ...]]:
    """Shapes of one block shape's (layer embeddings, w_in, w_out)."""
    first = members[0]
    n = sum(m.n_blocks for m in members)
    return [(n, z_dim), (first.in_b, z_dim + c_dim, d), (d, math.prod(first.spatial) * first.out_b)]


def _group_init(z: Array, w_in: Array, w_out: Array, z_dim: int, c_dim: int, d: int, dtype: Any
                ) -> tuple[dict[str, Array], Array]:
    """Unit normal draws -> one block shape's generator (w_in, b_in, w_out, b_out) and its blocks'
    embeddings f[n_blocks, z_dim]."""
    gen = {"w_in": w_in * jnp.asarray(1.0 / math.sqrt(z_dim + c_dim), dtype),
           "b_in": jnp.zeros((w_in.shape[0], d), dtype),
           "w_out": w_out * jnp.asarray(1.0 / math.sqrt(d), dtype),
           "b_out": jnp.zeros((w_out.shape[1],), dtype)}
    return gen, common.unit_rows(z, dtype)


def _group_apply(g: dict[str, Array], z: Array, c: Array | None, members: list[_Leaf], z_dim: int,
                 activation: Callable[[Array], Array] | None, affine: dict[str, tuple[float, float]],
                 target: TargetSpec, dtype: Any) -> dict[str, Array]:
    """Every block of one shape in one batched contraction: z f[n, z_dim] (+ c) -> {path: leaf}."""
    a = jnp.einsum("nz,izd->nid", z, g["w_in"][:, :z_dim])               # stage 1: f[n, in_b, d]
    if c is not None:                                                    # [z_j, c] without an n x c concat
        a = a + jnp.einsum("c,icd->id", c.astype(dtype), g["w_in"][:, z_dim:])[None]
    a = a + g["b_in"][None]
    if activation is not None:
        a = activation(a)
    b_out = common.shared(jnp.broadcast_to(g["b_out"], a.shape[1:2] + g["b_out"].shape), a)   # every cond's
    k = jnp.einsum("nid,dk->nik", a, g["w_out"]) + b_out[None]            # stage 2: f[n, in_b, ff*out_b]
    out, start = {}, 0
    for m in members:
        leaf = m.assemble(k[start:start + m.n_blocks])
        start += m.n_blocks
        mu, sd = affine[m.path]
        leaf = leaf * jnp.asarray(sd, leaf.dtype)
        if mu:
            leaf = leaf + jnp.asarray(mu, leaf.dtype)
        out[m.path] = leaf.astype(target.leaves[m.path].dtype)
    return out


def _checked_options(z_dim: Any, d: Any, kernels: Any, stack_axes: Any, block: Any
                     ) -> tuple[int, int, str, int | None, tuple[int, int] | None]:
    z_dim = checks.positive_int(z_dim, "z_dim", WHO)
    d = checks.positive_int(d, "d", WHO)
    kernels = checks.one_of(kernels, KERNELS, "kernels", WHO)
    if stack_axes is not None and (isinstance(stack_axes, bool) or not isinstance(stack_axes, (int, np.integer))):
        raise TypeError(f"hyperjax.{WHO}: `stack_axes` must be None (read from the target) or an int >= 0 (leading "
                        f"axes that index stacked layers), got {type(stack_axes).__name__}.")
    if stack_axes is not None and stack_axes < 0:
        raise ValueError(f"hyperjax.{WHO}: `stack_axes` must be an int >= 0 (leading axes that index stacked "
                         f"layers), got {stack_axes!r}.")
    if block is not None:
        block = checks.positive_ints(block, "block", WHO)
        if len(block) != 2:
            raise ValueError(f"hyperjax.{WHO}: `block` must be a pair (in_block, out_block) of positive ints, "
                             f"or None for one embedding per layer; got {block!r}.")
    return z_dim, d, kernels, None if stack_axes is None else int(stack_axes), block


def per_layer(target: TargetSpec, *, cond_dim: int | None = None, num_conds: int | None = None, where: Any = None,
              z_dim: int = 4, d: int = 4, block: tuple[int, int] | None = None, stack_axes: int | None = None,
              kernels: str = "auto", init: str = "hyperfan_in",
              activation: Callable[[Array], Array] | None = None, dtype: Any = jnp.float32) -> HyperNetwork:
    """Ha et al.'s static hypernetwork: kernel (block) j = G(z_j) from a learned layer embedding z_j: f[z_dim].

    Args:
      target: the TargetSpec; leaves not matched by `where` are ordinary params in hparams["direct"].
      cond_dim: None (default): static, as in the paper; apply(hparams) or apply(hparams, None). With an int,
        every block is generated from [z_j, c] for a conditioning vector c: f[cond_dim] (or an integer id with
        `num_conds`; traced out-of-range ids give NaN weights), so `jax.vmap(apply, in_axes=(None, 0))`
        gives per-example kernels.
      num_conds: with cond_dim, `cond` is an integer id in [0, num_conds) (hparams["embedding"]["cond_emb"]).
      where: glob(s) or `(path, leaf) -> bool` choosing the generated leaves, e.g. "Conv_1/kernel"; None: all.
        Kernels are read by their axes (`target.leaf_axes`): N_in the input axes, N_out the output axes,
        conv spatial axes apart (Flax HWIO, Haiku (*spatial, N_in, N_out); Equinox, PyTorch (N_out, N_in,
        *spatial); DenseGeneral attention kernels (d, heads, head_dim): N_in = d, N_out = heads * head_dim);
        a bias is one input slice (N_in = 1) of N_out values.
      z_dim: N_z (the paper's name), the size of each layer (block) embedding, ~ N(0, 1).
      d: the paper's d, width of the per-slice code a_i (stage 1 output, stage 2 input).
      block: None: one embedding per layer. (in_block, out_block): tile every selected kernel into blocks of
        in_block x out_block channels (full spatial size), each with its own embedding; N_in and N_out of
        every selected leaf must be multiples (biases use (1, out_block)).
      stack_axes: None (default): each leaf's stacked-layer axes as the target's adapter read them
        (`target.leaf_axes(path).stack`: the leading axis of params made by `nn.scan` / `nnx.vmap`, found by
        from_linen / from_nnx; none for from_fn, Equinox and Haiku specs). An int overrides it for every
        selected leaf: that many leading axes index stacked layers (1 for vmapped Equinox layers, shape
        (L, ...)). Each stack index is one layer with its own embedding; fans for the init ignore these axes.
      kernels: "auto" (any kernel of rank >= 2, and 1-D biases), "conv" (4-D kernels only) or "dense" (2-D
        only): a guard that raises naming the first leaf of another rank.
      init: "hyperfan_in" / "hyperfan_out": at init each generated leaf has mean 0 (1 for norm scales) and
        the variance a fan-in (fan-out) init gives it. Stage 1 is N(0, 1/(z_dim + cond_dim)), stage 2
        N(0, 1/d), biases 0, so the raw output has unit variance; each leaf then gets a fixed (static) affine
        map mean_l + std_l * raw, so blocks of one shape share a generator across leaves of different fans.
      activation: None (default): the paper's linear generator. A function (e.g. jnp.tanh) is applied to
        the per-slice codes a_i between the two stages.
      dtype: of the generator and embeddings; generated leaves are cast to the target's dtypes.

    Groups: selected leaves whose blocks have the same shape (spatial, in_block, out_block) share one
    generator; blocks of other shapes get their own. hparams = {"hyper": {"per_layer": {"<block shape, e.g.
    7x7x16x16>": {"w_in": f[in_b, z_dim + cond_dim, d], "b_in": f[in_b, d], "w_out": f[d, prod(spatial) *
    out_b], "b_out": f[prod(spatial) * out_b]}}}, "embedding": {"layer_emb": {"<block shape>": f[n_blocks,
    z_dim]}, ["cond_emb"]}, "direct": ...}.
    Parameter count per group (weights and biases): in_b (d (z_dim + cond_dim) + d) + prod(spatial) out_b
    (d + 1), plus n_blocks * z_dim embeddings.
    apply(hparams, cond=None) -> params shaped like `target`.
    Raises: TypeError for a non-TargetSpec target or a non-int stack_axes; ValueError for z_dim <= 0, d <= 0,
    a bad `block`, `stack_axes` or `kernels`, or a selected leaf of a rank `kernels` excludes, or whose
    channels `block` does not divide (naming the leaf).
    """
    paths = common.generated_paths(target, where, WHO)
    z_dim, d, kernels, stack_axes, block = _checked_options(z_dim, d, kernels, stack_axes, block)
    cond = common.conditioning(cond_dim, num_conds, WHO, static=common.NoCond())

    viewed = _axes(target, stack_axes)
    views = [_view(viewed, p, stack_axes, kernels, block) for p in paths]
    if stack_axes:
        checks.same_stack({v.path: v.stack for v in views}, stack_axes, WHO)
    mean, std = common.leaf_moments(viewed, paths, init, WHO)
    affine = {p: (float(m), float(s)) for p, m, s in zip(paths, mean, std)}
    groups: dict[str, list[_Leaf]] = {}
    for v in views:
        groups.setdefault("x".join(str(n) for n in v.group), []).append(v)

    def core_init(key):
        z = common.normals(key, [s for m in groups.values() for s in _group_shapes(m, z_dim, cond.dim, d)], dtype)
        made = {name: _group_init(*z[3 * i:3 * i + 3], z_dim, cond.dim, d, dtype) for i, name in enumerate(groups)}
        return {"hyper": {"per_layer": {n: g for n, (g, _) in made.items()}},
                "embedding": {"layer_emb": {n: z for n, (_, z) in made.items()}}}

    def core_apply(hparams, c):
        gens, embs = hparams["hyper"]["per_layer"], hparams["embedding"]["layer_emb"]
        out = {}
        for name, members in groups.items():
            out.update(_group_apply(gens[name], embs[name], c, members, z_dim, activation, affine, target, dtype))
        return out

    return common.assemble(target, paths, common.Core(core_init, core_apply), cond, dtype, WHO)


def per_layer_param_count(kernel_shape: tuple[int, ...], *, z_dim: int = 4, d: int = 4, cond_dim: int = 0,
                          layout: str = "in_out", num_blocks: int = 0) -> int:
    """Weights and biases of one per_layer generator for blocks of `kernel_shape` (e.g. (7, 7, 16, 16)).

    in_b (d (z_dim + cond_dim) + d) + prod(spatial) out_b (d + 1); num_blocks > 0 adds num_blocks * z_dim
    embeddings. per_layer_param_count((7, 7, 16, 16), z_dim=4, d=4) == 4240 (Ha et al.'s MNIST figure).

    Raises:
      TypeError: `kernel_shape` is not a sequence of ints, or an option is not an int.
      ValueError: an empty `kernel_shape` or a size <= 0, z_dim / d <= 0, cond_dim / num_blocks < 0, an unknown
        layout.
    """
    who = "generators.per_layer_param_count"
    if checks._is_int(kernel_shape):
        raise TypeError(f"hyperjax.{who}: `kernel_shape` must be a sequence of positive ints such as (7, 7, 16, 16), "
                        f"got {kernel_shape!r} (int).")
    shape = checks.positive_ints(kernel_shape, "kernel_shape", who)
    if not shape:
        raise ValueError(f"hyperjax.{who}: `kernel_shape` must be a non-empty sequence of positive ints, got ().")
    checks.positive_int(z_dim, "z_dim", who)
    checks.positive_int(d, "d", who)
    checks.non_negative_int(cond_dim, "cond_dim", who)
    checks.non_negative_int(num_blocks, "num_blocks", who)
    checks.one_of(layout, ("in_out", "out_in"), "layout", who)
    if len(shape) == 1:
        spatial, n_in, n_out = (), 1, shape[0]
    elif layout == "in_out":
        spatial, n_in, n_out = shape[:-2], shape[-2], shape[-1]
    else:
        spatial, n_in, n_out = shape[2:], shape[1], shape[0]
    return int(n_in * (d * (z_dim + cond_dim) + d) + math.prod(spatial) * n_out * (d + 1) + num_blocks * z_dim)
