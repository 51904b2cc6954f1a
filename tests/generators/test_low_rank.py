"""low_rank and scale_modulation: shapes, the modulation formulas, the base init, the factorised path equal to
per-example materialised weights, gradients, training, properties, errors."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.flatten_util import ravel_pytree
from jax.test_util import check_grads

import hyperjax as hj

mm = hj.generators.modulated_matmul


@functools.cache
def linen_mlp(widths=(5, 7, 3)):
    """`hj.testing.mlp_spec(widths)`, built once per widths."""
    return hj.testing.mlp_spec(widths)


def host(tree):
    """Leaves as NumPy arrays: assertions on the host compile nothing (eager jnp ops compile per shape)."""
    return jax.tree.map(np.asarray, tree)


def assert_close(a, b, **kw):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **kw), host(a), host(b))


def add_bias(y, b):
    """y f[..., n] + b f[n] with an explicit broadcast (the tests run with rank promotion 'raise')."""
    return y + jnp.broadcast_to(b, y.shape)


def linen_forward(p, x, n_layers=2):
    """The linen MLP written with modulated_matmul: runs on plain params or on a factors tree."""
    for i in range(n_layers):
        x = add_bias(mm(x, p[f"Dense_{i}"]["kernel"]), p[f"Dense_{i}"]["bias"])
        x = jax.nn.relu(x) if i < n_layers - 1 else x
    return x


@functools.cache
def out_in_mlp():
    """Equinox/PyTorch layout, weight (out, in): `hj.testing.fn_mlp_spec(layout="out_in")`, l0 5 -> 7, l1 7 -> 3."""
    return hj.testing.fn_mlp_spec((5, 7, 3), layout="out_in")


def out_in_forward(p, x):
    h = jax.nn.relu(add_bias(mm(x, p["l0"]["weight"]), p["l0"]["bias"]))
    return add_bias(mm(h, p["l1"]["weight"]), p["l1"]["bias"])


LR = hj.generators.low_rank
SM = hj.generators.scale_modulation
CONFIGS = {   # generator x target, built and initialised once per module (compiling init is the slow part)
    "low_rank-linen": (LR, {"rank": 2}, linen_mlp, linen_forward),
    "low_rank-out_in": (LR, {"rank": 2}, out_in_mlp, out_in_forward),
    "low_rank-ids-linear": (LR, {"rank": 3, "num_conds": 4, "hidden": ()}, linen_mlp, linen_forward),
    "scale-rowcol-out_in": (SM, {"mode": "rowcol"}, out_in_mlp, out_in_forward),
    "scale-col-ids-linen": (SM, {"mode": "col", "num_conds": 4}, linen_mlp, linen_forward),
    "scale-row-linen": (SM, {"mode": "row"}, linen_mlp, linen_forward),
}


@functools.cache
def setup(name):
    """-> (spec, generator, hparams at init with key 0, factory kwargs, forward(params or factors, x))."""
    factory, kwargs, make_spec, forward = CONFIGS[name]
    spec = make_spec()
    gen = factory(spec, cond_dim=3, **kwargs)
    return spec, gen, jax.jit(gen.init)(jax.random.key(0)), kwargs, forward


def conds(kwargs, n=None):
    if "num_conds" in kwargs:
        return jnp.int32(1) if n is None else jnp.arange(n, dtype=jnp.int32) % kwargs["num_conds"]
    shape = (3,) if n is None else (n, 3)
    return jax.random.normal(jax.random.key(7), shape, jnp.float32)


XS = jax.random.normal(jax.random.key(3), (6, 5), jnp.float32)


# ------------------------------------------------------------------------------------------------ outputs
@pytest.mark.parametrize("name,eager", [("low_rank-linen", True), ("low_rank-out_in", False),
                                        ("low_rank-ids-linear", False), ("scale-rowcol-out_in", True),
                                        ("scale-col-ids-linen", False)])
def test_outputs_and_factorised_path(name, eager):
    """Target shapes; eager == jit; x @ W(c_i) by factors for a batch with one condition per example equals
    per_sample (vmap of apply + target), batched, for one example, and under a user's vmap."""
    spec, gen, hp, kwargs, forward = setup(name)
    assert isinstance(gen, hj.generators.Modulated) and isinstance(gen.hypernetwork, hj.HyperNetwork)
    cs = conds(kwargs, 6)

    @jax.jit
    def run(hp):
        params = gen.apply(hp, conds(kwargs))
        hp = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(5), a.shape, a.dtype)
                          if a.dtype == jnp.float32 else a, hp)          # off the init (s bias = 0)
        vmapped = jax.vmap(lambda c, xi: forward(gen.factors(hp, c), xi))(cs, XS)
        return params, hp, hj.per_sample(gen, spec)(hp, cs, XS), forward(gen.factors(hp, cs), XS), vmapped
    params, hp2, want, batched, vmapped = run(hp)
    chex.assert_trees_all_equal_shapes_and_dtypes(params, spec.abstract_params)
    if eager:
        assert_close(params, gen.apply(hp, conds(kwargs)), atol=1e-6)                      # eager == jit
    assert set(hp["direct"][next(iter(hp["direct"]))]) == {"bias"}       # biases stay ordinary params
    labels = hj.training.labels(hp)
    assert set(jax.tree.leaves(labels["base"])) == {"base"} and set(jax.tree.leaves(labels["direct"])) == {"direct"}
    np.testing.assert_allclose(batched, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vmapped, want, rtol=1e-5, atol=1e-5)
    if eager:
        one = forward(gen.factors(hp2, cs[2]), XS[2])                  # one condition, one example
        np.testing.assert_allclose(one, want[2], rtol=1e-5, atol=1e-5)


