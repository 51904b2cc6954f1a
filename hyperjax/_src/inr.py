"""Implicit neural representations as hypernetwork targets: a SIREN coordinate network, its grid, rendering.

SIREN (Sitzmann et al., NeurIPS 2020): y = W_L h_{L-1} + b_L, h_l = sin(omega_0 (W_l h_{l-1} + b_l)), with
W_1 ~ U(-1/n, 1/n) and W_l ~ U(-sqrt(6/n)/omega_0, sqrt(6/n)/omega_0) (n: fan-in), biases PyTorch's default
U(-1/sqrt(n), 1/sqrt(n)). Generators start every kernel at variance 1/fan_in (hyperfan-in), so the target
stores kernels in those units and multiplies by a fixed gain per layer, W_l = gain_l * K_l:
gain_1 = 1/sqrt(3 n) and gain_l = sqrt(2)/omega_0. A generated K at hyperfan-in variance is then a W at
exactly SIREN's variance, and `spec.init(key)` draws K uniformly so that W is SIREN's own uniform init.

Spatial functa (Bauer et al., 2023): `siren(latent_grid=(g, c))` adds a latent grid "latent/grid" f[g, ..., g, c]
(one axis of g cells per input dimension) read at every coordinate by multilinear interpolation (cell centres at
`grid(g)`'s points, clamped at the border) and mapped by a shared "layer_l/latent_kernel" f[c, n_l] to a shift of
every sine layer's pre-activation: h_l = sin(omega (W_l h_{l-1} + b_l + gain'_l z(x) M_l)). Generating only the
grid (`dense(spec, where="latent/grid")`) gives per-image local modulations of a shared base; the INR still
renders at any resolution.

The forward accepts plain kernels or the factors of `scale_modulation` / `low_rank` (`Modulated.factors`):
`render` evaluates a batch of images at any coordinates in one `jax.vmap`, through the factorised path
(no per-image weight matrix) when the generator has one, else through `per_sample`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hyperjax._src import checks
from hyperjax._src import paths as _paths
from hyperjax._src.generators.modulation import Modulated, modulated_matmul
from hyperjax._src.per_sample import per_sample
from hyperjax._src.spec import LeafAxes, spec_from_params, TargetSpec
from hyperjax._src.types import Array, HParams, HyperNetwork, PRNGKey


class Siren(NamedTuple):
    """A SIREN target: `spec` (TargetSpec, apply(params, coords f[..., in_dim]) -> f[..., out_dim]),
    `gains` (one per layer: W_l = gains[l] * stored kernel), `omega_0`, `first_omega_0`, `latent_grid`
    ((cells per axis, channels) of the spatial-functa latent grid, or None) and `latent_gains` (one per sine
    layer: the shift is latent_gains[l] * z(x) @ latent_kernel)."""

    spec: TargetSpec
    gains: tuple[float, ...]
    omega_0: float
    first_omega_0: float
    latent_grid: tuple[int, int] | None = None
    latent_gains: tuple[float, ...] = ()

    def weights(self, params: Any) -> dict[str, Array]:
        """params -> {"layer_l/kernel": W_l} the effective SIREN kernels (gain applied), for inspection."""
        self.spec.check(params)
        return {f"layer_{l}/kernel": g * params[f"layer_{l}"]["kernel"] for l, g in enumerate(self.gains)}

    def bounds(self) -> tuple[float, ...]:
        """SIREN's init bound a_l per layer (W_l ~ U(-a_l, a_l)): 1/n for the first, sqrt(6/n)/omega_0 after."""
        fans = [self.spec.leaves[f"layer_{l}/kernel"].shape[0] for l in range(len(self.gains))]
        return tuple(1.0 / n if l == 0 else math.sqrt(6.0 / n) / self.omega_0 for l, n in enumerate(fans))


