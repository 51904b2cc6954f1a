"""What tests, benchmarks and experiments share: small ready targets and checks for a user's own generator.

Like `chex`'s assertions, the checks raise `AssertionError` naming the leaf path that is wrong.
The linen module classes (`MLP`, `CNN`, `StackedMLP`) are built on first use, so importing this module
does not import flax.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from hyperjax import targets as _targets   # the public adapters, as a user's test would build its targets
from hyperjax._src import checks as _checks
from hyperjax._src import paths as _paths
from hyperjax._src.types import Array, HyperNetwork, PRNGKey
from hyperjax.targets import TargetSpec

LINEN_MODULES = ("MLP", "CNN", "StackedMLP", "Transformer")
AllowZero = str | Sequence[str] | Callable[[str, Any], bool]


# ------------------------------------------------------------------------------------------------ paths
def path_of(key_path: Sequence[Any]) -> str:
    """`jax.tree_util` key path -> "Dense_0/kernel" (the path strings of `TargetSpec.paths`).

    Raises:
      TypeError: `key_path` is not a sequence of jax.tree_util keys (DictKey, SequenceKey, GetAttrKey, ...).
    """
    if isinstance(key_path, (str, bytes)) or not hasattr(key_path, "__iter__"):
        raise TypeError(f"hyperjax.testing.path_of: expected a key path (a tuple of jax.tree_util keys, as given "
                        f"by jax.tree_util.tree_flatten_with_path), got {type(key_path).__name__}.")
    return jax.tree_util.keystr(tuple(key_path), simple=True, separator="/")


def leaves_with_paths(tree: Any, is_leaf: Callable[[Any], bool] | None = None) -> list[tuple[str, Any]]:
    """[(path string, leaf), ...] in `jax.tree_util` flatten order, e.g. [("Dense_0/bias", b), ...]."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return [(path_of(kp), leaf) for kp, leaf in flat]


def leaf_dict(tree: Any) -> dict[str, Any]:
    """{path string: leaf} of any pytree (nested dicts, lists, Equinox modules, ...)."""
    return dict(leaves_with_paths(tree))


def leaf_at(tree: Any, path: str) -> Any:
    """The leaf of `tree` at `path` ("Dense_0/kernel"); KeyError lists the paths there are."""
    leaves = leaf_dict(tree)
    if path not in leaves:
        raise KeyError(f"hyperjax.testing.leaf_at: no leaf '{path}'; the tree has: {', '.join(leaves) or '(none)'}")
    return leaves[path]


# ------------------------------------------------------------------------------------------------ values
def _shape_arg(shape: Any, who: str) -> tuple[int, ...]:
    """`shape` must be a sequence of ints >= 0."""
    if isinstance(shape, (str, bytes, Mapping)) or not isinstance(shape, Sequence):
        raise TypeError(f"hyperjax.testing.{who}: `shape` must be a sequence of ints >= 0, got {shape!r} "
                        f"({type(shape).__name__}).")
    return tuple(_checks.non_negative_int(n, "shape", f"testing.{who}") for n in shape)


def _dtype_arg(dtype: Any, option: str, who: str) -> Any:
    """`dtype` must name a NumPy / JAX dtype (jnp.float32, "bfloat16", np.dtype(...))."""
    try:
        jnp.dtype(dtype)
    except (TypeError, ValueError):
        raise TypeError(f"hyperjax.testing.{who}: `{option}` must be a dtype such as jnp.float32, got {dtype!r} "
                        f"({type(dtype).__name__}).") from None
    return dtype


def sds(shape: Sequence[int], dtype: Any = jnp.float32) -> jax.ShapeDtypeStruct:
    """`jax.ShapeDtypeStruct(shape, dtype)`: example params as shapes only, for `from_fn`.

    Raises:
      TypeError: `shape` is not a sequence of ints, or `dtype` is not a dtype.
      ValueError: a size < 0.
    """
    shape = _shape_arg(shape, "sds")
    return jax.ShapeDtypeStruct(shape, _dtype_arg(dtype, "dtype", "sds"))


