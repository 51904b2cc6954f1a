"""per_layer (Ha et al. static hypernetwork): the paper's parameter count, the two-stage formula per input
slice and per block, layouts, stacked layers, conditioning, gradients, depth-independent programs, errors."""

import functools
import math

import chex
import flax.linen as nn
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

X_IMG = jnp.linspace(0.0, 1.0, 2 * 4 * 4, dtype=jnp.float32).reshape(2, 4, 4, 1)


class Unrolled(nn.Module):
    """`hj.testing.StackedMLP` with one leaf per hidden layer (a Python loop of Dense layers `hidden_i`)."""

    depth: int = 3
    width: int = 4

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(self.width)(x)
        for i in range(self.depth):
            h = nn.relu(nn.Dense(self.width, name=f"hidden_{i}")(h))
        return nn.Dense(2)(h)


@functools.cache
def paper_spec():
    return hj.testing.cnn_spec((16, 16), kernel=7, classes=3, image=(4, 4, 1), pool="flatten")


@functools.cache
def kernel_spec(shape=(7, 7, 16, 16)):
    """Just the paper's generated leaf, 'Conv_1/kernel' (HWIO), with from_fn's cheap default init."""
    return hj.targets.from_fn(lambda p, x: x, {"Conv_1": {"kernel": hj.testing.sds(shape)}})


@functools.cache
def small_cnn():
    return hj.testing.cnn_spec((4, 4), kernel=3, classes=3, image=(4, 4, 1), pool="flatten")


@functools.cache
def out_in_spec():
    """An Equinox/PyTorch-layout conv stack: weights (out, in, kh, kw), biases (out,)."""
    params = {"conv": {"weight": hj.testing.sds((4, 2, 3, 3)), "bias": hj.testing.sds((4,))},
              "lin": {"weight": hj.testing.sds((3, 4))}}

    def apply(p, x):                                     # x: f[n, 2, h, w] (NCHW)
        y = jax.lax.conv_general_dilated(x, p["conv"]["weight"], (1, 1), "SAME")
        y = jax.nn.relu(y + p["conv"]["bias"][None, :, None, None])
        return jnp.mean(y, axis=(2, 3)) @ p["lin"]["weight"].T
    return hj.targets.from_fn(apply, params, layout="out_in"), jnp.ones((2, 2, 5, 5), jnp.float32)


CONFIGS = [   # (target, options, also run apply eagerly and compare with jit)
    pytest.param(lambda: (small_cnn(), X_IMG), {}, False, id="all-leaves"),
    pytest.param(lambda: (small_cnn(), X_IMG), {"where": "Conv_1/*", "block": (2, 2)}, False, id="blocks"),
    pytest.param(lambda: (small_cnn(), X_IMG), {"where": "*/kernel", "cond_dim": 3}, False, id="conditioned"),
    pytest.param(lambda: (small_cnn(), X_IMG), {"where": "*/kernel", "cond_dim": 3, "num_conds": 5}, False,
                 id="ids"),
    pytest.param(out_in_spec, {"block": (2, 2), "where": "conv/*", "cond_dim": 3}, True, id="out_in-blocks-cond"),
    pytest.param(out_in_spec, {}, False, id="out_in-all"),
    pytest.param(lambda: (hj.testing.stacked_spec(), jnp.ones((2, 3))),
                 {"where": "ScanBlock_0/*", "stack_axes": 1}, False, id="stacked"),
]


def cond_for(kwargs):
    if "num_conds" in kwargs:
        return jnp.int32(2)
    if "cond_dim" in kwargs:
        return jnp.linspace(-1.0, 1.0, kwargs["cond_dim"], dtype=jnp.float32)
    return None


def host(tree):
    """Leaves as NumPy arrays: assertions on the host compile nothing (eager jnp ops compile per shape)."""
    return jax.tree.map(np.asarray, tree)


def assert_close(a, b, **kw):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **kw), host(a), host(b))


def generator_weights(hparams):
    """Weights and biases of the per_layer generators (embeddings excluded), as the paper counts."""
    return sum(int(np.size(v)) for g in hparams["hyper"]["per_layer"].values() for v in g.values())


def group(hparams, name):
    """One block shape's generator weights with its blocks' embeddings, {"w_in", ..., "layer_emb"}."""
    return {**hparams["hyper"]["per_layer"][name], "layer_emb": hparams["embedding"]["layer_emb"][name]}