def test_plain_kernels_pass_through_modulated_matmul(key):
    spec = linen_mlp()
    params = jax.jit(spec.init)(key)
    np.testing.assert_allclose(linen_forward(params, XS), spec.apply(params, XS), rtol=1e-6)


# ------------------------------------------------------------------------------------------------ formulas
def test_low_rank_update_has_rank_r():
    _, gen, hp, _, _ = setup("low_rank-linen")           # Dense_0/kernel: 5 x 7, rank 2
    c1, c2 = conds({}, 2)
    w1, w2, f = host(jax.jit(lambda hp: (gen.apply(hp, c1)["Dense_0"]["kernel"], gen.apply(hp, c2)["Dense_0"]["kernel"],
                                         gen.factors(hp, c1)["Dense_0"]["kernel"]))(hp))
    sv = np.linalg.svd(w1 - w2, compute_uv=False)
    assert sv[1] > 1e-5 and sv[2] < 1e-5 * sv[0]
    # W(c) = W0 + U diag(s) V^T with s = MLP(c)
    h = host(hp)
    w = h["base"]["Dense_0"]["kernel"] + h["hyper"]["u"]["Dense_0"]["kernel"] @ np.diag(f.s) @ h["hyper"]["v"]["Dense_0"]["kernel"].T
    np.testing.assert_allclose(w1, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["scale-rowcol-out_in", "scale-row-linen", "scale-col-ids-linen"])
def test_scale_modulation_is_an_outer_product(name):
    spec, gen, hp, kwargs, _ = setup(name)
    path = spec.paths[1]                                 # the first kernel ('Dense_0/kernel' or 'l0/weight')
    parts = path.split("/")
    w = np.asarray(jax.jit(gen.apply)(hp, conds(kwargs))[parts[0]][parts[1]])
    ratio = w / np.asarray(hp["base"][parts[0]][parts[1]])
    sv = np.linalg.svd(ratio, compute_uv=False)
    assert sv[1] < 1e-4 * sv[0]                                        # a(c) b(c)^T has rank 1
    if kwargs["mode"] == "row":                                        # one scale per row of the stored leaf
        np.testing.assert_allclose(ratio, ratio[:, :1] * np.ones((1, ratio.shape[1])), rtol=1e-5)
    if kwargs["mode"] == "col":
        np.testing.assert_allclose(ratio, np.ones((ratio.shape[0], 1)) * ratio[:1], rtol=1e-5)
    assert np.std(ratio) > 0.02                                        # the condition does modulate


@pytest.mark.parametrize("factory,kwargs", [pytest.param(LR, {"rank": 2}, id="low_rank"),
                                            pytest.param(SM, {}, id="scale")])
@pytest.mark.parametrize("init,fan", [("hyperfan_in", 64), ("hyperfan_out", 48)])
def test_base_starts_with_the_hyperfan_variance(factory, kwargs, init, fan, key):
    """W0 of a 64 x 48 kernel (3,072 values: the variance is resolved to ~3%) has variance 1/fan_in (1/fan_out)."""
    spec = linen_mlp((64, 48, 3))
    gen = factory(spec, cond_dim=3, init=init, **kwargs)
    base = np.asarray(jax.jit(gen.init)(key)["base"]["Dense_0"]["kernel"])
    assert set(jax.eval_shape(gen.init, key)["base"]) == {"Dense_0", "Dense_1"}      # every 2-D leaf
    np.testing.assert_allclose(base.var(), 1.0 / fan, rtol=0.1)
    assert abs(base.mean()) < 0.02