def ramp(shape: Sequence[int], lo: float = -1.0, hi: float = 1.0, dtype: Any = jnp.float32) -> Array:
    """Deterministic input f[*shape]: `linspace(lo, hi)` over all elements, reshaped (no PRNG).

    Raises:
      TypeError: `shape` is not a sequence of ints, or `dtype` is not a dtype.
      ValueError: a size < 0.
    """
    shape = _shape_arg(shape, "ramp")
    _dtype_arg(dtype, "dtype", "ramp")
    n = math.prod(shape)
    return jnp.asarray(np.linspace(lo, hi, n).reshape(shape), dtype)


def filled(tree: Any) -> Any:
    """Deterministic non-zero values for an abstract tree (leaf i: sin(0.37 k + i)), built with NumPy.

    Cheaper than `init(key)` when only structure or dtypes matter: no PRNG program to compile.

    Raises:
      TypeError: a leaf is no array or jax.ShapeDtypeStruct (naming its path), or the tree does not flatten.
    """
    _checks.array_leaves(tree, "tree", "testing.filled")
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
            raise TypeError(f"hyperjax.testing.filled: leaf '{_paths.path_str(key_path)}' of `tree` must be an "
                            f"array or a jax.ShapeDtypeStruct, got {type(leaf).__name__}.")
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    out = [np.sin(np.arange(math.prod(l.shape)) * 0.37 + i).reshape(l.shape).astype(l.dtype)
           for i, l in enumerate(leaves)]
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(x) for x in out])