def interpolate(latents: Array, coords: Array) -> Array:
    """Multilinear interpolation of a latent grid at coordinates in [-1, 1] (clamped outside).

    latents: f[g_1, ..., g_d, c] (cell centres at `grid(g)`'s points, every g_i >= 2); coords: f[P, d].
    Returns f[P, c].
    Raises: ValueError when coords is not f[P, d] or latents is not f[g_1, ..., g_d, c] with every g_i >= 2.
    """
    who = "inr.interpolate"
    if jnp.ndim(coords) != 2:
        raise ValueError(f"hyperjax.{who}: coords must be f[P, d], got shape {tuple(jnp.shape(coords))}.")
    d = jnp.shape(coords)[-1]
    if jnp.ndim(latents) != d + 1 or any(g < 2 for g in jnp.shape(latents)[:d]):
        raise ValueError(f"hyperjax.{who}: latents must be f[g_1, ..., g_{d}, c] (one axis of >= 2 cells per "
                         f"coordinate dimension, then channels) for coords f[P, {d}], got shape "
                         f"{tuple(jnp.shape(latents))}.")
    idx, frac = [], []
    for k in range(d):                                          # per axis: the lower cell and the weight of the upper
        g = jnp.shape(latents)[k]
        u = jnp.clip((coords[:, k] + 1.0) * (0.5 * g) - 0.5, 0.0, g - 1.0)                   # f[P]
        i0 = jnp.minimum(jnp.floor(u), g - 2.0)
        idx.append(i0.astype(jnp.int32))
        frac.append((u - i0).astype(latents.dtype))
    out = jnp.zeros((jnp.shape(coords)[0], jnp.shape(latents)[-1]), latents.dtype)
    for corner in itertools.product((0, 1), repeat=d):          # 2^d corners, static
        w = math.prod(f if c else 1.0 - f for f, c in zip(frac, corner))                     # f[P]
        out = out + w[:, None] * latents[tuple(i + c for i, c in zip(idx, corner))]
    return out


def _forward(gains: Sequence[float], omegas: Sequence[float], params: Any, coords: Array,
             latent_gains: Sequence[float] = ()) -> Array:
    """coords f[..., in_dim] -> f[..., out_dim]; kernels may be arrays or modulation factors (one example).
    With `latent_gains` (a latent-grid SIREN), params["latent"]["grid"] is interpolated at every coordinate and
    shifts each sine layer by latent_gains[l] * z(x) @ layer_l/latent_kernel."""
    lead = jnp.shape(coords)[:-1]
    x = jnp.reshape(coords, (-1, jnp.shape(coords)[-1]))
    z = interpolate(params["latent"]["grid"], x) if latent_gains else jnp.zeros((x.shape[0], 0), x.dtype)

    def point(h: Array, zx: Array) -> Array:
        for l, (g, w) in enumerate(zip(gains, omegas)):
            layer = params[f"layer_{l}"]
            h = g * modulated_matmul(h, layer["kernel"]) + layer["bias"]
            if l < len(gains) - 1:
                if latent_gains:
                    h = h + latent_gains[l] * modulated_matmul(zx, layer["latent_kernel"])
                h = jnp.sin(w * h)
        return h

    y = jax.vmap(point)(x, z)
    return jnp.reshape(y, (*lead, y.shape[-1]))


