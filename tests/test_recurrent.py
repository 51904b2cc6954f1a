"""hyperjax.recurrent: the HyperLSTM (Ha et al. 2016) and its layer-normed LSTM baseline.

Shapes and parameter counts, a NumPy reference of one step written from the paper's equations, scan equal
to step-by-step, a numeric gradient check, zero modulation (d_x = d_h = 1, d_b = 0) equal to the plain
layer-normed LSTM bitwise, the linen and NNX cells equal to the pure ones, and the error messages.
Every numeric test runs eagerly and under jit (`maybe_jit`)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import hyperjax as hj

R = hj.recurrent
IN, H, NH, E, T = 3, 5, 4, 4, 6      # E a power of two: 1/E sums to exactly 1


@functools.partial(jax.jit, static_argnums=2)
def perturbed(params, key, scale=0.3):
    """params + N(0, scale^2) on every leaf: no zero or constant leaf hides a wrong index or gate."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [x + scale * jax.random.normal(k, x.shape, x.dtype)
                                        for x, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def hp():
    return perturbed(R.hyperlstm_init(jax.random.key(1), in_dim=IN, hidden=H, hyper_hidden=NH, emb_dim=E),
                     jax.random.key(2))


@pytest.fixture(scope="module")
def lp():
    return perturbed(R.lstm_init(jax.random.key(3), in_dim=IN, hidden=H), jax.random.key(4))


def rand_state(params, batch, key):
    zero = R.zero_state(params, batch)
    return perturbed(zero, key, 0.5)


def xs_of(key, batch=(2,)):
    return jax.random.normal(key, (T, *batch, IN))


# ------------------------------------------------------------------------------------- shapes, counts
def test_init_shapes_counts_and_initial_scales():
    p = R.hyperlstm_init(jax.random.key(0), in_dim=IN, hidden=H, hyper_hidden=NH, emb_dim=E)
    shapes = jax.tree.map(jnp.shape, p)
    assert shapes["main"] == {"kernel_x": (IN, 4 * H), "kernel_h": (H, 4 * H), "bias": (4 * H,),
                              "ln_gates": {"scale": (4 * H,), "bias": (4 * H,)},
                              "ln_cell": {"scale": (H,), "bias": (H,)}}
    assert shapes["hyper"]["kernel_x"] == (IN + H, 4 * NH) and shapes["hyper"]["kernel_h"] == (NH, 4 * NH)
    assert shapes["proj"] == {"x": {"w_z": (NH, 4, E), "b_z": (4, E), "w_d": (4, E, H)},
                              "h": {"w_z": (NH, 4, E), "b_z": (4, E), "w_d": (4, E, H)},
                              "bias": {"w_z": (NH, 4, E), "w_d": (4, E, H)}}
    assert hj.training.count_params(p) == R.hyperlstm_param_count(IN, H, NH, E)
    abstract = jax.eval_shape(lambda k: R.lstm_init(k, in_dim=7, hidden=9), jax.random.key(0))   # no compile
    assert hj.training.count_params(abstract) == R.lstm_param_count(7, 9)
    # each gate's recurrent block is orthogonal
    blocks = np.asarray(p["main"]["kernel_h"]).reshape(H, 4, H)
    for g in range(4):
        np.testing.assert_allclose(blocks[:, g].T @ blocks[:, g], np.eye(H), atol=1e-5)
    # the reference implementation's init: d_x = d_h = INIT_SCALE, d_b = 0, whatever the input and state
    d = R.hyperlstm_scales(p, rand_state(p, (2,), jax.random.key(5)), jnp.ones((2, IN)))
    np.testing.assert_allclose(d["x"], R.INIT_SCALE, rtol=1e-6)
    np.testing.assert_allclose(d["h"], R.INIT_SCALE, rtol=1e-6)
    np.testing.assert_array_equal(d["bias"], 0.0)


@pytest.mark.parametrize("batch", [(), (2,), (2, 3)], ids=["unbatched", "batch", "two-batch-axes"])
def test_cell_shapes(batch, hp, lp, maybe_jit):
    x = jnp.ones((*batch, IN))
    state, h = maybe_jit(R.hyperlstm_cell)(hp, R.zero_state(hp, batch), x)
    assert isinstance(state, R.HyperLSTMState) and isinstance(state.main, R.LSTMState)
    chex.assert_shape([h, state.main.c, state.main.h], (*batch, H))
    chex.assert_shape([state.hyper.c, state.hyper.h], (*batch, NH))
    np.testing.assert_array_equal(h, state.main.h)
    state, h = maybe_jit(R.lstm_cell)(lp, R.zero_state(lp, batch), x)
    chex.assert_shape([h, state.c, state.h], (*batch, H))
    d = maybe_jit(R.hyperlstm_scales)(hp, R.zero_state(hp, batch), x)
    chex.assert_shape([d["x"], d["h"], d["bias"]], (*batch, 4 * H))


