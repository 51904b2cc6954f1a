"""low_rank and scale_modulation: shapes, the modulation formulas, the base init, the factorised path equal to
per-example materialised weights, gradients, training, properties, errors."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import hyperjax as hj

mm = hj.generators.modulated_matmul


class MLP(nn.Module):
    features: tuple = (7, 3)

    @nn.compact
    def __call__(self, x):
        for i, f in enumerate(self.features):
            x = nn.Dense(f)(x)
            x = nn.relu(x) if i < len(self.features) - 1 else x
        return x


@functools.cache
def linen_mlp(widths=(5, 7, 3)):
    return hj.targets.from_linen(MLP(tuple(widths[1:])), jnp.ones((1, widths[0])))


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
    """Equinox/PyTorch layout: weight (out, in)."""
    params = {"l0": {"weight": jnp.zeros((7, 5)), "bias": jnp.zeros((7,))},
              "l1": {"weight": jnp.zeros((3, 7)), "bias": jnp.zeros((3,))}}

    def apply(p, x):
        h = jax.nn.relu(add_bias(x @ p["l0"]["weight"].T, p["l0"]["bias"]))
        return add_bias(h @ p["l1"]["weight"].T, p["l1"]["bias"])
    return hj.targets.from_fn(apply, params, layout="out_in")


def out_in_forward(p, x):
    h = jax.nn.relu(add_bias(mm(x, p["l0"]["weight"]), p["l0"]["bias"]))
    return add_bias(mm(h, p["l1"]["weight"]), p["l1"]["bias"])


LR = hj.generators.low_rank
SM = hj.generators.scale_modulation
CASES = [   # generator x target, each case run eagerly and under jit
    pytest.param(LR, {"rank": 2}, linen_mlp, linen_forward, id="low_rank-linen"),
    pytest.param(LR, {"rank": 2}, out_in_mlp, out_in_forward, id="low_rank-out_in"),
    pytest.param(LR, {"rank": 3, "num_conds": 4, "hidden": ()}, linen_mlp, linen_forward, id="low_rank-ids-linear"),
    pytest.param(SM, {"mode": "rowcol"}, linen_mlp, linen_forward, id="scale-rowcol-linen"),
    pytest.param(SM, {"mode": "rowcol"}, out_in_mlp, out_in_forward, id="scale-rowcol-out_in"),
    pytest.param(SM, {"mode": "row"}, out_in_mlp, out_in_forward, id="scale-row-out_in"),
    pytest.param(SM, {"mode": "col", "num_conds": 4}, linen_mlp, linen_forward, id="scale-col-ids-linen"),
]


def conds(kwargs, n=None):
    if "num_conds" in kwargs:
        return jnp.int32(1) if n is None else jnp.arange(n, dtype=jnp.int32) % kwargs["num_conds"]
    shape = (3,) if n is None else (n, 3)
    return jax.random.normal(jax.random.key(7), shape, jnp.float32)


XS = jax.random.normal(jax.random.key(3), (6, 5), jnp.float32)


# ------------------------------------------------------------------------------------------------ outputs
@pytest.mark.parametrize("factory,kwargs,make_spec,forward", CASES)
def test_output_matches_spec(factory, kwargs, make_spec, forward, key, maybe_jit):
    spec = make_spec()
    gen = factory(spec, 3, **kwargs)
    assert isinstance(gen, hj.HyperNetwork) and isinstance(gen, hj.generators.Modulated)
    hp = jax.jit(gen.init)(key)
    params = maybe_jit(gen.apply)(hp, conds(kwargs))
    chex.assert_trees_all_equal_shapes_and_dtypes(params, spec.zeros())
    chex.assert_trees_all_close(params, gen.apply(hp, conds(kwargs)), atol=1e-6)
    # biases are ordinary params, kernels are modulated around their base
    assert set(hp["direct"][next(iter(hp["direct"]))]) == {"bias"}
    labels = hj.training.labels(hp)
    assert set(jax.tree.leaves(labels["base"])) == {"hyper"} and set(jax.tree.leaves(labels["direct"])) == {"direct"}


@pytest.mark.parametrize("factory,kwargs,make_spec,forward", CASES)
def test_factorised_equals_materialised(factory, kwargs, make_spec, forward, key, maybe_jit):
    """x @ W(c_i) by factors, for a batch with one condition per example, equals per_sample (vmap of apply)."""
    spec = make_spec()
    gen = factory(spec, 3, **kwargs)
    hp = jax.jit(gen.init)(key)
    hp = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(5), a.shape, a.dtype)
                      if a.dtype == jnp.float32 else a, hp)          # move off the init (s = 0 bias etc.)
    cs = conds(kwargs, 6)
    want = maybe_jit(hj.per_sample(gen, spec))(hp, cs, XS)
    got = maybe_jit(lambda hp, cs, x: forward(gen.factors(hp, cs), x))(hp, cs, XS)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # one condition, one example (e.g. inside a user's vmap)
    one = maybe_jit(lambda hp, c, x: forward(gen.factors(hp, c), x))(hp, cs[2], XS[2])
    np.testing.assert_allclose(one, want[2], rtol=1e-5, atol=1e-5)
    # and a jax.vmap of that single-example path equals the batched factors
    vm = jax.vmap(lambda c, x: forward(gen.factors(hp, c), x))(cs, XS)
    np.testing.assert_allclose(vm, want, rtol=1e-5, atol=1e-5)


def test_plain_kernels_pass_through_modulated_matmul(key):
    spec = linen_mlp()
    params = spec.init(key)
    np.testing.assert_allclose(linen_forward(params, XS), spec.apply(params, XS), rtol=1e-6)


# ------------------------------------------------------------------------------------------------ formulas
def test_low_rank_update_has_rank_r(key):
    spec = linen_mlp((9, 8, 3))
    gen = LR(spec, 3, rank=2)
    hp = jax.jit(gen.init)(key)
    c1, c2 = conds({}, 2)
    d = gen.apply(hp, c1)["Dense_0"]["kernel"] - gen.apply(hp, c2)["Dense_0"]["kernel"]
    sv = np.linalg.svd(np.asarray(d), compute_uv=False)
    assert sv[1] > 1e-4 and sv[2] < 1e-5 * sv[0]
    # W(c) = W0 + U diag(s) V^T with s = MLP(c)
    f = gen.factors(hp, c1)["Dense_0"]["kernel"]
    w = hp["base"]["Dense_0"]["kernel"] + hp["u"]["Dense_0"]["kernel"] @ jnp.diag(f.s) @ hp["v"]["Dense_0"]["kernel"].T
    np.testing.assert_allclose(gen.apply(hp, c1)["Dense_0"]["kernel"], w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["rowcol", "row", "col"])
def test_scale_modulation_is_an_outer_product(mode, key):
    spec = linen_mlp((9, 8, 3))
    gen = SM(spec, 3, mode=mode, init_scale=0.5)
    hp = jax.jit(gen.init)(key)
    ratio = np.asarray(gen.apply(hp, conds({}))["Dense_0"]["kernel"] / hp["base"]["Dense_0"]["kernel"])
    sv = np.linalg.svd(ratio, compute_uv=False)
    assert sv[1] < 1e-4 * sv[0]                                        # a(c) b(c)^T has rank 1
    if mode == "row":
        np.testing.assert_allclose(ratio, ratio[:, :1] * np.ones((1, 8)), rtol=1e-5)
    if mode == "col":
        np.testing.assert_allclose(ratio, np.ones((9, 1)) * ratio[:1], rtol=1e-5)
    assert np.std(ratio) > 0.05                                        # the condition does modulate


def test_base_starts_as_the_targets_own_init(key):
    spec = linen_mlp()
    for gen in (LR(spec, 3, rank=2), SM(spec, 3)):
        hp = gen.init(key)
        k_core = jax.random.split(key, 3)[0]
        k_base = jax.random.split(k_core, 3)[0]
        own = spec.init(k_base)
        for layer in ("Dense_0", "Dense_1"):
            np.testing.assert_array_equal(hp["base"][layer]["kernel"], own[layer]["kernel"])


@pytest.mark.parametrize("factory,kwargs", [pytest.param(LR, {"rank": 4}, id="low_rank"),
                                            pytest.param(SM, {}, id="scale")])
def test_init_modulation_size(factory, kwargs, key):
    """init_scale sets the spread of W(c) around W0 at init (relative to W0's std), for N(0, 1) conditions."""
    spec = linen_mlp((64, 48, 3))
    gen = factory(spec, 8, init_scale=0.2, **kwargs)
    hp = jax.jit(gen.init)(key)
    ws = hj.generate_batch(gen, hp, jax.random.normal(jax.random.key(9), (64, 8), jnp.float32))
    base = hp["base"]["Dense_0"]["kernel"]
    rel = float(jnp.std(ws["Dense_0"]["kernel"] - base[None]) / jnp.std(base))
    assert 0.1 < rel < 0.4, rel


# ------------------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("factory,kwargs", [pytest.param(LR, {"rank": 2}, id="low_rank"),
                                            pytest.param(SM, {"mode": "rowcol"}, id="scale")])