# ------------------------------------------------------------------------------------------------ the paper
def test_paper_mnist_parameter_count(key):
    """7x7x16x16 kernel, N_z = d = 4: 4,240 generator weights and biases against 12,544 kernel weights."""
    spec = paper_spec()
    gen = hj.generators.per_layer(spec, where="Conv_1/kernel", z_dim=4, d=4)
    hp = jax.eval_shape(gen.init, key)
    assert math.prod(spec.leaves["Conv_1/kernel"].shape) == 12_544
    assert generator_weights(hp) == 4_240
    assert hp["embedding"]["layer_emb"]["7x7x16x16"].shape == (1, 4)
    assert hj.generators.per_layer_param_count((7, 7, 16, 16), z_dim=4, d=4) == 4_240
    assert hj.generators.per_layer_param_count((16, 16, 7, 7), z_dim=4, d=4, layout="out_in") == 4_240
    # the ordinary params of the other leaves are there too, untouched by the generator
    assert set(hp["direct"]) == {"Conv_0", "Conv_1", "Dense_0"} and set(hp["direct"]["Conv_1"]) == {"bias"}


def _slice(g, j, i, shape):
    """Ha et al.: K_i = W_out (W_i z_j + B_i) + B_out, the kernel slice of input channel i of block j (NumPy)."""
    g = host(g)
    a = g["w_in"][i].T @ g["layer_emb"][j] + g["b_in"][i]
    return (a @ g["w_out"] + g["b_out"]).reshape(shape)


@pytest.mark.parametrize("block", [None, (8, 4)], ids=["layer", "blocks-8x4"])
def test_two_stage_formula_per_input_slice(block, key):
    spec = kernel_spec()
    gen = hj.generators.per_layer(spec, where="Conv_1/kernel", z_dim=4, d=4, block=block)
    hp = jax.jit(gen.init)(key)
    k = np.asarray(jax.jit(gen.apply)(hp)["Conv_1"]["kernel"])
    std = 1.0 / math.sqrt(7 * 7 * 16)                         # the fixed hyperfan-in scale of this leaf
    if block is None:
        g = group(hp, "7x7x16x16")
        for i in (0, 5, 15):
            np.testing.assert_allclose(k[:, :, i, :], std * _slice(g, 0, i, (7, 7, 16)), atol=1e-6)
    else:
        g = group(hp, "7x7x8x4")
        assert g["layer_emb"].shape == (2 * 4, 4)              # 16/8 input tiles x 16/4 output tiles
        for it, ot, i in ((0, 0, 0), (1, 2, 5), (1, 3, 7)):
            want = std * _slice(g, it * 4 + ot, i, (7, 7, 4))
            np.testing.assert_allclose(k[:, :, it * 8 + i, ot * 4:(ot + 1) * 4], want, atol=1e-6)


def test_each_block_has_its_own_embedding(key):
    """Changing the embedding of block (1, 0) changes that block of the kernel and nothing else."""
    spec = kernel_spec()
    gen = hj.generators.per_layer(spec, where="Conv_1/kernel", block=(8, 8))
    hp = jax.jit(gen.init)(key)
    apply = jax.jit(gen.apply)
    before = np.asarray(apply(hp)["Conv_1"]["kernel"])
    emb = np.array(hp["embedding"]["layer_emb"]["7x7x8x8"])
    emb[2] += 1.0                                                          # block (it=1, ot=0)
    hp2 = {**hp, "embedding": {"layer_emb": {"7x7x8x8": jnp.asarray(emb)}}}
    diff = np.abs(np.asarray(apply(hp2)["Conv_1"]["kernel"]) - before).max(axis=(0, 1))   # (16, 16)
    assert diff[8:, :8].min() > 0
    assert diff[:8].max() == 0 and diff[:, 8:].max() == 0


# ------------------------------------------------------------------------------------------------ outputs
@pytest.mark.parametrize("make,kwargs,eager", CONFIGS)
def test_output_matches_spec_and_runs(make, kwargs, eager, key):
    """Shapes and dtypes of the target, finite, runnable; eager and jit agree."""
    spec, x = make()
    gen = hj.generators.per_layer(spec, **kwargs)
    c = cond_for(kwargs)
    hp, params, y = jax.jit(lambda key: (lambda hp: (hp, gen.apply(hp, c), spec.apply(gen.apply(hp, c), x)))(
        gen.init(key)))(key)
    chex.assert_trees_all_equal_shapes_and_dtypes(params, spec.abstract_params)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(host(params)))
    assert y.shape[0] == x.shape[0] and np.isfinite(np.asarray(y)).all()
    if eager:
        assert_close(params, gen.apply(hp, c), atol=1e-6)                  # eager == jit