# --------------------------------------------------------------------------------- NumPy reference
def _np_ln(y, scale, bias, groups):
    g = y.reshape(*y.shape[:-1], groups, -1)
    g = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + R.LN_EPS)
    return g.reshape(y.shape) * scale + bias


def _np_sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _np_lstm_from_pre(p, c, pre):
    i, j, f, o = np.split(_np_ln(pre, p["ln_gates"]["scale"], p["ln_gates"]["bias"], 4), 4, axis=-1)
    c = _np_sigmoid(f + R.FORGET_BIAS) * c + _np_sigmoid(i) * np.tanh(j)
    return c, _np_sigmoid(o) * np.tanh(_np_ln(c, p["ln_cell"]["scale"], p["ln_cell"]["bias"], 1))


def np_hyperlstm_step(p, state, x):
    """The paper's equations, gate by gate, in float64 NumPy."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    (c, h), (hc, hh) = [[np.asarray(a, np.float64) for a in s] for s in state]
    x = np.asarray(x, np.float64)
    hy = p["hyper"]
    hc, hh = _np_lstm_from_pre(hy, hc, np.concatenate([x, h], -1) @ hy["kernel_x"] + hh @ hy["kernel_h"] + hy["bias"])
    m, pr = p["main"], p["proj"]
    wx, wh = np.split(m["kernel_x"], 4, axis=-1), np.split(m["kernel_h"], 4, axis=-1)
    b = np.split(m["bias"], 4)
    pre = []
    for g in range(4):                                           # i, j, f, o
        d_x = (hh @ pr["x"]["w_z"][:, g] + pr["x"]["b_z"][g]) @ pr["x"]["w_d"][g]
        d_h = (hh @ pr["h"]["w_z"][:, g] + pr["h"]["b_z"][g]) @ pr["h"]["w_d"][g]
        d_b = (hh @ pr["bias"]["w_z"][:, g]) @ pr["bias"]["w_d"][g]
        pre.append(d_x * (x @ wx[g]) + d_h * (h @ wh[g]) + b[g] + d_b)
    c, h = _np_lstm_from_pre(m, c, np.concatenate(pre, -1))
    return ((c, h), (hc, hh)), h


def test_hyperlstm_step_matches_numpy_reference(hp, maybe_jit):
    state = rand_state(hp, (2,), jax.random.key(6))
    x = jax.random.normal(jax.random.key(7), (2, IN))
    new, h = maybe_jit(R.hyperlstm_cell)(hp, state, x)
    want, want_h = np_hyperlstm_step(hp, state, x)
    np.testing.assert_allclose(h, want_h, atol=1e-5, rtol=1e-5)
    for got, ref in zip(jax.tree.leaves(new), jax.tree.leaves(want)):
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------- scan vs steps
@pytest.mark.parametrize("kind", ["hyperlstm", "lstm"])
def test_scan_equals_step_by_step(kind, hp, lp, maybe_jit):
    params, cell = (hp, R.hyperlstm_cell) if kind == "hyperlstm" else (lp, R.lstm_cell)
    state0 = rand_state(params, (2,), jax.random.key(8))
    xs = xs_of(jax.random.key(9))
    final, hs = maybe_jit(lambda p, s, x: R.scan(cell, p, s, x))(params, state0, xs)
    state, steps = state0, []
    for t in range(T):
        state, h = cell(params, state, xs[t])
        steps.append(h)
    chex.assert_trees_all_close(hs, jnp.stack(steps), atol=1e-6, rtol=1e-6)
    chex.assert_trees_all_close(final, state, atol=1e-6, rtol=1e-6)
    # jax.lax.scan over the cell directly gives the same, and reverse=True runs time backwards
    _, hs_lax = jax.lax.scan(lambda s, x: cell(params, s, x), state0, xs)
    chex.assert_trees_all_close(hs, hs_lax, atol=1e-6, rtol=1e-6)
    _, hs_rev = R.scan(cell, params, state0, xs, reverse=True)
    _, hs_flip = R.scan(cell, params, state0, xs[::-1])
    chex.assert_trees_all_close(hs_rev, hs_flip[::-1], atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------------------- gradients
def seq_loss(cell):
    def loss(params, state, xs):
        _, hs = R.scan(cell, params, state, xs)
        return jnp.sum(jnp.sin(3.0 * hs))
    return loss


@pytest.mark.parametrize("kind", ["hyperlstm", "lstm"])
def test_numeric_gradients(kind, hp, lp):
    """Under jit only: eagerly, check_grads would trace and compile the scan again for every evaluation."""
    params, cell = (hp, R.hyperlstm_cell) if kind == "hyperlstm" else (lp, R.lstm_cell)
    state = rand_state(params, (2,), jax.random.key(10))
    xs = xs_of(jax.random.key(11))[:3]
    loss = jax.jit(seq_loss(cell))
    with jax.enable_x64(True):                   # float64: central differences are exact to ~1e-8 here
        args = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), (params, state, xs))
        check_grads(loss, args, order=1, modes=["rev"], atol=1e-5, rtol=1e-5, eps=1e-5)


def test_gradient_reaches_every_leaf(hp):
    grad = jax.jit(jax.grad(seq_loss(R.hyperlstm_cell)))          # one compile for the three gradients below
    state = rand_state(hp, (2,), jax.random.key(12))
    grads = grad(hp, state, xs_of(jax.random.key(13)))
    hj.testing.assert_grads_reach(grads)
    # at the paper's init the scales do not depend on the hyper-cell yet (w_z = 0 on the x and h paths,
    # w_d = 0 on the bias path): only the hyper-cell and the bias path's w_z get no gradient, and one
    # gradient step (which moves those w_z and w_d) is enough for every leaf to learn
    p0 = R.hyperlstm_init(jax.random.key(0), in_dim=IN, hidden=H, hyper_hidden=NH, emb_dim=E)
    xs = xs_of(jax.random.key(13))
    g0 = grad(p0, R.zero_state(p0, (2,)), xs)
    hj.testing.assert_grads_reach(g0, allow_zero_grad=("hyper/*", "proj/bias/w_z"))
    assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves((g0["hyper"], g0["proj"]["bias"]["w_z"])))
    p1 = jax.tree.map(lambda p, g: p - 0.1 * g, p0, g0)
    hj.testing.assert_grads_reach(grad(p1, R.zero_state(p1, (2,)), xs))


# ------------------------------------------------------------------------- zero modulation = LSTM
def unit_modulation(params):
    """d_x = d_h = 1 and d_b = 0 exactly, whatever the hyper-cell outputs (its weights stay random)."""
    proj = params["proj"]
    ones = {"w_z": jnp.zeros_like(proj["x"]["w_z"]), "b_z": jnp.ones_like(proj["x"]["b_z"]),
            "w_d": jnp.full_like(proj["x"]["w_d"], 1.0 / E)}
    return {**params, "proj": {"x": ones, "h": ones, "bias": {"w_z": proj["bias"]["w_z"],
                                                              "w_d": jnp.zeros_like(proj["bias"]["w_d"])}}}


def test_zero_modulation_equals_layer_normed_lstm_exactly(hp, maybe_jit):
    params = unit_modulation(hp)
    state = rand_state(params, (2,), jax.random.key(14))
    xs = xs_of(jax.random.key(15))
    d = maybe_jit(R.hyperlstm_scales)(params, state, xs[0])
    np.testing.assert_array_equal(d["x"], 1.0)
    np.testing.assert_array_equal(d["h"], 1.0)
    np.testing.assert_array_equal(d["bias"], 0.0)
    run = maybe_jit(lambda p, s, x, cell: R.scan(cell, p, s, x), static_argnums=3)
    final, hs = run(params, state, xs, R.hyperlstm_cell)
    lstm_final, lstm_hs = run(params["main"], state.main, xs, R.lstm_cell)
    np.testing.assert_array_equal(hs, lstm_hs)                   # bitwise, every step
    np.testing.assert_array_equal(final.main.c, lstm_final.c)
    # and the modulation is live: d_x = 2 (another w_d) changes the output
    doubled = {**params, "proj": {**params["proj"], "x": {**params["proj"]["x"],
                                                          "w_d": jnp.full_like(params["proj"]["x"]["w_d"], 2.0 / E)}}}
    _, hs2 = run(doubled, state, xs, R.hyperlstm_cell)
    assert float(jnp.max(jnp.abs(hs2 - lstm_hs))) > 1e-3


# ---------------------------------------------------------------------------------- flax wrappers
def test_linen_cells_equal_the_pure_cells():
    import flax.linen as nn

    x = jax.random.normal(jax.random.key(16), (2, T, IN))
    for module, pure, init_fn in [
        (R.HyperLSTM(H, hyper_features=NH, emb_dim=E), R.hyperlstm_cell,
         lambda k: R.hyperlstm_init(k, in_dim=IN, hidden=H, hyper_hidden=NH, emb_dim=E)),
        (R.LayerNormLSTM(H), R.lstm_cell, lambda k: R.lstm_init(k, in_dim=IN, hidden=H)),
    ]:
        assert isinstance(module, nn.RNNCellBase) and module.num_feature_axes == 1
        carry = module.initialize_carry(jax.random.key(0), (2, IN))
        variables = module.init(jax.random.key(17), carry, x[:, 0])
        params = variables["params"]
        chex.assert_trees_all_equal_shapes_and_dtypes(params, init_fn(jax.random.key(0)))
        params = perturbed(params, jax.random.key(18))
        carry2, h = jax.jit(module.apply)({"params": params}, carry, x[:, 0])
        want_carry, want_h = pure(params, carry, x[:, 0])
        chex.assert_trees_all_close((carry2, h), (want_carry, want_h), atol=1e-6)
        rnn = nn.RNN(module)                                        # batch-major over time
        hs = rnn.apply({"params": {"cell": params}}, x)
        _, want_hs = R.scan(pure, params, R.zero_state(params, (2,)), jnp.swapaxes(x, 0, 1))
        chex.assert_trees_all_close(hs, jnp.swapaxes(want_hs, 0, 1), atol=1e-5)


def test_nnx_cells_equal_the_pure_cells():
    from flax import nnx

    x = jax.random.normal(jax.random.key(19), (2, T, IN))
    for cell, pure, init_fn in [
        (R.NNXHyperLSTM(IN, H, hyper_features=NH, emb_dim=E, rngs=nnx.Rngs(0)), R.hyperlstm_cell,
         lambda k: R.hyperlstm_init(k, in_dim=IN, hidden=H, hyper_hidden=NH, emb_dim=E)),
        (R.NNXLayerNormLSTM(IN, H, rngs=nnx.Rngs(0)), R.lstm_cell, lambda k: R.lstm_init(k, in_dim=IN, hidden=H)),
    ]:
        assert isinstance(cell, nnx.RNNCellBase)
        params = cell.params()
        chex.assert_trees_all_equal_shapes_and_dtypes(params, init_fn(jax.random.key(0)))
        n_state = sum(v.size for v in jax.tree.leaves(nnx.state(cell, nnx.Param)))
        assert n_state == hj.training.count_params(params)
        carry = cell.initialize_carry((2, IN))
        carry2, h = cell(carry, x[:, 0])
        chex.assert_trees_all_close((carry2, h), pure(params, carry, x[:, 0]), atol=1e-6)
        hs = nnx.RNN(cell)(x)
        _, want_hs = R.scan(pure, params, R.zero_state(params, (2,)), jnp.swapaxes(x, 0, 1))
        chex.assert_trees_all_close(hs, jnp.swapaxes(want_hs, 0, 1), atol=1e-5)
        # the cell's weights train through nnx: one gradient step changes them
        grads = nnx.grad(lambda c: jnp.sum(nnx.RNN(c)(x) ** 2))(cell)
        assert any(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(grads))


# ------------------------------------------------------------------------------------------ errors
def test_errors_name_the_argument_and_leaf(hp, lp):
    state = R.zero_state(hp, (2,))
    with pytest.raises(ValueError, match=r"hyperlstm_cell: `x` must have last axis in_dim=3 .* got shape \(2, 4\)"):
        R.hyperlstm_cell(hp, state, jnp.ones((2, 4)))
    with pytest.raises(TypeError, match="`x` must be floating point, got int32; embed token ids first"):
        R.hyperlstm_cell(hp, state, jnp.ones((2, IN), jnp.int32))
    with pytest.raises(ValueError, match=r"`state.hyper.c` must have shape \(3, 4\) .* got \(2, 4\)"):
        R.hyperlstm_cell(hp, R.HyperLSTMState(R.zero_state(hp, (3,)).main, state.hyper), jnp.ones((3, IN)))
    with pytest.raises(TypeError, match=r"`state` must be a HyperLSTMState\(main, hyper\)"):
        R.hyperlstm_cell(hp, jnp.zeros((2, H)), jnp.ones((2, IN)))
    bad = {**hp, "main": {**hp["main"], "bias": jnp.zeros(3)}}
    with pytest.raises(ValueError, match=r"params leaf 'main/bias' has shape \(3,\), expected \(20,\)"):
        R.hyperlstm_cell(bad, state, jnp.ones((2, IN)))
    bad = {**hp, "proj": {**hp["proj"], "h": {**hp["proj"]["h"], "w_d": jnp.zeros((4, E + 1, H))}}}
    with pytest.raises(ValueError, match=r"'proj/h/w_d' has shape \(4, 5, 5\), expected \(4, 4, 5\)"):
        R.hyperlstm_scales(bad, state, jnp.ones((2, IN)))
    bad = {**hp, "hyper": R.lstm_init(jax.random.key(0), in_dim=IN, hidden=NH)}
    with pytest.raises(ValueError, match=r"'hyper/kernel_x' reads 3 inputs, expected in_dim \+ hidden = 3 \+ 5 = 8"):
        R.hyperlstm_cell(bad, state, jnp.ones((2, IN)))
    missing = {k: v for k, v in lp.items() if k != "ln_cell"}
    with pytest.raises(ValueError, match="params do not match hyperjax.recurrent.lstm_init; missing: ln_cell"):
        R.lstm_cell(missing, R.zero_state(lp, (2,)), jnp.ones((2, IN)))
    with pytest.raises(ValueError, match=r"`state.c` must have shape \(2, 5\)"):
        R.lstm_cell(lp, R.LSTMState(jnp.zeros((2, 6)), jnp.zeros((2, 5))), jnp.ones((2, IN)))
    with pytest.raises(ValueError, match=r"zero_state: params must come from lstm_init .* got \['w'\]"):
        R.zero_state({"w": jnp.ones(2)})
    with pytest.raises(ValueError, match="`batch_shape` must be a tuple of non-negative ints"):
        R.zero_state(lp, 4)
    with pytest.raises(ValueError, match=r"scan: `xs` must be f\[T, ..., in_dim\] \(time first\), got \(3,\)"):
        R.scan(R.lstm_cell, lp, R.zero_state(lp), jnp.ones(3))
    with pytest.raises(TypeError, match="`cell` must be callable"):
        R.scan("lstm", lp, R.zero_state(lp), jnp.ones((T, IN)))
    with pytest.raises(ValueError, match=r"lstm_cell: `x` must have last axis in_dim=3"):   # checked inside scan
        R.scan(R.lstm_cell, lp, R.zero_state(lp, (2,)), jnp.ones((T, 2, 7)))
    with pytest.raises(ValueError, match="hyper_hidden"):
        R.hyperlstm_init(jax.random.key(0), in_dim=IN, hidden=H, hyper_hidden=0)
    with pytest.raises(TypeError, match="`dtype` must be a floating dtype"):
        R.lstm_init(jax.random.key(0), in_dim=IN, hidden=H, dtype=jnp.int32)


# ------------------------------------------------------------------------------------------ benchmark
@pytest.mark.slow
def test_benchmark_quick_schema(tmp_path):
    """benchmarks.hyperlstm --quick: the JSON the README quotes, parameter counts, the materialised variant
    equal to the cell, its temp memory above the scaling form's. No timing asserts."""
    import json

    from benchmarks import hyperlstm as bench

    payload = bench.main(["--quick", "--results-dir", str(tmp_path)])
    record = json.loads((tmp_path / "hyperlstm.json").read_text())
    assert record["benchmark"] == "hyperlstm" and record["quick"] is True
    assert record["ratios"] == json.loads(json.dumps(payload["ratios"]))
    cfg = bench.QUICK
    head = cfg["vocab"] * cfg["embed"] + cfg["vocab"]
    assert record["params"]["hyperlstm"] == record["params"]["materialised"] == head + cfg["hidden"] * cfg["vocab"] + \
        R.hyperlstm_param_count(cfg["embed"], cfg["hidden"], cfg["hyper_hidden"], cfg["emb_dim"])
    assert record["params"]["lstm"] == head + cfg["lstm_hidden"] * cfg["vocab"] + R.lstm_param_count(cfg["embed"],
                                                                                                   cfg["lstm_hidden"])
    assert record["max_abs_diff_materialised"] < 1e-4
    assert set(record["step_ms"]) == set(bench.VARIANTS) and all(v > 0 for v in record["step_ms"].values())
    b = str(cfg["batch"])
    mem = record["memory"]
    assert mem["materialised"][b]["temp_mb"] > mem["hyperlstm"][b]["temp_mb"]
    assert record["ratios"][f"peak_materialised_over_hyperlstm/batch={b}"] == pytest.approx(
        mem["materialised"][b]["peak_mb"] / mem["hyperlstm"][b]["peak_mb"])
    assert "| materialised |" in (tmp_path / "hyperlstm.md").read_text()
