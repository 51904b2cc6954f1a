"""hyperjax.checkpoint: bitwise resume in a fresh process, tying survives restore, retention, mismatch errors,
a save killed mid-write, export readable by orbax alone."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hyperjax as hj
from hyperjax.testing import leaves_with_paths

# The run both processes build: a tied linen autoencoder whose encoder kernel is generated from a task id
# (dense hypernetwork, partial generation), the rest ordinary params, three Optax groups, input noise from
# the state's RNG key (so a badly restored key changes the result).
COMMON = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax, flax.linen as nn
    import hyperjax as hj
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    jax.config.update("jax_numpy_rank_promotion", "raise")

    class AE(nn.Module):
        hidden: int = 3
        @nn.compact
        def __call__(self, x):
            return nn.Dense(6, name="dec")(nn.tanh(nn.Dense(self.hidden, name="enc")(x)))

    def build(config):
        spec = hj.targets.from_linen(AE(config["hidden"]), jnp.ones((1, 6)))
        tied = hj.tie(spec, source="enc/kernel", dest="dec/kernel", fn=jnp.transpose)
        hnet = hj.generators.partial(hj.generators.dense, tied, where="enc/kernel", cond_dim=config["cond_dim"],
                                     hidden=4, num_conds=2)
        opt = hj.training.multi_optimizer({"hyper": optax.adam(config["lr"]), "direct": optax.sgd(0.1, momentum=0.9),
                                           "embedding": optax.adam(config["lr"])})
        def loss_fn(hp, batch, rng):
            x, task = batch
            noisy = x + 0.1 * jax.random.normal(rng, x.shape)
            return jnp.mean((tied.apply(hnet.apply(hp, task), noisy) - x) ** 2)
        step = hj.training.make_step(loss_fn, opt)
        def init():
            return hj.training.init_state(hnet.init(jax.random.key(config["seed"])), opt,
                                          jax.random.key(config["seed"] + 1))
        return init, step

    def batch(i):
        return jax.random.normal(jax.random.key(100 + i), (8, 6)), jnp.asarray(i % 2, jnp.int32)
""")

RESUME = COMMON + textwrap.dedent("""
    import sys
    mgr = hj.checkpoint.manager(sys.argv[1])
    config = hj.checkpoint.load_config(mgr)          # rebuild from the stored config, then restore
    init, step = build(config)
    state, _ = hj.checkpoint.restore(mgr, jax.eval_shape(init))
    assert int(state.step) == 10, state.step
    for i in range(10, 20):
        state, _ = step(state, batch(i))
    leaves = [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
              for x in jax.tree.leaves(state)]
    np.savez(sys.argv[2], *leaves)
    print("RESUMED_OK")
""")

KILLED_SAVE = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np
    import hyperjax as hj
    rng = np.random.default_rng(0)
    big = {f"w{i}": jnp.asarray(rng.standard_normal(1 << 20, dtype=np.float32)) for i in range(32)}  # 128 MiB
    mgr = hj.checkpoint.manager(sys.argv[1], async_save=False)
    print("SAVING", flush=True)
    hj.checkpoint.save(mgr, 2, {"big": big, "rng": jax.random.key(5)})
    print("SAVED", flush=True)