def siren(*, in_dim: int = 2, hidden: int | Sequence[int] = (64, 64, 64), out_dim: int = 1,
          omega_0: float = 30.0, first_omega_0: float | None = None, latent_grid: tuple[int, int] | None = None,
          dtype: Any = jnp.float32) -> Siren:
    """A SIREN coordinate network as a TargetSpec (paths "layer_l/kernel" f[n_in, n_out], "layer_l/bias").

    in_dim -> hidden... (sine, frequency first_omega_0 for the first layer, omega_0 after) -> out_dim (linear).
    `spec.init(key)` is SIREN's initialisation; see the module docstring for the stored-kernel gains.
    latent_grid: (g, c) adds spatial functa's latent grid "latent/grid" f[g, ..., g (in_dim times), c] (an
      embedding-like leaf: init N(0, 1/c)) and "layer_l/latent_kernel" f[c, n_l] for every sine layer; the
      interpolated latent z(x) shifts layer l by sqrt(c / (3 n_l)) z(x) @ latent_kernel (at init the shift has
      the bias's variance 1/(3 n_l)). Generate only the grid with `dense(spec, where="latent/grid")`.
    Raises: ValueError for non-positive sizes or frequencies, or a latent_grid that is not (g >= 2, c >= 1).
    """
    who = "inr.siren"
    in_dim = checks.positive_int(in_dim, "in_dim", who)
    out_dim = checks.positive_int(out_dim, "out_dim", who)
    hidden = checks.positive_ints(hidden, "hidden", who)
    if not hidden:
        raise ValueError(f"hyperjax.{who}: `hidden` needs at least one width (a sine layer), got {hidden!r}.")
    omega_0 = checks.positive_float(omega_0, "omega_0", who)
    first = omega_0 if first_omega_0 is None else checks.positive_float(first_omega_0, "first_omega_0", who)
    sizes = (in_dim, *hidden, out_dim)
    n_layers = len(sizes) - 1
    gains = tuple(1.0 / math.sqrt(3.0 * sizes[0]) if l == 0 else math.sqrt(2.0) / omega_0 for l in range(n_layers))
    omegas = (first, *([omega_0] * (n_layers - 1)))
    example = {f"layer_{l}": {"kernel": jax.ShapeDtypeStruct((a, b), dtype), "bias": jax.ShapeDtypeStruct((b,), dtype)}
               for l, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))}
    axes, latent_gains = None, ()
    if latent_grid is not None:
        if (not isinstance(latent_grid, (tuple, list)) or len(latent_grid) != 2
                or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in latent_grid)
                or latent_grid[0] < 2 or latent_grid[1] < 1):
            raise ValueError(f"hyperjax.{who}: `latent_grid` must be (cells per axis >= 2, channels >= 1), e.g. "
                             f"(8, 16), or None; got {latent_grid!r}.")
        cells, chans = int(latent_grid[0]), int(latent_grid[1])
        latent_grid = (cells, chans)
        grid_shape = (*([cells] * in_dim), chans)
        example["latent"] = {"grid": jax.ShapeDtypeStruct(grid_shape, dtype)}
        for l, b in enumerate(hidden):
            example[f"layer_{l}"]["latent_kernel"] = jax.ShapeDtypeStruct((chans, b), dtype)
        axes = {"latent/grid": LeafAxes("embedding", (), tuple(range(in_dim)), (in_dim,))}
        latent_gains = tuple(math.sqrt(chans / (3.0 * b)) for b in hidden)

    def init_fn(key: PRNGKey) -> Any:
        """Stored K ~ U(-sqrt(3/n), sqrt(3/n)) (so W = gain K is SIREN's uniform), b ~ U(-1/sqrt(n), 1/sqrt(n));
        a latent grid ~ N(0, 1/c) and latent kernels ~ U(-sqrt(3/c), sqrt(3/c))."""
        keys = jax.random.split(key, 3 * n_layers + 1)
        out = {}
        for l, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            ka, kb = math.sqrt(3.0 / a), 1.0 / math.sqrt(a)
            out[f"layer_{l}"] = {"kernel": jax.random.uniform(keys[3 * l], (a, b), dtype, -ka, ka),
                                 "bias": jax.random.uniform(keys[3 * l + 1], (b,), dtype, -kb, kb)}
            if latent_grid is not None and l < n_layers - 1:
                kc = math.sqrt(3.0 / latent_grid[1])
                out[f"layer_{l}"]["latent_kernel"] = jax.random.uniform(keys[3 * l + 2], (latent_grid[1], b), dtype,
                                                                        -kc, kc)
        if latent_grid is not None:
            out["latent"] = {"grid": jax.random.normal(keys[-1], grid_shape, dtype) / math.sqrt(latent_grid[1])}
        return out

    def apply_fn(params: Any, coords: Array) -> Array:
        if jnp.ndim(coords) < 1 or jnp.shape(coords)[-1] != in_dim:
            raise ValueError(f"hyperjax.inr.siren: coords must have shape (..., {in_dim}), got "
                             f"{tuple(jnp.shape(coords))}; build them with hyperjax.inr.grid(resolution).")
        return _forward(gains, omegas, params, coords, latent_gains)

    spec = spec_from_params(apply_fn, example, init_fn=init_fn, layout="in_out", framework="function", axes=axes)
    return Siren(spec, gains, float(omega_0), float(first), latent_grid, latent_gains)