# ------------------------------------------------------------------------------------------------ targets
@functools.cache
def _linen_modules() -> dict[str, type]:
    """The linen module classes, defined once on first use (flax is imported here, not at import time)."""
    import flax.linen as nn

    class MLP(nn.Module):
        """x: f[..., d_in] -> f[..., features[-1]]; Dense layers `Dense_i`, `activation` between them."""

        features: tuple[int, ...] = (7, 3)
        activation: Callable[[Array], Array] = jax.nn.relu

        @nn.compact
        def __call__(self, x):
            for i, f in enumerate(self.features):
                x = nn.Dense(f)(x)
                if i < len(self.features) - 1:
                    x = self.activation(x)
            return x

    class CNN(nn.Module):
        """x: f[batch, h, w, c_in] -> f[batch, classes]; ReLU convs `Conv_i` (SAME), then `Dense_0`.

        pool: "mean" averages over h, w before the Dense layer; "flatten" flattens h, w, channels.
        """

        channels: tuple[int, ...] = (4,)
        kernel: int = 3
        classes: int = 3
        pool: str = "mean"

        @nn.compact
        def __call__(self, x):
            for c in self.channels:
                x = nn.relu(nn.Conv(c, (self.kernel, self.kernel))(x))
            x = x.mean((1, 2)) if self.pool == "mean" else x.reshape(x.shape[0], -1)
            return nn.Dense(self.classes)(x)

    class Block(nn.Module):
        """One scanned layer: h f[batch, width] -> relu(Dense(h))."""

        width: int = 4

        @nn.compact
        def __call__(self, h, _):
            return nn.relu(nn.Dense(self.width)(h)), None

    class StackedMLP(nn.Module):
        """x: f[batch, d_in] -> `Dense_0` (width) -> depth x ReLU Dense (one `nn.scan`) -> `Dense_1` (d_out).

        The scanned layers' params are stacked: 'ScanBlock_0/Dense_0/kernel' f[depth, width, width].
        """

        depth: int = 3
        width: int = 4
        d_out: int = 2

        @nn.compact
        def __call__(self, x):
            h = nn.Dense(self.width)(x)
            scan = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=self.depth)
            h, _ = scan(self.width)(h, None)
            return nn.Dense(self.d_out)(h)

    def logical(init, names):
        return nn.with_logical_partitioning(init, names)

    class DecoderBlock(nn.Module):
        """Pre-norm causal self-attention + ReLU MLP, every param boxed with logical axis names (Flax lm1b style)."""

        width: int
        heads: int
        mlp: int

        @nn.compact
        def __call__(self, x, _):
            def norm():
                return nn.LayerNorm(scale_init=logical(nn.initializers.ones, ("embed",)),
                                    bias_init=logical(nn.initializers.zeros, ("embed",)))
            kernel = nn.initializers.lecun_normal()
            mask = nn.make_causal_mask(jnp.ones(x.shape[:2], jnp.int32))
            h = nn.SelfAttention(num_heads=self.heads, kernel_init=logical(kernel, ("embed", "kv")),
                                 bias_init=logical(nn.initializers.zeros, ("embed",)), deterministic=True,
                                 name="attention")(norm()(x), mask)
            x = x + h
            h = nn.Dense(self.mlp, kernel_init=logical(kernel, ("embed", "mlp")),
                         bias_init=logical(nn.initializers.zeros, ("mlp",)), name="mlp_in")(norm()(x))
            h = nn.Dense(self.width, kernel_init=logical(kernel, ("mlp", "embed")),
                         bias_init=logical(nn.initializers.zeros, ("embed",)), name="mlp_out")(nn.relu(h))
            return x + h, None

    class Transformer(nn.Module):
        """Decoder-only LM tokens i32[batch, len] -> logits f[batch, len, vocab], written as Flax's lm1b example
        writes its model: `nn.with_logical_partitioning` on every param, `nn.SelfAttention` (DenseGeneral
        kernels (width, heads, head_dim) and (heads, head_dim, width)) and the layers in one `nn.scan`
        (params 'layers/...' with a leading f[layers] axis, partition name "layers")."""

        vocab: int = 16
        width: int = 32
        heads: int = 4
        mlp: int = 64
        layers: int = 2
        max_len: int = 32

        @nn.compact
        def __call__(self, tokens):
            x = nn.Embed(self.vocab, self.width, name="embed",
                         embedding_init=logical(nn.initializers.normal(1.0), ("vocab", "embed")))(tokens)
            pos = self.param("pos_embedding", logical(nn.initializers.normal(0.02), (None, "embed")),
                             (self.max_len, self.width))
            x = x + pos[None, :tokens.shape[1]]
            scan = nn.scan(DecoderBlock, variable_axes={"params": 0}, split_rngs={"params": True},
                           length=self.layers, metadata_params={nn.PARTITION_NAME: "layers"})
            x, _ = scan(self.width, self.heads, self.mlp, name="layers")(x, None)
            x = nn.LayerNorm(scale_init=logical(nn.initializers.ones, ("embed",)),
                             bias_init=logical(nn.initializers.zeros, ("embed",)), name="final_norm")(x)
            return nn.Dense(self.vocab, kernel_init=logical(nn.initializers.lecun_normal(), ("embed", "vocab")),
                            bias_init=logical(nn.initializers.zeros, ("vocab",)), name="logits")(x)

    classes = {"MLP": MLP, "CNN": CNN, "StackedMLP": StackedMLP, "Transformer": Transformer}
    for name, cls in classes.items():
        cls.__module__, cls.__qualname__ = "hyperjax.testing", name
    return classes


def __getattr__(name: str) -> Any:
    if name in LINEN_MODULES:
        return _linen_modules()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def mlp_spec(widths: Sequence[int] = (5, 7, 3), *,
             activation: Callable[[Array], Array] = jax.nn.relu) -> TargetSpec:
    """Linen `MLP(features=widths[1:])`: x f[batch, widths[0]] -> f[batch, widths[-1]].

    Paths 'Dense_i/kernel' f[widths[i], widths[i+1]] and 'Dense_i/bias'; the default is the 5 -> 7 -> 3
    ReLU MLP (56 + 10 params).

    Raises:
      TypeError: `widths` is not a sequence of ints.
      ValueError: fewer than 2 widths (an input and at least one layer) or a width <= 0.
    """
    widths = _widths(widths, "mlp_spec")
    mlp = _linen_modules()["MLP"](features=widths[1:], activation=activation)
    return _targets.from_linen(mlp, jnp.zeros((1, widths[0]), jnp.float32))


