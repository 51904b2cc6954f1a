"""Orbax checkpointing of the whole training state plus a JSON config. The only module importing orbax.

Layout of one step directory written by `save` (an ordinary Orbax `CheckpointManager` step):

    <directory>/<step>/state/    the state's leaves as a nested dict keyed by leaf path parts
                                 ("params/direct/dec/bias", "opt_state/0/mu/...", "rng"), StandardSave
    <directory>/<step>/config/   the user's JSON config (to rebuild the hypernetwork and target)
    <directory>/<step>/_CHECKPOINT_METADATA   Orbax's step metadata; its custom_metadata holds the format tag,
                                 the PRNG key impls, the metrics and whether a config was given

Typed PRNG keys (`jax.random.key`) are stored as their `jax.random.key_data` (uint32) and wrapped back on
restore. Restores follow an abstract tree (`jax.eval_shape` of the initial state), so no template is
allocated; the saved tree's shapes and dtypes are read first from Orbax's own metadata
(`CheckpointManager.metadata(step).item_metadata`), and a mismatch names the first differing path.

Orbax writes each step into `<step>.orbax-checkpoint-tmp...` and renames it when complete, so a save that
is killed leaves the previous steps untouched and no partial step is ever listed or restored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from hyperjax._src import paths as _paths

FORMAT = "hyperjax.checkpoint/2"   # /1 kept a JSON manifest of the leaves in a "meta" item
MODES = ("min", "max")


class Manager:
    """An `orbax.checkpoint.CheckpointManager` over `directory` plus the metric it ranks by.

    Use `hj.checkpoint.save/restore` with it; `.orbax` is the underlying manager. Works as a context
    manager (waits for pending async saves and closes on exit).
    """

    def __init__(self, orbax_manager: ocp.CheckpointManager, directory: str, best_metric: str | None,
                 best_mode: str):
        self.orbax = orbax_manager
        self.directory = directory
        self.best_metric = best_metric
        self.best_mode = best_mode

    def all_steps(self) -> list[int]:
        """Completed steps on disk (a save still in flight or killed mid-write is not listed)."""
        return sorted(self.orbax.all_steps())

    def latest_step(self) -> int | None:
        return self.orbax.latest_step()

    def best_step(self) -> int | None:
        """Step with the best `best_metric` (the latest step when no metric was configured)."""
        return self.orbax.best_step()

    def wait(self) -> None:
        """Block until pending async saves are written and committed."""
        self.orbax.wait_until_finished()

    def close(self) -> None:
        self.orbax.close()

    def __enter__(self) -> Manager:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"hyperjax.checkpoint.Manager({self.directory!r}, steps={self.all_steps()}, "
                f"best_metric={self.best_metric!r})")


# ------------------------------------------------------------------------------------------------ manager
def manager(directory: str | os.PathLike, *, max_to_keep: int | None = 3, best_metric: str | None = None,
            best_mode: str = "min", keep_best: int = 1, async_save: bool = True,
            save_interval_steps: int = 1) -> Manager:
    """Checkpoint manager keeping the last `max_to_keep` steps and the `keep_best` best by `best_metric`.

    Args:
      directory: where step directories go (created if missing; made absolute).
      max_to_keep: how many of the latest steps to keep (None keeps all).
      best_metric: key of the `metrics` dict given to `save` to rank steps by; the best `keep_best` steps
        are kept in addition to the latest ones, and `best_step()` / `restore(..., best=True)` use it.
      best_mode: "min" (a loss) or "max" (an accuracy).
      async_save: write in a background thread (`save` returns once arrays are copied to host, so the
        next donating training step is safe); call `mgr.wait()` or `mgr.close()` before exiting.
      save_interval_steps: `save` skips steps that are not multiples of this (unless force=True).

    Stale `*.orbax-checkpoint-tmp*` directories left by a killed save are never listed or restored; the
    manager removes them in the background when it opens (finished before its first save).

    Raises:
      TypeError: `max_to_keep`, `keep_best` or `save_interval_steps` is not an int, `best_metric` not a str.
      ValueError: unknown `best_mode`, or one of those ints is < 1.
    """
    who = "hyperjax.checkpoint.manager"
    if best_mode not in MODES:
        raise ValueError(f"{who}: unknown `best_mode`={best_mode!r}; valid options are 'min', 'max'.")
    if best_metric is not None and not isinstance(best_metric, str):
        raise TypeError(f"{who}: `best_metric` must be a metric name (str) or None, got {type(best_metric).__name__}.")
    for name, value, none_ok in (("max_to_keep", max_to_keep, True), ("keep_best", keep_best, False),
                                 ("save_interval_steps", save_interval_steps, False)):
        if value is None and none_ok:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{who}: `{name}` must be a positive int" + (" or None (keep all)" if none_ok else "")
                            + f", got {type(value).__name__}.")
        if value < 1:
            raise ValueError(f"{who}: `{name}` must be a positive int" + (" or None (keep all)" if none_ok else "")
                             + f", got {value!r}.")
    cm = ocp.checkpoint_managers
    policies = [cm.LatestN(n=max_to_keep)]
    best_fn = None
    if best_metric is not None:
        def best_fn(metrics: Mapping[str, Any]) -> float:
            return float(metrics[best_metric])
        policies.append(cm.BestN(get_metric_fn=best_fn, reverse=best_mode == "min", n=keep_best,
                                 keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_interval_steps, best_fn=best_fn, best_mode=best_mode,
        preservation_policy=cm.AnyPreservationPolicy(policies), enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True, create=True)
    directory = os.path.abspath(os.fspath(directory))
    # handlers given up front, so the item metadata of steps saved by another process can be read
    handlers = {"state": ocp.StandardCheckpointHandler(), "config": ocp.JsonCheckpointHandler()}
    return Manager(ocp.CheckpointManager(directory, options=options, item_handlers=handlers), directory,
                   best_metric, best_mode)


# ------------------------------------------------------------------------------------------------ trees
def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _flat(tree: Any, who: str) -> tuple[list[tuple[str, Any]], Any]:
    """tree -> ([(path, leaf)], treedef); path strings must be unique (they name the stored arrays)."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    items = [(_paths.path_str(kp), leaf) for kp, leaf in flat]
    seen: set[str] = set()
    for p, _ in items:
        if p in seen:
            raise ValueError(f"{who}: two leaves of the state have the same path '{p}' (e.g. dict keys 0 and '0'); "
                             f"rename one so each leaf has its own name on disk.")
        seen.add(p)
    return items, treedef


