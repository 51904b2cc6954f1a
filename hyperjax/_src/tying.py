"""Weight tying: several leaf paths are one stored parameter, optionally seen through a transform.

`tie(target, ties)` returns a `Tied` spec. It *is* a `TargetSpec` over the **free** leaves (the tree
that is trained, generated, counted and checkpointed): every tied leaf ("dest") is dropped from it and
rebuilt as `fn(source)` inside `apply` / `expand`. Because only one copy is stored, gradients from
every use add up in the source, parameter counts count it once, and the sharing survives a save and
restore. This is equinox's `nn.Shared` (one copy, rebuilt on call after a shape/dtype check) applied
to leaf paths, with linen's `map_variables` transform (transpose, slice, flip) on the copies.

    tied = hj.tie(spec, source="dec/kernel", dest="enc/kernel", fn=jnp.transpose)
    free = tied.init(key)            # nested dict without 'enc/kernel'
    y = tied.apply(free, x)          # = spec.apply(tied.expand(free), x)
    hnet = hj.generators.dense(tied, cond_dim=8)   # generates the free leaves only
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from hyperjax._src import checks
from hyperjax._src import paths as _paths
from hyperjax._src.spec import TargetSpec, check_params, leaves_and_treedef, spec_from_params
from hyperjax._src.types import Params, PRNGKey

_WHO = "hyperjax.tie"


class Tie(NamedTuple):
    """One tie: the leaves matched by `dest` are `fn(leaf at source)`.

    source: an exact leaf path of the full tree, e.g. "dec/kernel" (it may itself be a dest: chains compose).
    dest:   a leaf path, a glob ("*/enc_*/kernel", `*` crosses '/') or a list of them; the source is never
            its own dest, so a glob may match it.
    fn:     source leaf -> dest leaf (jnp.transpose, a reshape, a flip, a slice, a scale); None = identity.
            Must map the source's shape/dtype to each dest's exactly (checked with `jax.eval_shape`).
    """

    source: str
    dest: str | Sequence[str]
    fn: Callable[[jax.Array], jax.Array] | None = None


# ------------------------------------------------------------------------------------------------ errors
def _fmt(s: Any) -> str:
    return f"{tuple(s.shape)} {jnp.dtype(s.dtype).name}"


def _shown(paths: Sequence[str]) -> str:
    return ", ".join(paths[:40]) + (" ..." if len(paths) > 40 else "")


def _unknown_source(source: Any, available: Sequence[str]) -> ValueError:
    return ValueError(f"{_WHO}: source {source!r} is not a leaf path of the target. Available paths: "
                      f"{_shown(available)}")


def _unknown_dest(dest: Any, source: str, available: Sequence[str]) -> ValueError:
    return ValueError(f"{_WHO}: dest {dest!r} (tied to source '{source}') matches no leaf other than the "
                      f"source. Available paths: {_shown(available)}")


def _shape_mismatch(source: str, s_struct: Any, dest: str, d_struct: Any, got: Any, fn: Any) -> ValueError:
    how = "the source as is (fn=None)" if fn is None else f"fn={getattr(fn, '__name__', fn)!r} of it"
    return ValueError(f"{_WHO}: cannot tie dest '{dest}' {_fmt(d_struct)} to source '{source}' "
                      f"{_fmt(s_struct)}: {how} gives {_fmt(got)}. Pass fn= mapping the source leaf to the "
                      f"dest's shape and dtype (e.g. jnp.transpose, a reshape, a slice, .astype).")


# ------------------------------------------------------------------------------------------------ specs
def _no_apply(params: Any, *args: Any, **kwargs: Any) -> Any:
    raise ValueError(f"{_WHO}: this Tied spec was built from a parameter tree, not a TargetSpec, so it has "
                     f"no apply. Use tied.expand(free) and run your own function on the full tree.")


def _is_spec_map(target: Any) -> bool:
    return isinstance(target, Mapping) and any(isinstance(v, TargetSpec) for v in target.values())


def _full_spec(target: Any) -> tuple[TargetSpec, Callable[[str], tuple[TargetSpec, str]]]:
    """The full TargetSpec and `origin(path) -> (spec, path inside it)` for fans and init statistics."""
    if isinstance(target, TargetSpec):
        return target, lambda p: (target, p)
    if _is_spec_map(target):
        for k, v in target.items():
            if not isinstance(v, TargetSpec):
                checks.array_leaves(v, f"target[{k!r}]", "tie")
        specs = {str(k): (v if isinstance(v, TargetSpec) else
                          spec_from_params(_no_apply, v, framework="tree")) for k, v in target.items()}
        names = tuple(specs)
        bad = [n for n in names if "/" in n]
        if bad:
            raise ValueError(f"{_WHO}: target names must not contain '/', got {bad}.")

        def init_fn(key: PRNGKey) -> Params:
            keys = jax.random.split(key, len(names))
            return {n: specs[n].init(k) for n, k in zip(names, keys)}

        def apply_fn(params: Params, inputs: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
            if not isinstance(inputs, Mapping) or not set(inputs) <= set(names):
                raise ValueError(f"{_WHO}: a tie across targets {list(names)} is applied as "
                                 f"apply(params, {{name: x}}) -> {{name: y}} for a subset of those names, got "
                                 f"{type(inputs).__name__}"
                                 + (f" with keys {sorted(map(str, inputs))}" if isinstance(inputs, Mapping) else "")
                                 + ".")
            return {n: specs[n].apply(params[n], x, **kwargs) for n, x in inputs.items()}

        layouts = {s.layout for s in specs.values()}
        full = spec_from_params(apply_fn, {n: s.abstract_params for n, s in specs.items()}, init_fn=init_fn,
                                layout=layouts.pop() if len(layouts) == 1 else "in_out",
                                framework="+".join(s.framework for s in specs.values()))

        def origin(path: str) -> tuple[TargetSpec, str]:
            name, _, rest = path.partition("/")
            return specs[name], rest
        return full, origin
    if isinstance(target, Mapping) or (jax.tree.leaves(target) and not jax.tree_util.treedef_is_leaf(
            jax.tree_util.tree_structure(target))):          # a container of leaves, not a bare array or number
        checks.array_leaves(target, "target", "tie")
        full = spec_from_params(_no_apply, target, framework="tree")
        return full, lambda p: (full, p)
    raise TypeError(f"{_WHO}: `target` must be a TargetSpec, a dict of TargetSpecs (a tie across targets) or a "
                    f"parameter tree (arrays or ShapeDtypeStructs), got {type(target).__name__}.")


def _as_ties(ties: Any, source: Any, dest: Any, fn: Any) -> list[Tie]:
    if isinstance(ties, Tie) or (isinstance(ties, tuple) and ties and isinstance(ties[0], str)):
        ties = [ties]
    if isinstance(ties, (str, Mapping)) or not isinstance(ties, Sequence):
        raise TypeError(f"{_WHO}: `ties` must be a list of hj.Tie(source, dest, fn=None) or (source, dest[, fn]) "
                        f"tuples, got {type(ties).__name__}.")
    out = []
    for t in ties:
        if isinstance(t, Mapping):
            unknown = sorted(map(str, set(t) - set(Tie._fields)))
            if unknown or not {"source", "dest"} <= set(t):
                raise TypeError(f"{_WHO}: a tie given as a dict needs the keys 'source' and 'dest' (and optionally "
                                f"'fn'), got {sorted(map(str, t))}.")
            t = Tie(**t)
        if not isinstance(t, tuple) or len(t) not in (2, 3) or not isinstance(t[0], str):
            raise TypeError(f"{_WHO}: each tie must be hj.Tie(source, dest, fn=None) or a tuple "
                            f"(source, dest[, fn]), got {t!r}.")
        out.append(Tie(*t))
    if source is not None or dest is not None:
        if source is None or dest is None:
            raise ValueError(f"{_WHO}: give both `source` and `dest` (got source={source!r}, dest={dest!r}).")
        out.append(Tie(source, dest, fn))
    elif fn is not None:
        raise ValueError(f"{_WHO}: `fn` is given without `source` and `dest`; put it in the Tie instead.")
    if not out:
        raise ValueError(f"{_WHO}: no ties given; pass source= and dest=, or ties=[hj.Tie(source, dest, fn), ...].")
    return out


def _resolve(links: Mapping[str, tuple[str, Any]]) -> dict[str, tuple[str, tuple[Any, ...]]]:
    """{dest: (source, fn)} -> {dest: (root source, (fn applied first, ..., fn applied last))}."""
    out: dict[str, tuple[str, tuple[Any, ...]]] = {}
    for dest in links:
        chain, fns, node = [dest], [], dest
        while node in links:
            src, fn = links[node]
            fns.append(fn)
            if src in chain:
                raise ValueError(f"{_WHO}: ties form a cycle: {' <- '.join(chain + [src])}; one leaf of the "
                                 f"cycle must be a free parameter (a source that is no dest).")
            chain.append(src)
            node = src
        out[dest] = (node, tuple(f for f in reversed(fns) if f is not None))
    return out


# ------------------------------------------------------------------------------------------------ Tied
@dataclasses.dataclass(frozen=True, eq=False)
class Tied(TargetSpec):
    """A `TargetSpec` over the free leaves of `full`; tied leaves are rebuilt from their sources.

    Params of a Tied spec ("free params") are a nested dict keyed by path parts holding every leaf of
    `full` except the dests. `apply(free, *args)` = `full.apply(expand(free), *args)`; generators,
    `partial` generation, `per_sample`, Optax training and checkpointing all see only the free tree.
    Built once by `tie` (its `apply_fn` and `init_fn` are None: `apply` and `init` go through `full`).

    Attributes:
      full: the TargetSpec of the whole tree (for a dict of targets, `apply(params, {name: x})`).
      links: {dest: (source, fn)} as declared; roots: {dest: (free source, fns in order)} after chains.
      origin: `origin(path) -> (spec, path inside it)`, the target a free leaf comes from (fans, init moments).
    """

    full: Any = None
    links: Any = None
    roots: Any = None
    origin: Any = None

    def apply(self, params: Params, *args: Any, **kwargs: Any) -> Any:
        """`full.apply(expand(free), *args)`.

        Raises:
          ValueError: the free params do not match (see `expand`), or `full` rejects its inputs.
        """
        return self.full.apply(self.expand(params), *args, **kwargs)

    def init(self, key: PRNGKey) -> Params:
        """Free params: `collapse(full.init(key))`."""
        return self.collapse(self.full.init(key))

    # ---------------------------------------------------------------- conversion
    def expand(self, free: Params) -> Params:
        """free params (nested dict, checked) -> the full tree, every dest = fn(source). Differentiable.

        Raises:
          ValueError: naming missing / unexpected free paths or a leaf whose shape or dtype differs.
        """
        check_params(self, free, "Tied.expand")
        leaves = dict(_paths.leaves_with_paths(free))
        full = {}
        for path in self.full.paths:
            if path in self.roots:
                root, fns = self.roots[path]
                value = leaves[root]
                for fn in fns:
                    value = fn(value)
                full[path] = value
            else:
                full[path] = leaves[path]
        return self.full.from_leaves(full)

    def collapse(self, params: Params) -> Params:
        """Full tree -> free params: the dests are dropped (their values are discarded, sources win).

        Raises:
          ValueError: `params` does not match `full`.
        """
        check_params(self.full, params, "Tied.collapse")
        leaves = dict(_paths.leaves_with_paths(params))
        return _paths.nest({p: leaves[p] for p in self.paths})

    def consistent(self, params: Params, atol: float = 0.0) -> bool:
        """Whether a full tree already satisfies every tie (dest == fn(source) within `atol`)."""
        return bool(jnp.all(jnp.stack([jnp.max(jnp.abs(a - b)) <= atol for a, b in zip(
            jax.tree.leaves(params), jax.tree.leaves(self.expand(self.collapse(params))))])))

    @property
    def spec(self) -> Tied:
        """The TargetSpec over the free params (this object)."""
        return self

    @property
    def tied_paths(self) -> tuple[str, ...]:
        """The dropped leaves (dests), in the full tree's order."""
        return tuple(p for p in self.full.paths if p in self.roots)

    # ---------------------------------------------------------------- statistics of the original leaves
    def fans(self, path: str) -> tuple[int, int]:
        """Fans of `path` in its own target (a free bias keeps the fans of its tied kernel)."""
        spec, inner = self.origin(path)
        return spec.fans(inner)

    def init_moments(self, path: str, mode: str = "fan_in") -> tuple[float, float]:
        spec, inner = self.origin(path)
        return spec.init_moments(inner, mode)

    def __repr__(self) -> str:
        ties = ", ".join(f"{d} <- {self.links[d][0]}" for d in self.tied_paths[:8])
        more = ", ..." if len(self.links) > 8 else ""
        return (f"Tied({self.full.framework}, {self.size} free of {self.full.size} params, "
                f"{{{ties}{more}}})")


