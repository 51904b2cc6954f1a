"""Proposed tests (for the lead): the backward pass of a batch of generated params stays batch-sized.

The slice-per-leaf split made the vmapped gradient of chunked pad every leaf's cotangent back to the full
flat length (one f[B, n] buffer per leaf); the fixed split's transpose is one concatenate. Traced only
(make_jaxpr), so each case costs a trace, not a compile.
"""

import jax
import jax.extend
import jax.numpy as jnp
import pytest

import hyperjax as hj


def _eqns(jaxpr):
    for e in jaxpr.eqns:
        yield e
        for sub in jax.extend.core.jaxprs_in_params(e.params):
            yield from _eqns(sub)


FACTORIES = [
    pytest.param(lambda s: hj.generators.dense(s, cond_dim=3, num_conds=4, hidden=8), id="dense"),
    pytest.param(lambda s: hj.generators.chunked(s, cond_dim=3, num_conds=4, chunk_size=16, hidden=8), id="chunked"),
]


@pytest.mark.parametrize("make", FACTORIES)
def test_vmapped_backward_pads_no_leaf_to_full_length(make):
    spec = hj.testing.mlp_spec((5, 7, 3))
    gen = make(spec)
    hp = gen.init(jax.random.key(0))

    def loss(hp):
        params = hj.generate_batch(gen, hp, jnp.arange(4))
        return sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(params))

    jaxpr = jax.make_jaxpr(jax.grad(loss))(hp).jaxpr
    pads = [e for e in _eqns(jaxpr) if e.primitive.name == "pad"]
    assert not pads, f"{len(pads)} pads in the backward pass, e.g. {pads[0]}"


# ---------------------------------------------------------------- compiled cost: vmap vs a Python loop
N_CONDS = 4


@pytest.mark.parametrize("name", ["dense", "chunked", "per_layer", "low_rank", "scale_modulation", "rowwise",
                                  "codebook"])
def test_vmapped_gradient_moves_at_most_1_5x_the_bytes_of_the_loop(name):
    """XLA's cost_analysis of jit(grad) over N_CONDS conds: the vmapped loss accesses <= 1.5x the bytes of the
    same loss written as a Python loop (chunked's vmapped backward was 1.81x before the split fix; a
    per-leaf full-length pad would be ~#leaves x). Generators as in benchmarks/batched_grad.py."""
    from benchmarks import batched_grad as bg

    spec = hj.testing.mlp_spec((16, 32, 32, 4))
    gen = bg.GENERATORS[name](spec, N_CONDS)
    hp = jax.jit(gen.init)(jax.random.key(1))
    apply, conds = bg.apply_fn(name, gen), bg.conds_for(name, N_CONDS)
    x = jax.random.normal(jax.random.key(2), (N_CONDS, 16, 16))
    y = jnp.arange(N_CONDS * 16).reshape(N_CONDS, 16) % 4

    def loss_one(p, i):
        logits = spec.apply(apply(p, conds[i]), x[i])
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[i][:, None], axis=1))

    fns = bg.gradients(loss_one, N_CONDS)
    compiled = {k: jax.jit(jax.grad(fns[k])).lower(hp).compile() for k in ("loop", "vmap")}
    nbytes = {k: bg.cost(c)["bytes"] for k, c in compiled.items()}
    ratio = nbytes["vmap"] / nbytes["loop"]
    print(f"{name}: bytes vmap/loop {ratio:.3f}")
    assert ratio <= 1.5, f"{name}: vmapped gradient accesses {ratio:.2f}x the bytes of the loop ({nbytes})"
    grads = {k: c(hp) for k, c in compiled.items()}           # and the two compute the same gradient
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads["vmap"]), jax.tree.leaves(grads["loop"])):
        assert jnp.allclose(a, b, rtol=1e-4, atol=1e-5), f"{name}: {jax.tree_util.keystr(path)}"


# ---------------------------------------------------------------- a shared base: summed by a dot, not a reduce
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_shared_returns_x_bitwise(jit, dtype):
    x = jax.random.normal(jax.random.key(0), (32, 40), dtype)
    f = jax.jit(hj.generators.shared) if jit else hj.generators.shared
    y = f(x, jnp.array([0.3, -2.0]))
    assert y.dtype == dtype and y.shape == x.shape
    assert bool(jnp.all(y == x))
    ys = jax.vmap(f, in_axes=(None, 0))(x, jnp.array([[0.0, 1.0], [jnp.inf, 2.0], [jnp.nan, 3.0]]))
    assert ys.shape == (3, 32, 40) and bool(jnp.all(ys == x[None])), "a non-finite `like` must not leak into x"


def _modulated(w, s):
    return jnp.sum(jnp.tanh(hj.generators.shared(w, s) * s[0] + s[1]))


def _plain(w, s):
    return jnp.sum(jnp.tanh(w * s[0] + s[1]))


