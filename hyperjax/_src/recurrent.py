"""The HyperLSTM (Ha, Dai & Le 2016, "HyperNetworks", section 3.2) and its layer-normed LSTM baseline.

A small LSTM (the hyper-cell) reads [x_t, h_{t-1}] and, from its hidden state h^_t, emits per-unit scaling
vectors for the main LSTM at every step (the paper's memory-efficient weight-scaling form):

    z_x = W_zx h^_t + b_zx,  z_h = W_zh h^_t + b_zh,  z_b = W_zb h^_t          (per gate g in i, j, f, o)
    d_x = W_dx z_x,          d_h = W_dh z_h,          d_b = W_db z_b
    gates = LN_g(d_x * (x_t W_x) + d_h * (h_{t-1} W_h) + b + d_b)

so W_x and W_h are never rescaled into a new matrix: the per-step weight diag(d) W is applied as d * (W x).
Layer norm as in the paper: per gate before the non-linearities and on the cell state before the output
tanh, in the main LSTM and in the hyper-cell.

    c_t = sigmoid(f + 1) * c_{t-1} + sigmoid(i) * tanh(j),   h_t = sigmoid(o) * tanh(LN_c(c_t))

Cells are pure functions `cell(params, state, x) -> (state, h)`, so `jax.lax.scan` (or `scan` below) runs
them over time; `x` may carry any leading batch axes. The linen (`LayerNormLSTM`, `HyperLSTM`) and NNX
(`NNXLayerNormLSTM`, `NNXHyperLSTM`) cells are `RNNCellBase` subclasses built on first access (flax is not
imported before), usable with `flax.linen.RNN` / `flax.nnx.RNN`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from hyperjax._src import checks
from hyperjax._src.types import Array, PRNGKey

FORGET_BIAS = 1.0    # added to the forget gate pre-activation (after its layer norm)
LN_EPS = 1e-3        # layer-norm epsilon (the HyperLSTM reference implementation's)
GATES = 4            # i (input), j (candidate), f (forget), o (output), in this order along 4H
INIT_SCALE = 0.1     # the initial weight scales d_x = d_h (Cooijmans et al.'s recurrent-norm init)

_LSTM_KEYS = ("kernel_x", "kernel_h", "bias", "ln_gates", "ln_cell")
_HYPER_KEYS = ("main", "hyper", "proj")
_PROJ_KEYS = {"x": ("w_z", "b_z", "w_d"), "h": ("w_z", "b_z", "w_d"), "bias": ("w_z", "w_d")}

LSTMParams = dict[str, Any]
HyperLSTMParams = dict[str, Any]


class LSTMState(NamedTuple):
    """The carry of one LSTM: c f[..., hidden] (cell) and h f[..., hidden] (output), flax's (c, h) order."""

    c: Array
    h: Array


class HyperLSTMState(NamedTuple):
    """The carry of a HyperLSTM: the main LSTM's (c, h) f[..., hidden] and the hyper-cell's f[..., hyper_hidden]."""

    main: LSTMState
    hyper: LSTMState


# ---------------------------------------------------------------------------------------------- init
def _ln_init(n: int, dtype: DTypeLike) -> dict[str, Array]:
    return {"scale": jnp.ones((n,), dtype), "bias": jnp.zeros((n,), dtype)}


def _float_dtype(dtype: Any, who: str) -> Any:
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(f"hyperjax.{who}: `dtype` must be a floating dtype (jnp.float32, jnp.bfloat16), got {dtype!r}.")
    return dt


def lstm_init(key: PRNGKey, *, in_dim: int, hidden: int, dtype: DTypeLike = jnp.float32) -> LSTMParams:
    """Params of a layer-normed LSTM cell.

    Returns {"kernel_x": f[in_dim, 4 hidden] (LeCun normal), "kernel_h": f[hidden, 4 hidden] (orthogonal per
    gate), "bias": f[4 hidden] (zeros), "ln_gates": {"scale", "bias"} f[4 hidden], "ln_cell": {"scale", "bias"}
    f[hidden]}; gates i, j, f, o along the last axis.

    Raises:
      ValueError: in_dim or hidden is not a positive int. TypeError: dtype is not a floating dtype.
    """
    who = "recurrent.lstm_init"
    in_dim, hidden = checks.positive_int(in_dim, "in_dim", who), checks.positive_int(hidden, "hidden", who)
    return _lstm_init(key, in_dim, hidden, _float_dtype(dtype, who))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))      # one compiled program, not one per eager op
