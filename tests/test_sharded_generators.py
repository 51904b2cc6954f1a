"""Every generator kind under an 8-device data x model mesh (simulated CPU devices, one subprocess for the
whole table) agrees with the single-device run to float32 tolerance: the losses and every params leaf after
two SGD steps (so every gradient leaf). Model-parallel rules shard chunk / block / feature embeddings over
"model", the generated leaves are constrained over "model", conds and inputs are split over "data"."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

# one 8-device subprocess compiling every generator twice (~30-80 s): the multi-device profile, HYPERJAX_SLOW=1
pytestmark = pytest.mark.slow

KINDS = ["dense", "chunked", "per_layer", "low_rank", "scale_modulation", "rowwise", "codebook", "from_module"]

CODE = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np, optax, flax.linen as nn
    from jax.sharding import PartitionSpec as P
    import hyperjax as hj, hyperjax.sharding as hjs
    assert jax.device_count() == 8, jax.devices()
    spec = hj.testing.mlp_spec((16, 32, 32, 8))          # linen MLP 16 -> 32 -> 32 -> 8

    class Body(nn.Module):
        @nn.compact
        def __call__(self, c):
            return nn.Dense(hj.generators.num_outputs(spec))(nn.tanh(nn.Dense(16)(c)))

    G = hj.generators
    FACTORIES = {
        "dense": lambda: G.dense(spec, cond_dim=4, num_conds=8, hidden=16),
        "chunked": lambda: G.chunked(spec, chunk_size=39, cond_dim=4, num_conds=8, hidden=16),   # 48 chunks
        "per_layer": lambda: G.per_layer(spec, where="*/kernel", block=(8, 8), cond_dim=4, num_conds=8),
        "low_rank": lambda: G.low_rank(spec, rank=2, cond_dim=4, num_conds=8),
        "scale_modulation": lambda: G.scale_modulation(spec, cond_dim=4, num_conds=8),
        "rowwise": lambda: G.rowwise(spec, where="Dense_0/kernel", emb_dim=4, cond_dim=4, num_conds=8),
        "codebook": lambda: G.codebook(spec, num_values=8),
        "from_module": lambda: G.from_module(Body(), spec, cond_dim=4, num_conds=8),
    }
    x = jax.random.normal(jax.random.key(1), (32, 16)); y = jnp.arange(32) % 8; task = jnp.arange(32) % 8
    opt = optax.sgd(0.05)          # SGD: the params after a step carry the gradient itself
    mesh = hjs.make_mesh(2, 4)
    def compare(hnet, loss_fn):
        hp = jax.jit(hnet.init)(jax.random.key(0))
        batch = (x, y, task)
        step = hj.training.make_step(loss_fn, opt, donate=False)
        ref = hj.training.init_state(hp, opt, jax.random.key(2))
        ref_losses = []
        for _ in range(2):
            ref, m = step(ref, batch)
            ref_losses.append(float(m["loss"]))
        hp_s = hjs.place(hp, mesh, hjs.model_parallel_rules(), unmatched="ignore")
        batch_s = jax.device_put(batch, hjs.batch_sharding(mesh))
        with jax.set_mesh(mesh):
            step_s = hj.training.make_step(lambda h, b, r: loss_fn(h, b, r, sharded=True), opt, donate=False)
            st = hj.training.init_state(hp_s, opt, jax.random.key(2))
            losses = []
            for _ in range(2):
                st, m = step_s(st, batch_s)
                losses.append(float(m["loss"]))
        sharded = [p for p, leaf in hj.testing.leaves_with_paths(hp_s) if not leaf.sharding.is_fully_replicated]
        a, b = jax.tree.leaves(st.params), jax.tree.leaves(ref.params)
        assert len(a) == len(b)
        for u, v in zip(a, b):        # after two SGD steps: each gradient leaf agrees to float32 tolerance
            np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
        assert all(len(l.sharding.device_set) == 8 for l in a)
        diff = max(float(np.max(np.abs(np.asarray(u) - np.asarray(v)))) for u, v in zip(a, b))
        moved = min(float(np.max(np.abs(np.asarray(u) - np.asarray(w))))
                    for u, w in zip(a, jax.tree.leaves(hp)))
        return {"losses": losses, "ref_losses": ref_losses, "params_max_diff": diff, "min_leaf_update": moved,
                "sharded_hparams": sharded}

    out = {}
    for kind in sys.argv[1:]:
        hnet = FACTORIES[kind]()
        static = kind == "codebook"
        gen_rules = hjs.largest_axis_rules(spec, mesh, min_size=64)

        def loss_fn(hp, batch, rng, sharded=False):
            xb, yb, tb = batch
            gen = lambda t: hnet.apply(hp) if static else hnet.apply(hp, t)
            if static:
                params = gen(None)
                if sharded:
                    params = hjs.constrain(params, gen_rules)
                logits = spec.apply(params, xb)
            else:
                def one(t, xi):
                    params = gen(t)
                    if sharded:
                        params = hjs.constrain(params, gen_rules)
                    return spec.apply(params, xi[None])[0]
                logits = jax.vmap(one)(tb, xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        try:
            out[kind] = compare(hnet, loss_fn)
        except Exception as e:   # reported per kind by the test
            out[kind] = {"error": f"{type(e).__name__}: {str(e)[:3000]}"}
    print("RESULT " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def table():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", CODE, *KINDS], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("kind", KINDS)
def test_sharded_matches_single_device(table, kind):
    row = table[kind]
    print(kind, row)
    assert "error" not in row, row.get("error")
    assert row["params_max_diff"] < 1e-4
    assert row["min_leaf_update"] > 0            # every leaf was trained, so its gradient was compared
    assert abs(row["losses"][1] - row["losses"][0]) > 1e-4       # the second loss saw the first update


def test_model_parallel_rules_shard_the_repeated_axes(table):
    """The chunk, block and feature embeddings are really sharded (not silently replicated)."""
    assert table["chunked"]["sharded_hparams"] == ["embedding/chunk_emb"]
    assert table["per_layer"]["sharded_hparams"] and all(
        p.startswith("embedding/layer_emb/") for p in table["per_layer"]["sharded_hparams"])
    assert table["rowwise"]["sharded_hparams"] == ["embedding/feature_emb"]


# ------------------------------------------------------------------ the new sharding helpers, in-process (1 device)
def test_helpers_on_one_device():
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import PartitionSpec as P

    import hyperjax as hj
    import hyperjax.sharding as hjs

    mesh = hjs.make_mesh(1, 1)
    assert mesh.axis_names == ("data", "model") and hjs.mesh_name(mesh) == "1x1"
    abstract8 = jax.sharding.AbstractMesh((2, 4), ("data", "model"))
    spec = hj.testing.mlp_spec((16, 32, 8))
    rules = hjs.largest_axis_rules(spec, abstract8, min_size=100)
    assert rules == [("Dense_0/kernel", P(None, "model")), ("Dense_1/kernel", P("model", None))]
    assert hjs.largest_axis_rules({"a[0]": np.zeros((8, 3))}, abstract8, min_size=1) == [("a[[]0]", P("model", None))]
    assert hjs.largest_axis_rules({"w": np.zeros((3, 5))}, abstract8, min_size=1) == []      # nothing divides
    f = lambda t: hjs.constrain(t, [("w", P("data"))], mesh=mesh)
    assert "sharding_constraint" in str(jax.make_jaxpr(f)({"w": jnp.ones(4)}))
    assert (np.asarray(jax.jit(f)({"w": jnp.ones(4)})["w"]) == 1).all()
    with jax.set_mesh(mesh):
        assert jax.jit(lambda t: hjs.constrain(t, [("w", P("model"))]))({"w": jnp.ones(4)})["w"].shape == (4,)
    batch = hjs.global_batch((np.ones((4, 2)), np.arange(4)), mesh)
    assert batch[0].sharding.spec == P("data") and batch[1].shape == (4,)


@pytest.mark.parametrize("call,exc,match", [
    (lambda hjs: hjs.make_mesh(2, 4), ValueError, r"make_mesh: a 2x4 mesh needs 8 devices, only 1 available.*"
                                                 r"xla_force_host_platform_device_count=8"),
    (lambda hjs: hjs.make_mesh(0), ValueError, r"make_mesh: `data` must be an int >= 1, got 0"),
    (lambda hjs: hjs.make_mesh(model=2.0), TypeError, r"make_mesh: `model` must be an int >= 1, got float"),
    (lambda hjs: hjs.constrain({"w": np.zeros(2)}, []), ValueError, r"constrain: no `mesh` given and no mesh context"),
    (lambda hjs: hjs.largest_axis_rules({}, hjs.make_mesh(), "tensor"), ValueError,
     r"largest_axis_rules: mesh has no axis 'tensor' \(axes: data, model\)"),
    (lambda hjs: hjs.global_batch({"n": np.float32(3)}, hjs.make_mesh()), ValueError,
     r"global_batch: leaf 'n' is a scalar"),
    (lambda hjs: hjs.initialize("localhost:1", 2, 0, cpu_collectives="nccl"), ValueError,
     r"initialize: unknown `cpu_collectives`='nccl'; valid options are 'gloo', 'mpi'"),
    (lambda hjs: hjs.initialize("localhost:1", 2, 0, local_device_count="4"), TypeError,
     r"initialize: `local_device_count` must be an int >= 1 or None, got str"),
    (lambda hjs: hjs.model_parallel_rules(1), TypeError, r"model_parallel_rules: `axis` must be a mesh axis name"),
], ids=["too-few-devices", "zero", "float", "no-mesh", "no-axis", "scalar-batch", "collectives", "count-type",
        "axis-type"])
def test_helper_errors_name_the_argument(call, exc, match):
    import hyperjax.sharding as hjs

    with pytest.raises(exc, match=r"^hyperjax.sharding." + match):
        call(hjs)
