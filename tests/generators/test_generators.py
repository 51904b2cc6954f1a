"""Shared generator table: output trees match the target, eager == jit, numeric gradients, every leaf learns.

A new generator joins every test here with one row in GENERATORS (kwargs may not include `cond_dim`).
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import hyperjax as hj

COND_DIM = 3
NUM_CONDS = 3
X = jnp.linspace(-1.0, 1.0, 10, dtype=jnp.float32).reshape(2, 5)


def kernels(path, leaf):
    return leaf.ndim == 2


GENERATORS = [
    pytest.param(hj.generators.dense, {"hidden": 8}, id="dense"),
    pytest.param(hj.generators.dense, {"hidden": (), "init": "hyperfan_out"}, id="dense-linear-fan_out"),
    pytest.param(hj.generators.chunked, {"chunk_size": 3, "hidden": 8}, id="chunked-divides"),
    pytest.param(hj.generators.chunked, {"chunk_size": 7, "chunk_emb_dim": 2, "hidden": (4, 4)}, id="chunked-ragged"),
    pytest.param(hj.generators.chunked, {"chunk_size": 100, "hidden": 8}, id="chunked-one-chunk"),
    pytest.param(hj.generators.chunked, {"chunk_size": 5, "hidden": (), "center": False}, id="chunked-linear"),
    pytest.param(hj.generators.dense, {"hidden": 8, "num_conds": NUM_CONDS}, id="dense-ids"),
    pytest.param(hj.generators.chunked, {"chunk_size": 5, "hidden": 8, "num_conds": NUM_CONDS}, id="chunked-ids"),
    pytest.param(hj.generators.dense, {"hidden": 8, "where": "*1/*"}, id="partial-glob"),
    pytest.param(hj.generators.chunked, {"chunk_size": 4, "hidden": 8, "center": False,
                                         "where": ["*/bias", "*/b"]}, id="partial-list-uncentred"),
    pytest.param(hj.generators.dense, {"hidden": 8, "where": kernels}, id="partial-predicate"),
]
# the eager (un-jitted) variants of the slower checks run on one row per kind of generator code path
EAGER = [GENERATORS[i] for i in (0, 3, 7, 9)]


# ------------------------------------------------------------------------------------------------ targets
def _targets():
    """The linen 5 -> 4 -> 3 tanh MLP, the same MLP as a function with a bfloat16 first kernel, an Equinox MLP."""
    import equinox as eqx

    mlp = eqx.nn.MLP(5, 3, 4, 1, activation=jnp.tanh, key=jax.random.key(0))
    return {"linen": (hj.testing.mlp_spec((5, 4, 3), activation=jnp.tanh), X),
            "mixed-bf16": (hj.testing.mixed_dtype_spec((5, 4, 3)), X),
            "equinox": (hj.targets.from_equinox(mlp), X[0])}


_TARGETS = {}
_BUILT = {}


def get_target(name):
    if not _TARGETS:
        _TARGETS.update(_targets())
    return _TARGETS[name]


def built(factory, kwargs, target_name):
    """(spec, x, generator, hparams), built once per (row, target) for the whole module.

    On the linen target hparams come from the jitted `gen.init`; on the others (structure and dtype tests
    only) from `hj.testing.filled(jax.eval_shape(gen.init, key))`, as compiling each init's PRNG calls costs
    ~1 s on CPU.
    The generator uses tanh, so the loss is smooth enough for finite differences (check_grads).
    """
    k = (id(kwargs), target_name)
    if k not in _BUILT:
        spec, x = get_target(target_name)
        gen = factory(spec, cond_dim=COND_DIM, activation=jnp.tanh, **kwargs)
        if target_name == "linen":
            hparams = jax.jit(gen.init)(jax.random.key(0))
        else:
            hparams = hj.testing.filled(jax.eval_shape(gen.init, jax.random.key(0)))
        _BUILT[k] = (spec, x, gen, hparams)
    return _BUILT[k]


def cond_for(kwargs, i=1):
    if kwargs.get("num_conds"):
        return jnp.int32(i % NUM_CONDS)
    return jnp.linspace(-1.0, 1.0, COND_DIM, dtype=jnp.float32) * (i + 1)


def generated(spec, kwargs):
    where = kwargs.get("where")
    return spec.paths if where is None else spec.select(where)


def all_conds(kwargs):
    if kwargs.get("num_conds"):
        return jnp.arange(NUM_CONDS, dtype=jnp.int32)
    return jnp.stack([cond_for(kwargs, i) for i in range(3)])


# ------------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("factory,kwargs,target", [
    *[pytest.param(*row.values, t, id=f"{t}-{row.id}") for t in ("linen", "mixed-bf16") for row in GENERATORS],
    *[pytest.param(*row.values, "equinox", id=f"equinox-{row.id}") for row in EAGER],
])
def test_output_matches_spec(factory, kwargs, target):
    spec, x, gen, hparams = built(factory, kwargs, target)
    params = jax.jit(gen.apply)(hparams, cond_for(kwargs))
    chex.assert_trees_all_equal_shapes_and_dtypes(params, spec.zeros())
    chex.assert_tree_all_finite(params)
    assert bool(jnp.all(jnp.isfinite(spec.apply(params, x))))


@pytest.mark.parametrize("factory,kwargs", GENERATORS)
def test_eager_equals_jit(factory, kwargs):
    """On the mixed-dtype target: eager apply == jitted apply (bfloat16 leaves may round differently)."""
    spec, _, gen, hparams = built(factory, kwargs, "mixed-bf16")
    eager = gen.apply(hparams, cond_for(kwargs))
    chex.assert_trees_all_equal_shapes_and_dtypes(eager, spec.zeros())
    eager, jitted = spec.leaf_dict(eager), spec.leaf_dict(jax.jit(gen.apply)(hparams, cond_for(kwargs)))
    for p, leaf in spec.leaves.items():
        tol = 1e-2 if leaf.dtype == jnp.bfloat16 else 1e-5
        np.testing.assert_allclose(np.asarray(jitted[p], np.float32), np.asarray(eager[p], np.float32),
                                   rtol=tol, atol=tol / 10, err_msg=p)


@pytest.mark.parametrize("factory,kwargs", EAGER)
def test_init_eager_equals_jit(factory, kwargs):
    _, _, gen, hparams = built(factory, kwargs, "linen")
    chex.assert_trees_all_close(gen.init(jax.random.key(0)), hparams, rtol=1e-5, atol=1e-6)


def _loss(factory, kwargs):
    """Smooth scalar loss of the hparams over every cond in all_conds (all embedding rows used)."""
    spec, x, gen, hparams = built(factory, kwargs, "linen")
    conds = all_conds(kwargs)

    def loss(hp):
        ys = jax.vmap(lambda c: spec.apply(gen.apply(hp, c), x))(conds)
        return jnp.sum(jnp.sin(ys))
    return loss, hparams


@pytest.mark.parametrize("factory,kwargs", GENERATORS)
def test_gradients_jit(factory, kwargs):
    """check_grads through generator -> target, and jax.grad reaches every generator weight, every
    embedding row and every ordinary (direct) leaf."""
    loss, hparams = _loss(factory, kwargs)
    loss = jax.jit(loss)
    check_grads(loss, (hparams,), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
    grads = jax.grad(loss)(hparams)
    chex.assert_trees_all_equal_structs(grads, hparams)
    for path, g in hj.testing.leaves_with_paths(grads):
        assert bool(jnp.any(g != 0)), f"no gradient reaches {path}"
        if path.endswith("emb"):
            assert bool(jnp.all(jnp.any(g != 0, axis=1))), f"an embedding row of {path} gets no gradient"
    spec = get_target("linen")[0]
    assert ("direct" in hparams) == (len(generated(spec, kwargs)) < len(spec.paths))


@pytest.mark.parametrize("factory,kwargs", EAGER)
def test_gradients_eager(factory, kwargs):
    loss, hparams = _loss(factory, kwargs)
    check_grads(loss, (hparams,), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
    chex.assert_trees_all_close(jax.grad(loss)(hparams), jax.jit(jax.grad(loss))(hparams), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("factory,kwargs", GENERATORS)
def test_generated_leaves_depend_on_cond_and_direct_leaves_do_not(factory, kwargs):
    spec, _, gen, hparams = built(factory, kwargs, "linen")
    apply = jax.jit(gen.apply)
    a = spec.leaf_dict(apply(hparams, cond_for(kwargs, 0)))
    b = spec.leaf_dict(apply(hparams, cond_for(kwargs, 1)))
    chosen = generated(spec, kwargs)
    for p in spec.paths:
        if p in chosen:
            assert not np.array_equal(a[p], b[p]), p
        else:
            np.testing.assert_array_equal(a[p], hj.testing.leaf_at(hparams["direct"], p))
            np.testing.assert_array_equal(a[p], b[p])


@pytest.mark.parametrize("factory,kwargs", GENERATORS)
def test_vmap_over_conds_equals_a_loop(factory, kwargs):
    spec, _, gen, hparams = built(factory, kwargs, "linen")
    conds = all_conds(kwargs)
    batch = jax.jit(hj.generate_batch, static_argnums=0)(gen, hparams, conds)
    apply = jax.jit(gen.apply)
    loop = [apply(hparams, c) for c in conds]
    chex.assert_trees_all_close(batch, jax.tree.map(lambda *xs: jnp.stack(xs), *loop), rtol=1e-5, atol=1e-6)


def test_dense_param_count_formula(tiny_mlp_spec, key):
    gen = hj.generators.dense(tiny_mlp_spec, cond_dim=4, hidden=(6, 5))
    sizes = (4, 6, 5, tiny_mlp_spec.size)
    want = sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))
    assert hj.training.count_params(jax.eval_shape(gen.init, key)) == want


@pytest.mark.parametrize("chunk_size", [1, 6, 11, 13, 66, 67])
def test_chunk_count_and_param_count(tiny_mlp_spec, key, chunk_size):
    gen = hj.generators.chunked(tiny_mlp_spec, cond_dim=4, chunk_size=chunk_size, chunk_emb_dim=3, hidden=8)
    hp = jax.eval_shape(gen.init, key)
    n_chunks = math.ceil(tiny_mlp_spec.size / chunk_size)
    assert hp["embedding"]["chunk_emb"].shape == (n_chunks, 3)
    assert hp["hyper"]["mlp"][-1]["w"].shape == (8, chunk_size)
    assert hj.training.count_params(hp) == n_chunks * 3 + (4 + 3 + 1) * 8 + (8 + 1) * chunk_size


def test_chunked_is_one_vmapped_mlp_not_a_loop(tiny_mlp_spec, key):
    """The jaxpr holds one dot_general per MLP layer whatever the number of chunks."""
    counts = []
    for chunk_size in (2, 33):
        gen = hj.generators.chunked(tiny_mlp_spec, cond_dim=4, chunk_size=chunk_size, hidden=8)
        jaxpr = jax.make_jaxpr(gen.apply)(jax.eval_shape(gen.init, key), jnp.ones(4, jnp.float32))
        counts.append(str(jaxpr).count("dot_general"))
    assert counts[0] == counts[1] == 2


def test_ids_select_their_own_embedding(tiny_mlp_spec, key, maybe_jit):
    gen = hj.generators.dense(tiny_mlp_spec, cond_dim=4, hidden=8, num_conds=3)
    hp = jax.jit(gen.init)(key)
    assert hp["embedding"]["cond_emb"].shape == (3, 4)
    direct = hj.generators.dense(tiny_mlp_spec, cond_dim=4, hidden=8)
    for i in range(3):
        chex.assert_trees_all_close(maybe_jit(gen.apply)(hp, jnp.int32(i)),
                                    direct.apply({"hyper": hp["hyper"]}, hp["embedding"]["cond_emb"][i]), rtol=1e-6)
    grads = jax.grad(lambda h: jnp.sum(tiny_mlp_spec.flatten(gen.apply(h, jnp.int32(1)))))(hp)
    rows = np.asarray(jnp.any(grads["embedding"]["cond_emb"] != 0, axis=1))
    assert rows.tolist() == [False, True, False]


def test_traced_out_of_range_id_gives_nan_not_a_valid_embedding(tiny_mlp_spec, key):
    gen = hj.generators.dense(tiny_mlp_spec, cond_dim=4, hidden=8, num_conds=3)
    hp = jax.jit(gen.init)(key)
    apply = jax.jit(gen.apply)
    assert bool(jnp.all(jnp.isfinite(tiny_mlp_spec.flatten(apply(hp, jnp.int32(2))))))
    for bad in (3, -1):
        assert bool(jnp.all(jnp.isnan(tiny_mlp_spec.flatten(apply(hp, jnp.int32(bad))))))


def test_init_is_deterministic_per_key(tiny_mlp_spec):
    init = jax.jit(hj.generators.chunked(tiny_mlp_spec, cond_dim=4, chunk_size=7, hidden=8).init)
    chex.assert_trees_all_equal(init(jax.random.key(1)), init(jax.random.key(1)))
    a, b = init(jax.random.key(1)), init(jax.random.key(2))
    assert not np.allclose(a["embedding"]["chunk_emb"], b["embedding"]["chunk_emb"])


def test_partial_equals_factory_with_where(tiny_mlp_spec, key):
    via_partial = hj.generators.partial(hj.generators.chunked, tiny_mlp_spec, where="*/kernel", cond_dim=4,
                                        chunk_size=5, hidden=8)
    direct = hj.generators.chunked(tiny_mlp_spec, cond_dim=4, chunk_size=5, hidden=8, where="*/kernel")
    hp = jax.jit(via_partial.init)(key)
    chex.assert_trees_all_equal(hp, jax.jit(direct.init)(key))
    assert set(hp["direct"]) == {"Dense_0", "Dense_1"} and set(hp["direct"]["Dense_0"]) == {"bias"}
    c = jnp.ones(4, jnp.float32)
    chex.assert_trees_all_equal(jax.jit(via_partial.apply)(hp, c), jax.jit(direct.apply)(hp, c))
    n_kernels = 5 * 7 + 7 * 3
    assert hp["embedding"]["chunk_emb"].shape[0] == math.ceil(n_kernels / 5)