def _lstm_init(key: PRNGKey, in_dim: int, hidden: int, dtype: Any) -> LSTMParams:
    k_x, k_h = jax.random.split(key)
    kernel_x = jax.nn.initializers.lecun_normal()(k_x, (in_dim, GATES * hidden), dtype)
    blocks = jax.vmap(lambda k: jax.nn.initializers.orthogonal()(k, (hidden, hidden), dtype))(
        jax.random.split(k_h, GATES))                                             # (4, H, H)
    kernel_h = jnp.transpose(blocks, (1, 0, 2)).reshape(hidden, GATES * hidden)
    return {"kernel_x": kernel_x, "kernel_h": kernel_h, "bias": jnp.zeros((GATES * hidden,), dtype),
            "ln_gates": _ln_init(GATES * hidden, dtype), "ln_cell": _ln_init(hidden, dtype)}


def hyperlstm_init(key: PRNGKey, *, in_dim: int, hidden: int, hyper_hidden: int = 128, emb_dim: int = 16,
                   dtype: DTypeLike = jnp.float32) -> HyperLSTMParams:
    """Params of a HyperLSTM cell: {"main": LSTM(in_dim -> hidden), "hyper": LSTM(in_dim + hidden ->
    hyper_hidden), "proj": {"x", "h", "bias"}}.

    proj["x"], proj["h"]: {"w_z": f[hyper_hidden, 4, emb_dim] (zeros), "b_z": f[4, emb_dim] (ones),
      "w_d": f[4, emb_dim, hidden] (INIT_SCALE / emb_dim)}, so d_x = d_h = 0.1 at init;
    proj["bias"]: {"w_z": f[hyper_hidden, 4, emb_dim] (normal, std 0.01), "w_d": f[4, emb_dim, hidden] (zeros)},
      so d_b = 0 at init. (The initialisation of the paper's reference implementation.)

    Raises:
      ValueError: a size is not a positive int. TypeError: dtype is not a floating dtype.
    """
    who = "recurrent.hyperlstm_init"
    in_dim, hidden = checks.positive_int(in_dim, "in_dim", who), checks.positive_int(hidden, "hidden", who)
    hyper_hidden = checks.positive_int(hyper_hidden, "hyper_hidden", who)
    emb_dim = checks.positive_int(emb_dim, "emb_dim", who)
    return _hyperlstm_init(key, in_dim, hidden, hyper_hidden, emb_dim, _float_dtype(dtype, who))


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def _hyperlstm_init(key: PRNGKey, in_dim: int, hidden: int, hyper_hidden: int, emb_dim: int, dtype: Any
                    ) -> HyperLSTMParams:
    k_main, k_hyper, k_zb = jax.random.split(key, 3)
    scale = {"w_z": jnp.zeros((hyper_hidden, GATES, emb_dim), dtype), "b_z": jnp.ones((GATES, emb_dim), dtype),
             "w_d": jnp.full((GATES, emb_dim, hidden), INIT_SCALE / emb_dim, dtype)}
    return {"main": _lstm_init(k_main, in_dim, hidden, dtype),
            "hyper": _lstm_init(k_hyper, in_dim + hidden, hyper_hidden, dtype),
            "proj": {"x": scale, "h": jax.tree.map(jnp.copy, scale),
                     "bias": {"w_z": 0.01 * jax.random.normal(k_zb, (hyper_hidden, GATES, emb_dim), dtype),
                              "w_d": jnp.zeros((GATES, emb_dim, hidden), dtype)}}}