def test_groups_share_a_generator_across_layers_of_one_shape(key):
    spec = hj.targets.from_linen(Unrolled(depth=3, width=4), jnp.ones((1, 3)))
    gen = hj.generators.per_layer(spec, where="hidden_*/*")
    hp = jax.eval_shape(gen.init, key)
    assert set(hp["hyper"]["per_layer"]) == {"4x4", "1x4"}           # kernels (4 x 4) and biases (1 x 4)
    assert hp["embedding"]["layer_emb"]["4x4"].shape == (3, 4)       # one embedding per layer
    assert hp["embedding"]["layer_emb"]["1x4"].shape == (3, 4)
    # blocks of another shape get another generator
    gen2 = hj.generators.per_layer(spec, where="*/kernel")
    assert set(jax.eval_shape(gen2.init, key)["hyper"]["per_layer"]) == {"3x4", "4x4", "4x2"}
    # the embeddings are labelled "embedding" for hj.training.multi_optimizer
    labels = hj.training.labels(hp)
    assert labels["embedding"]["layer_emb"]["4x4"] == "embedding" and labels["hyper"]["per_layer"]["4x4"]["w_out"] == "hyper"
    assert labels["direct"]["Dense_0"]["kernel"] == "direct"


def test_stacked_layers_equal_separate_leaves(key):
    """A scanned (L, 4, 4) leaf with stack_axes=1 gives the kernels of L separate leaves from the same hparams."""
    stacked = hj.testing.stacked_spec(3)
    unrolled = hj.targets.from_linen(Unrolled(depth=3), jnp.ones((1, 3)))
    g_s = hj.generators.per_layer(stacked, where="ScanBlock_0/*", stack_axes=1)
    g_u = hj.generators.per_layer(unrolled, where="hidden_*/*")
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)

    @jax.jit
    def both(key):
        hp = g_u.init(key)
        p_u = g_u.apply(hp)
        p_s = g_s.apply({"hyper": hp["hyper"], "embedding": hp["embedding"], "direct": {k: hp["direct"][k] for k in ("Dense_0", "Dense_1")}})
        return p_s, p_u, stacked.apply(p_s, x), unrolled.apply(p_u, x)
    p_s, p_u, y_s, y_u = host(both(key))
    for j in range(3):
        for leaf in ("kernel", "bias"):
            np.testing.assert_allclose(p_s["ScanBlock_0"]["Dense_0"][leaf][j], p_u[f"hidden_{j}"][leaf], atol=1e-6)
    np.testing.assert_allclose(y_s, y_u, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("unrolled", [False, True], ids=["stacked", "separate-leaves"])
def test_program_does_not_grow_with_depth(unrolled, key):
    """One batched contraction per group whatever the depth: the number of dot_generals stays fixed,
    and with stacked leaves the whole jaxpr has the same size for 2 and 16 layers."""
    def jaxpr(depth):
        if unrolled:
            spec = hj.targets.from_linen(Unrolled(depth=depth), jnp.ones((1, 3)))
            gen = hj.generators.per_layer(spec, where="hidden_*/*")
        else:
            spec = hj.testing.stacked_spec(depth)
            gen = hj.generators.per_layer(spec, where="ScanBlock_0/*", stack_axes=1)
        return jax.make_jaxpr(gen.apply)(jax.eval_shape(gen.init, key)).jaxpr
    small, big = jaxpr(2), jaxpr(16)
    count = lambda j: sum(e.primitive.name == "dot_general" for e in j.eqns)
    assert count(small) == count(big) == 4                  # 2 stages x 2 groups (kernels, biases)
    if not unrolled:
        assert len(small.eqns) == len(big.eqns)


def test_init_matches_fan_in_variance(key):
    """At init, 32 stacked 16 x 16 layers have kernel variance ~ 1/fan_in = 1/16 (hyperfan-in)."""
    spec = hj.targets.from_fn(lambda p, x: x, {"kernel": hj.testing.sds((32, 16, 16)), "bias": hj.testing.sds((32, 16))})
    gen = hj.generators.per_layer(spec, where="kernel", stack_axes=1, z_dim=8, d=8)
    k = jax.jit(lambda key: gen.apply(gen.init(key)))(key)["kernel"]
    assert k.shape == (32, 16, 16)
    k = np.asarray(k)
    np.testing.assert_allclose(k.var(), 1.0 / 16, rtol=0.3)
    assert abs(k.mean()) < 0.05


# ------------------------------------------------------------------------------------------------ gradients
def test_numeric_gradients(key):
    spec, x = out_in_spec()
    gen = hj.generators.per_layer(spec, cond_dim=2, where="conv/*", z_dim=2, d=2, block=(2, 2))
    c = jnp.array([0.3, -0.7], jnp.float32)

    @jax.jit
    def loss(hp):
        return jnp.mean(jnp.square(spec.apply(gen.apply(hp, c), x)))
    hp = jax.jit(gen.init)(key)
    flat, unravel = ravel_pytree(hp)                   # one vector: finite differences compile one shape
    with jax.numpy_dtype_promotion("standard"):
        check_grads(jax.jit(lambda v: loss(unravel(v))), (flat,), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
    grads = jax.jit(jax.grad(loss))(hp)
    for path, g in jax.tree_util.tree_flatten_with_path({k: grads[k] for k in ("hyper", "embedding")})[0]:
        assert np.abs(np.asarray(g)).max() > 0, path          # every generator leaf and embedding learns


def test_training_lowers_loss(key):
    """A few Adam steps on the generator, embeddings and ordinary params fit a tiny regression."""
    spec = hj.targets.from_linen(Unrolled(depth=2), jnp.ones((1, 3)))
    gen = hj.generators.per_layer(spec, where="hidden_*/kernel", z_dim=3, d=3)
    x = jnp.linspace(-1, 1, 24, dtype=jnp.float32).reshape(8, 3)
    y = jnp.stack([jnp.sin(3 * x[:, 0]), x[:, 1] * x[:, 2]], axis=1)

    def loss_fn(hp, batch, rng):
        return jnp.mean(jnp.square(spec.apply(gen.apply(hp), batch[0]) - batch[1]))
    opt = optax.adam(1e-2)
    state = jax.jit(lambda key: hj.training.init_state(gen.init(key), opt))(key)
    step = hj.training.make_step(loss_fn, opt)
    first = None
    for _ in range(60):
        state, m = step(state, (x, y))
        first = float(m["loss"]) if first is None else first
    assert float(m["loss"]) < 0.5 * first


def test_per_sample_vmap(key):
    spec = small_cnn()
    gen = hj.generators.per_layer(spec, cond_dim=3, where="Conv_1/kernel")
    hp = jax.jit(gen.init)(key)
    conds = jax.random.normal(jax.random.key(1), (2, 3), jnp.float32)
    ys = jax.jit(hj.per_sample(gen, spec))(hp, conds, X_IMG)
    loop = jax.jit(lambda hp: [spec.apply(gen.apply(hp, conds[i]), X_IMG[i:i + 1])[0] for i in range(2)])(hp)
    for i in range(2):
        np.testing.assert_allclose(ys[i], loop[i], rtol=1e-5, atol=1e-6)
    batch = jax.jit(hj.generate_batch, static_argnums=0)(gen, hp, conds)
    assert batch["Conv_1"]["kernel"].shape == (2, 3, 3, 4, 4)
    k = np.asarray(batch["Conv_1"]["kernel"])
    assert np.abs(k[0] - k[1]).max() > 0


# ------------------------------------------------------------------------------------------------ properties
@settings(max_examples=15, deadline=None)
@given(k=st.integers(1, 3), n_in=st.integers(1, 3), n_out=st.integers(1, 3), t_in=st.integers(1, 2),
       t_out=st.integers(1, 2), z=st.integers(1, 3), d=st.integers(1, 3), layout=st.sampled_from(["in_out", "out_in"]))
def test_shapes_and_counts_property(k, n_in, n_out, t_in, t_out, z, d, layout):
    N_in, N_out = n_in * t_in, n_out * t_out
    shape = (k, k, N_in, N_out) if layout == "in_out" else (N_out, N_in, k, k)
    spec = hj.targets.from_fn(lambda p, x: x, {"w": hj.testing.sds(shape), "b": hj.testing.sds((N_out,))}, layout=layout)
    gen = hj.generators.per_layer(spec, z_dim=z, d=d, block=(n_in, n_out))
    hp = jax.eval_shape(gen.init, jax.random.key(0))
    params = jax.eval_shape(gen.apply, hp)                 # shapes only: no compilation per example
    chex.assert_trees_all_equal_shapes_and_dtypes(params, spec.abstract_params)
    block = (k, k, n_in, n_out) if layout == "in_out" else (n_out, n_in, k, k)
    want = hj.generators.per_layer_param_count(block, z_dim=z, d=d, layout=layout)
    want += hj.generators.per_layer_param_count((n_out,), z_dim=z, d=d)       # biases: their own group
    assert generator_weights(hp) == want
    assert sum(z.shape[0] for z in hp["embedding"]["layer_emb"].values()) == t_in * t_out + t_out


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("kwargs,match", [
    ({"z_dim": 0}, r"`z_dim` must be a positive int, got 0"),
    ({"d": -1}, r"`d` must be a positive int, got -1"),
    ({"kernels": "conv3d"}, r"unknown `kernels`='conv3d'; valid options are 'auto', 'conv', 'dense'"),
    ({"where": "*", "kernels": "conv"}, r"leaf 'Conv_0/bias' has shape \(4,\) \(1-D\), but kernels='conv' needs a 4-D"),
    ({"where": "Dense_0/kernel", "kernels": "conv"}, r"leaf 'Dense_0/kernel' .* kernels='conv' needs a 4-D convolution"),
    ({"where": "Conv_1/kernel", "kernels": "dense"}, r"leaf 'Conv_1/kernel' has shape \(3, 3, 4, 4\) .* 2-D kernel"),
    ({"where": "Conv_0/kernel", "block": (2, 2)}, r"leaf 'Conv_0/kernel' \(3, 3, 1, 4\) has 1 input channels N_in, "
                                                  r"not a multiple of block\[0\]=2"),
    ({"where": "Conv_1/kernel", "block": (4, 3)}, r"leaf 'Conv_1/kernel' .* 4 output channels N_out, not a "
                                                  r"multiple of block\[1\]=3"),
    ({"block": (2,)}, r"`block` must be a pair \(in_block, out_block\)"),
    ({"block": (2, 0)}, r"`block` must be a sequence of positive ints|`block` must be a positive int"),
    ({"stack_axes": -1}, r"`stack_axes` must be an int >= 0"),
    ({"where": "Conv_0/bias", "stack_axes": 1}, r"leaf 'Conv_0/bias' has shape \(4,\), too few axes for "
                                                r"stack_axes=1"),
    ({"num_conds": 3}, r"`num_conds` needs `cond_dim`"),
    ({"where": "Nope/*"}, r"`where`='Nope/\*' matches no leaf of the target. Available paths: Conv_0/bias"),
])
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hj.generators.per_layer(small_cnn(), **kwargs)


def test_mixed_stacks_raise():
    """stack_axes=1 over leaves that are not all one scanned stack would misread a kernel as stacked biases."""
    spec = hj.testing.stacked_spec(3)
    with pytest.raises(ValueError, match=r"with stack_axes=1 every selected leaf must have the same leading layer "
                                         r"axes, got 'Dense_0/kernel' \(3,\), 'Dense_1/kernel' \(4,\)"):
        hj.generators.per_layer(spec, where="*/kernel", stack_axes=1)


def test_bad_conditioning_raises(key):
    spec = small_cnn()
    static = hj.generators.per_layer(spec, where="Conv_1/kernel")
    with pytest.raises(ValueError, match=r"built without conditioning \(cond_dim=None\), so `cond` must be None"):
        jax.eval_shape(static.apply, jax.eval_shape(static.init, key), jnp.ones(3))
    cond = hj.generators.per_layer(spec, cond_dim=3, where="Conv_1/kernel")
    with pytest.raises(ValueError, match=r"`cond` must have shape \(3,\) \(cond_dim=3\), got \(2, 3\)"):
        jax.eval_shape(cond.apply, jax.eval_shape(cond.init, key), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"hparams tree does not match the target \(missing: embedding/layer_emb/"):
        jax.eval_shape(static.apply, {"direct": jax.eval_shape(static.init, key)["direct"]})
    with pytest.raises(TypeError, match=r"`target` must be a TargetSpec"):
        hj.generators.per_layer({"w": hj.testing.sds((2, 2))})