def grid(resolution: int, *, in_dim: int = 2) -> Array:
    """Pixel-centre coordinates in [-1, 1]: f[resolution ** in_dim, in_dim], row-major (y first for images)."""
    resolution = checks.positive_int(resolution, "resolution", "inr.grid")
    axis = (np.arange(resolution, dtype=np.float32) + 0.5) / resolution * 2.0 - 1.0
    mesh = np.meshgrid(*([axis] * in_dim), indexing="ij")
    return jnp.asarray(np.stack([m.reshape(-1) for m in mesh], axis=-1))


def _siren_of(target: Any, who: str) -> Siren:
    if not isinstance(target, Siren):
        raise TypeError(f"hyperjax.{who}: `target` must be the Siren returned by hyperjax.inr.siren(...), got "
                        f"{type(target).__name__}.")
    return target


def render(hnet: HyperNetwork | Modulated, target: Siren, hparams: HParams, conds: Array, coords: Array, *,
           factorised: bool | None = None) -> Array:
    """Evaluate the INR of every cond at `coords`: one `jax.vmap` over the batch, no Python loop.

    conds: f[B, cond_dim]; coords: f[P, in_dim] (shared, e.g. `grid(128)`) or f[B, P, in_dim].
    factorised: None (default) uses `hnet.factors` when the generator has them (scale_modulation, low_rank:
    x @ W(c) from the shared base and per-image scales, never a per-image weight matrix), else
    `hyperjax.per_sample` (materialised per-image weights). Returns f[B, P, out_dim].
    Raises: TypeError for a target that is not a `Siren`; ValueError for factorised=True without factors or
    mismatched batch sizes.
    """
    who = "inr.render"
    target = _siren_of(target, who)
    has_factors = callable(getattr(hnet, "factors", None))
    if factorised is None:
        factorised = has_factors
    if factorised and not has_factors:
        raise ValueError(f"hyperjax.{who}: factorised=True needs a generator with `factors` (scale_modulation or "
                         f"low_rank), got {type(hnet).__name__} without one.")
    if jnp.ndim(conds) < 1:
        raise ValueError(f"hyperjax.{who}: conds needs a leading batch axis f[B, cond_dim], got shape "
                         f"{tuple(jnp.shape(conds))}.")
    b = jnp.shape(conds)[0]
    shared = jnp.ndim(coords) == 2
    if not shared and (jnp.ndim(coords) != 3 or jnp.shape(coords)[0] != b):
        raise ValueError(f"hyperjax.{who}: coords must be f[P, in_dim] (shared) or f[B={b}, P, in_dim], got "
                         f"{tuple(jnp.shape(coords))}.")
    if factorised:
        gains = target.gains
        omegas = (target.first_omega_0, *([target.omega_0] * (len(gains) - 1)))

        def one(c: Array, x: Array) -> Array:
            return _forward(gains, omegas, hnet.factors(hparams, c), x, target.latent_gains)

        return jax.vmap(one, in_axes=(0, None if shared else 0))(conds, coords)
    xs = jnp.broadcast_to(coords, (b, *jnp.shape(coords))) if shared else coords
    return per_sample(hnet, target.spec, example_has_batch_axis=False)(hparams, conds, xs)


def with_target_base(hnet: Modulated, target: Siren | TargetSpec) -> Modulated:
    """A modulation generator whose shared base W0 starts as the target's own init (SIREN's uniform draw
    for a `Siren`) instead of a Gaussian of the same variance; everything else unchanged.

    Raises: TypeError when `hnet` has no base (not a scale_modulation / low_rank generator).
    """
    who = "inr.with_target_base"
    spec = target.spec if isinstance(target, Siren) else target
    if not isinstance(hnet, Modulated):
        raise TypeError(f"hyperjax.{who}: `hnet` must be a scale_modulation or low_rank generator (a Modulated "
                        f"with a shared base), got {type(hnet).__name__}.")
    init0 = hnet.init

    def init(key: PRNGKey) -> HParams:
        k_gen, k_base = jax.random.split(key)
        hparams = init0(k_gen)
        own = dict(_paths.leaves_with_paths(spec.init(k_base)))
        base = dict(_paths.leaves_with_paths(hparams["base"]))
        return {**hparams, "base": _paths.nest({p: own[p].astype(l.dtype) for p, l in base.items()})}

    return hnet._replace(init=jax.jit(init))


__all__ = ["Siren", "grid", "interpolate", "render", "siren", "with_target_base"]