""")

CONFIG = {"hidden": 3, "cond_dim": 4, "lr": 0.01, "seed": 0}


def _ns():
    ns = {}
    exec(COMMON, ns)   # noqa: S102 - the same source the subprocesses run
    return ns


def _np_leaves(tree):
    return [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
            for x in jax.tree.leaves(tree)]


def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.getcwd())


# ------------------------------------------------------------------------------------------------ resume
def test_resume_in_fresh_process_is_bitwise_equal(tmp_path):
    ns = _ns()
    init, step = ns["build"](CONFIG)
    ref = init()
    for i in range(20):
        ref, _ = step(ref, ns["batch"](i))
    state = init()
    for i in range(10):
        state, _ = step(state, ns["batch"](i))
    with hj.checkpoint.manager(tmp_path / "ckpt", async_save=True) as mgr:
        hj.checkpoint.save(mgr, 10, state, config=CONFIG)
        state, _ = step(state, ns["batch"](10))   # donates the saved buffers while the async write runs
        mgr.wait()
    out = subprocess.run([sys.executable, "-c", RESUME, str(tmp_path / "ckpt"), str(tmp_path / "resumed.npz")],
                         capture_output=True, text=True, timeout=300, env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    assert "RESUMED_OK" in out.stdout
    with np.load(tmp_path / "resumed.npz") as z:
        resumed = [z[f"arr_{i}"] for i in range(len(z.files))]
    expected = _np_leaves(ref)
    assert len(resumed) == len(expected)
    for a, b in zip(resumed, expected):
        assert a.dtype == b.dtype and np.array_equal(a, b)   # bitwise: params, optimizer state, step, RNG key


# ------------------------------------------------------------------------------------------------ tying survives
def test_tied_parameter_is_one_leaf_after_restore_and_update_moves_both_layers(tmp_path):
    ns = _ns()
    spec = hj.targets.from_linen(ns["AE"](3), jnp.ones((1, 6)))
    tied = hj.tie(spec, source="enc/kernel", dest="dec/kernel", fn=jnp.transpose)
    opt = optax.sgd(0.1)
    make = lambda: hj.training.init_state(tied.init(jax.random.key(0)), opt, jax.random.key(1))   # noqa: E731
    state = make()
    x = jax.random.normal(jax.random.key(2), (8, 6))
    before = tied.apply(state.params, x)
    with hj.checkpoint.manager(tmp_path, async_save=False) as mgr:
        hj.checkpoint.save(mgr, 0, state)
        restored, config = hj.checkpoint.restore(mgr, jax.eval_shape(make))
    assert config is None
    paths = [p for p, _ in leaves_with_paths(restored.params)]
    assert paths == ["dec/bias", "enc/bias", "enc/kernel"]               # the shared kernel is stored once
    assert hj.training.count_params(restored.params) == spec.size - 3 * 6
    np.testing.assert_array_equal(tied.apply(restored.params, x), before)
    step = hj.training.make_step(lambda p, b, r: jnp.mean((tied.apply(p, b) - b) ** 2), opt)
    updated, _ = step(restored, x)
    full_old, full_new = tied.expand(state.params), tied.expand(updated.params)
    for layer in ("enc", "dec"):
        assert float(jnp.abs(full_new[layer]["kernel"] - full_old[layer]["kernel"]).min()) > 0, layer
    np.testing.assert_array_equal(full_new["dec"]["kernel"], full_new["enc"]["kernel"].T)


# ------------------------------------------------------------------------------------------------ retention
@pytest.mark.parametrize("mode,values,best", [("min", [5.0, 1.0, 4.0, 3.0, 6.0, 7.0], 2),
                                              ("max", [0.1, 0.2, 0.9, 0.3, 0.2, 0.1], 3)])
def test_keeps_last_n_and_best(tmp_path, mode, values, best):
    mgr = hj.checkpoint.manager(tmp_path, max_to_keep=2, best_metric="val", best_mode=mode, async_save=True)
    for s, v in enumerate(values, start=1):
        hj.checkpoint.save(mgr, s, {"w": jnp.full((3,), float(s))}, config={"s": s}, metrics={"val": v, "acc": 1.0})
    mgr.wait()
    assert mgr.all_steps() == sorted({best, 5, 6})
    assert mgr.best_step() == best and mgr.latest_step() == 6
    state, config = hj.checkpoint.restore(mgr, {"w": jax.ShapeDtypeStruct((3,), jnp.float32)}, best=True)
    np.testing.assert_array_equal(state["w"], np.full(3, float(best), np.float32))
    assert config == {"s": best} and hj.checkpoint.metrics(mgr, best)["val"] == values[best - 1]
    assert hj.checkpoint.load_config(mgr) == {"s": 6}
    mgr.close()


@pytest.mark.parametrize("read", ["restore", "load_config", "metrics"])
def test_reads_right_after_an_async_save_see_it(tmp_path, read):
    """No explicit wait: every read through the manager first awaits its own saves still in flight."""
    tree = {"w": jnp.arange(200_000, dtype=jnp.float32)}
    with hj.checkpoint.manager(tmp_path, async_save=True) as mgr:
        hj.checkpoint.save(mgr, 1, tree, config={"c": 1}, metrics={"m": 2.0})
        if read == "restore":
            back, config = hj.checkpoint.restore(mgr, jax.eval_shape(lambda: tree))
            np.testing.assert_array_equal(back["w"], tree["w"])
            assert config == {"c": 1}
        elif read == "load_config":
            assert hj.checkpoint.load_config(mgr) == {"c": 1}
        else:
            assert hj.checkpoint.metrics(mgr) == {"m": 2.0}


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shapes=st.lists(st.lists(st.integers(1, 3), max_size=3), min_size=1, max_size=4),
       dtype=st.sampled_from(["float32", "bfloat16", "int32"]), with_key=st.booleans(), nested=st.booleans())
def test_save_restore_round_trip(tmp_path_factory, shapes, dtype, with_key, nested):
    rng = np.random.default_rng(len(shapes))
    leaves = {f"l{i}": jnp.asarray(rng.normal(size=s) * 10).astype(dtype) for i, s in enumerate(shapes)}
    tree = {"a": leaves, "t": (leaves["l0"], [leaves["l0"]])} if nested else leaves
    if with_key:
        tree = {"tree": tree, "rng": jax.random.key(7)}
    with hj.checkpoint.manager(tmp_path_factory.mktemp("rt"), async_save=False) as mgr:
        hj.checkpoint.save(mgr, 3, tree)
        back, _ = hj.checkpoint.restore(mgr, jax.eval_shape(lambda: tree))
    assert jax.tree.structure(back) == jax.tree.structure(tree)
    for a, b in zip(_np_leaves(back), _np_leaves(tree)):
        assert a.dtype == b.dtype and np.array_equal(a, b)


# ------------------------------------------------------------------------------------------------ errors
def _saved_run(tmp_path):
    ns = _ns()
    init, _ = ns["build"](CONFIG)
    mgr = hj.checkpoint.manager(tmp_path, async_save=False)
    hj.checkpoint.save(mgr, 1, init(), config=CONFIG)
    return ns, mgr


@pytest.mark.parametrize("change,match", [
    ({"hidden": 4}, r"leaf 'params/direct/enc/bias' is \(3,\) float32 in the checkpoint step 1 in .* but \(4,\) float32"),
    ({"cond_dim": 5}, r"leaf 'params/embedding/cond_emb' is \(2, 4\) float32 in the checkpoint step 1 in .* but \(2, 5\) float32"),
])
def test_restore_into_mismatched_shapes_names_first_path(tmp_path, change, match):
    ns, mgr = _saved_run(tmp_path)
    init, _ = ns["build"]({**CONFIG, **change})
    with pytest.raises(ValueError, match=r"the checkpoint does not match the abstract state: " + match):
        hj.checkpoint.restore(mgr, jax.eval_shape(init))


def test_restore_first_differing_path_is_exact(tmp_path):
    mgr = hj.checkpoint.manager(tmp_path, async_save=False)
    hj.checkpoint.save(mgr, 1, {"a": {"k": jnp.zeros((2, 3))}, "b": jnp.zeros(4), "c": jnp.zeros(1)})
    abstract = {"a": {"k": jax.ShapeDtypeStruct((2, 3), jnp.float32)}, "b": jax.ShapeDtypeStruct((5,), jnp.float32),
                "c": jax.ShapeDtypeStruct((2,), jnp.float32)}
    with pytest.raises(ValueError, match=r"leaf 'b' is \(4,\) float32 in the checkpoint step 1 in .* but \(5,\) "
                                         r"float32 in the abstract state"):
        hj.checkpoint.restore(mgr, abstract)
    with pytest.raises(ValueError, match=r"leaf 'a/bias' of the abstract state is not in the checkpoint"):
        hj.checkpoint.restore(mgr, {**abstract, "a": {"bias": jax.ShapeDtypeStruct((3,), jnp.float32),
                                                      "k": abstract["a"]["k"]}})
    with pytest.raises(ValueError, match=r"leaf 'c' \(1,\) float32 of the checkpoint step 1 .* is not in the abstract"):
        hj.checkpoint.restore(mgr, {"a": abstract["a"], "b": jax.ShapeDtypeStruct((4,), jnp.float32)})
    with pytest.raises(ValueError, match=r"leaf 'b' is \(4,\) float32 in the checkpoint .* but \(4,\) bfloat16"):
        hj.checkpoint.restore(mgr, {**abstract, "b": jax.ShapeDtypeStruct((4,), jnp.bfloat16)})
    with pytest.raises(ValueError, match=r"leaf 'rng' of the abstract state is not in the checkpoint"):
        hj.checkpoint.restore(mgr, {"a": abstract["a"], "b": jax.ShapeDtypeStruct((4,), jnp.float32),
                                    "c": jax.ShapeDtypeStruct((1,), jnp.float32),
                                    "rng": jax.eval_shape(lambda: jax.random.key(0))})


def test_structure_check_reads_orbax_metadata_in_a_fresh_manager(tmp_path):
    """No hand-kept manifest: the saved shapes and dtypes come from Orbax's item metadata, also for a manager
    opened afresh on the directory (as a resumed run does)."""
    tree = {"a": {"k": jnp.zeros((2, 3))}, "b": jnp.zeros(4, jnp.bfloat16), "rng": jax.random.key(1)}
    with hj.checkpoint.manager(tmp_path, async_save=True) as mgr:
        hj.checkpoint.save(mgr, 1, tree, metrics={"loss": 0.25})
    items = {n for n in os.listdir(tmp_path / "1") if os.path.isdir(tmp_path / "1" / n)}
    assert items == {"config", "state"}                                       # no hand-kept "meta" manifest
    with hj.checkpoint.manager(tmp_path, async_save=False) as fresh:
        md = fresh.orbax.metadata(1)
        saved = {p: (tuple(m.shape), str(m.dtype)) for p, m in leaves_with_paths(md.item_metadata["state"].tree)}
        assert saved == {"a/k": ((2, 3), "float32"), "b": ((4,), "bfloat16"), "rng": ((2,), "uint32")}
        assert md.custom_metadata["prng_keys"] == {"rng": str(jax.random.key_impl(tree["rng"]))} and hj.checkpoint.metrics(fresh) == {"loss": 0.25}
        abstract = jax.eval_shape(lambda: tree)
        with pytest.raises(ValueError, match=r"^hyperjax.checkpoint.restore: the checkpoint does not match the "
                                             r"abstract state: leaf 'b' is \(4,\) bfloat16 in the checkpoint step 1"):
            hj.checkpoint.restore(fresh, {**abstract, "b": jax.ShapeDtypeStruct((4,), jnp.float32)})
        back, _ = hj.checkpoint.restore(fresh, abstract)
    for a, b in zip(_np_leaves(back), _np_leaves(tree)):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_a_step_not_saved_by_hyperjax_is_named(tmp_path):
    with ocp.CheckpointManager(tmp_path, options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False),
                               item_names=("state",)) as plain:
        plain.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave({"w": jnp.zeros(2)})))
    with hj.checkpoint.manager(tmp_path, async_save=False) as mgr:
        with pytest.raises(ValueError, match=r"step 3 in .* was not written by hyperjax.checkpoint.save"):
            hj.checkpoint.restore(mgr, {"w": jax.ShapeDtypeStruct((2,), jnp.float32)})


def test_api_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown `best_mode`='low'; valid options are 'min', 'max'"):
        hj.checkpoint.manager(tmp_path, best_mode="low")
    with pytest.raises(ValueError, match=r"`max_to_keep` must be a positive int or None"):
        hj.checkpoint.manager(tmp_path, max_to_keep=0)
    with pytest.raises(TypeError, match=r"^hyperjax.checkpoint.manager: `max_to_keep` must be a positive int or None "
                                        r"\(keep all\), got str"):
        hj.checkpoint.manager(tmp_path, max_to_keep="3")
    with pytest.raises(TypeError, match=r"`keep_best` must be a positive int, got float"):
        hj.checkpoint.manager(tmp_path, keep_best=1.0)
    with pytest.raises(ValueError, match=r"`save_interval_steps` must be a positive int, got 0"):
        hj.checkpoint.manager(tmp_path, save_interval_steps=0)
    with pytest.raises(TypeError, match=r"`best_metric` must be a metric name \(str\) or None, got int"):
        hj.checkpoint.manager(tmp_path, best_metric=1)
    mgr = hj.checkpoint.manager(tmp_path / "m", best_metric="val_loss", async_save=False)
    with pytest.raises(FileNotFoundError, match=r"no completed checkpoint in .*m"):
        hj.checkpoint.restore(mgr, {"w": jax.ShapeDtypeStruct((1,), jnp.float32)})
    with pytest.raises(ValueError, match=r"keeps the best steps by 'val_loss', so `metrics` must contain it; got \['loss'\]"):
        hj.checkpoint.save(mgr, 1, {"w": jnp.zeros(1)}, metrics={"loss": 1.0})
    with pytest.raises(TypeError, match=r"`config` must be JSON-serialisable"):
        hj.checkpoint.save(mgr, 1, {"w": jnp.zeros(1)}, config={"x": jnp.zeros(2)}, metrics={"val_loss": 1.0})
    with pytest.raises(TypeError, match=r"^hyperjax.checkpoint.save: `metrics` must be a dict of numbers"):
        hj.checkpoint.save(mgr, 1, {"w": jnp.zeros(1)}, metrics={"val_loss": "low"})
    with pytest.raises(TypeError, match=r"`mgr` must come from hyperjax.checkpoint.manager"):
        hj.checkpoint.save(mgr.orbax, 1, {"w": jnp.zeros(1)})
    with pytest.raises(ValueError, match=r"two leaves of the state have the same path 'a/b'"):
        hj.checkpoint.save(mgr, 1, {"a/b": jnp.zeros(1), "a": {"b": jnp.zeros(1)}}, metrics={"val_loss": 1.0})
    hj.checkpoint.save(mgr, 1, {"w": jnp.zeros(1)}, metrics={"val_loss": 1.0})
    with pytest.raises(FileNotFoundError, match=r"no completed checkpoint for step 7 .* available steps: \[1\]"):
        hj.checkpoint.restore(mgr, {"w": jax.ShapeDtypeStruct((1,), jnp.float32)}, step=7)
    mgr.close()


# ------------------------------------------------------------------------------------------------ killed save
def test_save_killed_mid_write_keeps_previous_checkpoint(tmp_path):
    directory = tmp_path / "ckpt"
    state = {"w": jnp.arange(12.0).reshape(3, 4), "step": jnp.asarray(1, jnp.int32), "rng": jax.random.key(3)}
    with hj.checkpoint.manager(directory, async_save=False) as mgr:
        hj.checkpoint.save(mgr, 1, state, config={"note": "first"}, metrics={"loss": 0.5})
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(directory)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=_env())
    try:
        assert proc.stdout.readline().strip() == "SAVING"
        deadline, tmp_seen = time.time() + 120, None
        while tmp_seen is None and time.time() < deadline and proc.poll() is None:
            tmp_seen = next((n for n in os.listdir(directory) if n.startswith("2.") and "tmp" in n), None)
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert tmp_seen is not None, "the child finished before its temporary directory was seen"
    assert proc.returncode == -signal.SIGKILL
    assert os.path.isdir(directory / tmp_seen)                      # killed mid-write: never renamed to '2'
    assert not os.path.exists(directory / "2")
    with hj.checkpoint.manager(directory, async_save=False) as mgr:
        assert mgr.all_steps() == [1]                                # the partial step is not listed
        back, config = hj.checkpoint.restore(mgr, jax.eval_shape(lambda: state))
        assert config == {"note": "first"} and hj.checkpoint.metrics(mgr) == {"loss": 0.5}
        for a, b in zip(_np_leaves(back), _np_leaves(state)):
            assert np.array_equal(a, b)
        hj.checkpoint.save(mgr, 2, state)                            # the directory is usable again
        assert mgr.all_steps() == [1, 2] and not os.path.exists(directory / tmp_seen)   # stale tmp removed


# ------------------------------------------------------------------------------------------------ export
def test_export_loads_with_orbax_alone(tmp_path, key):
    ns = _ns()
    spec = hj.targets.from_linen(ns["AE"](3), jnp.ones((1, 6)))
    hnet = hj.generators.dense(spec, cond_dim=4, hidden=8)
    params = hnet.apply(hnet.init(key), jnp.ones(4))
    path = hj.checkpoint.export(tmp_path / "exported", params)
    loaded = ocp.StandardCheckpointer().restore(path)      # no hyperjax involved in reading
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, loaded), jax.tree.map(np.asarray, params))
    x = jnp.ones((2, 6))
    np.testing.assert_array_equal(spec.apply(jax.tree.map(jnp.asarray, loaded), x), spec.apply(params, x))
    with pytest.raises(FileExistsError, match=r"exists; pass overwrite=True"):
        hj.checkpoint.export(path, params)
    hj.checkpoint.export(path, jax.tree.map(jnp.zeros_like, params), overwrite=True)
    assert float(np.abs(ocp.StandardCheckpointer().restore(path)["enc"]["kernel"]).sum()) == 0.0


def test_export_equinox_and_load_back_into_its_structure(tmp_path, key):
    import equinox as eqx
    spec = hj.targets.from_equinox(eqx.nn.MLP(3, 2, 4, 1, key=key))
    params = spec.init(key)
    path = hj.checkpoint.export(tmp_path / "eqx", params)
    raw = ocp.StandardCheckpointer().restore(path)
    assert sorted(raw["layers"]) == ["0", "1"] and raw["layers"]["0"]["weight"].shape == (4, 3)
    back = hj.checkpoint.load_export(path, spec)
    chex.assert_trees_all_equal(back, params)
    np.testing.assert_array_equal(spec.apply(back, jnp.ones(3)), spec.apply(params, jnp.ones(3)))
    other = hj.targets.from_equinox(eqx.nn.MLP(3, 2, 5, 1, key=key))
    with pytest.raises(ValueError, match=r"leaf 'layers/0/weight' is \(4, 3\) float32 in the export at .* but \(5, 3\) float32"):
        hj.checkpoint.load_export(path, other)
    with pytest.raises(TypeError, match=r"leaf 'rng' is a PRNG key, not a parameter"):
        hj.checkpoint.export(tmp_path / "k", {"w": jnp.zeros(1), "rng": jax.random.key(0)})


def test_restore_follows_abstract_shardings(tmp_path):
    mesh = jax.make_mesh((1,), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    with hj.checkpoint.manager(tmp_path, async_save=False) as mgr:
        hj.checkpoint.save(mgr, 0, {"w": jnp.arange(4.0)})
        back, _ = hj.checkpoint.restore(mgr, {"w": jax.ShapeDtypeStruct((4,), jnp.float32, sharding=sharding)})
        plain, _ = hj.checkpoint.restore(mgr, {"w": jax.ShapeDtypeStruct((4,), jnp.float32)})
    assert back["w"].sharding == sharding and isinstance(plain["w"], jax.Array)
    np.testing.assert_array_equal(back["w"], np.arange(4.0, dtype=np.float32))


# ------------------------------------------------------------------------------------------------ export of a tied spec
def test_export_with_target_writes_every_leaf_of_a_tied_model(tmp_path, key):
    """A tied spec's params hold only the free leaves; target=tied exports the whole model for plain Orbax."""
    ns = _ns()
    spec = hj.targets.from_linen(ns["AE"](3), jnp.ones((1, 6)))
    tied = hj.tie(spec, source="enc/kernel", dest="dec/kernel", fn=jnp.transpose)
    hnet = hj.generators.dense(tied, cond_dim=4, hidden=8)
    free = hnet.apply(hnet.init(key), jnp.ones(4))
    assert "kernel" not in free["dec"]
    partial = ocp.StandardCheckpointer().restore(hj.checkpoint.export(tmp_path / "free", free))
    assert "kernel" not in partial["dec"]                       # without target=: only the free leaves
    path = hj.checkpoint.export(tmp_path / "full", free, target=tied)
    loaded = ocp.StandardCheckpointer().restore(path)          # orbax alone, no hyperjax
    assert sorted(leaves_with_paths(loaded)[i][0] for i in range(len(spec.paths))) == sorted(spec.paths)
    np.testing.assert_array_equal(loaded["dec"]["kernel"], np.asarray(free["enc"]["kernel"]).T)
    x = jax.random.normal(key, (4, 6))
    np.testing.assert_array_equal(spec.apply(jax.tree.map(jnp.asarray, loaded), x), tied.apply(free, x))
    chex.assert_trees_all_equal(hj.checkpoint.load_export(path, tied), free)       # back to the free leaves
    chex.assert_trees_all_equal(hj.checkpoint.load_export(path, spec), tied.expand(free))
    chex.assert_trees_all_equal(hj.checkpoint.load_export(tmp_path / "free", tied), free)
    hj.checkpoint.export(tmp_path / "plain", tied.expand(free), target=spec)        # any spec: checked only
    with pytest.raises(ValueError, match=r"^hyperjax.checkpoint.export: params tree does not match the target "
                                         r"\(unexpected: dec/kernel\)"):
        hj.checkpoint.export(tmp_path / "bad", tied.expand(free), target=tied)
    with pytest.raises(TypeError, match=r"`target` must be the TargetSpec the params are for .* got dict"):
        hj.checkpoint.export(tmp_path / "bad", free, target={"enc": 1})


