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

Orbax writes each step into `<step>.orbax-checkpoint-tmp...`, writes `commit_success.txt` in it and renames it
when complete, so a save that is killed leaves the previous steps untouched and no partial step is listed.
A step damaged on disk afterwards (a deleted or truncated file, a step directory copied without its commit
marker) is still listed by Orbax: every read checks the step first (`_damage`) and turns Orbax/TensorStore
read errors into a `DamagedCheckpointError` naming the step and what is wrong; `restore_latest_valid` falls
back to the newest intact step. Nothing is ever deleted by a read.

Zero-size leaves (legal in targets) cannot be stored by Orbax; `save` records their shapes and dtypes in the
custom metadata ("empty") and `restore` rebuilds them.
"""

from __future__ import annotations

import json
import os
import sys
import re
from collections.abc import Mapping
from typing import Any, NamedTuple, TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from hyperjax._src import paths as _paths
from hyperjax._src.spec import TargetSpec, check_params

if TYPE_CHECKING:
    import orbax.checkpoint as ocp


def _orbax() -> Any:
    """orbax.checkpoint, imported on first use, so `import hyperjax` does not pay for it (0.1 s on 2 CPU cores)."""
    import orbax.checkpoint
    return orbax.checkpoint

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
    ocp = _orbax()
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


def _no_deleted(items: list[tuple[str, Any]], who: str, what: str) -> None:
    """A donated (deleted) array fails here, naming its path, instead of deep inside Orbax or an expand."""
    for p, leaf in items:
        if isinstance(leaf, jax.Array) and leaf.is_deleted():
            raise ValueError(
                f"{who}: leaf '{p}' of the {what} has been deleted: its buffer was donated to a jitted step. "
                f"hj.training.make_step donates its input state (donate=True), and params generated from a state "
                f"share its arrays (a leaf of hparams['direct'] is the same array in the generated params), so "
                f"both are invalid once the state is passed to the step. Save or export what the step returned "
                f"(regenerate the params from the current state: hnet.apply(state.params, cond)), or build the "
                f"step with make_step(..., donate=False).")


# ------------------------------------------------------------------------------------------------ save
def save(mgr: Manager, step: int, state: Any, *, config: Mapping[str, Any] | None = None,
         metrics: Mapping[str, Any] | None = None, force: bool = False) -> bool:
    """Save `state` (any pytree, e.g. `hj.training.TrainState`) and a JSON `config` as step `step`.

    config: a JSON dict from which your hypernetwork and target can be rebuilt; returned by `restore`.
    metrics: scalars for this step; `best_metric` must be among them when the manager ranks by it.
    Returns whether a save was started (False when `step` falls between `save_interval_steps`, or when
    `step` is the latest step already on disk). With async saving the write finishes in the background:
    `mgr.wait()` blocks until it is committed. Zero-size leaves are recorded by shape and dtype.

    Raises:
      TypeError: `mgr` is not a hyperjax Manager, `config` is not a JSON dict, a metric is not a number.
      ValueError: `metrics` lacks the manager's `best_metric`; two leaves of `state` share a path string; a
        leaf was deleted (donated to a training step; the message names it); or `step` is before the latest
        step on disk (Orbax would skip it silently: after `restore_latest_valid` fell back past damaged
        steps, set them aside with `set_aside=True`).
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
    _no_deleted(items, who, "state")
    latest = mgr.latest_step()
    if latest is not None and step < latest:
        later = [s for s in mgr.all_steps() if s > step]
        raise ValueError(f"{who}: step {step} is before the latest step on disk ({latest}) in {mgr.directory}; "
                         f"Orbax saves only steps after the latest one, so this save would be skipped silently. "
                         f"If the run resumed from an earlier step (e.g. restore_latest_valid skipped damaged "
                         f"steps), move the later step directories {later} out of the way first "
                         f"(restore_latest_valid(..., set_aside=True) does that for damaged ones).")
    leaves, keys, empty = {}, {}, {}
    for p, leaf in items:
        if _is_key(leaf):
            keys[p] = str(jax.random.key_impl(leaf))
            leaf = jax.random.key_data(leaf)
        leaf = leaf if isinstance(leaf, jax.Array) else jnp.asarray(leaf)
        if leaf.size == 0:                       # Orbax refuses zero-size arrays; nothing to store but the shape
            empty[p] = [list(leaf.shape), str(jnp.dtype(leaf.dtype))]
        else:
            leaves[p] = leaf
    custom = {"format": FORMAT, "prng_keys": keys, "metrics": metrics, "has_config": config is not None,
              "empty": empty}
    ocp = _orbax()
    args = ocp.args.Composite(state=ocp.args.StandardSave(_paths.nest(leaves)),
                              config=ocp.args.JsonSave(config if config is not None else {}))
    return bool(mgr.orbax.save(step, args=args, metrics=metrics or None, force=force, custom_metadata=custom))


