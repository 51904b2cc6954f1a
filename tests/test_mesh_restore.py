"""A checkpoint written from a state sharded on 8 devices (2x4, data x model) restores onto 4 devices (1x4),
onto 1 device and back onto 8 (8x1) with bitwise identical values and the shardings the new rules ask for.
One subprocess with 8 simulated CPU devices runs every check."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

CODE = textwrap.dedent("""
    import json, sys, tempfile
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import PartitionSpec as P
    import hyperjax as hj, hyperjax.sharding as hjs
    assert jax.device_count() == 8
    spec = hj.testing.mlp_spec((16, 32, 8))
    hnet = hj.generators.chunked(spec, chunk_size=12, cond_dim=4, num_conds=2, hidden=16)    # 68 chunks
    opt = optax.adam(1e-2)
    make = lambda: hj.training.init_state(hnet.init(jax.random.key(0)), opt, jax.random.key(1))
    rules = [("*embedding/chunk_emb", P("model", None)), ("*hyper/mlp/1/w", P(None, "model")),
             ("*hyper/mlp/0/w", P(None, "data"))]
    src = hjs.make_mesh(2, 4)
    state = hjs.place(jax.jit(make)(), src, rules, unmatched="ignore")
    def loss_fn(hp, batch, rng):
        x, y = batch
        return jnp.mean((spec.apply(hnet.apply(hp, 1), x) - y) ** 2)
    step = hj.training.make_step(loss_fn, opt, donate=False)
    batch = jax.device_put((jnp.ones((8, 16)), jnp.zeros((8, 8))), hjs.batch_sharding(src))
    state, _ = step(state, batch)                     # a trained state, laid out by the rules (Adam moments too)
    state = hjs.place(state, src, rules, unmatched="ignore")
    assert state.params["embedding"]["chunk_emb"].sharding.spec == P("model", None)
    expected = {p: np.asarray(jax.random.key_data(v) if jnp.issubdtype(v.dtype, jax.dtypes.prng_key) else v)
                for p, v in hj.testing.leaves_with_paths(state)}
    d = tempfile.mkdtemp()
    with hj.checkpoint.manager(d, async_save=False) as mgr:
        hj.checkpoint.save(mgr, 1, state, config={"mesh": hjs.mesh_name(src)})
    out = {}
    abstract = jax.eval_shape(make)
    for name, mesh in [("1x4", hjs.make_mesh(1, 4)), ("1x1", hjs.make_mesh(1, 1)), ("8x1", hjs.make_mesh(8, 1))]:
        with hj.checkpoint.manager(d) as mgr:
            target = hjs.abstract_with_shardings(abstract, mesh, rules, unmatched="ignore")
            got, config = hj.checkpoint.restore(mgr, target)
        assert config == {"mesh": "2x4"}
        bitwise, specs, ndev = True, {}, set()
        for p, v in hj.testing.leaves_with_paths(got):
            raw = np.asarray(jax.random.key_data(v) if jnp.issubdtype(v.dtype, jax.dtypes.prng_key) else v)
            bitwise &= raw.dtype == expected[p].dtype and raw.tobytes() == expected[p].tobytes()
            want = hjs.spec_for(p, tuple(v.shape), mesh, rules)
            assert v.sharding.spec == want, (name, p, v.sharding.spec, want)
            assert v.sharding.mesh.devices.size == mesh.devices.size
            ndev.add(len(v.sharding.device_set))
            if v.sharding.spec != P():
                specs[p] = str(v.sharding.spec)
        out[name] = {"bitwise": bool(bitwise), "sharded": specs, "devices": sorted(ndev)}
        # the restored state trains on its new mesh
        b = jax.device_put((jnp.ones((8, 16)), jnp.zeros((8, 8))), hjs.batch_sharding(mesh))
        _, m = step(got, b)
        out[name]["loss"] = float(m["loss"])
    print("RESULT " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def restored():
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8".strip(),
               JAX_PLATFORMS="cpu")   # keeps the suite's compile flags (tests/conftest.py)
    proc = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))[len("RESULT "):])


@pytest.mark.parametrize("mesh,devices", [("1x4", 4), ("1x1", 1), ("8x1", 8)])
def test_restore_onto_another_mesh_is_bitwise(restored, mesh, devices):
    row = restored[mesh]
    assert row["bitwise"], row
    assert max(row["devices"]) == devices
    # the rules' shardings on the new mesh: chunk embeddings over "model" (size 4 / 1 / 1), the first
    # generator layer over "data" where it divides
    assert row["sharded"]["params/embedding/chunk_emb"] == "P('model', None)"
    assert row["sharded"]["params/hyper/mlp/0/w"] == "P(None, 'data')"
    assert restored["1x4"]["loss"] == pytest.approx(row["loss"], rel=1e-5)
