"""TargetSpec: a stateless target network described as data (leaf paths, shapes, dtypes, apply)."""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hyperjax._src import checks
from hyperjax._src import paths as _paths
from hyperjax._src.types import Array, Params, PRNGKey

LAYOUTS = ("in_out", "out_in")
_SCALE_NAMES = ("scale", "gamma")


def abstract(tree: Any) -> Any:
    """Pytree of arrays (or ShapeDtypeStructs) -> pytree of `jax.ShapeDtypeStruct`."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), tree)


@dataclasses.dataclass(frozen=True, eq=False)
class TargetSpec:
    """A stateless target network: `apply(params, *args)` plus the structure of `params`.

    Built by the adapters in `hyperjax.targets` with `jax.eval_shape`: no weights are allocated.

    Attributes:
      apply_fn: the framework's pure apply, `apply_fn(params, *args, **kwargs)`.
      abstract_params: pytree of `jax.ShapeDtypeStruct`, the exact structure generators must emit.
      init_fn: `init_fn(key) -> params`, ordinary concrete initial parameters.
      layout: kernel axis convention for fan computation: "in_out" (Flax, Haiku: (..., in, out)) or
        "out_in" (Equinox, PyTorch: (out, in, ...)).
      framework: name used in messages ("linen", "nnx", "equinox", "haiku", "function").
      abstract_state: non-parameter state (e.g. batch statistics) when threaded explicitly, else None.
        With state, apply(params, state, *args) returns (output, new_state).
      init_state_fn: `init_state_fn(key) -> state` when abstract_state is set.
    """

    apply_fn: Callable[..., Any]
    abstract_params: Any
    init_fn: Callable[[PRNGKey], Params]
    layout: str = "in_out"
    framework: str = "function"
    abstract_state: Any = None
    init_state_fn: Callable[[PRNGKey], Any] | None = None

    def __post_init__(self):
        checks.one_of(self.layout, LAYOUTS, "layout", "TargetSpec")
        abs_params = abstract(self.abstract_params)
        flat, treedef = jax.tree_util.tree_flatten_with_path(abs_params)
        leaves = {_paths.path_str(kp): leaf for kp, leaf in flat}
        if len(leaves) != len(flat):
            counts = collections.Counter(_paths.path_str(kp) for kp, _ in flat)
            dup = [p for p, n in counts.items() if n > 1]
            raise ValueError(f"hyperjax.TargetSpec: two leaves have the same path string "
                             f"{', '.join(repr(p) for p in dup)} (a key containing '/' beside nested keys); "
                             f"rename one.")
        if not leaves:
            raise ValueError(f"hyperjax.TargetSpec: the {self.framework} target has no parameters.")
        for path, leaf in leaves.items():
            if not jnp.issubdtype(leaf.dtype, jnp.inexact):
                raise ValueError(f"hyperjax.TargetSpec: leaf '{path}' has dtype {leaf.dtype}; only floating "
                                 f"point parameters can be generated or trained.")
        object.__setattr__(self, "abstract_params", abs_params)
        object.__setattr__(self, "treedef", treedef)
        object.__setattr__(self, "leaves", leaves)

    # ---------------------------------------------------------------- structure
    @property
    def paths(self) -> tuple[str, ...]:
        """Leaf path strings in flatten order, e.g. ('Dense_0/bias', 'Dense_0/kernel', ...)."""
        return tuple(self.leaves)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {p: tuple(l.shape) for p, l in self.leaves.items()}

    @property
    def size(self) -> int:
        """Total number of scalar parameters."""
        return sum(math.prod(l.shape) for l in self.leaves.values())

    num_params = size

    def select(self, where: _paths.Where, who: str = "TargetSpec.select") -> tuple[str, ...]:
        """Paths of the leaves matched by a glob, a list of globs or a `(path, leaf) -> bool` predicate.

        Raises ValueError listing the available paths if nothing matches.
        """
        sel = _paths.as_selector(where)
        chosen = tuple(p for p, l in self.leaves.items() if sel(p, l))
        if not chosen:
            raise checks.no_match(where, self.paths, who)
        return chosen

    # ---------------------------------------------------------------- params
    def init(self, key: PRNGKey) -> Params:
        """Ordinary concrete parameters, from the framework's own initialisers."""
        return self.init_fn(key)

    def zeros(self) -> Params:
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), self.abstract_params)

    def check(self, params: Params, who: str = "TargetSpec.check") -> None:
        """Raise a ValueError naming the first leaf path whose structure, shape or dtype differs."""
        checks.tree_matches(params, self.leaves, self.treedef, who,
                            hint=f" The spec was built from a {self.framework} target; rebuild it if the model "
                                 f"or its example input changed.")

    def apply(self, params: Params, *args: Any, **kwargs: Any) -> Any:
        """Run the target with `params` (checked against the spec at trace time)."""
        self.check(params, who="TargetSpec.apply")
        if self.abstract_state is not None:
            if not args:
                raise ValueError("hyperjax.TargetSpec.apply: this spec threads state; call "
                                 "apply(params, state, *args) -> (output, new_state).")
            state = abstract(self.abstract_state)
            checks.tree_matches(args[0], dict(_paths.leaves_with_paths(state)),
                                jax.tree_util.tree_structure(state), "TargetSpec.apply", what="state",
                                hint=" This spec threads non-parameter state: call apply(params, state, *args) "
                                     "-> (output, new_state), with state from spec.init_state(key).")
        return self.apply_fn(params, *args, **kwargs)

    def init_state(self, key: PRNGKey) -> Any:
        if self.init_state_fn is None:
            raise ValueError("hyperjax.TargetSpec.init_state: this spec has no non-parameter state.")
        return self.init_state_fn(key)

    def leaf_dict(self, params: Params) -> dict[str, Array]:
        """params -> {path: leaf}, in spec order (checked)."""
        self.check(params, who="TargetSpec.leaf_dict")
        return dict(_paths.leaves_with_paths(params))

    def from_leaves(self, leaves: Mapping[str, Array]) -> Params:
        """{path: leaf} -> params tree; every path must be present with the spec's shape and dtype."""
        missing = [p for p in self.leaves if p not in leaves]
        unexpected = [p for p in leaves if p not in self.leaves]
        if missing or unexpected:
            raise ValueError("hyperjax.TargetSpec.from_leaves: "
                             + "; ".join(x for x in (f"missing: {', '.join(missing)}" if missing else "",
                                                     f"unexpected: {', '.join(unexpected)}" if unexpected else "")
                                         if x))
        for p, want in self.leaves.items():
            checks.leaf_like(p, leaves[p], want, "TargetSpec.from_leaves")
        return jax.tree_util.tree_unflatten(self.treedef, [leaves[p] for p in self.leaves])

    def flatten(self, params: Params) -> Array:
        """params -> f[size] vector in path order, leaves cast to their common (standard-promotion) dtype.

        Mixed dtypes (e.g. a bfloat16 kernel beside float32 biases) are cast explicitly, so this also works
        under `jax_numpy_dtype_promotion="strict"`; `unflatten` casts each leaf back.
        """
        self.check(params, who="TargetSpec.flatten")
        with jax.numpy_dtype_promotion("standard"):
            dtype = jnp.result_type(*(l.dtype for l in self.leaves.values()))
        return jnp.concatenate([jnp.ravel(l).astype(dtype) for l in jax.tree.leaves(params)])

    def unflatten(self, flat: Array, paths: Sequence[str] | None = None) -> Any:
        """f[n] vector -> params (or {path: leaf} for a subset of `paths`), each leaf cast to its dtype."""
        chosen = self.paths if paths is None else tuple(paths)
        need = sum(math.prod(self.leaves[p].shape) for p in chosen)
        if jnp.ndim(flat) != 1 or jnp.shape(flat)[0] != need:
            raise ValueError(f"hyperjax.TargetSpec.unflatten: expected a vector of {need} values for "
                             f"{len(chosen)} leaves, got shape {tuple(jnp.shape(flat))}.")
        out, offset = {}, 0
        for p in chosen:
            s = self.leaves[p]
            n = math.prod(s.shape)
            out[p] = flat[offset:offset + n].reshape(s.shape).astype(s.dtype)
            offset += n
        return self.from_leaves(out) if paths is None else out

    # ---------------------------------------------------------------- initialisation statistics
    def fans(self, path: str) -> tuple[int, int]:
        """(fan_in, fan_out) of a leaf; a bias takes the fans of the kernel beside it."""
        shape = tuple(self.leaves[path].shape)
        if len(shape) >= 2:
            if self.layout == "in_out":
                rf = math.prod(shape[:-2])
                return shape[-2] * rf, shape[-1] * rf
            rf = math.prod(shape[2:])
            return shape[1] * rf, shape[0] * rf
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        for other, leaf in self.leaves.items():
            if other != path and len(leaf.shape) >= 2 and (other.rsplit("/", 1)[0] if "/" in other else "") == parent:
                return self.fans(other)
        n = shape[0] if shape else 1
        return n, n

    def init_moments(self, path: str, mode: str = "fan_in") -> tuple[float, float]:
        """(mean, variance) a standard initialiser gives this leaf; generators match it at init.

        Kernels (rank >= 2): mean 0, variance 1/fan_in ("fan_in", LeCun) or 1/fan_out ("fan_out").
        Biases and other vectors: mean 0 (1 for norm scales), variance 1/(3 fan_in), the variance of
        PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) bias.
        """
        checks.one_of(mode, ("fan_in", "fan_out"), "mode", "TargetSpec.init_moments")
        fan_in, fan_out = self.fans(path)
        leaf = self.leaves[path]
        if len(leaf.shape) >= 2:
            return 0.0, 1.0 / (fan_in if mode == "fan_in" else fan_out)
        name = path.rsplit("/", 1)[-1].lower()
        mean = 1.0 if (name in _SCALE_NAMES or (name == "weight" and self.layout == "out_in")) else 0.0
        return mean, 1.0 / (3.0 * fan_in)

    def __repr__(self) -> str:
        body = ", ".join(f"{p}: {tuple(l.shape)} {l.dtype.name}" for p, l in list(self.leaves.items())[:8])
        more = ", ..." if len(self.leaves) > 8 else ""
        return f"TargetSpec({self.framework}, {self.size} params, {{{body}{more}}})"