def lstm_param_count(in_dim: int, hidden: int) -> int:
    """Scalars of `lstm_init(in_dim=, hidden=)`: 4H (in_dim + H + 1) weights and bias + 10H layer norm."""
    return GATES * hidden * (in_dim + hidden + 1) + 2 * GATES * hidden + 2 * hidden


def hyperlstm_param_count(in_dim: int, hidden: int, hyper_hidden: int = 128, emb_dim: int = 16) -> int:
    """Scalars of `hyperlstm_init`: main LSTM + hyper LSTM (in_dim + hidden -> hyper_hidden) + projections
    3 (4 E hyper_hidden + 4 E hidden) + 2 (4 E) biases."""
    proj = 3 * (GATES * emb_dim * hyper_hidden + GATES * emb_dim * hidden) + 2 * GATES * emb_dim
    return lstm_param_count(in_dim, hidden) + lstm_param_count(in_dim + hidden, hyper_hidden) + proj


# -------------------------------------------------------------------------------------------- checks
def _shape_of(tree: Any, key: str, prefix: str, who: str) -> tuple[int, ...]:
    leaf = tree[key]
    if not hasattr(leaf, "shape"):
        raise TypeError(f"hyperjax.{who}: params leaf '{prefix}{key}' must be an array, got {type(leaf).__name__}.")
    return tuple(leaf.shape)


def _keys(tree: Any, want: Sequence[str], prefix: str, who: str, made_by: str) -> None:
    if not isinstance(tree, dict):
        raise TypeError(f"hyperjax.{who}: params{' ' + repr(prefix.rstrip('/')) if prefix else ''} must be a dict "
                        f"made by {made_by}, got {type(tree).__name__}.")
    missing = [k for k in want if k not in tree]
    extra = sorted(set(tree) - set(want))
    if missing or extra:
        parts = ([f"missing: {', '.join(prefix + k for k in missing)}"] if missing else []) + \
                ([f"unexpected: {', '.join(prefix + k for k in extra)}"] if extra else [])
        raise ValueError(f"hyperjax.{who}: params do not match {made_by}; {'; '.join(parts)}.")


def _expect(path: str, got: tuple[int, ...], want: tuple[int, ...], why: str, who: str) -> None:
    if got != want:
        raise ValueError(f"hyperjax.{who}: params leaf '{path}' has shape {got}, expected {want} ({why}).")


def _lstm_dims(params: Any, prefix: str, who: str) -> tuple[int, int]:
    """(in_dim, hidden) of LSTM params, every leaf's shape checked against them."""
    _keys(params, _LSTM_KEYS, prefix, who, "hyperjax.recurrent.lstm_init")
    kh = _shape_of(params, "kernel_h", prefix, who)
    if len(kh) != 2 or kh[1] != GATES * kh[0]:
        raise ValueError(f"hyperjax.{who}: params leaf '{prefix}kernel_h' must be f[hidden, 4 hidden] "
                         f"(gates i, j, f, o), got shape {kh}.")
    hidden = kh[0]
    kx = _shape_of(params, "kernel_x", prefix, who)
    if len(kx) != 2 or kx[1] != GATES * hidden:
        raise ValueError(f"hyperjax.{who}: params leaf '{prefix}kernel_x' must be f[in_dim, {GATES * hidden}] "
                         f"(4 hidden, hidden={hidden} from '{prefix}kernel_h'), got shape {kx}.")
    _expect(f"{prefix}bias", _shape_of(params, "bias", prefix, who), (GATES * hidden,), f"4 hidden, hidden={hidden}",
            who)
    for ln, n in (("ln_gates", GATES * hidden), ("ln_cell", hidden)):
        _keys(params[ln], ("scale", "bias"), f"{prefix}{ln}/", who, "hyperjax.recurrent.lstm_init")
        for k in ("scale", "bias"):
            _expect(f"{prefix}{ln}/{k}", _shape_of(params[ln], k, f"{prefix}{ln}/", who), (n,),
                    f"hidden={hidden}", who)
    return kx[0], hidden