def cnn_spec(channels: Sequence[int] = (4,), *, kernel: int = 3, classes: int = 3,
             image: Sequence[int] = (4, 4, 1), pool: str = "mean") -> TargetSpec:
    """Linen `CNN`: x f[batch, *image] (HWC) -> f[batch, classes].

    Paths 'Conv_i/kernel' f[kernel, kernel, c_in, c_out], 'Conv_i/bias', 'Dense_0/kernel', 'Dense_0/bias'.
    pool: "mean" (Dense on the channel means) or "flatten" (Dense on all h * w * channels values).
    """
    if pool not in ("mean", "flatten"):
        raise ValueError(f"hyperjax.testing.cnn_spec: unknown `pool`={pool!r}; valid options are 'mean', 'flatten'.")
    cnn = _linen_modules()["CNN"](channels=tuple(int(c) for c in channels), kernel=kernel, classes=classes,
                                  pool=pool)
    return _targets.from_linen(cnn, jnp.zeros((1, *image), jnp.float32))


def _widths(widths: Any, who: str) -> tuple[int, ...]:
    """At least two positive int widths: the input size, then one per layer."""
    widths = _checks.positive_ints(widths, "widths", f"testing.{who}")
    if len(widths) < 2:
        raise ValueError(f"hyperjax.testing.{who}: `widths` must give the input size and at least one layer "
                         f"width (e.g. (5, 7, 3)), got {widths}.")
    return widths


def stacked_spec(depth: int = 3, width: int = 4, *, d_in: int = 3, d_out: int = 2) -> TargetSpec:
    """Linen `StackedMLP`: a scanned target whose hidden layers' leaves have a leading layer axis.

    x f[batch, d_in] -> f[batch, d_out]. Paths 'Dense_0/*' (d_in -> width), 'ScanBlock_0/Dense_0/kernel'
    f[depth, width, width], 'ScanBlock_0/Dense_0/bias' f[depth, width], 'Dense_1/*' (width -> d_out).

    Raises:
      TypeError: a size that is not an int.
      ValueError: a size <= 0.
    """
    for option, value in (("depth", depth), ("width", width), ("d_in", d_in), ("d_out", d_out)):
        _checks.positive_int(value, option, "testing.stacked_spec")
    net = _linen_modules()["StackedMLP"](depth=depth, width=width, d_out=d_out)
    return _targets.from_linen(net, jnp.zeros((1, d_in), jnp.float32))


def fn_mlp_spec(widths: Sequence[int] = (5, 7, 3), *, activation: Callable[[Array], Array] = jax.nn.relu,
                layout: str = "in_out", dtypes: Mapping[str, Any] | None = None) -> TargetSpec:
    """Plain-function MLP (`from_fn`): x f[..., widths[0]] -> f32[..., widths[-1]].

    layout "in_out": params {"l0": {"kernel": f[w0, w1], "bias": f[w1]}, "l1": ...};
    layout "out_in" (PyTorch / Equinox): {"l0": {"weight": f[w1, w0], "bias": f[w1]}, ...}.
    dtypes: {path: dtype} for leaves that are not float32 (each leaf is cast to float32 inside apply).
    """
    if layout not in ("in_out", "out_in"):
        raise ValueError(f"hyperjax.testing.fn_mlp_spec: unknown `layout`={layout!r}; "
                         f"valid options are 'in_out', 'out_in'.")
    widths = tuple(int(w) for w in widths)
    name = "kernel" if layout == "in_out" else "weight"
    dtypes = dict(dtypes or {})
    params = {}
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        shape = (a, b) if layout == "in_out" else (b, a)
        params[f"l{i}"] = {name: sds(shape, dtypes.pop(f"l{i}/{name}", jnp.float32)),
                           "bias": sds((b,), dtypes.pop(f"l{i}/bias", jnp.float32))}
    if dtypes:
        raise ValueError(f"hyperjax.testing.fn_mlp_spec: `dtypes` names no leaf: {', '.join(dtypes)}; "
                         f"the leaves are l<i>/{name} and l<i>/bias for i < {len(widths) - 1}.")
    n_layers = len(widths) - 1

    def apply(p, x):
        for i in range(n_layers):
            w = p[f"l{i}"][name].astype(jnp.float32)
            y = x @ (w if layout == "in_out" else w.T)
            x = y + jnp.broadcast_to(p[f"l{i}"]["bias"].astype(jnp.float32), y.shape)
            if i < n_layers - 1:
                x = activation(x)
        return x

    return _targets.from_fn(apply, params, layout=layout)