def _fmt(shape: Any, dtype: Any) -> str:
    return f"{tuple(shape)} {dtype}"


def _to_json(value: Any, what: str, who: str) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{who}: `{what}` must be JSON-serialisable (dicts, lists, str, int, float, bool, None): "
                        f"{e}. Convert arrays with float(x) or x.tolist().") from None
    return value


# ------------------------------------------------------------------------------------------------ save
def save(mgr: Manager, step: int, state: Any, *, config: Mapping[str, Any] | None = None,
         metrics: Mapping[str, Any] | None = None, force: bool = False) -> bool:
    """Save `state` (any pytree, e.g. `hj.training.TrainState`) and a JSON `config` as step `step`.

    config: a JSON dict from which your hypernetwork and target can be rebuilt; returned by `restore`.
    metrics: scalars for this step; `best_metric` must be among them when the manager ranks by it.
    Returns whether a save was started (False when `step` falls between `save_interval_steps`).
    With async saving the write finishes in the background: `mgr.wait()` blocks until it is committed.

    Raises:
      TypeError: `mgr` is not a hyperjax Manager, `config` is not a JSON dict, a metric is not a number.
      ValueError: `metrics` lacks the manager's `best_metric`, or two leaves of `state` share a path string.
    """
    who = "hyperjax.checkpoint.save"
    if not isinstance(mgr, Manager):
        raise TypeError(f"{who}: `mgr` must come from hyperjax.checkpoint.manager(directory, ...), "
                        f"got {type(mgr).__name__}.")
    step = int(step)
    if config is not None and not isinstance(config, Mapping):
        raise TypeError(f"{who}: `config` must be a dict (JSON object), got {type(config).__name__}.")
    config = _to_json(dict(config) if config is not None else None, "config", who)
    try:
        metrics = {str(k): float(v) for k, v in (metrics or {}).items()}
    except (TypeError, ValueError, AttributeError) as e:
        raise TypeError(f"{who}: `metrics` must be a dict of numbers (scalars), got {metrics!r}: {e}") from None
    if mgr.best_metric is not None and mgr.best_metric not in metrics:
        raise ValueError(f"{who}: the manager keeps the best steps by {mgr.best_metric!r}, so `metrics` must "
                         f"contain it; got {sorted(metrics) or 'no metrics'}.")
    items, _ = _flat(state, who)
    leaves, keys = {}, {}
    for p, leaf in items:
        if _is_key(leaf):
            keys[p] = str(jax.random.key_impl(leaf))
            leaf = jax.random.key_data(leaf)
        leaves[p] = leaf if isinstance(leaf, jax.Array) else jnp.asarray(leaf)
    custom = {"format": FORMAT, "prng_keys": keys, "metrics": metrics, "has_config": config is not None}
    args = ocp.args.Composite(state=ocp.args.StandardSave(_paths.nest(leaves)),
                              config=ocp.args.JsonSave(config if config is not None else {}))
    return bool(mgr.orbax.save(step, args=args, metrics=metrics or None, force=force, custom_metadata=custom))