def _hyper_dims(params: Any, who: str) -> tuple[int, int, int, int]:
    """(in_dim, hidden, hyper_hidden, emb_dim) of HyperLSTM params, every leaf's shape checked."""
    made_by = "hyperjax.recurrent.hyperlstm_init"
    _keys(params, _HYPER_KEYS, "", who, made_by)
    in_dim, hidden = _lstm_dims(params["main"], "main/", who)
    hyper_in, hyper_hidden = _lstm_dims(params["hyper"], "hyper/", who)
    if hyper_in != in_dim + hidden:
        raise ValueError(f"hyperjax.{who}: params leaf 'hyper/kernel_x' reads {hyper_in} inputs, expected "
                         f"in_dim + hidden = {in_dim} + {hidden} = {in_dim + hidden} (the hyper-cell reads [x, h]).")
    _keys(params["proj"], tuple(_PROJ_KEYS), "proj/", who, made_by)
    emb_dim = None
    for name, keys in _PROJ_KEYS.items():
        prefix = f"proj/{name}/"
        _keys(params["proj"][name], keys, prefix, who, made_by)
        wz = _shape_of(params["proj"][name], "w_z", prefix, who)
        if len(wz) != 3 or wz[:2] != (hyper_hidden, GATES):
            raise ValueError(f"hyperjax.{who}: params leaf '{prefix}w_z' must be f[{hyper_hidden}, {GATES}, emb_dim] "
                             f"(hyper_hidden={hyper_hidden}, 4 gates), got shape {wz}.")
        emb_dim = wz[2] if emb_dim is None else emb_dim
        _expect(f"{prefix}w_z", wz, (hyper_hidden, GATES, emb_dim), f"emb_dim={emb_dim} from 'proj/x/w_z'", who)
        if "b_z" in keys:
            _expect(f"{prefix}b_z", _shape_of(params["proj"][name], "b_z", prefix, who), (GATES, emb_dim),
                    f"emb_dim={emb_dim}", who)
        _expect(f"{prefix}w_d", _shape_of(params["proj"][name], "w_d", prefix, who), (GATES, emb_dim, hidden),
                f"emb_dim={emb_dim}, hidden={hidden}", who)
    return in_dim, hidden, hyper_hidden, emb_dim