def mixed_dtype_spec(widths: Sequence[int] = (5, 4, 3), *, low: Any = jnp.bfloat16) -> TargetSpec:
    """`fn_mlp_spec` with tanh whose first kernel 'l0/kernel' is `low` (bfloat16) beside float32 leaves.

    Raises:
      TypeError: `low` is not a dtype.
    """
    _dtype_arg(low, "low", "mixed_dtype_spec")
    return fn_mlp_spec(widths, activation=jnp.tanh, dtypes={"l0/kernel": low})


# ------------------------------------------------------------------------------------------------ checks
def _abstract_of(target: Any) -> Any:
    tree = target.abstract_params if isinstance(target, TargetSpec) else target
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), tree)


def _fmt(shape: Sequence[int], dtype: Any) -> str:
    return f"{tuple(shape)} {jnp.dtype(dtype).name}"


def _first_node_difference(a: Any, b: Any, prefix: tuple = ()) -> tuple[str, Any, Any]:
    """(path, node a, node b) of the first container whose own type or keys differ, one level at a time."""
    level_a = jax.tree_util.tree_structure(a, is_leaf=lambda x: x is not a)
    level_b = jax.tree_util.tree_structure(b, is_leaf=lambda x: x is not b)
    if level_a != level_b:
        return path_of(prefix), level_a, level_b
    kids_a = jax.tree_util.tree_flatten_with_path(a, is_leaf=lambda x: x is not a)[0]
    kids_b = jax.tree_util.tree_flatten(b, is_leaf=lambda x: x is not b)[0]
    for (kp, x), y in zip(kids_a, kids_b):
        if x is not a and jax.tree_util.tree_structure(x) != jax.tree_util.tree_structure(y):
            return _first_node_difference(x, y, prefix + tuple(kp))
    return path_of(prefix), level_a, level_b


def assert_tree_like(tree: Any, target: TargetSpec | Any, *, who: str = "assert_tree_like",
                     what: str = "tree") -> None:
    """Assert `tree` has the target's tree structure and each leaf its shape and dtype.

    target: a `TargetSpec` (its abstract params) or any pytree of arrays / `jax.ShapeDtypeStruct`s.
    Raises AssertionError naming missing and unexpected paths, or the first leaf whose shape or dtype differs.
    """
    want = _abstract_of(target)
    got_flat, got_def = jax.tree_util.tree_flatten_with_path(tree)
    want_flat, want_def = jax.tree_util.tree_flatten_with_path(want)
    pre = f"hyperjax.testing.{who}: {what}"
    got_paths = [path_of(kp) for kp, _ in got_flat]
    want_paths = [path_of(kp) for kp, _ in want_flat]
    if got_paths != want_paths:
        missing = [p for p in want_paths if p not in set(got_paths)]
        unexpected = [p for p in got_paths if p not in set(want_paths)]
        parts = [f"missing: {', '.join(missing)}" if missing else "",
                 f"unexpected: {', '.join(unexpected)}" if unexpected else ""]
        detail = "; ".join(x for x in parts if x) or (
            f"the same leaves in another order: got {', '.join(got_paths)}; expected {', '.join(want_paths)}")
        raise AssertionError(f"{pre} does not match the target's leaves ({detail}).")
    if got_def != want_def:
        node, got_node, want_node = _first_node_difference(tree, want)
        where = f"at '{node}'" if node else "at the root"
        raise AssertionError(f"{pre} has the target's leaf paths but another container {where}: got "
                             f"{got_node}, expected {want_node} (whole trees: {got_def} vs {want_def}).")
    for path, (_, leaf), (_, spec) in zip(got_paths, got_flat, want_flat):
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            raise AssertionError(f"{pre} leaf '{path}' is a {type(leaf).__name__}, not an array; expected "
                                 f"{_fmt(spec.shape, spec.dtype)}.")
        if tuple(leaf.shape) != tuple(spec.shape) or jnp.dtype(leaf.dtype) != jnp.dtype(spec.dtype):
            raise AssertionError(f"{pre} leaf '{path}' expected {_fmt(spec.shape, spec.dtype)}, got "
                                 f"{_fmt(leaf.shape, leaf.dtype)}.")
    chex.assert_trees_all_equal_shapes_and_dtypes(tree, want)


