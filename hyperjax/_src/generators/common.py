"""Pieces every generator shares: conditioning, the MLP, hyperfan statistics, partial generation.

A generator *core* emits a subset of the target's leaves as {path: leaf}; `assemble` wraps it into a
`HyperNetwork` whose hparams also hold the conditioning embeddings ("cond_emb") and, when only some
leaves are generated, the ordinary parameters ("direct", a nested dict keyed by path parts).
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
from hyperjax._src.spec import TargetSpec
from hyperjax._src.types import Array, HParams, HyperNetwork, PRNGKey

INITS = ("hyperfan_in", "hyperfan_out")


class Core(NamedTuple):
    """A generator of the leaves `paths` from a conditioning vector c: f[cond_dim]."""

    init: Callable[[PRNGKey], dict[str, Any]]
    apply: Callable[[dict[str, Any], Array], dict[str, Array]]


# ---------------------------------------------------------------- MLP
def mlp_init(key: PRNGKey, sizes: Sequence[int], dtype: Any, out_std: Any = None,
             out_mean: Any = 0.0) -> list[dict[str, Array]]:
    """MLP layers [{"w": f[n_in, n_out], "b": f[n_out]}, ...].

    Hidden layers: He-normal (ReLU keeps the second moment of the input). Output layer: N(0, out_std^2)
    per output column (a scalar or f[n_out]), bias `out_mean` (a scalar or f[n_out]).
    """
    keys = jax.random.split(key, len(sizes) - 1)
    layers = []
    for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        std = out_std if last and out_std is not None else math.sqrt(2.0 / n_in)
        w = jax.random.normal(k, (n_in, n_out), dtype) * jnp.broadcast_to(jnp.asarray(std, dtype), (1, n_out))
        b = jnp.broadcast_to(jnp.asarray(out_mean if last else 0.0, dtype), (n_out,))
        layers.append({"w": w, "b": jnp.array(b)})
    return layers


def mlp_apply(layers: list[dict[str, Array]], x: Array, activation: Callable[[Array], Array]) -> Array:
    """x: f[..., n_in] -> f[..., n_out]; `activation` between layers, none after the last."""
    for i, layer in enumerate(layers):
        x = x @ layer["w"] + layer["b"]
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


def split_leaves(target: TargetSpec, paths: Sequence[str], flat: Array,
                 affine: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Array]:
    """f[n] vector (n >= total size; the tail is dropped) -> {path: leaf} with the spec's shape and dtype.

    `affine` = (mean, std) per leaf applies `leaf = mean + std * raw` with static Python floats, which XLA
    fuses into the slice and reshape.
    """
    out, offset = {}, 0
    for i, p in enumerate(paths):
        s = target.leaves[p]
        n = math.prod(s.shape)
        leaf = flat[offset:offset + n]
        if affine is not None:
            mean, std = float(affine[0][i]), float(affine[1][i])
            leaf = leaf * std + mean if mean else leaf * std
        out[p] = leaf.reshape(s.shape).astype(s.dtype)
        offset += n
    return out


# ---------------------------------------------------------------- conditioning
class Conditioning(NamedTuple):
    """How `cond` becomes a vector: used directly (f[cond_dim]) or looked up by integer id."""

    cond_dim: int
    num_conds: int | None

    def init(self, key: PRNGKey, dtype: Any) -> dict[str, Array]:
        if self.num_conds is None:
            return {}
        return {"cond_emb": jax.random.normal(key, (self.num_conds, self.cond_dim), dtype)}

    def vector(self, hparams: HParams, cond: Array, who: str) -> Array:
        if self.num_conds is None:
            checks.cond_vector(cond, self.cond_dim, who)
            return cond
        checks.cond_index(cond, self.num_conds, who)
        # a traced id cannot be checked: out-of-range (and negative) ids give NaN rows instead of being
        # clamped or wrapped silently to a valid embedding
        idx = jnp.where(cond >= 0, cond, self.num_conds)
        return jnp.take(hparams["cond_emb"], idx, axis=0, mode="fill", fill_value=jnp.nan)


def conditioning(cond_dim: Any, num_conds: Any, who: str) -> Conditioning:
    if cond_dim is None:
        raise ValueError(f"hyperjax.{who}: `cond_dim` is required (the length of the conditioning vector, "
                         f"or of the learned embedding when num_conds is set).")
    cond_dim = checks.positive_int(cond_dim, "cond_dim", who)
    if num_conds is not None:
        num_conds = checks.positive_int(num_conds, "num_conds", who)
    return Conditioning(cond_dim, num_conds)


# ---------------------------------------------------------------- assembling
def generated_paths(target: TargetSpec, where: Any, who: str) -> tuple[str, ...]:
    if not isinstance(target, TargetSpec):
        raise TypeError(f"hyperjax.{who}: `target` must be a TargetSpec (from hyperjax.targets.from_linen, "
                        f"from_nnx, from_equinox, from_haiku or from_fn), got {type(target).__name__}.")
    return target.paths if where is None else target.select(where, who=who)


def assemble(target: TargetSpec, paths: Sequence[str], core: Core, cond: Conditioning, dtype: Any,
             who: str) -> HyperNetwork:
    """Core over `paths` + conditioning + ordinary params for the other leaves -> HyperNetwork."""
    direct = tuple(p for p in target.paths if p not in set(paths))

    def init(key: PRNGKey) -> HParams:
        k_core, k_cond, k_direct = jax.random.split(key, 3)
        hparams = dict(core.init(k_core))
        hparams.update(cond.init(k_cond, dtype))
        if direct:
            leaves = _paths.leaves_with_paths(target.init(k_direct))
            hparams["direct"] = _paths.nest({p: l for p, l in leaves if p in set(direct)})
        return hparams

    def apply(hparams: HParams, c: Array) -> Any:
        if not isinstance(hparams, dict) or not all(k in hparams for k in ("direct",) * bool(direct)):
            raise ValueError(f"hyperjax.{who}: hparams must be the dict returned by init(key)"
                             + (" with a 'direct' entry for the ordinary parameters." if direct else "."))
        vec = cond.vector(hparams, c, who)
        leaves = core.apply(hparams, vec)
        if direct:
            given = hparams["direct"]
            try:
                own = _paths.unnest(given, direct)
            except (KeyError, TypeError):
                flat = [p for p, _ in _paths.leaves_with_paths(given)]
                missing = [p for p in direct if p not in flat]
                raise ValueError(f"hyperjax.{who}: hparams['direct'] lacks ordinary parameters: missing "
                                 + ", ".join(missing[:20])) from None
            for p in direct:
                checks.leaf_like(p, own[p], target.leaves[p], who)
            leaves = {**leaves, **own}
        return target.from_leaves(leaves)

    return HyperNetwork(init, apply)