# ------------------------------------------------------------------------------------------------ restore
def _mismatch(saved: list[tuple[str, tuple[int, ...], str]], wanted: list[tuple[str, tuple[int, ...], str]],
              where: str) -> str | None:
    """Text naming the first leaf path (in the abstract's order) where checkpoint and abstract differ.

    Leaves are matched by path string (they are stored by path), so container order does not matter.
    """
    saved_map = {p: (tuple(s), d) for p, s, d in saved}
    wanted_map = {p: (tuple(s), d) for p, s, d in wanted}
    for p, s, d in wanted:
        if p not in saved_map:
            extra = [q for q, _, _ in saved if q not in wanted_map]
            return (f"leaf '{p}' of the abstract state is not in the {where}"
                    + (f" (the checkpoint has instead: {', '.join(extra[:10])})" if extra else "") + ".")
        if saved_map[p] != (s, d):
            return (f"leaf '{p}' is {_fmt(*saved_map[p])} in the {where} but {_fmt(s, d)} in the "
                    f"abstract state.")
    for p, s, d in saved:
        if p not in wanted_map:
            return f"leaf '{p}' {_fmt(s, d)} of the {where} is not in the abstract state."
    return None


def _saved_leaves(tree_metadata: Any) -> list[tuple[str, tuple[int, ...], str]]:
    """[(path, shape, dtype name)] of a saved tree, from Orbax's tree metadata (its ArrayMetadata leaves)."""
    tree = getattr(tree_metadata, "tree", tree_metadata)
    return [(p, tuple(m.shape), str(jnp.dtype(m.dtype))) for p, m in _paths.leaves_with_paths(tree)]