def _check_input(x: Any, in_dim: int, what: str, who: str) -> Array:
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"hyperjax.{who}: `{what}` must be an array f[..., {in_dim}], got {type(x).__name__}.")
    if x.ndim < 1 or x.shape[-1] != in_dim:
        raise ValueError(f"hyperjax.{who}: `{what}` must have last axis in_dim={in_dim} (the rows of "
                         f"'kernel_x'), got shape {tuple(x.shape)}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"hyperjax.{who}: `{what}` must be floating point, got {x.dtype}; embed token ids first.")
    return x


def _check_state(state: Any, batch: tuple[int, ...], hidden: int, what: str, who: str) -> LSTMState:
    if not (isinstance(state, tuple) and len(state) == 2):
        raise TypeError(f"hyperjax.{who}: `{what}` must be an LSTMState(c, h) (see zero_state), got "
                        f"{type(state).__name__}.")
    want = (*batch, hidden)
    for name, v in zip(("c", "h"), state):
        if not hasattr(v, "shape") or tuple(v.shape) != want:
            got = tuple(v.shape) if hasattr(v, "shape") else type(v).__name__
            raise ValueError(f"hyperjax.{who}: `{what}.{name}` must have shape {want} (the input's batch axes "
                             f"{batch} + hidden {hidden}), got {got}.")
    return LSTMState(*state)


# ------------------------------------------------------------------------------------------- the math
def _row(v: Array, ndim: int) -> Array:
    """v f[*s] -> f[1, ..., 1, *s] of rank ndim (explicit broadcasting under rank promotion "raise")."""
    return v.reshape((1,) * (ndim - v.ndim) + v.shape)


def _layer_norm(y: Array, ln: dict[str, Array], groups: int) -> Array:
    """y f[..., groups * n] normalised over each group of n, then scale * y + bias (f[groups * n])."""
    shape = y.shape
    g = y.reshape(*shape[:-1], groups, shape[-1] // groups)
    mean = jnp.mean(g, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(g - mean), axis=-1, keepdims=True)
    g = (g - mean) * jax.lax.rsqrt(var + jnp.asarray(LN_EPS, y.dtype))
    return g.reshape(shape) * _row(ln["scale"], y.ndim) + _row(ln["bias"], y.ndim)


def _update(params: LSTMParams, c: Array, pre: Array) -> tuple[LSTMState, Array]:
    """Gate pre-activations pre f[..., 4H] -> (new state, h): per-gate LN, c LN before the output tanh."""
    i, j, f, o = jnp.split(_layer_norm(pre, params["ln_gates"], GATES), GATES, axis=-1)
    c = jax.nn.sigmoid(f + jnp.asarray(FORGET_BIAS, f.dtype)) * c + jax.nn.sigmoid(i) * jnp.tanh(j)
    h = jax.nn.sigmoid(o) * jnp.tanh(_layer_norm(c, params["ln_cell"], 1))
    return LSTMState(c, h), h


def _lstm(params: LSTMParams, state: LSTMState, x: Array) -> tuple[LSTMState, Array]:
    pre = x @ params["kernel_x"] + state.h @ params["kernel_h"] + _row(params["bias"], x.ndim)
    return _update(params, state.c, pre)


def _project(proj: dict[str, Array], h_hat: Array) -> Array:
    """h^ f[..., Nh] -> d f[..., 4H]: z = h^ W_z (+ b_z) f[..., 4, E], then d_g = z_g W_d,g per gate."""
    z = jnp.einsum("...k,kge->...ge", h_hat, proj["w_z"])
    if "b_z" in proj:
        z = z + _row(proj["b_z"], z.ndim)
    d = jnp.einsum("...ge,geh->...gh", z, proj["w_d"])
    return d.reshape(*d.shape[:-2], -1)


def _scales(params: HyperLSTMParams, state: HyperLSTMState, x: Array) -> tuple[LSTMState, dict[str, Array]]:
    hyper_state, h_hat = _lstm(params["hyper"], state.hyper, jnp.concatenate([x, state.main.h], axis=-1))
    return hyper_state, {name: _project(params["proj"][name], h_hat) for name in _PROJ_KEYS}


def _hyperlstm(params: HyperLSTMParams, state: HyperLSTMState, x: Array) -> tuple[HyperLSTMState, Array]:
    main = params["main"]
    hyper_state, d = _scales(params, state, x)
    pre = (d["x"] * (x @ main["kernel_x"]) + d["h"] * (state.main.h @ main["kernel_h"])
           + (_row(main["bias"], x.ndim) + d["bias"]))
    main_state, h = _update(main, state.main.c, pre)
    return HyperLSTMState(main_state, hyper_state), h


# ---------------------------------------------------------------------------------------- public cells
def lstm_cell(params: LSTMParams, state: LSTMState, x: Array) -> tuple[LSTMState, Array]:
    """One step of the layer-normed LSTM (the HyperLSTM with d_x = d_h = 1, d_b = 0).

    params: from `lstm_init`. state: LSTMState(c, h), each f[..., hidden]. x: f[..., in_dim].
    Returns (new state, h f[..., hidden]).

    Raises:
      TypeError / ValueError: params not shaped like `lstm_init`'s (naming the leaf), x without last axis
        in_dim or not floating, a state whose shape is not x's batch axes + (hidden,).
    """
    who = "recurrent.lstm_cell"
    in_dim, hidden = _lstm_dims(params, "", who)
    x = _check_input(x, in_dim, "x", who)
    state = _check_state(state, tuple(x.shape[:-1]), hidden, "state", who)
    return _lstm(params, state, x)


def hyperlstm_cell(params: HyperLSTMParams, state: HyperLSTMState, x: Array) -> tuple[HyperLSTMState, Array]:
    """One HyperLSTM step: the hyper-cell reads [x, h_{t-1}], emits d_x, d_h, d_b f[..., 4 hidden], and the
    main LSTM computes LN(d_x * (x W_x) + d_h * (h W_h) + b + d_b) (no per-step weight matrix).

    params: from `hyperlstm_init`. state: HyperLSTMState(main (c, h) f[..., hidden], hyper (c, h)
    f[..., hyper_hidden]). x: f[..., in_dim]. Returns (new state, h f[..., hidden]).

    Raises:
      TypeError / ValueError: params not shaped like `hyperlstm_init`'s (naming the leaf), a bad x or state.
    """
    state = _check_hyper(params, state, x, "recurrent.hyperlstm_cell")
    return _hyperlstm(params, state, x)


def hyperlstm_scales(params: HyperLSTMParams, state: HyperLSTMState, x: Array) -> dict[str, Array]:
    """The scaling vectors the hyper-cell emits at this step: {"x": d_x, "h": d_h, "bias": d_b}, each
    f[..., 4 hidden] (gates i, j, f, o). Same arguments and errors as `hyperlstm_cell`."""
    state = _check_hyper(params, state, x, "recurrent.hyperlstm_scales")
    return _scales(params, state, x)[1]


def _check_hyper(params: Any, state: Any, x: Any, who: str) -> HyperLSTMState:
    in_dim, hidden, hyper_hidden, _ = _hyper_dims(params, who)
    x = _check_input(x, in_dim, "x", who)
    if not (isinstance(state, tuple) and len(state) == 2):
        raise TypeError(f"hyperjax.{who}: `state` must be a HyperLSTMState(main, hyper) (see zero_state), got "
                        f"{type(state).__name__}.")
    batch = tuple(x.shape[:-1])
    return HyperLSTMState(_check_state(state[0], batch, hidden, "state.main", who),
                          _check_state(state[1], batch, hyper_hidden, "state.hyper", who))


def _kind(params: Any, who: str) -> str:
    if isinstance(params, dict) and set(params) == set(_HYPER_KEYS):
        return "hyperlstm"
    if isinstance(params, dict) and set(params) == set(_LSTM_KEYS):
        return "lstm"
    got = sorted(params) if isinstance(params, dict) else type(params).__name__
    raise ValueError(f"hyperjax.{who}: params must come from lstm_init (keys {list(_LSTM_KEYS)}) or hyperlstm_init "
                     f"(keys {list(_HYPER_KEYS)}), got {got}.")


def zero_state(params: LSTMParams | HyperLSTMParams, batch_shape: Sequence[int] = ()
               ) -> LSTMState | HyperLSTMState:
    """The all-zero carry for `lstm_cell` (LSTMState) or `hyperlstm_cell` (HyperLSTMState), f[*batch_shape, n]
    in the params' dtype.

    Raises:
      ValueError: params from neither init, or a batch_shape that is not a tuple of non-negative ints.
    """
    who = "recurrent.zero_state"
    if isinstance(batch_shape, int) or not all(checks._is_int(b) and b >= 0 for b in batch_shape):
        raise ValueError(f"hyperjax.{who}: `batch_shape` must be a tuple of non-negative ints, e.g. (32,), got "
                         f"{batch_shape!r}.")
    batch = tuple(int(b) for b in batch_shape)

    def zeros(lstm: LSTMParams) -> LSTMState:
        hidden, dtype = lstm["kernel_h"].shape[0], lstm["kernel_h"].dtype
        return LSTMState(jnp.zeros((*batch, hidden), dtype), jnp.zeros((*batch, hidden), dtype))

    if _kind(params, who) == "lstm":
        _lstm_dims(params, "", who)
        return zeros(params)
    _hyper_dims(params, who)
    return HyperLSTMState(zeros(params["main"]), zeros(params["hyper"]))


def scan(cell: Callable[[Any, Any, Array], tuple[Any, Array]], params: Any, state: Any, xs: Array, *,
         unroll: int | bool = 1, reverse: bool = False) -> tuple[Any, Array]:
    """Run `cell(params, state, x)` over the leading (time) axis of xs with `jax.lax.scan`.

    xs: f[T, ..., in_dim]. Returns (final state, hs f[T, ..., hidden]). The params and shapes are checked
    once, on the first step's shapes, not inside the loop.

    Raises:
      TypeError: `cell` is not callable. ValueError: xs has no time axis; and the cell's own errors.
    """
    who = "recurrent.scan"
    if not callable(cell):
        raise TypeError(f"hyperjax.{who}: `cell` must be callable as cell(params, state, x), e.g. "
                        f"hj.recurrent.hyperlstm_cell, got {type(cell).__name__}.")
    if not hasattr(xs, "shape") or xs.ndim < 2:
        got = tuple(xs.shape) if hasattr(xs, "shape") else type(xs).__name__
        raise ValueError(f"hyperjax.{who}: `xs` must be f[T, ..., in_dim] (time first), got {got}.")
    # validate once with the public cell's checks, then scan the unchecked step
    jax.eval_shape(cell, params, state, jax.ShapeDtypeStruct(xs.shape[1:], xs.dtype))
    step = _UNCHECKED.get(cell, cell)
    return jax.lax.scan(lambda s, x: step(params, s, x), state, xs, unroll=unroll, reverse=reverse)


_UNCHECKED: dict[Callable[..., Any], Callable[..., Any]] = {lstm_cell: _lstm, hyperlstm_cell: _hyperlstm}


# ------------------------------------------------------------------------------------- flax wrappers
FLAX_CELLS = ("LayerNormLSTM", "HyperLSTM", "NNXLayerNormLSTM", "NNXHyperLSTM")


@functools.cache
def _flax_cells() -> dict[str, type]:
    import flax.linen as nn
    from flax import nnx

    class LayerNormLSTM(nn.RNNCellBase):
        """linen layer-normed LSTM cell: `(carry, x f[..., in]) -> (carry, h f[..., features])`.

        variables["params"] is `lstm_init`'s tree (paths kernel_x, kernel_h, bias, ln_gates/*, ln_cell/*).
        Works with `flax.linen.RNN(LayerNormLSTM(features))`.
        """

        features: int
        param_dtype: Any = jnp.float32

        @nn.compact
        def __call__(self, carry: LSTMState, x: Array) -> tuple[LSTMState, Array]:
            init = lambda key: lstm_init(key, in_dim=x.shape[-1], hidden=self.features, dtype=self.param_dtype)
            # one param per top-level leaf of lstm_init's tree (each with its own rng, folded by name)
            params = {k: self.param(k, lambda key, k=k: init(key)[k]) for k in _LSTM_KEYS}
            return lstm_cell(params, carry, x)

        @nn.nowrap
        def initialize_carry(self, rng: PRNGKey, input_shape: tuple[int, ...]) -> LSTMState:
            shape = (*input_shape[:-1], self.features)
            return LSTMState(jnp.zeros(shape, self.param_dtype), jnp.zeros(shape, self.param_dtype))

        @property
        def num_feature_axes(self) -> int:
            return 1

    class HyperLSTM(nn.RNNCellBase):
        """linen HyperLSTM cell: `(carry, x f[..., in]) -> (carry, h f[..., features])`.

        variables["params"] is `hyperlstm_init`'s tree (main/*, hyper/*, proj/*); works with
        `flax.linen.RNN(HyperLSTM(features, hyper_features=, emb_dim=))`.
        """

        features: int
        hyper_features: int = 128
        emb_dim: int = 16
        param_dtype: Any = jnp.float32

        @nn.compact
        def __call__(self, carry: HyperLSTMState, x: Array) -> tuple[HyperLSTMState, Array]:
            init = lambda key: hyperlstm_init(key, in_dim=x.shape[-1], hidden=self.features,
                                              hyper_hidden=self.hyper_features, emb_dim=self.emb_dim,
                                              dtype=self.param_dtype)
            params = {k: self.param(k, lambda key, k=k: init(key)[k]) for k in _HYPER_KEYS}
            return hyperlstm_cell(params, carry, x)

        @nn.nowrap
        def initialize_carry(self, rng: PRNGKey, input_shape: tuple[int, ...]) -> HyperLSTMState:
            batch = input_shape[:-1]
            z = lambda n: LSTMState(jnp.zeros((*batch, n), self.param_dtype), jnp.zeros((*batch, n), self.param_dtype))
            return HyperLSTMState(z(self.features), z(self.hyper_features))

        @property
        def num_feature_axes(self) -> int:
            return 1

    def _as_params(tree: Any) -> Any:
        return nnx.data(jax.tree.map(nnx.Param, tree))

    def _values(tree: Any) -> Any:
        return jax.tree.map(lambda v: v[...], tree, is_leaf=lambda v: isinstance(v, nnx.Variable))

    class NNXLayerNormLSTM(nnx.RNNCellBase):
        """NNX layer-normed LSTM cell `(carry, x f[..., in_features]) -> (carry, h f[..., hidden_features])`;
        its nnx.Param leaves are `lstm_init`'s tree. Works with `flax.nnx.RNN`."""

        def __init__(self, in_features: int, hidden_features: int, *, rngs: nnx.Rngs,
                     param_dtype: DTypeLike = jnp.float32):
            params = lstm_init(rngs.params(), in_dim=in_features, hidden=hidden_features, dtype=param_dtype)
            self.in_features, self.hidden_features, self.param_dtype = in_features, hidden_features, param_dtype
            for k in _LSTM_KEYS:
                setattr(self, k, _as_params(params[k]))

        def params(self) -> LSTMParams:
            """The cell's weights as the plain `lstm_init` tree (for `lstm_cell` / `scan`)."""
            return {k: _values(getattr(self, k)) for k in _LSTM_KEYS}

        def __call__(self, carry: LSTMState, x: Array) -> tuple[LSTMState, Array]:
            return lstm_cell(self.params(), carry, x)

        def initialize_carry(self, input_shape: tuple[int, ...], rngs: Any = None, carry_init: Any = None
                             ) -> LSTMState:
            return zero_state(self.params(), tuple(input_shape[:-1]))

        @property
        def num_feature_axes(self) -> int:
            return 1

    class NNXHyperLSTM(nnx.RNNCellBase):
        """NNX HyperLSTM cell `(carry, x f[..., in_features]) -> (carry, h f[..., hidden_features])`; its
        nnx.Param leaves are `hyperlstm_init`'s tree (main/*, hyper/*, proj/*). Works with `flax.nnx.RNN`."""

        def __init__(self, in_features: int, hidden_features: int, *, rngs: nnx.Rngs, hyper_features: int = 128,
                     emb_dim: int = 16, param_dtype: DTypeLike = jnp.float32):
            params = hyperlstm_init(rngs.params(), in_dim=in_features, hidden=hidden_features,
                                    hyper_hidden=hyper_features, emb_dim=emb_dim, dtype=param_dtype)
            self.in_features, self.hidden_features = in_features, hidden_features
            self.hyper_features, self.emb_dim, self.param_dtype = hyper_features, emb_dim, param_dtype
            for k in _HYPER_KEYS:
                setattr(self, k, _as_params(params[k]))

        def params(self) -> HyperLSTMParams:
            """The cell's weights as the plain `hyperlstm_init` tree (for `hyperlstm_cell` / `scan`)."""
            return {k: _values(getattr(self, k)) for k in _HYPER_KEYS}

        def __call__(self, carry: HyperLSTMState, x: Array) -> tuple[HyperLSTMState, Array]:
            return hyperlstm_cell(self.params(), carry, x)

        def initialize_carry(self, input_shape: tuple[int, ...], rngs: Any = None, carry_init: Any = None
                             ) -> HyperLSTMState:
            return zero_state(self.params(), tuple(input_shape[:-1]))

        @property
        def num_feature_axes(self) -> int:
            return 1

    for cls in (LayerNormLSTM, HyperLSTM, NNXLayerNormLSTM, NNXHyperLSTM):
        cls.__module__ = "hyperjax.recurrent"
    return {c.__name__: c for c in (LayerNormLSTM, HyperLSTM, NNXLayerNormLSTM, NNXHyperLSTM)}


def __getattr__(name: str) -> Any:
    if name in FLAX_CELLS:
        return _flax_cells()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
