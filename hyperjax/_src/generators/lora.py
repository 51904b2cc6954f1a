"""LoRA adapters generated from a condition: W(c) = W0 + (alpha / r) A(c) B(c) on a frozen (pretrained) base.

Each adapted kernel is read through its 2-D view (n_in, n_out) (`hyperjax.targets.as_matrix`: Dense,
DenseGeneral attention kernels, conv kernels, one matrix per layer of an `nn.scan` stack); A(c): f[n_in, r],
B(c): f[r, n_out]. The B side starts at zero, so W(c) = W0 exactly at init for every condition (as LoRA's
B = 0). Three ways to make A and B:

* static (cond_dim=None, num_conds=None): a plain LoRA, A and B learned directly;
* share="leaf": one MLP maps the condition to the A and B of every adapted matrix at once;
* share="layers": one trunk over [condition, learned layer embedding] shared by every adapted matrix, with one
  output head per 2-D shape (Text-to-LoRA / HyperLoRA): the generator's size does not grow with depth.

The base W0 is `target.params` (pretrained weights) when the spec has them, else the target's own init; with
train_base=False (the default) every weight of the target sits under the "frozen" role behind
`lax.stop_gradient`: zero gradients, so Adam or SGD leave it bitwise unchanged, and
`hj.training.labels(hparams)` says "frozen" (`hj.training.multi_optimizer` gives it no optimizer state).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hyperjax._src import checks
from hyperjax._src import paths as _paths
from hyperjax._src import spec as _spec
from hyperjax._src.generators import common
from hyperjax._src.generators.modulation import LoRAFactors, Modulated, require_kernels
from hyperjax._src.spec import TargetSpec
from hyperjax._src.types import Array, HParams, PRNGKey

SHARES = ("leaf", "layers")
KERNEL_NAMES = ("kernel", "weight", "w")     # a layer's kernel: Flax, Equinox / PyTorch, Haiku


class _Adapted(NamedTuple):
    """An adapted kernel: one (n_in, n_out) matrix per index of its stacked-layer axes `stack`."""

    path: str
    stack: tuple[int, ...]
    n_in: int
    n_out: int

    @property
    def copies(self) -> int:
        return math.prod(self.stack)


def adapted_paths(target: TargetSpec, where: Any, who: str) -> tuple[str, ...]:
    """`where` (None: every layer kernel) -> the adapted paths, each a kernel or embedding with a 2-D view."""
    if where is None:
        chosen = tuple(p for p in common.generated_paths(target, None, who)
                       if target.leaf_axes(p).kind == "kernel" and p.rsplit("/", 1)[-1] in KERNEL_NAMES)
        if not chosen:
            raise ValueError(f"hyperjax.{who}: the target has no kernel to adapt; its leaves: "
                             f"{', '.join(target.paths[:20])}. Select matrices with `where`.")
        return chosen
    chosen = common.generated_paths(target, where, who)
    require_kernels(target, chosen, who, "LoRA adapts kernels (W0 + A B)")
    return chosen


def lora(target: TargetSpec, *, rank: int, cond_dim: int | None = None, num_conds: int | None = None,
         where: Any = None, alpha: float | None = None, share: str = "leaf", layer_emb_dim: int = 16,
         hidden: int | Sequence[int] = common.DEFAULT_HIDDEN, train_base: bool = False,
         activation: Callable[[jax.Array], jax.Array] = jax.nn.relu, dtype: Any = jnp.float32) -> Modulated:
    """W(c) = W0 + (alpha / rank) A(c) B(c) for every adapted kernel W0 (its 2-D view f[n_in, n_out]).

    Args:
      target: the TargetSpec, ideally with pretrained weights (`from_linen(model, x, params=variables)`,
        `from_nnx`, `from_equinox` of a trained module): they are W0 and every other weight.
      rank: r > 0. A(c): f[*stack, n_in, r], B(c): f[*stack, r, n_out] per adapted leaf.
      cond_dim, num_conds: as in `dense` (a vector f[cond_dim], or integer ids with learned embeddings);
        both None: a static, plain LoRA (A, B learned directly, apply(hparams) with no cond).
      where: glob(s) or predicate choosing the adapted leaves (kernels or embeddings: 2-D, DenseGeneral,
        conv, `nn.scan`-stacked with one adapter per layer); None (default): every layer kernel of the target
        (a kernel-shaped leaf named 'kernel', 'weight' or 'w': not a raw `self.param` such as a position table).
      alpha: the LoRA scale numerator; None: alpha = rank (scale 1).
      share: "leaf" (one MLP head for all A and B) or "layers" (a trunk over [cond, layer embedding] shared
        by all adapted matrices, one output head per (n_in, n_out) shape; one embedding per matrix, i.e.
        per leaf and stacked layer). Only for a conditioned generator.
      layer_emb_dim: size of the learned per-matrix embeddings (share="layers").
      hidden: hidden widths of the MLP (share="leaf") or the trunk (share="layers"); () for a linear map.
      train_base: False (default): every target weight is under "frozen" (stop_gradient); True: the adapted
        W0 are under "base" and the other leaves under "direct", both trained.
      activation, dtype: of the MLP and of A, B; generated leaves are cast to the target's dtypes.

    At init A's entries have variance 1/n_in (for unit-second-moment conds), B = 0 (its head's weights and bias
    are zero: the first gradient reaches them through A), so W(c) = W0 exactly.
    hparams: {"hyper": {"a", "b"} (static) | {"mlp"} (leaf) | {"trunk", "heads"} (layers), "embedding": ...,
    "frozen": every target weight (or "base" + "direct" with train_base=True)}.
    apply(hparams, cond=None) -> params (merged, the spec's layout: `spec.apply`, `spec.rebox`,
    `hj.checkpoint.export`); factors(hparams, conds) -> the params tree with a `LoRAFactors` at every adapted
    leaf (one A, B per row of conds f[B, cond_dim] / ids (B,)), for `hj.generators.factorised_apply` (linen:
    the unmodified model, no per-example weight matrix) or `modulated_matmul`.

    Raises:
      TypeError: the target is not a TargetSpec; alpha or train_base of the wrong type.
      ValueError: rank <= 0, non-positive sizes, an unknown share, share="layers" without a condition, or a
        selected leaf that is not a kernel (naming it).
    """
    who = "generators.lora"
    rank = checks.positive_int(rank, "rank", who)
    scale = (checks.positive_float(alpha, "alpha", who) if alpha is not None else float(rank)) / rank
    share = checks.one_of(share, SHARES, "share", who)
    if not isinstance(train_base, (bool, np.bool_)):
        raise TypeError(f"hyperjax.{who}: `train_base` must be True or False, got {train_base!r}.")
    paths = adapted_paths(target, where, who)
    cond = common.conditioning(cond_dim, num_conds, who, static=common.NoCond())
    static = isinstance(cond, common.NoCond)
    if static and share == "layers":
        raise ValueError(f"hyperjax.{who}: share='layers' shares one generator across layers from a condition; "
                         f"a static lora (cond_dim=None) is a plain LoRA with its own A, B per matrix. Pass "
                         f"cond_dim= (and num_conds= for ids), or share='leaf'.")
    hidden = checks.positive_ints(hidden, "hidden", who)
    layer_emb_dim = checks.positive_int(layer_emb_dim, "layer_emb_dim", who)
    leaves = [_Adapted(p, *_spec.matrix_shape(target, p)) for p in paths]
    empty = common.empty_paths(target)
    others = tuple(p for p in target.paths if p not in set(paths) and p not in set(empty))
    a_std = [1.0 / math.sqrt(l.n_in) for l in leaves]

    # ---------------------------------------------------------------- init
    def ab_sizes(l: _Adapted) -> tuple[int, int]:
        return l.n_in * rank, rank * l.n_out

    classes: dict[tuple[int, int], list[int]] = {}            # share="layers": (n_in, n_out) -> leaf indices
    for i, l in enumerate(leaves):
        classes.setdefault((l.n_in, l.n_out), []).append(i)
    class_keys = list(classes)

    def head_std(members: list[int], d_k: int) -> np.ndarray:
        """Output-layer std per output: A part 1/sqrt(n_in d_k), B part 0 (B(c) = 0 at init)."""
        parts = []
        for i in members:
            n_a, n_b = ab_sizes(leaves[i])
            parts += [np.full(n_a, a_std[i] / math.sqrt(d_k)), np.zeros(n_b)]
        return np.concatenate(parts).astype(np.float32)

    def random_init(key: PRNGKey) -> dict[str, Any]:
        k_ab, k_emb, k_cond, k_own = jax.random.split(key, 4)
        out: dict[str, Any] = {}
        if static:
            z = common.normals(k_ab, [(*l.stack, l.n_in, rank) for l in leaves], dtype)
            out["hyper"] = {"a": _paths.nest({l.path: zl * a_std[i] for i, (zl, l) in enumerate(zip(z, leaves))}),
                            "b": _paths.nest({l.path: jnp.zeros((*l.stack, rank, l.n_out), dtype) for l in leaves})}
        elif share == "leaf":
            d_k = (hidden or (cond.dim,))[-1]
            per_leaf = [l.copies for l in leaves]
            std = np.concatenate([np.tile(head_std([i], d_k), n) for i, n in enumerate(per_leaf)])
            sizes = (cond.dim, *hidden, int(std.size))
            out["hyper"] = {"mlp": common.mlp_init(k_ab, sizes, dtype, out_std=std)}
        else:
            d_in = cond.dim + layer_emb_dim
            d_k = (hidden or (d_in,))[-1]
            k_trunk, k_heads = jax.random.split(k_ab)
            trunk = common.mlp_init(k_trunk, (d_in, *hidden, 1), dtype)[:-1] if hidden else []
            keys = jax.random.split(k_heads, len(class_keys))
            heads = {}
            for g, (kg, c) in enumerate(zip(keys, class_keys)):
                std = head_std(classes[c][:1], d_k)
                heads[f"g{g}"] = common.mlp_init(kg, (d_k, int(std.size)), dtype, out_std=std)[0]
            n_mat = sum(l.copies for l in leaves)
            out["hyper"] = {"trunk": trunk, "heads": heads}
            out["embedding"] = {"layer_emb": common.embeddings(k_emb, n_mat, layer_emb_dim, dtype)}
        emb = cond.init(k_cond, dtype)
        if emb:
            out.setdefault("embedding", {}).update(emb)
        if target.params is None:
            own = target.leaf_dict(target.init(k_own))
            out["_own"] = {p: own[p] for p in (*paths, *others)}
        return out

    random_init = jax.jit(random_init)       # one compiled program for every random draw

    def init(key: PRNGKey) -> HParams:
        out = random_init(key)
        own = out.pop("_own", None)
        if own is None:                      # pretrained: the given arrays, not baked into a compiled program
            given = target.leaf_dict(target.params)
            own = {p: jnp.asarray(given[p]) for p in (*paths, *others)}
        if train_base:
            out["base"] = _paths.nest({p: own[p] for p in paths})
            if others:
                out["direct"] = _paths.nest({p: own[p] for p in others})
        else:
            out["frozen"] = _paths.nest(own)
        return {r: out[r] for r in common.ROLES if out.get(r)}

    check_hparams = common.hparams_checker(init, who)

    # ---------------------------------------------------------------- apply
    def weights(hparams: HParams) -> dict[str, Array]:
        """{path: target weight} (W0 of the adapted leaves and every other leaf), frozen ones stop_gradient'ed."""
        if train_base:
            out = _paths.unnest(hparams["base"], paths)
            if others:
                out.update(_paths.unnest(hparams["direct"], others))
            return out
        return jax.lax.stop_gradient(_paths.unnest(hparams["frozen"], (*paths, *others)))

    def split_ab(flat: Array, ls: Sequence[_Adapted], lead: tuple[int, ...]) -> list[tuple[Array, Array]]:
        """f[*lead, sum] -> [(A f[*lead, n_in, r], B f[*lead, r, n_out])] per leaf of `ls` (one jnp.split)."""
        sizes = [s for l in ls for s in ab_sizes(l)]
        parts = jnp.split(flat, np.cumsum(sizes)[:-1].tolist(), axis=-1)
        return [(parts[2 * i].reshape(*lead, l.n_in, rank), parts[2 * i + 1].reshape(*lead, rank, l.n_out))
                for i, l in enumerate(ls)]

    def adapters(hparams: HParams, c: Array | None) -> dict[str, tuple[Array, Array]]:
        """{path: (A f[*stack, n_in, r], B f[*stack, r, n_out])} for one condition vector c (None: static)."""
        if static:
            a = _paths.unnest(hparams["hyper"]["a"], paths)
            b = _paths.unnest(hparams["hyper"]["b"], paths)
            return {p: (a[p], b[p]) for p in paths}
        c = c.astype(dtype)
        if share == "leaf":
            flat = common.mlp_apply(hparams["hyper"]["mlp"], c, activation)
            pieces = jnp.split(flat, np.cumsum([l.copies * sum(ab_sizes(l)) for l in leaves])[:-1].tolist())
            out = {}
            for l, piece in zip(leaves, pieces):
                (a, b), = split_ab(piece.reshape(l.copies, -1), [l], (l.copies,))
                out[l.path] = (a.reshape(*l.stack, l.n_in, rank), b.reshape(*l.stack, rank, l.n_out))
            return out
        emb = hparams["embedding"]["layer_emb"]
        starts = np.concatenate([[0], np.cumsum([l.copies for l in leaves])]).astype(int)
        out = {}
        for g, key in enumerate(class_keys):
            members = classes[key]
            rows = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in members])
            e = emb[rows]                                             # f[m, layer_emb_dim]
            head = hparams["hyper"]["heads"][f"g{g}"]

            def one(e_m: Array, head=head) -> Array:
                x = jnp.concatenate([c, e_m])
                h = activation(common.mlp_apply(hparams["hyper"]["trunk"], x, activation)) if hidden else x
                return h @ head["w"] + head["b"]
            (a, b), = split_ab(jax.vmap(one)(e), [leaves[members[0]]], (len(rows),))
            bounds = np.cumsum([leaves[i].copies for i in members])[:-1].tolist()
            for i, ai, bi in zip(members, jnp.split(a, bounds), jnp.split(b, bounds)):
                l = leaves[i]
                out[l.path] = (ai.reshape(*l.stack, l.n_in, rank), bi.reshape(*l.stack, rank, l.n_out))
        return out

    def apply(hparams: HParams, c: Any = None) -> Any:
        check_hparams(hparams)
        own = weights(hparams)
        ab = adapters(hparams, cond.vector(hparams, c, who))
        leaves_out = dict(own)
        for l in leaves:
            a, b = ab[l.path]
            w0 = _spec.as_matrix(target, l.path, own[l.path])
            w = w0 + scale * (a @ b).astype(jnp.result_type(w0, a))
            leaves_out[l.path] = _spec.from_matrix(target, l.path, w).astype(target.leaves[l.path].dtype)
        leaves_out.update({p: jnp.zeros(target.leaves[p].shape, target.leaves[p].dtype) for p in empty})
        return target.from_leaves(leaves_out)

    single_ndim = 1 if isinstance(cond, common.VectorCond) else 0

    def factors(hparams: HParams, c: Any = None) -> Any:
        """cond f[cond_dim] / f[B, cond_dim] (ids () / (B,); None when static) -> params with LoRAFactors."""
        check_hparams(hparams)
        if not static and c is not None and jnp.ndim(c) == single_ndim + 1:
            ab = jax.vmap(lambda ci: adapters(hparams, cond.vector(hparams, ci, who)))(c)
        else:
            ab = adapters(hparams, cond.vector(hparams, c, who))
        own = weights(hparams)
        out: dict[str, Any] = {p: own[p] for p in others}
        for l in leaves:
            a, b = ab[l.path]
            out[l.path] = LoRAFactors(_spec.as_matrix(target, l.path, own[l.path]), a, b, scale)
        out.update({p: jnp.zeros(target.leaves[p].shape, target.leaves[p].dtype) for p in empty})
        return jax.tree_util.tree_unflatten(target.treedef, [out[p] for p in target.paths])

    return Modulated(init, apply, factors)