# ------------------------------------------------------------------------------------------------ donation
def test_donated_arrays_are_named_by_export_and_save(tmp_path):
    """Generated params share arrays with the state (a direct leaf is the same object); a donating step
    deletes them, and export/save say so naming the leaf instead of a raw deleted-buffer error."""
    spec = hj.testing.mlp_spec()
    tied = hj.tie(spec, source="Dense_0/bias", dest="Dense_1/bias", fn=lambda b: b[:3])
    opt = optax.adam(1e-3)
    loss = lambda hn, t=spec: (lambda hp, b, r: jnp.mean(t.apply(hn.apply(hp, jnp.ones(3)), b) ** 2))   # noqa: E731
    hnet = hj.generators.partial(hj.generators.dense, spec, where="*/kernel", cond_dim=3, hidden=4)
    state = hj.training.init_state(hnet.init(jax.random.key(0)), opt)
    params = hnet.apply(state.params, jnp.ones(3))
    assert params["Dense_0"]["bias"] is state.params["direct"]["Dense_0"]["bias"]   # the alias
    new, _ = hj.training.make_step(loss(hnet), opt)(state, jnp.ones((2, 5)))
    donation = (r"has been deleted: its buffer was donated to a jitted step\. hj.training.make_step donates its "
                r"input state .* hnet.apply\(state.params, cond\)\), or build the step with "
                r"make_step\(\.\.\., donate=False\)\.$")
    with pytest.raises(ValueError, match=r"^hyperjax.checkpoint.export: leaf 'Dense_0/bias' of the params " + donation):
        hj.checkpoint.export(tmp_path / "x", params)
    with hj.checkpoint.manager(tmp_path / "ckpt", async_save=False) as mgr:
        with pytest.raises(ValueError, match=r"^hyperjax.checkpoint.save: leaf 'step' of the state " + donation):
            hj.checkpoint.save(mgr, 1, state)
        assert mgr.all_steps() == []
        hj.checkpoint.save(mgr, 1, new)                                              # the returned state is fine
    hj.checkpoint.export(tmp_path / "x", hnet.apply(new.params, jnp.ones(3)))       # regenerated params are fine
    tnet = hj.generators.partial(hj.generators.dense, tied, where="*/kernel", cond_dim=3, hidden=4)
    st = hj.training.init_state(tnet.init(jax.random.key(0)), opt)
    free = tnet.apply(st.params, jnp.ones(3))
    hj.training.make_step(loss(tnet, tied), opt)(st, jnp.ones((2, 5)))
    with pytest.raises(ValueError, match=r"^hyperjax.checkpoint.export: leaf 'Dense_0/bias' of the params " + donation):
        hj.checkpoint.export(tmp_path / "t", free, target=tied)                     # found before expand runs
    kept = hj.training.init_state(hnet.init(jax.random.key(0)), opt)
    params = hnet.apply(kept.params, jnp.ones(3))
    hj.training.make_step(loss(hnet), opt, donate=False)(kept, jnp.ones((2, 5)))
    hj.checkpoint.export(tmp_path / "kept", params)                                 # donate=False keeps them


def test_zero_size_leaves_round_trip_and_export_refuses_them(tmp_path):
    tree = {"w": jnp.arange(3.0), "none": jnp.zeros((0, 4), jnp.bfloat16), "k": jax.random.key(0)}
    with hj.checkpoint.manager(tmp_path / "c", async_save=False) as mgr:
        hj.checkpoint.save(mgr, 1, tree)
        back, _ = hj.checkpoint.restore(mgr, jax.eval_shape(lambda: tree))
        assert back["none"].shape == (0, 4) and back["none"].dtype == jnp.bfloat16
        np.testing.assert_array_equal(back["w"], tree["w"])
        with pytest.raises(ValueError, match=r"leaf 'none' is \(0, 4\) bfloat16 in the checkpoint step 1 .* but "
                                             r"\(0, 5\) bfloat16"):
            hj.checkpoint.restore(mgr, {**jax.eval_shape(lambda: tree), "none": jax.ShapeDtypeStruct((0, 5), jnp.bfloat16)})
    with pytest.raises(ValueError, match=r"export: leaf 'none' has zero size \(0, 4\); Orbax cannot store"):
        hj.checkpoint.export(tmp_path / "e", {"w": tree["w"], "none": tree["none"]})