def tie(target: Any, ties: Any = (), *, source: str | None = None, dest: str | Sequence[str] | None = None,
        fn: Callable[[jax.Array], jax.Array] | None = None) -> Tied:
    """Declare leaves of `target` to be one parameter; returns the `Tied` spec over the free leaves.

    Args:
      target: a TargetSpec; a dict {name: TargetSpec or parameter tree} to tie across targets (paths
        are "name/..."); or a parameter tree (arrays or ShapeDtypeStructs; no apply, use `expand`).
      ties: hj.Tie(source, dest, fn) entries or (source, dest[, fn]) tuples.
      source, dest, fn: a single tie, as keywords (combined with `ties`).

    `dest` may be a glob or a list matching several leaves (matched by `hyperjax.select`); a source may itself
    be a dest (chains are composed: c = g(b), b = f(a) gives c = g(f(a))). Returns a `Tied` spec whose params
    are the free leaves (a nested dict by path parts); `tied.expand(free)` gives the full tree.

    Raises:
      TypeError: `target` is none of the accepted kinds, a tie is malformed, `fn` is not callable, or `dest`
        is not a path / glob / list of them.
      ValueError: an unknown source (listing the paths), a dest that matches nothing, a leaf tied twice, a
        cycle, missing `source`/`dest`, no ties, or an fn whose output shape or dtype differs from a dest
        (naming both paths and shapes).
    """
    full, origin = _full_spec(target)
    available = full.paths
    links: dict[str, tuple[str, Any]] = {}
    for t in _as_ties(ties, source, dest, fn):
        if not isinstance(t.source, str):
            raise TypeError(f"{_WHO}: source must be a leaf path (str), got {t.source!r}. Available paths: "
                            f"{_shown(available)}")
        if t.source not in full.leaves:
            raise _unknown_source(t.source, available)
        if t.fn is not None and not callable(t.fn):
            raise TypeError(f"{_WHO}: fn for source '{t.source}' must be callable (leaf -> leaf), got {t.fn!r}.")
        patterns = (t.dest,) if isinstance(t.dest, str) else (
            tuple(t.dest) if isinstance(t.dest, Sequence) else ())
        if not patterns or not all(isinstance(p, str) for p in patterns):
            raise TypeError(f"{_WHO}: dest must be a path, a glob or a list of them, got {t.dest!r}.")
        sel = _paths.select(*patterns)
        dests = [p for p in available if p != t.source and sel(p, full.leaves[p])]
        if not dests:
            raise _unknown_dest(t.dest, t.source, available)
        s_struct = full.leaves[t.source]
        for d in dests:
            if d in links:
                raise ValueError(f"{_WHO}: leaf '{d}' is tied twice (to '{links[d][0]}' and to '{t.source}'); "
                                 f"a dest has exactly one source.")
            d_struct = full.leaves[d]
            try:
                got = jax.eval_shape(t.fn, s_struct) if t.fn is not None else s_struct
            except Exception as e:   # fn cannot take the source at all
                raise ValueError(f"{_WHO}: fn for dest '{d}' {_fmt(d_struct)} fails on source '{t.source}' "
                                 f"{_fmt(s_struct)}: {type(e).__name__}: {e}") from e
            if not isinstance(got, jax.ShapeDtypeStruct):    # fn returned a tuple, a dict, None, ...
                raise ValueError(f"{_WHO}: fn for dest '{d}' {_fmt(d_struct)} must return one array from source "
                                 f"'{t.source}' {_fmt(s_struct)}, got "
                                 f"{jax.tree.map(_fmt, got) if jax.tree.leaves(got) else type(got).__name__}.")
            if tuple(got.shape) != tuple(d_struct.shape) or got.dtype != d_struct.dtype:
                raise _shape_mismatch(t.source, s_struct, d, d_struct, got, t.fn)
            links[d] = (t.source, t.fn)
    roots = _resolve(links)
    leaves, treedef = leaves_and_treedef(_paths.nest({p: full.leaves[p] for p in available if p not in links}))
    return Tied(apply_fn=None, leaves=leaves, treedef=treedef, init_fn=None, layout=full.layout,
                framework=full.framework, abstract_state=full.abstract_state, init_state_fn=full.init_state_fn,
                full=full, links=types.MappingProxyType(dict(links)), roots=types.MappingProxyType(roots),
                origin=origin)