# ------------------------------------------------------------------------------------------------ damage
class DamagedCheckpointError(ValueError):
    """A listed checkpoint step cannot be read as saved: `step`, `directory` and `reason` (what is wrong)."""

    def __init__(self, message: str, *, directory: str, step: int | None, reason: str):
        super().__init__(message)
        self.directory, self.step, self.reason = directory, step, reason


class Restored(NamedTuple):
    """What `restore_latest_valid` returns: the state and config of `step`, and the newer steps it skipped
    as `((step, reason), ...)`, newest first (empty when the latest step was intact)."""

    state: Any
    config: dict[str, Any] | None
    step: int
    skipped: tuple[tuple[int, str], ...]


_COMMIT = "commit_success.txt"            # Orbax writes it last, before the rename (local disks) or instead (GCS)
_STEP_METADATA = "_CHECKPOINT_METADATA"   # Orbax's step metadata: item handlers, custom metadata
# Files Orbax 0.12 writes into every step `save` makes: the state's tree metadata (StandardCheckpointHandler),
# its OCDBT manifest, the config's JSON (JsonCheckpointHandler, file "metadata").
_REQUIRED = ("state/_METADATA", "state/manifest.ocdbt", "config/metadata")
_JSON = (_STEP_METADATA, "state/_METADATA", "config/metadata")
_TS_STATUS = re.compile(r"\b(NOT_FOUND|DATA_LOSS|OUT_OF_RANGE|FAILED_PRECONDITION|INVALID_ARGUMENT|UNKNOWN|"
                        r"INTERNAL|UNAVAILABLE|PERMISSION_DENIED): ")


def _step_dir(mgr: Manager, step: int) -> str:
    return os.path.join(mgr.directory, str(step))   # the manager uses Orbax's default step names


def _damage(step_dir: str) -> str | None:
    """What is wrong with a listed step directory on disk, read without Orbax (None: nothing found).

    Finds a half-written step (no commit marker), a missing item or metadata file, a zero-length (truncated)
    file anywhere in the step and metadata that is not JSON. A deleted or truncated array data file is found
    only when it is read (`_translate`): OCDBT data files are named by content, not by leaf. A step whose
    metadata names no hyperjax format is left to `_meta` (not written by `save`, so not ours to judge).
    """
    def empty_or_json(rel: str) -> tuple[str | None, Any]:
        full = os.path.join(step_dir, rel)
        if not os.path.isfile(full):
            return f"file '{rel}' is missing", None
        if os.path.getsize(full) == 0:
            return f"file '{rel}' is empty (0 bytes: truncated)", None
        try:
            with open(full, encoding="utf-8") as f:
                return None, json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            return f"file '{rel}' is not valid JSON (corrupted): {e}", None

    if not os.path.isdir(step_dir):
        return "its directory is gone"
    if not os.path.isfile(os.path.join(step_dir, _COMMIT)):
        return (f"it has no {_COMMIT}, the marker Orbax writes when a step is complete (a half-written step "
                f"directory, e.g. a copy or sync that did not finish)")
    problem, step_meta = empty_or_json(_STEP_METADATA)
    if problem:
        return problem
    custom = step_meta.get("custom_metadata") if isinstance(step_meta, dict) else None
    if not isinstance(custom, dict) or custom.get("format") != FORMAT:
        return None
    for item in ("state", "config"):
        if not os.path.isdir(os.path.join(step_dir, item)):
            return f"its item directory '{item}/' is missing"
    for rel in _REQUIRED:
        if not os.path.isfile(os.path.join(step_dir, rel)):
            return f"file '{rel}' is missing"
    empty = []
    for root, dirs, files in os.walk(step_dir):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            if os.path.getsize(full) == 0:
                empty.append(os.path.relpath(full, step_dir))
    if empty:
        more = f" (and {len(empty) - 1} more: {', '.join(empty[1:4])})" if len(empty) > 1 else ""
        return f"file '{empty[0]}' is empty (0 bytes: truncated){more}"
    for rel in _JSON[1:]:
        problem, _ = empty_or_json(rel)
        if problem:
            return problem
    return None