def _host(x: Any) -> np.ndarray:
    a = np.asarray(x)
    return a.astype(np.complex128 if np.iscomplexobj(a) else np.float64)


def _allowed(allow_zero_grad: AllowZero, paths: Sequence[str], who: str) -> Callable[[str, Any], bool]:
    """allow_zero_grad -> predicate; each glob must match some path (a stale glob hides nothing)."""
    if callable(allow_zero_grad):
        return allow_zero_grad
    globs = (allow_zero_grad,) if isinstance(allow_zero_grad, str) else tuple(allow_zero_grad)
    for g in globs:
        if not any(_paths.select(g)(p) for p in paths):
            raise ValueError(f"hyperjax.testing.{who}: allow_zero_grad glob {g!r} matches no hparams leaf; "
                             f"the leaves are: {', '.join(paths)}")
    return _paths.select(*globs) if globs else (lambda path, leaf=None: False)


def assert_grads_reach(grads: Any, *, allow_zero_grad: AllowZero = (), who: str = "assert_grads_reach") -> None:
    """Assert every gradient leaf is finite and not identically zero (so that leaf learns).

    allow_zero_grad: globs (`*` crosses '/') or a `(path, leaf) -> bool` predicate for leaves that are
    legitimately unused. Raises AssertionError naming the leaf path.
    """
    leaves = leaves_with_paths(grads)
    allowed = _allowed(allow_zero_grad, [p for p, _ in leaves], who)
    for path, g in leaves:
        g = _host(g)
        if not np.all(np.isfinite(g)):
            raise AssertionError(f"hyperjax.testing.{who}: the gradient of hparams leaf '{path}' is not finite "
                                 f"({int(np.sum(~np.isfinite(g)))} of {g.size} values are NaN or inf).")
        if not allowed(path, g) and not np.any(g != 0):
            raise AssertionError(f"hyperjax.testing.{who}: no gradient reaches hparams leaf '{path}' (its gradient "
                                 f"is identically zero). If it is legitimately unused, pass "
                                 f"allow_zero_grad=({path!r},).")


def _call(fn: Callable[..., Any], what: str, who: str, *args: Any) -> Any:
    try:
        return fn(*args)
    except AssertionError:
        raise
    except Exception as e:  # noqa: BLE001 - a check reports any failure of the code under test
        raise AssertionError(f"hyperjax.testing.{who}: {what} raised {type(e).__name__}: {e}") from e