@pytest.mark.parametrize("factory,kwargs", [pytest.param(LR, {"rank": 4}, id="low_rank"),
                                            pytest.param(SM, {}, id="scale")])
def test_init_modulation_size(factory, kwargs, key):
    """init_scale sets the spread of W(c) around W0 at init (relative to W0's std), for N(0, 1) conditions."""
    spec = linen_mlp((64, 48, 3))
    gen = factory(spec, cond_dim=8, init_scale=0.2, **kwargs)

    @jax.jit
    def kernels(key):
        hp = gen.init(key)
        ws = hj.generate_batch(gen, hp, jax.random.normal(jax.random.key(9), (64, 8)))
        return hp["base"]["Dense_0"]["kernel"], ws["Dense_0"]["kernel"]
    base, ws = host(kernels(key))
    rel = float(np.std(ws - base[None]) / np.std(base))
    assert 0.1 < rel < 0.4, rel


# ------------------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("name", ["low_rank-linen", "scale-rowcol-out_in"])
def test_numeric_gradients_both_paths(name):
    spec, gen, hp, kwargs, forward = setup(name)
    cs = conds(kwargs, 6)

    def loss_mat(hp):
        return jnp.mean(jnp.square(hj.per_sample(gen, spec)(hp, cs, XS)))

    def loss_fac(hp):
        return jnp.mean(jnp.square(forward(gen.factors(hp, cs), XS)))
    flat, unravel = ravel_pytree(hp)                   # one vector: finite differences compile one shape
    with jax.numpy_dtype_promotion("standard"):
        check_grads(jax.jit(lambda v: loss_fac(unravel(v))), (flat,), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
    g_mat, g_fac = host(jax.jit(lambda hp: (jax.grad(loss_mat)(hp), jax.grad(loss_fac)(hp)))(hp))
    assert_close(g_fac, g_mat, rtol=1e-4, atol=1e-6)
    for path, g in jax.tree_util.tree_flatten_with_path(g_fac)[0]:   # every leaf learns (s's output bias
        assert np.abs(np.asarray(g)).max() > 0, path                   # starts at 0 but gets a gradient)


@pytest.mark.parametrize("factory,kwargs", [pytest.param(LR, {"rank": 2}, id="low_rank"),
                                            pytest.param(SM, {"mode": "col"}, id="scale")])
def test_training_fits_two_tasks(factory, kwargs, key):
    """Two task ids with opposite targets: one shared base, the modulation tells the tasks apart."""
    spec = linen_mlp((5, 16, 1))
    gen = factory(spec, cond_dim=4, num_conds=2, **kwargs)
    x = jax.random.normal(jax.random.key(1), (32, 5), jnp.float32)
    ids = jnp.arange(32, dtype=jnp.int32) % 2
    y = jnp.where(ids[:, None] == 0, 1.0, -1.0) * x[:, :1]

    def loss_fn(hp, batch, rng):
        return jnp.mean(jnp.square(linen_forward(gen.factors(hp, batch[1]), batch[0]) - batch[2]))
    opt = optax.adam(3e-2)
    state = jax.jit(lambda key: hj.training.init_state(gen.init(key), opt))(key)
    step = hj.training.make_step(loss_fn, opt)
    first = None
    for _ in range(150):
        state, m = step(state, (x, ids, y))
        first = float(m["loss"]) if first is None else first
    assert float(m["loss"]) < 0.2 * first


# ------------------------------------------------------------------------------------------------ properties
@settings(max_examples=5, deadline=None)
@given(widths=st.lists(st.integers(1, 6), min_size=2, max_size=4), rank=st.integers(1, 3),
       mode=st.sampled_from(["low_rank", "rowcol", "row", "col"]), batch=st.integers(1, 3))
def test_factorised_equals_materialised_property(widths, rank, mode, batch):
    spec = linen_mlp(tuple(widths))
    gen = LR(spec, cond_dim=2, rank=rank) if mode == "low_rank" else SM(spec, cond_dim=2, mode=mode, init_scale=0.5)
    cs = jax.random.normal(jax.random.key(1), (batch, 2), jnp.float32)
    x = jax.random.normal(jax.random.key(2), (batch, widths[0]), jnp.float32)

    @jax.jit                                          # one compilation per example
    def both(key):
        hp = gen.init(key)
        return (hp, hj.per_sample(gen, spec)(hp, cs, x),
                linen_forward(gen.factors(hp, cs), x, n_layers=len(widths) - 1))
    hp, want, got = both(jax.random.key(0))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    n_mod = {"low_rank": lambda a, b: rank, "rowcol": lambda a, b: a + b, "row": lambda a, b: a,
             "col": lambda a, b: b}[mode]
    assert hp["hyper"]["mlp"][-1]["w"].shape[1] == sum(n_mod(a, b) for a, b in zip(widths[:-1], widths[1:]))


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("factory,kwargs,match", [
    (LR, {"rank": 0}, r"`rank` must be a positive int, got 0"),
    (LR, {"rank": -2}, r"`rank` must be a positive int, got -2"),
    (LR, {"rank": 2, "where": "*/bias"}, r"leaf 'Dense_0/bias' \(7,\) is a bias of its layer, not a kernel"),
    (LR, {"rank": 2, "where": "Nope"}, r"`where`='Nope' matches no leaf"),
    (LR, {"rank": 2, "init_scale": -1.0}, r"`init_scale` must be a finite number >= 0, got -1.0"),
    (LR, {"rank": 2, "hidden": (4, 0)}, r"`hidden` must be a positive int, got 0"),
    (SM, {"mode": "diag"}, r"unknown `mode`='diag'; valid options are 'rowcol', 'row', 'col'"),
    (SM, {"where": "Dense_1/*"}, r"leaf 'Dense_1/bias' \(3,\) is a bias of its layer, not a kernel"),
])
def test_bad_options_raise(factory, kwargs, match):
    with pytest.raises(ValueError, match=match):
        factory(linen_mlp(), cond_dim=3, **kwargs)


def test_bad_cond_dim_and_targets_raise():
    with pytest.raises(ValueError, match=r"`cond_dim` must be a positive int, got 0"):
        LR(linen_mlp(), cond_dim=0, rank=2)
    with pytest.raises(ValueError, match=r"`num_conds` needs `cond_dim`"):
        SM(linen_mlp(), num_conds=2)
    conv = hj.targets.from_fn(lambda p, x: x, {"conv": {"kernel": hj.testing.sds((3, 3, 2, 4))}, "b": hj.testing.sds((4,))})
    with pytest.raises(ValueError, match=r"`where`=matrices matches no leaf of the target. Available paths: b, "
                                         r"conv/kernel"):
        LR(conv, cond_dim=3, rank=2)
    gen = LR(conv, cond_dim=3, rank=2, where="conv/kernel")      # a conv kernel: modulated as its 2-D view
    assert gen.apply(gen.init(jax.random.key(0)), jnp.ones(3))["conv"]["kernel"].shape == (3, 3, 2, 4)


def test_bad_matmul_inputs_raise(key):
    shapes = jax.eval_shape                            # the checks are trace-time: no computation needed
    gen = LR(linen_mlp(), cond_dim=3, rank=2)
    hp = shapes(gen.init, key)
    f = shapes(gen.factors, hp, conds({}, 4))["Dense_0"]["kernel"]
    with pytest.raises(ValueError, match=r"input x \(6, 5\) and the per-example low-rank scales `s` \(4, 2\) need "
                                         r"the same leading batch axes"):
        shapes(mm, XS, f)
    with pytest.raises(ValueError, match=r"input x has shape \(4, 6\), expected \(\.\.\., 5\)"):
        shapes(mm, jnp.ones((4, 6)), f)
    g = SM(linen_mlp(), cond_dim=3, mode="col")
    fs = shapes(g.factors, shapes(g.init, key), conds({}, 4))["Dense_0"]["kernel"]
    with pytest.raises(ValueError, match=r"per-example output scales \(4, 7\) need the same leading batch axes"):
        shapes(mm, XS, fs)
    with pytest.raises(ValueError, match=r"expected x f\[\.\.\., n_in\] and a kernel f\[n_in, n_out\]"):
        mm(XS, jnp.ones((4, 3)))
    with pytest.raises(ValueError, match=r"`cond` must have shape \(3,\)"):
        shapes(gen.factors, hp, jnp.ones((2, 2, 3)))