def _chain(e: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while e is not None and e not in out:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def _translate(e: Exception, step_dir: str, paths: list[str]) -> str | None:
    """The reason a read of a step failed, when the error chain is a file/TensorStore error (None otherwise).

    Names the leaf being read (TensorStore names arrays by their path parts joined with '.') and a file of the
    step that is missing.
    """
    chain = _chain(e)
    statuses = [str(x).split(" [tensorstore_spec")[0].strip() for x in chain if _TS_STATUS.search(str(x))]
    if not statuses:
        io = next((x for x in chain if isinstance(x, (OSError, json.JSONDecodeError, UnicodeDecodeError))), None)
        return None if io is None else f"reading it failed: {type(io).__name__}: {io}"
    text = " ".join(statuses)
    inner = statuses[-1]
    code = _TS_STATUS.search(inner).group(1)
    detail = inner.rsplit('": ', 1)[-1] if '": ' in inner else inner[inner.index(code) + len(code) + 2:]
    by_name = {p.replace("/", "."): p for p in paths}
    leaf = next((by_name[k.split("/")[0]] for k in re.findall(r'Error reading "([^"]+)"', text)
                 if k.split("/")[0] in by_name), None)
    missing = next((f for f in re.findall(r'local file "([^"]+)"', text)
                    if os.path.abspath(f).startswith(os.path.abspath(step_dir) + os.sep) and not os.path.exists(f)),
                   None)
    reading = f"reading leaf '{leaf}'" if leaf is not None else "reading it"
    if missing is not None:
        return (f"file '{os.path.relpath(missing, step_dir)}' is missing ({reading} failed with {code})")
    hint = "; an array data file under 'state/' is missing, truncated or corrupted" if leaf is not None else ""
    return f"{reading} failed: {code}: {detail}{hint}"


def _damaged(mgr: Manager, step: int, reason: str, who: str) -> DamagedCheckpointError:
    return DamagedCheckpointError(
        f"{who}: checkpoint step {step} in {mgr.directory} is damaged: {reason}. The step was left on disk as "
        f"it is; hj.checkpoint.restore_latest_valid(mgr, abstract_state) falls back to the newest intact step "
        f"(steps on disk: {mgr.all_steps()}).", directory=mgr.directory, step=step, reason=reason)


def _read(mgr: Manager, step: int, who: str, paths: list[str], fn: Any) -> Any:
    """fn() with file and TensorStore errors turned into a DamagedCheckpointError naming the step."""
    try:
        return fn()
    except Exception as e:   # noqa: BLE001 - re-raised unless it is a read error of the step's files
        reason = _translate(e, _step_dir(mgr, step), paths)
        if reason is None:
            raise
        raise _damaged(mgr, step, reason, who) from e


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
      DamagedCheckpointError (a ValueError): the step is damaged on disk (a missing or truncated file, no
        commit marker, unreadable metadata or arrays); the message names the step and what is wrong, and
        `restore_latest_valid` falls back to the newest intact step.
      ValueError: `step` and `best` are both given; the step was not written by `save`; or a leaf's presence,
        shape, dtype or PRNG-key kind differs between checkpoint and abstract state (naming the first such path).
    """
    who = "hyperjax.checkpoint.restore"
    if step is not None and best:
        raise ValueError(f"{who}: give `step` or `best=True`, not both.")
    if best and isinstance(mgr, Manager):
        _sync(mgr)
        step = mgr.best_step()
    return _restore(mgr, abstract_state, step, who)


def _restore(mgr: Manager, abstract_state: Any, step: int | None, who: str
             ) -> tuple[Any, dict[str, Any] | None]:
    step, meta = _meta(mgr, step, who)
    items, treedef = _flat(abstract_state, who)
    paths = [p for p, _ in items]
    empty = {p: (tuple(s), str(jnp.dtype(d))) for p, (s, d) in meta.get("empty", {}).items()}
    saved = _read(mgr, step, who, paths, lambda: _saved_leaves(mgr.orbax.metadata(step).item_metadata["state"]))
    saved += [(p, s, d) for p, (s, d) in empty.items()]

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

    stored = {p: t for p, t in targets.items() if p not in empty}
    ocp = _orbax()
    restored = _read(mgr, step, who, paths, lambda: mgr.orbax.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_paths.nest(stored)), config=ocp.args.JsonRestore())))
    flat = _paths.unnest(restored["state"], list(stored)) if stored else {}
    for p in empty:
        flat[p] = jax.device_put(jnp.zeros(targets[p].shape, targets[p].dtype), targets[p].sharding)
    for p in key_paths:
        flat[p] = jax.random.wrap_key_data(flat[p], impl=meta["prng_keys"][p])
        want = dict(items)[p].dtype
        if flat[p].dtype != want:
            raise ValueError(f"{who}: leaf '{p}' was saved as a {flat[p].dtype} PRNG key but the abstract state "
                             f"wants {want}.")
    state = jax.tree_util.tree_unflatten(treedef, [flat[p] for p in paths])
    config = restored["config"] if meta.get("has_config") else None
    return state, config


def restore_latest_valid(mgr: Manager, abstract_state: Any, *, set_aside: bool = False) -> Restored:
    """Restore the newest step that is intact, skipping damaged ones: `Restored(state, config, step, skipped)`.

    Steps are tried newest first; a step that raises `DamagedCheckpointError` is skipped and recorded in
    `skipped` as (step, reason). Nothing is deleted. Other errors (a structure that does not match
    `abstract_state`, a step not written by `save`) are raised, not skipped: an older step would hide them.
    set_aside: rename each skipped step directory `<step>` to `<step>.damaged` (Orbax no longer lists it) so
      the resumed run can save those step numbers again; nothing is deleted either way.

    Raises:
      TypeError: `mgr` is not a hyperjax Manager.
      FileNotFoundError: there is no completed step.
      DamagedCheckpointError: every step is damaged (the message lists each step and its reason).
      ValueError: as `restore`, for the first step that is not damaged.
    """
    who = "hyperjax.checkpoint.restore_latest_valid"
    if not isinstance(mgr, Manager):
        raise TypeError(f"{who}: `mgr` must come from hyperjax.checkpoint.manager(directory, ...), "
                        f"got {type(mgr).__name__}.")
    _sync(mgr)
    steps = mgr.all_steps()
    if not steps:
        raise FileNotFoundError(f"{who}: no completed checkpoint in {mgr.directory}.")
    skipped: list[tuple[int, str]] = []
    for step in reversed(steps):
        try:
            state, config = _restore(mgr, abstract_state, step, who)
        except DamagedCheckpointError as e:
            skipped.append((step, e.reason))
            continue
        if set_aside and skipped:
            for s, _ in skipped:
                src = _step_dir(mgr, s)
                dst, n = src + ".damaged", 1
                while os.path.exists(dst):
                    dst, n = f"{src}.damaged-{n}", n + 1
                os.rename(src, dst)
            mgr.orbax.reload()
        return Restored(state, config, step, tuple(skipped))
    listing = "; ".join(f"step {s}: {r}" for s, r in skipped)
    raise DamagedCheckpointError(f"{who}: every checkpoint step in {mgr.directory} is damaged ({listing}). "
                                 f"They were left on disk as they are.", directory=mgr.directory, step=None,
                                 reason=listing)


def _sync(mgr: Manager) -> None:
    """Await this manager's own saves still in flight (async ones included), then re-read the directory."""
    mgr.orbax.wait_until_finished()
    mgr.orbax.reload()


def _meta(mgr: Manager, step: int | None, who: str) -> tuple[int, dict[str, Any]]:
    """(step, custom metadata) of a listed step, after checking the step's files (`_damage`)."""
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
    reason = _damage(_step_dir(mgr, step))
    if reason is not None:
        raise _damaged(mgr, step, reason, who)
    meta = _read(mgr, step, who, [], lambda: mgr.orbax.metadata(step).custom_metadata)
    if not isinstance(meta, Mapping) or meta.get("format") != FORMAT:
        raise ValueError(f"{who}: step {step} in {mgr.directory} was not written by hyperjax.checkpoint.save "
                         f"(no '{FORMAT}' in its Orbax custom metadata); restore it with orbax directly.")
    return step, dict(meta)


def load_config(mgr: Manager, step: int | None = None) -> dict[str, Any] | None:
    """The JSON config saved with `step` (default: the latest), read before anything is built: rebuild
    the hypernetwork and target from it, then `restore` against their abstract state. None if none was saved.

    Raises:
      TypeError, FileNotFoundError, DamagedCheckpointError, ValueError: as `restore` for the step lookup.
    """
    who = "hyperjax.checkpoint.load_config"
    step, meta = _meta(mgr, step, who)
    if not meta.get("has_config"):
        return None
    ocp = _orbax()
    return _read(mgr, step, who, [], lambda: mgr.orbax.restore(
        step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])


def metrics(mgr: Manager, step: int | None = None) -> dict[str, float]:
    """The metrics saved with `step` (default: the latest), {name: float}.

    Raises:
      TypeError, FileNotFoundError, DamagedCheckpointError, ValueError: as `restore` for the step lookup.
    """
    return dict(_meta(mgr, step, "hyperjax.checkpoint.metrics")[1].get("metrics", {}))


# ------------------------------------------------------------------------------------------------ export
def export(path: str | os.PathLike, params: Any, *, target: TargetSpec | None = None,
           overwrite: bool = False) -> str:
    """Write target params (e.g. `hnet.apply(hparams, cond)`) as a plain Orbax checkpoint at `path`.

    The tree is stored as a nested dict keyed by leaf path parts (for linen params: the same dict), so
    it loads without hyperjax: `orbax.checkpoint.StandardCheckpointer().restore(path)`, and the unmodified
    linen model runs on it (`model.apply({"params": restored}, x)`); Flax metadata boxes (`nn.Partitioned`,
    e.g. `spec.rebox(params)`) are stored as their arrays (`spec.rebox(restored)` puts them back). Returns the absolute
    path. The write is atomic (tmp dir + rename).

    target: the spec the params are for. Needed for a tied spec (`hj.tie`): its params (and a generator's
      output for it) hold only the free leaves, and `target=tied` writes `tied.expand(params)`, every leaf
      of the full model, so a reader without hyperjax gets the whole model. For any other spec it is
      optional and checks `params` against it first.

    Raises:
      FileExistsError: `path` exists and overwrite=False.
      TypeError: a leaf is a PRNG key; `target` is not a TargetSpec.
      ValueError: `params` has no array leaves, a leaf is zero-size (Orbax cannot store it), two leaves share
        a path string, a leaf was deleted (donated to a training step; the message names it), or `params`
        does not match `target` (naming the path).
    """
    who = "hyperjax.checkpoint.export"
    params = _unboxed(params)
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{who}: {path} exists; pass overwrite=True to replace it.")
    if target is not None and not isinstance(target, TargetSpec):
        raise TypeError(f"{who}: `target` must be the TargetSpec the params are for (e.g. the Tied spec from "
                        f"hj.tie), got {type(target).__name__}.")
    _no_deleted(_flat(params, who)[0], who, "params")
    if target is not None:
        full = getattr(target, "full", None)
        if full is not None and hasattr(target, "expand"):        # a Tied spec: free leaves -> every leaf
            check_params(target, params, "checkpoint.export")
            params = target.expand(params)
        else:
            check_params(target, params, "checkpoint.export")
    items, _ = _flat(params, who)
    if not items:
        raise ValueError(f"{who}: `params` has no array leaves.")
    for p, leaf in items:
        if _is_key(leaf):
            raise TypeError(f"{who}: leaf '{p}' is a PRNG key, not a parameter; export the target params only.")
        if np.size(leaf) == 0:
            raise ValueError(f"{who}: leaf '{p}' has zero size {tuple(np.shape(leaf))}; Orbax cannot store "
                             f"zero-size arrays. Drop it from the params you export.")
    ocp = _orbax()
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, _paths.nest({p: jnp.asarray(x) for p, x in items}), force=overwrite)
        ckptr.wait_until_finished()
    return path