def assert_generates(hnet: HyperNetwork, target: TargetSpec | Any, cond: Any = None, *, key: PRNGKey | None = None,
                     atol: float = 1e-5, rtol: float = 1e-5, allow_zero_grad: AllowZero = (),
                     apply_kwargs: Mapping[str, Any] | None = None) -> None:
    """Check a generator end to end on one conditioning input.

    - `hnet.init(key)` works under `jax.jit` and gives floating-point hparams;
    - `hnet.apply(hparams, cond)` (`hnet.apply(hparams)` when cond is None, a static generator) returns
      exactly the target's tree, shapes and dtypes, with finite values;
    - `jax.jit(hnet.apply)` agrees with the eager call (allclose; rtol at least 2 eps for bf16 / f16 leaves);
    - the gradient of sum_l <generated leaf l, fixed random tensor R_l> is finite in every hparams leaf and
      not identically zero except where `allow_zero_grad` (globs or a `(path, leaf) -> bool`) allows it.

    target: a `TargetSpec`, or a pytree of `jax.ShapeDtypeStruct`s. cond: f[cond_dim], an int id, or None.
    key: for init and R; default `jax.random.key(0)`. apply_kwargs: extra keyword arguments for apply
    (e.g. {"tau": 0.5}). Raises AssertionError naming the leaf path of the first failure.
    """
    who = "assert_generates"
    _checks.hypernetwork(hnet, f"testing.{who}")
    key = jax.random.key(0) if key is None else key
    k_init, k_probe = jax.random.split(key)
    kwargs = dict(apply_kwargs or {})
    if cond is None:
        def apply(hp, c):
            return hnet.apply(hp, **kwargs)
        call = "hnet.apply(hparams)"
    else:
        def apply(hp, c):
            return hnet.apply(hp, c, **kwargs)
        call = "hnet.apply(hparams, cond)"

    hparams = _call(jax.jit(hnet.init), "hnet.init(key)", who, k_init)   # one program: eager PRNG ops compile each
    hp_leaves = leaves_with_paths(hparams)
    trainable = [i for i, (_, l) in enumerate(hp_leaves) if jnp.issubdtype(jnp.result_type(l), jnp.inexact)]
    if not trainable:
        raise AssertionError(f"hyperjax.testing.{who}: hnet.init(key) returned no floating-point leaves to train "
                             f"(leaves: {', '.join(p for p, _ in hp_leaves) or '(none)'}).")

    eager = _call(apply, call, who, hparams, cond)
    assert_tree_like(eager, target, who=who, what=f"the output of {call}")
    for path, leaf in leaves_with_paths(eager):
        v = _host(leaf)
        if not np.all(np.isfinite(v)):
            raise AssertionError(f"hyperjax.testing.{who}: generated leaf '{path}' is not finite "
                                 f"({int(np.sum(~np.isfinite(v)))} of {v.size} values are NaN or inf).")

    jitted = _call(jax.jit(apply), f"jax.jit({call})", who, hparams, cond)
    assert_tree_like(jitted, target, who=who, what=f"the output of jax.jit({call})")
    for (path, e), (_, j) in zip(leaves_with_paths(eager), leaves_with_paths(jitted)):
        eps = float(jnp.finfo(e.dtype).eps)
        tol = max(rtol, 2 * eps)
        e_h, j_h = _host(e), _host(j)
        if not np.allclose(j_h, e_h, rtol=tol, atol=atol):
            err = float(np.max(np.abs(j_h - e_h)))
            raise AssertionError(f"hyperjax.testing.{who}: generated leaf '{path}' differs between jax.jit and "
                                 f"eager apply (max abs difference {err:.3g}, rtol={tol:.3g}, atol={atol:.3g}); "
                                 f"apply must be a pure function of (hparams, cond): no Python-side randomness "
                                 f"or state.")

    all_leaves = [l for _, l in hp_leaves]
    treedef = jax.tree_util.tree_structure(hparams)

    def probe_loss(train, c, k):
        """sum_l <generated leaf l, R_l>, R_l ~ N(0, 1) drawn in the same program; only float leaves vary."""
        leaves = list(all_leaves)
        for i, leaf in zip(trainable, train):
            leaves[i] = leaf
        out = jax.tree.leaves(apply(jax.tree_util.tree_unflatten(treedef, leaves), c))
        probes = [jax.random.normal(kl, o.shape, jnp.float32) for kl, o in zip(jax.random.split(k, len(out)), out)]
        return jnp.sum(jnp.stack([jnp.sum(jnp.real(o).astype(jnp.float32) * r) for o, r in zip(out, probes)]))

    grads = _call(jax.jit(jax.grad(probe_loss)), f"jax.grad through {call}", who,
                  [all_leaves[i] for i in trainable], cond, k_probe)
    assert_grads_reach({hp_leaves[i][0]: g for i, g in zip(trainable, grads)}, allow_zero_grad=allow_zero_grad,
                       who=who)
