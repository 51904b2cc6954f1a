"""Generated weights as conditioned modulations of a shared, learned base W0 (one per selected matrix).

Two kinds, each with a materialising path (`apply(hparams, cond)` -> full params, like every generator)
and a factorised path (`factors(hparams, conds)` + `modulated_matmul`) that never builds a per-example
weight matrix:

* low rank (`low_rank.py`):   W(c) = W0 + U diag(s(c)) V^T,     s(c) = MLP(c): f[rank]
* scale (`scale_modulation`): W(c) = W0 * (a(c) b(c)^T)  ("rowcol"), W0 * a(c)[:, None] ("row"),
                              W0 * b(c)[None, :] ("col"),  a, b = MLP(c)

One MLP maps the conditioning vector to every modulation vector of every selected leaf. W0 starts as the
target's own init of that leaf, or the spec's base weights when it has them (`from_linen(..., params=)`,
pretrained); U, V (low rank) are learned and shared by all conditions.
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
from hyperjax._src.generators import common
from hyperjax._src import spec as _spec
from hyperjax._src.spec import TargetSpec
from hyperjax._src.types import Array, HParams, HyperNetwork, PRNGKey

SCALE_MODES = ("rowcol", "row", "col")


class LowRankFactors(NamedTuple):
    """x @ W(c) = x @ base + ((x @ u) * s) @ v.T, all in "x @ W" orientation (W: f[n_in, n_out]).

    base: f[n_in, n_out]; u: f[n_in, rank]; v: f[n_out, rank]; s: f[..., rank] (one row per example).
    For out_in targets (Equinox, PyTorch: stored W is (out, in)) base is the stored W0 transposed and u, v
    are the stored V, U.
    """

    base: Array
    u: Array
    s: Array
    v: Array


class ScaleFactors(NamedTuple):
    """x @ W(c) = ((x * scale_in) @ base) * scale_out, in "x @ W" orientation (W: f[n_in, n_out]).

    base: f[n_in, n_out]; scale_in: f[..., n_in] or None; scale_out: f[..., n_out] or None.
    """

    base: Array
    scale_in: Array | None
    scale_out: Array | None


class LoRAFactors(NamedTuple):
    """x @ W(c) = x @ base + scale * ((x @ a) @ b), in "x @ W" orientation (the kernel's 2-D view).

    base: f[*stack, n_in, n_out]; a: f[..., *stack, n_in, rank]; b: f[..., *stack, rank, n_out], the leading
    axes one condition per example (none for a single condition); scale: alpha / rank. `stack` are the
    kernel's stacked-layer axes (`nn.scan`), empty for an ordinary kernel.
    """

    base: Array
    a: Array
    b: Array
    scale: Any


class Modulated(NamedTuple):
    """A hypernetwork over a shared base with a factorised path: `(init, apply, factors)`.

    init(key) -> hparams; apply(hparams, cond=None) -> params (materialised weights, one condition).
    factors(hparams, cond=None) -> a tree shaped like the target's params in which every modulated leaf is a
      LowRankFactors / ScaleFactors and every other leaf is its ordinary parameter (hparams["direct"]).
      cond: f[cond_dim] (one condition) or f[B, cond_dim] (one per example; int ids: () or (B,)); the
      per-example parts (s, scale_in, scale_out) get the same leading axes, the base is shared.
      Feed them to `hyperjax.generators.modulated_matmul(x, factors)`.
    A plain NamedTuple (a pytree of three functions, `_replace` keeps every field); `.hypernetwork` drops
    `factors` for code that wants a `HyperNetwork(init, apply)`.
    """

    init: Callable[[PRNGKey], HParams]
    apply: Callable[..., Any]
    factors: Callable[..., Any]

    @property
    def hypernetwork(self) -> HyperNetwork:
        return HyperNetwork(self.init, self.apply)


def modulated_matmul(x: Array, w: Any) -> Array:
    """x @ W for a plain kernel f[n_in, n_out], or for LowRankFactors / ScaleFactors / LoRAFactors (unstacked)
    without materialising W.

    x: f[..., n_in]; the per-example parts of the factors must have the same leading axes as x (f[B, rank]
    for x: f[B, n_in]; f[rank] for a single x: f[n_in], e.g. inside jax.vmap). Returns f[..., n_out].
    Cost per example: low rank O(n_in n_out + rank (n_in + n_out)) on top of one shared x @ base.
    """
    who = "generators.modulated_matmul"
    if isinstance(w, LowRankFactors):
        checks.batch_prefix(jnp.shape(x), jnp.shape(w.s), w.base.shape[0], "low-rank scales `s`", who)
        return x @ w.base + ((x @ w.u) * w.s) @ w.v.T
    if isinstance(w, LoRAFactors):
        if jnp.ndim(w.base) != 2:
            raise ValueError(f"hyperjax.{who}: the LoRA factors are of a stacked kernel (base "
                             f"{tuple(jnp.shape(w.base))}); index one layer first, or run the model with "
                             f"hyperjax.generators.factorised_apply.")
        if jnp.ndim(w.a) > 2:                 # per-example adapters: the same leading axes as x
            checks.batch_prefix(jnp.shape(x), jnp.shape(w.a)[:-1], w.base.shape[0], "LoRA factor `a`", who)
        else:                                 # one adapter for every row of x
            checks.batch_prefix(jnp.shape(x), (*jnp.shape(x)[:-1], 1), w.base.shape[0], "LoRA factor `a`", who)
        t = jnp.einsum("...i,...ir->...r", x, w.a)
        return x @ w.base + w.scale * jnp.einsum("...r,...ro->...o", t, w.b)
    if isinstance(w, ScaleFactors):
        if w.scale_in is not None:
            checks.batch_prefix(jnp.shape(x), jnp.shape(w.scale_in), w.base.shape[0], "input scales", who)
            x = x * w.scale_in
        y = x @ w.base
        if w.scale_out is not None:
            checks.batch_prefix(jnp.shape(y), jnp.shape(w.scale_out), w.base.shape[1], "output scales", who)
            y = y * w.scale_out
        return y
    if not isinstance(w, (jax.Array, np.ndarray)):
        raise TypeError(f"hyperjax.{who}: `w` must be a kernel array f[n_in, n_out] or the factors from "
                        f"Modulated.factors (LowRankFactors, ScaleFactors), got {type(w).__name__}.")
    if jnp.ndim(w) != 2 or jnp.shape(x)[-1:] != jnp.shape(w)[:1]:
        raise ValueError(f"hyperjax.{who}: expected x f[..., n_in] and a kernel f[n_in, n_out] (or factors "
                         f"from Modulated.factors), got x {tuple(jnp.shape(x))} and w {tuple(jnp.shape(w))}.")
    return x @ w


# ---------------------------------------------------------------- shared builder
class Leaf(NamedTuple):
    """A modulated matrix: stored shape (rows, cols); n_in/n_out in x @ W orientation.

    A kernel that is not 2-D (DenseGeneral (d, heads, head_dim), conv (kh, kw, c_in, c_out)) is modulated
    through its 2-D view (`hyperjax.targets.as_matrix`): rows, cols = n_in, n_out and `view` is True.
    """

    path: str
    rows: int
    cols: int
    transposed: bool    # out_in layout: stored (n_out, n_in)
    std: float          # the leaf's init std (hyperfan-in), the scale of the modulation at init
    view: bool = False  # modulated as the 2-D view of a kernel of another rank

    @property
    def n_in(self) -> int:
        return self.cols if self.transposed else self.rows

    @property
    def n_out(self) -> int:
        return self.rows if self.transposed else self.cols


class Kind(NamedTuple):
    """What distinguishes one modulation from another (see low_rank.py and scale_modulation below)."""

    name: str
    extra: tuple[str, ...]                                          # names of per-leaf params (e.g. "u", "v")
    n_mod: Callable[[Leaf], int]                                    # MLP outputs per leaf
    out_moments: Callable[[Leaf], tuple[float, float]]              # (mean, std) of those outputs at init
    leaf_init: Callable[[PRNGKey, list[Leaf]], dict[str, dict[str, Array]]]   # {path: extra params (U, V)}
    materialise: Callable[[Array, dict[str, Array], Array, Leaf], Array]     # (W0, extra, m f[k]) -> W
    factors: Callable[[Array, dict[str, Array], Array, Leaf], Any]           # (W0, extra, m f[..., k]) -> F


def require_kernels(target: TargetSpec, paths: Sequence[str], who: str, does: str) -> None:
    """Every leaf of `paths` must be a kernel or embedding of its layer (not a bias, scale or vector)."""
    for p in paths:
        kind = target.leaf_axes(p).kind
        if kind not in ("kernel", "embedding"):
            raise ValueError(f"hyperjax.{who}: leaf '{p}' {tuple(target.leaves[p].shape)} is a {kind} of its layer, "
                             f"not a kernel; {does}. Select kernels with `where`.")


def matrix_paths(target: TargetSpec, where: Any, who: str) -> tuple[str, ...]:
    """`where` (None: every leaf) -> paths, each a 2-D leaf or a kernel with a 2-D view and no stacked axis."""
    chosen = common.generated_paths(target, where, who)
    if where is common.matrices:       # the default: 2-D kernels only, not a DenseGeneral's (heads, head_dim) bias
        chosen = tuple(p for p in chosen if target.leaf_axes(p).kind in ("kernel", "embedding"))
        if not chosen:
            raise ValueError(f"hyperjax.{who}: the target has no 2-D kernel; select kernels with `where`.")
    require_kernels(target, chosen, who, f"{who.rsplit('.', 1)[-1]} modulates kernels")
    for p in chosen:
        shape = tuple(target.leaves[p].shape)
        ax = target.leaf_axes(p)
        if len(shape) == 2 and not ax.stack:
            continue
        if ax.stack:
            raise ValueError(f"hyperjax.{who}: leaf '{p}' {shape} stacks {len(ax.stack)} layer axes "
                             f"{tuple(shape[a] for a in ax.stack)} (nn.scan / nnx.scan); {who.rsplit('.', 1)[-1]} "
                             f"modulates one matrix per leaf. Use generators.per_layer for stacked layers, or "
                             f"select unstacked kernels with `where`.")
    return chosen


def _leaf(target: TargetSpec, path: str, std: float) -> Leaf:
    shape = tuple(target.leaves[path].shape)
    if len(shape) == 2:
        return Leaf(path, *shape, target.layout == "out_in", std)
    from hyperjax._src.spec import matrix_shape
    _, n_in, n_out = matrix_shape(target, path)
    return Leaf(path, n_in, n_out, False, std, True)


def build(target: TargetSpec, *, kind: Kind, cond_dim: Any, num_conds: Any, where: Any, hidden: Any, init: str,
          activation: Callable[[Array], Array], z_dim: int, dtype: Any, who: str) -> Modulated:
    """The machinery both kinds share: conditioning, the modulation MLP, the base, both paths."""
    paths = matrix_paths(target, where, who)
    z_dim = checks.positive_int(z_dim, "z_dim", who)
    cond = common.conditioning(cond_dim, num_conds, who, static=common.LearnedCode(z_dim))
    hidden = checks.positive_ints(hidden, "hidden", who)
    _, std = common.leaf_moments(target, paths, init, who)
    leaves = [_leaf(target, p, float(s)) for p, s in zip(paths, std)]
    counts = [kind.n_mod(l) for l in leaves]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    sizes = (cond.dim, *hidden, int(offsets[-1]))
    d_k = sizes[-2]
    moments = [kind.out_moments(l) for l in leaves]
    out_mean = np.repeat([m for m, _ in moments], counts).astype(np.float32)
    out_std = (np.repeat([s for _, s in moments], counts) / math.sqrt(d_k)).astype(np.float32)

    def core_init(key: PRNGKey) -> dict[str, Any]:
        k_base, k_mlp, k_extra = jax.random.split(key, 3)
        z = common.normals(k_base, [(l.rows, l.cols) for l in leaves], dtype)
        if target.params is not None:                  # a pretrained base: W0 is the given weights
            given = target.leaf_dict(target.params)
            base = {l.path: jnp.asarray(given[l.path], dtype) for l in leaves}
        else:
            base = {l.path: from_view(l, zl * jnp.asarray(l.std, dtype)) for zl, l in zip(z, leaves)}
        hyper: dict[str, Any] = {"mlp": common.mlp_init(k_mlp, sizes, dtype, out_std=out_std,
                                                        out_mean=out_mean if out_mean.any() else 0.0)}
        extra = kind.leaf_init(k_extra, leaves)
        for name in kind.extra:
            hyper[name] = _paths.nest({p: e[name] for p, e in extra.items()})
        return {"hyper": hyper, "base": _paths.nest(base)}

    def from_view(l: Leaf, w: Array) -> Array:
        return _spec.from_matrix(target, l.path, w) if l.view else w

    def parts(hparams: HParams) -> tuple[dict[str, Array], dict[str, dict[str, Array]]]:
        """-> ({path: W0 as a matrix (the 2-D view for other ranks)}, {path: the kind's extra params})."""
        base = _paths.unnest(hparams["base"], paths)
        base = {l.path: _spec.as_matrix(target, l.path, base[l.path]) if l.view else base[l.path] for l in leaves}
        tables = {n: _paths.unnest(hparams["hyper"][n], paths) for n in kind.extra}
        extra = {p: {n: tables[n][p] for n in kind.extra} for p in paths}
        return base, extra

    def modulations(hparams: HParams, c: Array) -> list[Array]:
        m = common.mlp_apply(hparams["hyper"]["mlp"], c.astype(dtype), activation)
        return [m[..., int(a):int(b)] for a, b in zip(offsets[:-1], offsets[1:])]

    def core_apply(hparams: HParams, c: Array) -> dict[str, Array]:
        base, extra = parts(hparams)
        out = {}
        for l, m in zip(leaves, modulations(hparams, c)):
            w = from_view(l, kind.materialise(base[l.path], extra[l.path], m, l))
            out[l.path] = w.astype(target.leaves[l.path].dtype)
        return out

    assembled = common.assemble(target, paths, common.Core(core_init, core_apply), cond, dtype, who)
    check_hparams = common.hparams_checker(assembled.init, who)
    empty = common.empty_paths(target)
    direct_paths = tuple(p for p in target.paths if p not in set(paths) and p not in set(empty))
    single_ndim = 1 if isinstance(cond, common.VectorCond) else 0

    def factors(hparams: HParams, c: Array | None = None) -> Any:
        """cond f[cond_dim] or f[B, cond_dim] (ids () or (B,); None when static) -> params-shaped factors."""
        check_hparams(hparams)
        if c is not None and jnp.ndim(c) == single_ndim + 1:   # a batch: one row of modulations per example
            mods = jax.vmap(lambda ci: modulations(hparams, cond.vector(hparams, ci, who)))(c)
        else:
            mods = modulations(hparams, cond.vector(hparams, c, who))
        base, extra = parts(hparams)
        out = {l.path: kind.factors(base[l.path], extra[l.path], m, l) for l, m in zip(leaves, mods)}
        if direct_paths:
            out.update(_paths.unnest(hparams["direct"], direct_paths))
        out.update({p: jnp.zeros(target.leaves[p].shape, target.leaves[p].dtype) for p in empty})
        return jax.tree_util.tree_unflatten(target.treedef, [out[p] for p in target.paths])

    return Modulated(assembled.init, assembled.apply, factors)


# ---------------------------------------------------------------- scale modulation
def scale_modulation(target: TargetSpec, *, cond_dim: int | None = None, num_conds: int | None = None,
                     mode: str = "rowcol", where: Any = common.matrices,
                     hidden: int | Sequence[int] = common.DEFAULT_HIDDEN, init: str = "hyperfan_in",
                     init_scale: float = 0.1, activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
                     z_dim: int = common.DEFAULT_Z_DIM, dtype: Any = jnp.float32) -> Modulated:
    """W(c) = W0 * (a(c) b(c)^T) per selected matrix: FiLM-like row / column scaling of a shared base.

    Args:
      target: the TargetSpec; leaves not selected are ordinary params in hparams["direct"].
      cond_dim, num_conds, z_dim: as in `dense` (cond_dim=None: static, one learned code f[z_dim]; traced
        out-of-range ids give NaN weights).
      mode: "rowcol" (W0 * a b^T, a over rows, b over columns), "row" (W0 * a[:, None]) or "col"
        (W0 * b[None, :]). Rows and columns are those of the stored leaf: for Flax / Haiku kernels
        (in, out) "col" scales output units (FiLM's gamma) and "row" input features; for Equinox /
        PyTorch weights (out, in) the other way round.
      where: glob(s) or predicate choosing the modulated leaves, each 2-D or an unstacked kernel of another
        rank (DenseGeneral, conv: modulated as its 2-D view, rows = n_in, cols = n_out, see
        `hyperjax.targets.as_matrix`); default `matrices` (every 2-D leaf); None: every leaf.
      hidden: hidden widths of the MLP cond -> all scale vectors (() for a linear map).
      init: "hyperfan_in" / "hyperfan_out": W0 ~ N(0, 1/fan_in) (1/fan_out) of its layer.
      init_scale: std of each scale around 1 at init (for unit-second-moment conditioning); 0 starts every
        scale at exactly 1, so W(c) = W0 for every c at init (the MLP's output layer is zero).
      activation, dtype: of the MLP; generated leaves are cast to the target's dtypes.

    hparams: {"base": {path parts: W0}, "hyper": {"mlp": [...]}, "embedding": ..., "direct": ...}. Trainable: sum of W0 sizes + MLP (cond_dim, *hidden, K) with K = sum over leaves of
    rows + cols ("rowcol"), rows ("row") or cols ("col").
    apply(hparams, cond=None) -> params; factors(hparams, conds) -> ScaleFactors tree (see `Modulated`).
    Raises: TypeError for a target that is not a TargetSpec; ValueError for an unknown mode or init,
    non-positive sizes, or a selected leaf that is not 2-D.
    """
    who = "generators.scale_modulation"
    mode = checks.one_of(mode, SCALE_MODES, "mode", who)
    init_scale = checks.non_negative_float(init_scale, "init_scale", who)
    use_rows, use_cols = mode in ("rowcol", "row"), mode in ("rowcol", "col")

    def n_mod(l: Leaf) -> int:
        return l.rows * use_rows + l.cols * use_cols

    def split(m: Array, l: Leaf) -> tuple[Array | None, Array | None]:
        a = m[..., :l.rows] if use_rows else None
        b = m[..., l.rows * use_rows:] if use_cols else None
        return a, b

    def materialise(w0, extra, m, l):
        a, b = split(m, l)
        w0 = common.shared(w0, m)
        w = w0 if a is None else w0 * a[:, None]
        return w if b is None else w * b[None, :]

    def factors(w0, extra, m, l):
        a, b = split(m, l)
        if l.transposed:                       # stored (out, in): rows scale outputs, columns inputs
            return ScaleFactors(w0.T, b, a)
        return ScaleFactors(w0, a, b)

    kind = Kind("scale", (), n_mod, lambda l: (1.0, init_scale), lambda key, ls: {l.path: {} for l in ls},
                materialise, factors)
    return build(target, kind=kind, cond_dim=cond_dim, num_conds=num_conds, where=where, hidden=hidden,
                 init=init, activation=activation, z_dim=z_dim, dtype=dtype, who=who)