def restore(mgr: Manager, abstract_state: Any, *, step: int | None = None, best: bool = False
            ) -> tuple[Any, dict[str, Any] | None]:
    """Restore (state, config) of `step` (default: the latest; `best=True`: the best by the metric).

    abstract_state: the state's structure, e.g. `jax.eval_shape(lambda: hj.training.init_state(...))`
      (ShapeDtypeStructs, optionally with shardings; concrete arrays also work). Nothing is allocated
      before reading; arrays come back with the abstract's shardings (default: the first device).
    Raises:
      TypeError: `mgr` is not a hyperjax Manager.
      FileNotFoundError: there is no such completed step.
      ValueError: `step` and `best` are both given; the step was not written by `save`; or a leaf's presence,
        shape, dtype or PRNG-key kind differs between checkpoint and abstract state (naming the first such path).
    """
    who = "hyperjax.checkpoint.restore"
    if step is not None and best:
        raise ValueError(f"{who}: give `step` or `best=True`, not both.")
    if best and isinstance(mgr, Manager):
        _sync(mgr)
        step = mgr.best_step()
    step, meta = _meta(mgr, step, who)
    saved = _saved_leaves(mgr.orbax.metadata(step).item_metadata["state"])

    items, treedef = _flat(abstract_state, who)
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    wanted, targets, key_paths = [], {}, []
    for p, leaf in items:
        sharding = getattr(leaf, "sharding", None) or default
        if _is_key(leaf):
            key_paths.append(p)
            data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(leaf.shape, leaf.dtype))
            shape, dtype = tuple(data.shape), data.dtype
        else:
            shape, dtype = tuple(np.shape(leaf)), jnp.result_type(leaf)
        wanted.append((p, shape, str(jnp.dtype(dtype))))
        targets[p] = jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
    problem = _mismatch(saved, wanted, f"checkpoint step {step} in {mgr.directory}")
    if problem is None:
        lost = [p for p in key_paths if p not in meta.get("prng_keys", {})]
        gained = [p for p in meta.get("prng_keys", {}) if p not in key_paths]
        if lost or gained:
            p = (lost or gained)[0]
            problem = (f"leaf '{p}' is a typed PRNG key in the " + ("abstract state" if lost else "checkpoint")
                       + " but raw uint32 data in the " + ("checkpoint" if lost else "abstract state")
                       + "; use jax.random.key / jax.random.key_data consistently.")
    if problem:
        raise ValueError(f"{who}: the checkpoint does not match the abstract state: {problem} Build the "
                         f"abstract state from the same model, optimizer and config as the saved run "
                         f"(e.g. from the config returned with it).")

    restored = mgr.orbax.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_paths.nest(targets)), config=ocp.args.JsonRestore()))
    flat = _paths.unnest(restored["state"], [p for p, _ in items])
    for p in key_paths:
        flat[p] = jax.random.wrap_key_data(flat[p], impl=meta["prng_keys"][p])
        want = dict(items)[p].dtype
        if flat[p].dtype != want:
            raise ValueError(f"{who}: leaf '{p}' was saved as a {flat[p].dtype} PRNG key but the abstract state "
                             f"wants {want}.")
    state = jax.tree_util.tree_unflatten(treedef, [flat[p] for p, _ in items])
    config = restored["config"] if meta.get("has_config") else None
    return state, config


def _sync(mgr: Manager) -> None:
    """Await this manager's own saves still in flight (async ones included), then re-read the directory."""
    mgr.orbax.wait_until_finished()
    mgr.orbax.reload()


def _meta(mgr: Manager, step: int | None, who: str) -> tuple[int, dict[str, Any]]:
    if not isinstance(mgr, Manager):
        raise TypeError(f"{who}: `mgr` must come from hyperjax.checkpoint.manager(directory, ...), "
                        f"got {type(mgr).__name__}.")
    _sync(mgr)
    steps = mgr.all_steps()
    step = mgr.latest_step() if step is None else int(step)
    if step is None:
        raise FileNotFoundError(f"{who}: no completed checkpoint in {mgr.directory}.")
    if step not in steps:
        raise FileNotFoundError(f"{who}: no completed checkpoint for step {step} in {mgr.directory}; "
                                f"available steps: {steps}.")
    meta = mgr.orbax.metadata(step).custom_metadata
    if not isinstance(meta, Mapping) or meta.get("format") != FORMAT:
        raise ValueError(f"{who}: step {step} in {mgr.directory} was not written by hyperjax.checkpoint.save "
                         f"(no '{FORMAT}' in its Orbax custom metadata); restore it with orbax directly.")
    return step, dict(meta)