def test_numeric_gradients_both_paths(factory, kwargs, key):
    spec = linen_mlp()
    gen = factory(spec, 3, hidden=(4,), **kwargs)
    cs = conds({}, 6)

    @jax.jit
    def loss_mat(hp):
        return jnp.mean(jnp.square(hj.per_sample(gen, spec)(hp, cs, XS)))

    @jax.jit
    def loss_fac(hp):
        return jnp.mean(jnp.square(linen_forward(gen.factors(hp, cs), XS)))
    hp = jax.jit(gen.init)(key)
    with jax.numpy_dtype_promotion("standard"):
        check_grads(loss_fac, (hp,), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
    g_mat, g_fac = jax.grad(loss_mat)(hp), jax.grad(loss_fac)(hp)
    chex.assert_trees_all_close(g_fac, g_mat, rtol=1e-4, atol=1e-6)
    for path, g in hj._src.paths.leaves_with_paths(g_fac):
        if not path.startswith("mlp/1/b") or factory is SM:         # s's output bias starts at 0 but learns
            assert float(jnp.abs(g).max()) > 0, path


@pytest.mark.parametrize("factory,kwargs", [pytest.param(LR, {"rank": 2}, id="low_rank"),
                                            pytest.param(SM, {"mode": "col"}, id="scale")])
def test_training_fits_two_tasks(factory, kwargs, key):
    """Two task ids with opposite targets: one shared base, the modulation tells the tasks apart."""
    spec = linen_mlp((5, 16, 1))
    gen = factory(spec, 4, num_conds=2, **kwargs)
    x = jax.random.normal(jax.random.key(1), (32, 5), jnp.float32)
    ids = jnp.arange(32, dtype=jnp.int32) % 2
    y = jnp.where(ids[:, None] == 0, 1.0, -1.0) * x[:, :1]

    def loss_fn(hp, batch, rng):
        return jnp.mean(jnp.square(linen_forward(gen.factors(hp, batch[1]), batch[0]) - batch[2]))
    opt = optax.adam(3e-2)
    state = hj.training.init_state(jax.jit(gen.init)(key), opt)
    step = hj.training.make_step(loss_fn, opt)
    first = None
    for _ in range(150):
        state, m = step(state, (x, ids, y))
        first = float(m["loss"]) if first is None else first
    assert float(m["loss"]) < 0.2 * first


# ------------------------------------------------------------------------------------------------ properties
@settings(max_examples=6, deadline=None)
@given(widths=st.lists(st.integers(1, 6), min_size=2, max_size=4), rank=st.integers(1, 3),
       mode=st.sampled_from(["low_rank", "rowcol", "row", "col"]), batch=st.integers(1, 3))
def test_factorised_equals_materialised_property(widths, rank, mode, batch):
    spec = linen_mlp(tuple(widths))
    gen = LR(spec, 2, rank=rank) if mode == "low_rank" else SM(spec, 2, mode=mode, init_scale=0.5)
    hp = jax.jit(gen.init)(jax.random.key(0))
    cs = jax.random.normal(jax.random.key(1), (batch, 2), jnp.float32)
    x = jax.random.normal(jax.random.key(2), (batch, widths[0]), jnp.float32)
    want = hj.per_sample(gen, spec)(hp, cs, x)
    got = linen_forward(gen.factors(hp, cs), x, n_layers=len(widths) - 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    n_mod = {"low_rank": lambda a, b: rank, "rowcol": lambda a, b: a + b, "row": lambda a, b: a,
             "col": lambda a, b: b}[mode]
    assert hp["mlp"][-1]["w"].shape[1] == sum(n_mod(a, b) for a, b in zip(widths[:-1], widths[1:]))


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("factory,kwargs,match", [
    (LR, {"rank": 0}, r"`rank` must be a positive int, got 0"),
    (LR, {"rank": -2}, r"`rank` must be a positive int, got -2"),
    (LR, {"rank": 2, "where": "*/bias"}, r"leaf 'Dense_0/bias' has shape \(7,\), but low_rank needs a 2-D kernel"),
    (LR, {"rank": 2, "where": "Nope"}, r"`where`='Nope' matches no leaf"),
    (LR, {"rank": 2, "init_scale": 0.0}, r"`init_scale` must be a positive finite number, got 0.0"),
    (LR, {"rank": 2, "hidden": (4, 0)}, r"`hidden` must be a positive int, got 0"),
    (SM, {"mode": "diag"}, r"unknown `mode`='diag'; valid options are 'rowcol', 'row', 'col'"),
    (SM, {"where": "Dense_1/*"}, r"leaf 'Dense_1/bias' has shape \(3,\), but scale_modulation needs a 2-D"),
])
def test_bad_options_raise(factory, kwargs, match):
    with pytest.raises(ValueError, match=match):
        factory(linen_mlp(), 3, **kwargs)


def test_bad_cond_dim_and_targets_raise():
    with pytest.raises(ValueError, match=r"`cond_dim` must be a positive int, got 0"):
        LR(linen_mlp(), 0, rank=2)
    with pytest.raises(ValueError, match=r"`cond_dim` is required"):
        SM(linen_mlp())
    conv = hj.targets.from_fn(lambda p, x: x, {"conv": {"kernel": jnp.zeros((3, 3, 2, 4))}, "b": jnp.zeros((4,))})
    with pytest.raises(ValueError, match=r"the target has no 2-D leaf to modulate; its leaves are b \(4,\), "
                                         r"conv/kernel \(3, 3, 2, 4\)"):
        LR(conv, 3, rank=2)
    with pytest.raises(ValueError, match=r"leaf 'conv/kernel' has shape \(3, 3, 2, 4\), but low_rank needs a 2-D"):
        LR(conv, 3, rank=2, where="conv/kernel")


def test_bad_matmul_inputs_raise(key):
    gen = LR(linen_mlp(), 3, rank=2)
    hp = jax.jit(gen.init)(key)
    f = gen.factors(hp, conds({}, 4))["Dense_0"]["kernel"]
    with pytest.raises(ValueError, match=r"input x \(6, 5\) and the per-example low-rank scales `s` \(4, 2\) need "
                                         r"the same leading batch axes"):
        mm(XS, f)
    with pytest.raises(ValueError, match=r"input x has shape \(4, 6\), expected \(\.\.\., 5\)"):
        mm(jnp.ones((4, 6)), f)
    g = SM(linen_mlp(), 3, mode="col")
    fs = g.factors(jax.jit(g.init)(key), conds({}, 4))["Dense_0"]["kernel"]
    with pytest.raises(ValueError, match=r"per-example output scales \(4, 7\) need the same leading batch axes"):
        mm(XS, fs)
    with pytest.raises(ValueError, match=r"expected x f\[\.\.\., n_in\] and a kernel f\[n_in, n_out\]"):
        mm(XS, jnp.ones((4, 3)))
    with pytest.raises(ValueError, match=r"`cond` must have shape \(3,\)"):
        gen.factors(hp, jnp.ones((2, 2, 3)))
