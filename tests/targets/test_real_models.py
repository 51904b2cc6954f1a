"""Targets as real Flax models write them (issue 13 section 1): logical partitioning boxes, DenseGeneral attention
kernels, nn.scan stacks — paths, fans, init statistics, the 2-D view, per_layer stacks and exact apply equality,
on `hj.testing.Transformer` (lm1b style) and an NNX model with LinearGeneral kernels and vmapped layers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import hyperjax as hj
import hyperjax.testing as ht

MODEL = ht.Transformer(vocab=16, width=32, heads=4, mlp=64, layers=2)
TOKENS = jnp.arange(16, dtype=jnp.int32).reshape(2, 8) % 16


@pytest.fixture(scope="module")
def spec():
    return hj.targets.from_linen(MODEL, TOKENS)


@pytest.fixture(scope="module")
def variables():
    return MODEL.init(jax.random.key(3), TOKENS)


def test_boxes_are_unboxed_and_paths_end_in_param_names(spec):
    assert "layers/attention/query/kernel" in spec.paths
    assert not any(p.endswith("/value") for p in spec.paths)
    assert spec.select("*/query/kernel") == ("layers/attention/query/kernel",)
    assert spec.leaves["layers/attention/query/kernel"].shape == (2, 32, 4, 8)


def test_apply_equals_the_frameworks_own_call_and_rebox_restores_the_boxes(spec, variables):
    params = nn.unbox(variables["params"])
    np.testing.assert_array_equal(spec.apply(params, TOKENS), MODEL.apply(variables, TOKENS))
    np.testing.assert_array_equal(jax.jit(spec.apply)(params, TOKENS), jax.jit(MODEL.apply)(variables, TOKENS))
    boxed = spec.rebox(params)
    assert jax.tree.structure(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned)) == \
        jax.tree.structure(variables["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
    box = boxed["layers"]["mlp_in"]["kernel"]
    assert isinstance(box, nn.Partitioned) and box.names == ("layers", "embed", "mlp")
    np.testing.assert_array_equal(MODEL.apply({"params": boxed}, TOKENS), MODEL.apply(variables, TOKENS))


def test_pretrained_boxed_variables_become_the_base(spec, variables):
    base = hj.targets.from_linen(MODEL, TOKENS, params=variables)
    ht.assert_tree_like(base.params, spec)
    np.testing.assert_array_equal(base.params["layers"]["mlp_in"]["kernel"],
                                  variables["params"]["layers"]["mlp_in"]["kernel"].value)


def test_logical_names_reach_the_spec(spec):
    names = spec.logical_names()
    assert names["layers/mlp_in/kernel"] == ("layers", "embed", "mlp")
    assert names["embed/embedding"] == ("vocab", "embed")
    assert "layers/attention/query/kernel" not in names      # lm1b's 2 names for a 4-D kernel: not per axis


@pytest.mark.parametrize("path,kind,stack,inputs,outputs,fans", [
    ("layers/attention/query/kernel", "kernel", (0,), (1,), (2, 3), (32, 32)),
    ("layers/attention/out/kernel", "kernel", (0,), (1, 2), (3,), (32, 32)),
    ("layers/attention/query/bias", "bias", (0,), (), (1, 2), (32, 32)),      # its kernel's fans
    ("layers/mlp_in/kernel", "kernel", (0,), (1,), (2,), (32, 64)),
    ("layers/mlp_out/bias", "bias", (0,), (), (1,), (64, 32)),
    ("layers/LayerNorm_0/scale", "scale", (0,), (), (1,), (32, 32)),
    ("embed/embedding", "embedding", (), (0,), (1,), (16, 32)),
    ("logits/kernel", "kernel", (), (0,), (1,), (32, 16)),
])
def test_axes_and_fans_follow_the_layers(spec, path, kind, stack, inputs, outputs, fans):
    ax = spec.leaf_axes(path)
    assert (ax.kind, ax.stack, ax.inputs, ax.outputs) == (kind, stack, inputs, outputs)
    assert spec.fans(path) == fans


def test_init_moments_recognise_norm_scales_and_kernels(spec):
    assert spec.init_moments("layers/LayerNorm_1/scale")[0] == 1.0
    assert spec.init_moments("final_norm/scale")[0] == 1.0
    assert spec.init_moments("layers/attention/query/kernel") == (0.0, 1.0 / 32)   # was 1/256 read as a conv


@pytest.mark.parametrize("path", ["layers/attention/query/kernel", "layers/attention/out/kernel",
                                  "layers/mlp_in/kernel", "logits/kernel"])
def test_matrix_view_round_trips_and_matches_the_layer(spec, variables, path):
    leaf = ht.leaf_at(nn.unbox(variables["params"]), path)
    m = hj.targets.as_matrix(spec, path, leaf)
    stack, n_in, n_out = hj.targets.matrix_shape(spec, path)
    assert m.shape == (*stack, n_in, n_out)
    np.testing.assert_array_equal(hj.targets.from_matrix(spec, path, m), leaf)
    np.testing.assert_array_equal(hj.targets.from_matrix(spec, path, m[None]), leaf[None])  # batch kept in front
    if path.endswith("query/kernel"):           # x @ view == DenseGeneral's contraction, per layer
        x = jnp.ones((3, 32))
        np.testing.assert_allclose(x @ m[1], jnp.einsum("bd,dhk->bhk", x, leaf[1]).reshape(3, -1), rtol=1e-6)


def test_matrix_view_of_a_bias_is_refused(spec):
    with pytest.raises(ValueError, match="layers/attention/query/bias.*bias, not a kernel"):
        hj.targets.matrix_shape(spec, "layers/attention/query/bias")


GENERATORS = {
    "dense": lambda s: hj.generators.dense(s, hidden=(64,)),
    "chunked": lambda s: hj.generators.chunked(s, chunk_size=512, hidden=(64,)),
    "per_layer": lambda s: hj.generators.per_layer(s),
}
CHECKED = ["layers/attention/query/kernel", "layers/attention/out/kernel", "layers/mlp_in/kernel",
           "layers/mlp_out/kernel", "logits/kernel"]


@pytest.mark.parametrize("name", list(GENERATORS))
def test_generated_leaves_start_with_the_layers_own_variance(spec, name):
    """Median over 8 generator inits of var(generated) / var(the model's own init) within 20% per kernel; norm
    scales start at mean 1."""
    gen = GENERATORS[name](spec)

    def stats(key):
        g = gen.apply(gen.init(key))
        own = spec.init(key)
        return (jnp.stack([jnp.var(ht.leaf_at(g, p)) / jnp.var(ht.leaf_at(own, p)) for p in CHECKED]),
                jnp.mean(ht.leaf_at(g, "layers/LayerNorm_0/scale")))
    ratio, scale_mean = jax.jit(jax.vmap(stats))(jax.random.split(jax.random.key(0), 8))
    np.testing.assert_allclose(np.median(np.asarray(ratio), axis=0), 1.0, atol=0.2,
                               err_msg=f"{name}: {dict(zip(CHECKED, np.median(np.asarray(ratio), axis=0)))}")
    np.testing.assert_allclose(np.median(np.asarray(scale_mean)), 1.0, atol=0.1)


def test_per_layer_reads_the_scan_stack(spec):
    gen = hj.generators.per_layer(spec, where="layers/*/kernel")
    hparams = gen.init(jax.random.key(0))
    emb = hparams["embedding"]["layer_emb"]
    # query/key/value (32 x 32 views), out (32 x 32) share one block shape: 4 kernels x 2 layers embeddings
    assert emb["32x32"].shape[0] == 4 * 2
    out = gen.apply(hparams)
    q = ht.leaf_at(out, "layers/attention/query/kernel")
    assert q.shape == (2, 32, 4, 8) and not np.allclose(q[0], q[1])           # two layers, not merged
    merged = hj.generators.per_layer(spec, where="layers/mlp_in/kernel", stack_axes=0, kernels="auto")
    assert merged.init(jax.random.key(0))["embedding"]["layer_emb"]["2x32x64"].shape[0] == 1  # the override


class _Block(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(8, 8, rngs=rngs)


class _NNXModel(nnx.Module):
    def __init__(self, rngs):
        self.attention = nnx.MultiHeadAttention(num_heads=2, in_features=8, qkv_features=8, decode=False, rngs=rngs)
        make = nnx.split_rngs(splits=3)(nnx.vmap(lambda r: _Block(r), in_axes=0, out_axes=0))
        self.blocks = make(rngs)

    def __call__(self, x):
        return self.attention(x)


def test_nnx_layers_give_their_axes():
    spec = hj.targets.from_nnx(_NNXModel(nnx.Rngs(0)))
    assert spec.leaf_axes("attention/query/kernel")[:4] == ("kernel", (), (0,), (1, 2))
    assert spec.leaf_axes("attention/out/kernel")[:4] == ("kernel", (), (0, 1), (2,))
    assert spec.leaf_axes("blocks/linear/kernel")[:4] == ("kernel", (0,), (1,), (2,))
    assert spec.fans("blocks/linear/kernel") == (8, 8) and spec.fans("attention/query/bias") == (8, 8)


def test_bad_axes_are_named():
    s = hj.targets.from_fn(lambda p, x: x, {"w": jnp.zeros((3, 4))})
    with pytest.raises(ValueError, match="axes of leaf 'w'"):
        hj.targets.TargetSpec(None, s.leaves, s.treedef, axes={"w": hj.targets.LeafAxes("kernel", (), (0,), (0,))})
    with pytest.raises(ValueError, match="kind"):
        hj.targets.TargetSpec(None, s.leaves, s.treedef, axes={"w": hj.targets.LeafAxes("matrix", (), (0,), (1,))})
    with pytest.raises(ValueError, match="'v', which is not a leaf"):
        hj.targets.TargetSpec(None, s.leaves, s.treedef, axes={"v": hj.targets.LeafAxes("kernel", (), (0,), (1,))})


def test_logical_names_become_sharding_rules(spec):
    from jax.sharding import PartitionSpec as P

    rules = hj.sharding.logical_rules(spec, [("embed", None), ("mlp", "model"), ("vocab", "model"),
                                             ("layers", None)])
    by_path = dict(rules)
    assert by_path["layers/mlp_in/kernel"] == P(None, None, "model")
    assert by_path["embed/embedding"] == P("model", None)
    mesh = jax.sharding.AbstractMesh((1, 2), ("data", "model"))
    shard = hj.sharding.shardings(spec.abstract_params, mesh, rules, unmatched="ignore")
    assert shard["layers"]["mlp_out"]["kernel"].spec == P(None, "model", None)
    with pytest.raises(ValueError, match="leaf 'embed/embedding' has logical axes.*'vocab' is not in"):
        hj.sharding.logical_rules(spec, [("embed", None)], where="embed/*")