def _unboxed(tree: Any) -> Any:
    """Flax metadata boxes (`nn.Partitioned` of `nn.with_logical_partitioning`, e.g. `spec.rebox(params)`) ->
    their arrays: Orbax would store a box's fields ('.../kernel/value'), which the model's apply then rejects."""
    if "flax" not in sys.modules:
        return tree
    from flax.core import meta

    is_box = lambda x: isinstance(x, meta.AxisMetadata)
    if not any(is_box(x) for x in jax.tree.leaves(tree, is_leaf=is_box)):
        return tree
    return meta.unbox(tree)


def load_export(path: str | os.PathLike, like: Any = None) -> Any:
    """Read an `export`ed checkpoint; with `like` (a TargetSpec or a params tree, abstract or not) the
    result has its structure (e.g. an Equinox module's params), checked leaf by leaf against the export's
    Orbax metadata. For a tied spec exported with `target=tied` (every leaf), `like=tied` gives the free
    params back (`tied.collapse`), `like=tied.full` the full tree.

    Raises:
      FileNotFoundError: nothing is exported at `path`.
      ValueError: a leaf's presence, shape or dtype differs from `like` (naming the first such path).
    """
    who = "hyperjax.checkpoint.load_export"
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{who}: no exported checkpoint at {path}.")
    ocp = _orbax()
    with ocp.StandardCheckpointer() as ckptr:
        if like is None:
            return ckptr.restore(path)
        saved = _saved_leaves(ckptr.metadata(path).item_metadata)
        tied = getattr(like, "full", None) is not None and hasattr(like, "collapse")
        if tied and {p for p, _, _ in saved} == set(like.full.paths):
            return like.collapse(load_export(path, like.full))
        abstract = getattr(like, "abstract_params", like)
        items, treedef = _flat(abstract, who)
        wanted = [(p, tuple(np.shape(x)), str(jnp.dtype(jnp.result_type(x)))) for p, x in items]
        problem = _mismatch(saved, wanted, f"export at {path}")
        if problem:
            raise ValueError(f"{who}: the export does not match `like`: {problem}")
        default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = _paths.nest({p: jax.ShapeDtypeStruct(s, d, sharding=default) for p, s, d in wanted})
        flat = _paths.unnest(ckptr.restore(path, target), [p for p, _ in items])
    return jax.tree_util.tree_unflatten(treedef, [flat[p] for p, _ in items])