def spec_from_params(apply_fn: Callable[..., Any], example_params: Any, *,
                     init_fn: Callable[[PRNGKey], Params] | None = None, layout: str = "in_out",
                     framework: str = "function") -> TargetSpec:
    """Spec from a plain `apply_fn(params, *args)` and example params (arrays or ShapeDtypeStructs).

    Without `init_fn`, `init(key)` draws LeCun-normal kernels and PyTorch-style uniform vectors
    using `TargetSpec.init_moments`.
    """
    spec = TargetSpec(apply_fn=apply_fn, abstract_params=example_params, init_fn=lambda key: None,
                      layout=layout, framework=framework)
    if init_fn is None:
        def init_fn(key: PRNGKey) -> Params:
            keys = jax.random.split(key, len(spec.leaves))
            out = {}
            for k, (p, s) in zip(keys, spec.leaves.items()):
                mean, var = spec.init_moments(p)
                if len(s.shape) >= 2:
                    out[p] = (jax.random.normal(k, s.shape, jnp.float32) * np.sqrt(var)).astype(s.dtype)
                else:
                    lim = np.sqrt(3.0 * var)
                    out[p] = (mean + jax.random.uniform(k, s.shape, jnp.float32, -lim, lim)).astype(s.dtype)
            return spec.from_leaves(out)
    object.__setattr__(spec, "init_fn", init_fn)
    return spec
