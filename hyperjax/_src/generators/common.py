"""Pieces every generator shares: conditioning, the MLP, hyperfan statistics, the hparams layout.

A generator *core* emits a subset of the target's leaves as {path: leaf}; `assemble` wraps it into a
`HyperNetwork`. Every generator's hparams is a dict keyed by role (`ROLES`), which is what
`hyperjax.training.labels` reads:

  "hyper"      generator weights (MLPs, heads, per-layer stage weights, codebook logits and values)
  "embedding"  learned embeddings (cond_emb per id, the static code, chunk_emb, layer_emb, feature_emb)
  "base"       shared base weights that are modulated (low_rank, scale_modulation)
  "direct"     the target's ordinary params that are not generated, nested by path parts
  "frozen"     weights that are read but never trained (lora's pretrained base: behind stop_gradient)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from hyperjax._src import checks
from hyperjax._src import paths as _paths
from hyperjax._src.spec import select_paths, TargetSpec
from hyperjax._src.types import Array, HParams, HyperNetwork, PRNGKey

INITS = ("hyperfan_in", "hyperfan_out")
ROLES = ("hyper", "embedding", "base", "direct", "frozen")
DEFAULT_HIDDEN = (100,)     # hidden widths of every built-in generator MLP
DEFAULT_Z_DIM = 8           # size of the learned code of a static dense / chunked / modulation generator


class Core(NamedTuple):
    """A generator of some leaves from the conditioning vector (or None for a static core).

    init(key) -> {role: {...}} (roles "hyper", "embedding", "base"); apply(hparams, c, **call) -> {path: leaf}.
    """

    init: Callable[[PRNGKey], dict[str, Any]]
    apply: Callable[..., dict[str, Array]]


def matrices(path: str, leaf: Any) -> bool:
    """Selector of every 2-D leaf: the default `where` of `low_rank` and `scale_modulation` (which keep, of
    these, the kernels: a DenseGeneral's (heads, head_dim) bias is 2-D but not a kernel)."""
    return len(leaf.shape) == 2


# ---------------------------------------------------------------- random draws
def normals(key: PRNGKey, shapes: Sequence[tuple[int, ...]], dtype: Any) -> list[Array]:
    """Standard normal arrays of `shapes`, cut from one `jax.random.normal` draw of their total size.

    Each random call in an init is one more threefry computation for XLA to compile (0.3-1 s each on a
    2-core CPU, most of an init's time), so draws over layers, groups or leaves are one call, not one each.
    """
    sizes = [math.prod(s) for s in shapes]
    flat = jax.random.normal(key, (sum(sizes),), dtype)
    return [p.reshape(s) for p, s in zip(split_sizes(flat, sizes), shapes)]


def split_sizes(flat: Array, sizes: Sequence[int]) -> list[Array]:
    """f[n] -> consecutive pieces of `sizes` (and the tail beyond their sum, if any), with one `jnp.split`."""
    return jnp.split(flat, np.cumsum(sizes)[:-1 if sum(sizes) == flat.shape[0] else None].tolist())


# ---------------------------------------------------------------- shared weights under vmap
SHARED_MIN_SIZE = 1024   # smaller weights are returned as they are: their reduce is cheap, the extra ops cost compile


def shared(x: Array, like: Array) -> Array:
    """x, a weight shared by every cond, whose gradient under `jax.vmap` over conds is summed by a dot.

    Under `jax.vmap` over conds an unbatched weight x that meets cond-dependent values (W0 + U diag(s) V^T,
    W0 * a b^T, an MLP's bias) is broadcast, and the gradient sums its cotangent over the cond axis with a
    reduce. On the CPU (jaxlib 0.10) that reduce of f[B, N] over B ran several times slower than the loop's
    B adds (low_rank's vmapped gradient: 1.6x the loop). Here the value is x * 1 (a broadcast XLA fuses
    into its consumer) and the tangent is dot_general(1, dx), with the 1 from `like` (batched whenever the
    cond is), so the gradient's sum over conds is that dot's transpose, a matrix-vector product
    (`benchmarks/batched_grad.py`). HIGHEST precision keeps it exact (no TF32 / bf16 passes on GPU / TPU).
    Weights of fewer than `SHARED_MIN_SIZE` (1,024) elements are returned as they are.

    x: f[...]; like: any non-empty array (only its first element is read, for its batching; it gets no
    gradient). Returns x, bitwise (batched like `like` under vmap).

    Raises:
      TypeError: x is not a floating-point array.
      ValueError: like is not a non-empty array.
    """
    if not hasattr(x, "dtype") or not jnp.issubdtype(x.dtype, jnp.inexact):
        raise TypeError(f"hyperjax.generators.shared: `x` must be a floating-point array (a weight), got "
                        f"{getattr(x, 'dtype', type(x).__name__)}.")
    if not hasattr(like, "shape") or math.prod(like.shape) == 0:
        raise ValueError(f"hyperjax.generators.shared: `like` must be a non-empty array (its first element carries "
                         f"the vmapped axis), got {getattr(like, 'shape', type(like).__name__)}.")
    return x if math.prod(x.shape) < SHARED_MIN_SIZE else _shared(x, like)


def _one(x: Array, like: Array) -> Array:
    """f[1] holding 1: like's first element to the power 0 (so batched whenever like is; 1 for inf / NaN too)."""
    return jax.lax.integer_pow(jnp.reshape(like, -1)[:1], 0).astype(x.dtype)


@jax.custom_jvp
def _shared(x: Array, like: Array) -> Array:
    return x * _one(x, like).reshape(())


@_shared.defjvp
def _shared_jvp(primals: tuple[Array, Array], tangents: tuple[Array, Array]) -> tuple[Array, Array]:
    x, like = primals
    dx, _ = tangents
    one = _one(x, like)
    dy = jax.lax.dot_general(one, dx.reshape(1, -1), (((0,), (0,)), ((), ())), precision=jax.lax.Precision.HIGHEST)
    return x * one.reshape(()), dy.reshape(x.shape)


# ---------------------------------------------------------------- MLP
def mlp_init(key: PRNGKey, sizes: Sequence[int], dtype: Any, out_std: Any = None,
             out_mean: Any = 0.0) -> list[dict[str, Array]]:
    """MLP layers [{"w": f[n_in, n_out], "b": f[n_out]}, ...].

    Hidden layers: He-normal (ReLU keeps the second moment of the input). Output layer: N(0, out_std^2)
    per output column (a scalar or f[n_out]), bias `out_mean` (a scalar or f[n_out]).
    """
    draws = normals(key, list(zip(sizes[:-1], sizes[1:])), dtype)
    layers = []
    for i, (z, n_in, n_out) in enumerate(zip(draws, sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        std = out_std if last and out_std is not None else math.sqrt(2.0 / n_in)
        w = z * jnp.broadcast_to(jnp.asarray(std, dtype), (1, n_out))
        b = jnp.broadcast_to(jnp.asarray(out_mean if last else 0.0, dtype), (n_out,))
        layers.append({"w": w, "b": jnp.array(b)})
    return layers


def mlp_apply(layers: list[dict[str, Array]], x: Array, activation: Callable[[Array], Array]) -> Array:
    """x: f[..., n_in] -> f[..., n_out]; `activation` between layers, none after the last."""
    for i, layer in enumerate(layers):
        x = x @ layer["w"] + shared(layer["b"], x)
        if i < len(layers) - 1:
            x = activation(x)
    return x


# ---------------------------------------------------------------- hyperfan statistics
def leaf_moments(target: TargetSpec, paths: Sequence[str], init: str, who: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-leaf (mean, std) the generated leaves should start with (Chang et al., ICLR 2020).

    hyperfan_in: kernels get variance 1/fan_in; hyperfan_out: 1/fan_out; vectors as in
    `TargetSpec.init_moments`. Returns two f64[len(paths)] arrays.
    """
    checks.one_of(init, INITS, "init", who)
    mode = "fan_in" if init == "hyperfan_in" else "fan_out"
    stats = [target.init_moments(p, mode) for p in paths]
    return np.array([m for m, _ in stats]), np.sqrt(np.array([v for _, v in stats]))


def per_element(target: TargetSpec, paths: Sequence[str], values: np.ndarray) -> np.ndarray:
    """Repeat one value per leaf into one value per scalar of the concatenated leaves."""
    sizes = [math.prod(target.leaves[p].shape) for p in paths]
    return np.repeat(values, sizes)


def num_outputs(target: TargetSpec, paths: Sequence[str]) -> int:
    """Number of scalars in the leaves `paths`."""
    return sum(math.prod(target.leaves[p].shape) for p in paths)


def split_leaves(target: TargetSpec, paths: Sequence[str], flat: Array,
                 affine: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Array]:
    """f[n] vector (n >= total size; the tail is dropped) -> {path: leaf} with the spec's shape and dtype.

    `affine` = (mean, std) per leaf applies `leaf = mean + std * raw` with static Python floats, which XLA
    fuses into the split and reshape.

    One `jnp.split`, not a slice per leaf: the transpose of a slice is a pad to the full length, so the
    backward pass of L leaves built L full-size buffers and summed them; under `jax.vmap` over conds XLA
    fused those pads into the transposed copy of chunked's output-layer gradient, reading L arrays at a
    4 KB stride per element (65 of 85 ms of an 8-cond gradient, 1.8x the bytes of a Python loop). The
    transpose of one split is one concatenate.
    """
    parts = split_sizes(flat, [math.prod(target.leaves[p].shape) for p in paths])
    out = {}
    for i, p in enumerate(paths):          # parts[-1] is the dropped tail
        s = target.leaves[p]
        leaf = parts[i]
        if affine is not None:
            mean, std = float(affine[0][i]), float(affine[1][i])
            leaf = leaf * std + mean if mean else leaf * std
        out[p] = leaf.reshape(s.shape).astype(s.dtype)
    return out


# ---------------------------------------------------------------- conditioning
def embeddings(key: PRNGKey, n: int, dim: int, dtype: Any) -> Array:
    """f[n, dim] learned embeddings at init: Gaussian directions scaled to norm sqrt(dim) (unit second moment).

    Exactly unit second moment per row, rather than N(0, 1) rows whose squared norm scatters like chi^2_dim:
    a generated network's init variance is proportional to its code's squared norm, so with 8-d N(0, 1) codes
    single networks landed anywhere in 0.3-3.3x the hyperfan target (20 seeds); normalised, every row is alike.
    """
    return unit_rows(jax.random.normal(key, (n, dim), jnp.float32), dtype)


def unit_rows(e: Array, dtype: Any) -> Array:
    """f[n, dim] Gaussian draws -> the same directions scaled to norm sqrt(dim) (see `embeddings`)."""
    e = e.astype(jnp.float32)
    e = e * jax.lax.rsqrt(jnp.maximum(jnp.mean(jnp.square(e), axis=1, keepdims=True), 1e-12))
    return e.astype(dtype)


class Conditioning(Protocol):
    """How apply's `cond` becomes the core's input.

    dim: length of the vector handed to the core (0 when the core gets None).
    init(key, dtype) -> entries of hparams["embedding"] (e.g. {"cond_emb": f[num_conds, cond_dim]}).
    vector(hparams, cond, who) -> f[dim], or None for a static core without a code; raises on a bad cond.
    """

    dim: int

    def init(self, key: PRNGKey, dtype: Any) -> dict[str, Array]: ...

    def vector(self, hparams: HParams, cond: Any, who: str) -> Array | None: ...


class VectorCond(NamedTuple):
    """cond is a conditioning vector f[cond_dim], used as it is."""

    dim: int

    def init(self, key: PRNGKey, dtype: Any) -> dict[str, Array]:
        return {}

    def vector(self, hparams: HParams, cond: Any, who: str) -> Array:
        if cond is None:
            raise ValueError(f"hyperjax.{who}: this generator is conditioned (cond_dim={self.dim}): call "
                             f"apply(hparams, cond) with cond of shape ({self.dim},), or build it with "
                             f"cond_dim=None for a static generator.")
        checks.cond_vector(cond, self.dim, who)
        return cond


class IdCond(NamedTuple):
    """cond is an integer id in [0, num_conds) that selects a learned embedding f[cond_dim].

    Eager ids are checked here. Traced ids (under jit or vmap) cannot be checked at trace time: out of range
    they give NaN rows, never a silently clamped or wrapped embedding, and under `hyperjax.checked` (or
    `make_step(..., checks=True)`) a `checkify` check raises naming the id.
    """

    dim: int
    num_conds: int

    def init(self, key: PRNGKey, dtype: Any) -> dict[str, Array]:
        return {"cond_emb": embeddings(key, self.num_conds, self.dim, dtype)}

    def vector(self, hparams: HParams, cond: Any, who: str) -> Array:
        if cond is None:
            raise ValueError(f"hyperjax.{who}: this generator was built with num_conds={self.num_conds}: call "
                             f"apply(hparams, cond) with an integer id in [0, {self.num_conds}).")
        checks.cond_index(cond, self.num_conds, who)
        if isinstance(cond, jax.core.Tracer):     # concrete ids were checked above
            checkify.debug_check((cond >= 0) & (cond < self.num_conds),
                                 f"hyperjax.{who}: conditioning id {{id}} out of range [0, {self.num_conds})",
                                 id=cond)
        idx = jnp.where(cond >= 0, cond, self.num_conds)
        return jnp.take(hparams["embedding"]["cond_emb"], idx, axis=0, mode="fill", fill_value=jnp.nan)


class LearnedCode(NamedTuple):
    """Static generator (cond must be None) whose core maps one learned code hparams["embedding"]["code"]."""

    dim: int

    def init(self, key: PRNGKey, dtype: Any) -> dict[str, Array]:
        return {"code": embeddings(key, 1, self.dim, dtype)[0]}

    def vector(self, hparams: HParams, cond: Any, who: str) -> Array:
        checks.no_cond(cond, who)
        return hparams["embedding"]["code"]


class NoCond(NamedTuple):
    """Static generator (cond must be None) whose core needs no input (its own embeddings suffice)."""

    dim: int = 0

    def init(self, key: PRNGKey, dtype: Any) -> dict[str, Array]:
        return {}

    def vector(self, hparams: HParams, cond: Any, who: str) -> None:
        checks.no_cond(cond, who)
        return None


def conditioning(cond_dim: Any, num_conds: Any, who: str, *, static: Conditioning) -> Conditioning:
    """The conditioning of a factory: cond_dim=None (and num_conds=None) -> `static`; an int -> a vector;
    with num_conds -> integer ids. Raises ValueError for num_conds without cond_dim or non-positive sizes."""
    if cond_dim is None:
        if num_conds is not None:
            raise ValueError(f"hyperjax.{who}: `num_conds` needs `cond_dim` (the size of the learned embedding "
                             f"per id); cond_dim=None and num_conds=None build a static generator.")
        return static
    cond_dim = checks.positive_int(cond_dim, "cond_dim", who)
    if num_conds is None:
        return VectorCond(cond_dim)
    return IdCond(cond_dim, checks.positive_int(num_conds, "num_conds", who))


# ---------------------------------------------------------------- assembling
def empty_paths(target: TargetSpec) -> tuple[str, ...]:
    """Zero-size leaves (a dimension of 0): legal pytree leaves with nothing to generate or train."""
    return tuple(p for p, l in target.leaves.items() if math.prod(l.shape) == 0)


def generated_paths(target: TargetSpec, where: Any, who: str) -> tuple[str, ...]:
    """Paths of the non-empty leaves `where` selects (None: all). Zero-size leaves are never generated:
    `assemble` emits them as zeros.

    Raises: TypeError for a non-TargetSpec target; ValueError when nothing (or only zero-size leaves) matches.
    """
    if not isinstance(target, TargetSpec):
        raise TypeError(f"hyperjax.{who}: `target` must be a TargetSpec (from hyperjax.targets.from_linen, "
                        f"from_nnx, from_equinox, from_haiku or from_fn), got {type(target).__name__}.")
    chosen = target.paths if where is None else select_paths(target, where, who)
    empty = set(empty_paths(target))
    kept = tuple(p for p in chosen if p not in empty)
    if not kept:
        raise ValueError(f"hyperjax.{who}: every leaf `where` selects has size 0, so there is nothing to "
                         f"generate: " + ", ".join(f"'{p}' {tuple(target.leaves[p].shape)}" for p in chosen) + ".")
    return kept


def _merge_roles(*parts: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for part in parts:
        for role, entries in part.items():
            out.setdefault(role, {}).update(entries)
    return {r: out[r] for r in ROLES if out.get(r)}


def hparams_checker(init: Callable[[PRNGKey], HParams], who: str) -> Callable[[HParams], None]:
    """check(hparams): raise naming the first path where hparams differ from `jax.eval_shape(init, key)`.

    The abstract hparams are traced once, on the first check (shapes only, nothing allocated).
    """
    expected: list[Any] = []

    def check(hparams: HParams) -> None:
        if not isinstance(hparams, Mapping):
            raise TypeError(f"hyperjax.{who}: hparams must be the dict returned by this generator's init(key), "
                            f"got {type(hparams).__name__}.")
        if not expected:
            abstract = jax.eval_shape(lambda: init(jax.random.key(0)))   # no key op left in the caller's trace
            expected.append((dict(_paths.leaves_with_paths(abstract)), jax.tree_util.tree_structure(abstract)))
        leaves, treedef = expected[0]
        checks.tree_matches(hparams, leaves, treedef, who, what="hparams",
                            hint=" Pass the hparams made by this generator's init(key) (a generator built with "
                                 "other options or for another target has other hparams).")
    return check


def assemble(target: TargetSpec, paths: Sequence[str], core: Core, cond: Conditioning, dtype: Any,
             who: str) -> HyperNetwork:
    """Core over `paths` + conditioning + ordinary params for the other leaves -> HyperNetwork.

    init(key) -> {"hyper": ..., "embedding": ..., "base": ..., "direct": ...} (roles present only when used);
    the direct leaves start as the spec's base weights (`target.params`, e.g. pretrained) when it has them,
    else as the target's own init.
    apply(hparams, cond=None, **call): checks hparams against the generator's own abstract init (tree,
    shapes, dtypes; at trace time), turns cond into the core's input, and joins generated and direct leaves.
    """
    empty = empty_paths(target)
    direct = tuple(p for p in target.paths if p not in set(paths) and p not in set(empty))
    zeros = {p: jax.ShapeDtypeStruct(target.leaves[p].shape, target.leaves[p].dtype) for p in empty}

    def init(key: PRNGKey) -> HParams:
        k_core, k_cond, k_direct = jax.random.split(key, 3)
        parts = [core.init(k_core), {"embedding": cond.init(k_cond, dtype)}]
        if direct:
            own = target.params if target.params is not None else target.init(k_direct)   # pretrained base
            leaves = _paths.leaves_with_paths(own)
            parts.append({"direct": _paths.nest({p: l for p, l in leaves if p in set(direct)})})
        return _merge_roles(*parts)

    # one compiled program: run eagerly, every random draw, reshape and product of an init (and of the
    # target's own init) is dispatched and compiled on its own, 15-45 XLA compilations per generator
    init = jax.jit(init)
    check_hparams = hparams_checker(init, who)

    def apply(hparams: HParams, c: Any = None, **call: Any) -> Any:
        check_hparams(hparams)
        vec = cond.vector(hparams, c, who)
        leaves = core.apply(hparams, vec, **call)
        if direct:
            own = _paths.unnest(hparams["direct"], direct)
            leaves = {**leaves, **own}
        leaves.update({p: jnp.zeros(z.shape, z.dtype) for p, z in zeros.items()})
        return target.from_leaves(leaves)

    return HyperNetwork(init, apply)