def test_shared_gradients_match_the_broadcast_and_the_loop():
    """grad of vmap (summed over conds) and vmap of grad (one gradient per cond) both equal the plain
    broadcast's, and the sum equals a Python loop's."""
    w = jax.random.normal(jax.random.key(1), (32, 48))
    s = jax.random.normal(jax.random.key(2), (5, 2))
    summed = jax.grad(lambda w: jnp.sum(jax.vmap(_modulated, (None, 0))(w, s)))(w)
    want = jax.grad(lambda w: jnp.sum(jax.vmap(_plain, (None, 0))(w, s)))(w)
    loop = sum(jax.grad(_plain)(w, s[i]) for i in range(5))
    assert jnp.allclose(summed, want, rtol=1e-6, atol=1e-6)
    assert jnp.allclose(summed, loop, rtol=1e-5, atol=1e-5)
    per_cond = jax.vmap(jax.grad(_modulated), (None, 0))(w, s)
    assert per_cond.shape == (5, 32, 48)
    assert jnp.allclose(per_cond, jax.vmap(jax.grad(_plain), (None, 0))(w, s), rtol=1e-6, atol=1e-6)
    # the cond gets no gradient through the 1 (only through its own use)
    g_s = jax.grad(_modulated, argnums=1)(w, s[0])
    assert jnp.allclose(g_s, jax.grad(_plain, argnums=1)(w, s[0]), rtol=1e-6, atol=1e-6)


def test_shared_forward_mode_and_second_order():
    w = jax.random.normal(jax.random.key(5), (32, 48))
    s = jax.random.normal(jax.random.key(6), (3, 2))
    dw = jax.random.normal(jax.random.key(7), (32, 48))

    def f(w, g):
        return jnp.sum(jax.vmap(g, (None, 0))(w, s))

    _, t = jax.jvp(lambda w: f(w, _modulated), (w,), (dw,))
    _, t_want = jax.jvp(lambda w: f(w, _plain), (w,), (dw,))
    assert jnp.allclose(t, t_want, rtol=1e-5, atol=1e-5)
    hvp = jax.jvp(jax.grad(lambda w: f(w, _modulated)), (w,), (dw,))[1]
    hvp_want = jax.jvp(jax.grad(lambda w: f(w, _plain)), (w,), (dw,))[1]
    assert jnp.allclose(hvp, hvp_want, rtol=1e-5, atol=1e-5)


def test_shared_gradient_matches_central_differences():
    with jax.enable_x64():
        w = jax.random.normal(jax.random.key(3), (32, 32), jnp.float64)     # >= SHARED_MIN_SIZE elements
        s = jax.random.normal(jax.random.key(4), (4, 2), jnp.float64)

        def f(w):
            return jnp.sum(jax.vmap(_modulated, (None, 0))(w, s))

        g, eps = jax.grad(f)(w), 1e-6
        for i, j in [(0, 0), (3, 17), (31, 31), (20, 5)]:
            e = jnp.zeros_like(w).at[i, j].set(eps)
            assert abs((f(w + e) - f(w - e)) / (2 * eps) - g[i, j]) < 1e-6


@pytest.mark.parametrize("name", ["dense", "chunked", "per_layer", "low_rank", "scale_modulation", "rowwise",
                                  "codebook"])
def test_vmapped_gradient_sums_shared_hparams_by_a_dot(name):
    """Every hparams leaf is shared by all conds: under vmap the cotangent of any leaf of SHARED_MIN_SIZE (1,024)
    or more elements must be summed over the cond axis by a dot_general (the transpose of
    `hj.generators.shared` or of a matmul), never by a reduce_sum of f[B, *leaf.shape] over B (low_rank's W0
    summed that way ran at 1.6x the loop's time on the CPU, dense's head bias at 1.3x;
    benchmarks/batched_grad.py). Traced only, on abstract hparams; the bytes test above checks that vmap and
    loop compute the same gradient."""
    from benchmarks import batched_grad as bg

    n = 3                                            # sizes no other f[B, ...] array of the step has
    spec = hj.testing.mlp_spec((16, 48, 40, 5))
    gen = bg.GENERATORS[name](spec, n)
    hp = jax.eval_shape(gen.init, jax.random.key(1))
    apply, conds = bg.apply_fn(name, gen), bg.conds_for(name, n)
    x = jax.random.normal(jax.random.key(2), (n, 8, 16))

    def loss(hp):
        return jnp.sum(jax.vmap(lambda c, xi: spec.apply(apply(hp, c), xi))(conds, x) ** 2)

    shapes = {(n, *w.shape): jax.tree_util.keystr(p)
              for p, w in jax.tree_util.tree_leaves_with_path(hp) if w.size >= hj.generators.SHARED_MIN_SIZE}
    reduces = [(shapes[e.invars[0].aval.shape], e) for e in _eqns(jax.make_jaxpr(jax.grad(loss))(hp).jaxpr)
               if e.primitive.name == "reduce_sum" and e.params["axes"] == (0,) and e.invars[0].aval.shape in shapes]
    assert not reduces, f"{name}: the cotangent of {reduces[0][0]} is summed over conds by a reduce: {reduces[0][1]}"


@pytest.mark.parametrize("x,like,err,match", [
    (jnp.ones(3), jnp.ones(0), ValueError, r"`like` must be a non-empty array .* got \(0,\)"),
    (jnp.arange(3), jnp.ones(2), TypeError, "`x` must be a floating-point array .* got int32"),
    ([1.0, 2.0], jnp.ones(2), TypeError, "`x` must be a floating-point array .* got list"),
], ids=["empty-like", "int-x", "list-x"])
def test_shared_names_bad_input(x, like, err, match):
    with pytest.raises(err, match=match):
        hj.generators.shared(x, like)