def load_config(mgr: Manager, step: int | None = None) -> dict[str, Any] | None:
    """The JSON config saved with `step` (default: the latest), read before anything is built: rebuild
    the hypernetwork and target from it, then `restore` against their abstract state. None if none was saved.

    Raises:
      TypeError, FileNotFoundError, ValueError: as `restore` for the step lookup.
    """
    step, meta = _meta(mgr, step, "hyperjax.checkpoint.load_config")
    if not meta.get("has_config"):
        return None
    return mgr.orbax.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]


def metrics(mgr: Manager, step: int | None = None) -> dict[str, float]:
    """The metrics saved with `step` (default: the latest), {name: float}.

    Raises:
      TypeError, FileNotFoundError, ValueError: as `restore` for the step lookup.
    """
    return dict(_meta(mgr, step, "hyperjax.checkpoint.metrics")[1].get("metrics", {}))


# ------------------------------------------------------------------------------------------------ export
def export(path: str | os.PathLike, params: Any, *, overwrite: bool = False) -> str:
    """Write target params (e.g. `hnet.apply(hparams, cond)`) as a plain Orbax checkpoint at `path`.

    The tree is stored as a nested dict keyed by leaf path parts (for linen params: the same dict), so
    it loads without hyperjax: `orbax.checkpoint.StandardCheckpointer().restore(path)`. Typed PRNG keys
    are not parameters and raise. Returns the absolute path. The write is atomic (tmp dir + rename).

    Raises:
      FileExistsError: `path` exists and overwrite=False.
      TypeError: a leaf is a PRNG key.
      ValueError: `params` has no array leaves, or two leaves share a path string.
    """
    who = "hyperjax.checkpoint.export"
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{who}: {path} exists; pass overwrite=True to replace it.")
    items, _ = _flat(params, who)
    if not items:
        raise ValueError(f"{who}: `params` has no array leaves.")
    for p, leaf in items:
        if _is_key(leaf):
            raise TypeError(f"{who}: leaf '{p}' is a PRNG key, not a parameter; export the target params only.")
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, _paths.nest({p: jnp.asarray(x) for p, x in items}), force=overwrite)
        ckptr.wait_until_finished()
    return path


def load_export(path: str | os.PathLike, like: Any = None) -> Any:
    """Read an `export`ed checkpoint; with `like` (a TargetSpec or a params tree, abstract or not) the
    result has its structure (e.g. an Equinox module's params), checked leaf by leaf against the export's
    Orbax metadata.

    Raises:
      FileNotFoundError: nothing is exported at `path`.
      ValueError: a leaf's presence, shape or dtype differs from `like` (naming the first such path).
    """
    who = "hyperjax.checkpoint.load_export"
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{who}: no exported checkpoint at {path}.")
    with ocp.StandardCheckpointer() as ckptr:
        if like is None:
            return ckptr.restore(path)
        abstract = getattr(like, "abstract_params", like)
        items, treedef = _flat(abstract, who)
        wanted = [(p, tuple(np.shape(x)), str(jnp.dtype(jnp.result_type(x)))) for p, x in items]
        problem = _mismatch(_saved_leaves(ckptr.metadata(path).item_metadata), wanted, f"export at {path}")
        if problem:
            raise ValueError(f"{who}: the export does not match `like`: {problem}")
        default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = _paths.nest({p: jax.ShapeDtypeStruct(s, d, sharding=default) for p, s, d in wanted})
        flat = _paths.unnest(ckptr.restore(path, target), [p for p, _ in items])
    return jax.tree_util.tree_unflatten(treedef, [flat[p] for p, _ in items])

