"""hyperjax.testing: the ready targets reproduce the models the tests copied, the path helpers name leaves as
TargetSpec does, and each check passes on real generators and fails, naming the leaf, on a broken one."""

import collections

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hyperjax as hj
import hyperjax.testing as ht

X = ht.ramp((2, 5))


@pytest.fixture(scope="module")
def small():
    """The target of the broken generators below: a linen MLP 3 -> 4 -> 2."""
    return ht.mlp_spec((3, 4, 2))


# ------------------------------------------------------------------------------------------------ targets
def test_mlp_spec_reproduces_the_conftest_mlp(tiny_mlp_spec, key):
    spec = ht.mlp_spec()
    assert spec.paths == tiny_mlp_spec.paths == ("Dense_0/bias", "Dense_0/kernel", "Dense_1/bias", "Dense_1/kernel")
    assert spec.shapes == tiny_mlp_spec.shapes
    params = jax.jit(tiny_mlp_spec.init)(key)
    chex.assert_trees_all_close(jax.jit(spec.init)(key), params)   # same module tree -> same initialisers
    chex.assert_trees_all_close(spec.apply(params, X), tiny_mlp_spec.apply(params, X))


def test_mlp_spec_widths_and_activation(key):
    spec = ht.mlp_spec((5, 6, 4, 2), activation=jnp.tanh)
    assert spec.shapes == {"Dense_0/bias": (6,), "Dense_0/kernel": (5, 6), "Dense_1/bias": (4,),
                           "Dense_1/kernel": (6, 4), "Dense_2/bias": (2,), "Dense_2/kernel": (4, 2)}
    p = jax.jit(spec.init)(key)
    h = X
    for i in range(3):
        h = h @ p[f"Dense_{i}"]["kernel"] + p[f"Dense_{i}"]["bias"][None]
        h = jnp.tanh(h) if i < 2 else h
    np.testing.assert_allclose(spec.apply(p, X), h, rtol=1e-5, atol=1e-6)


def test_linen_module_classes_are_public_and_stable():
    from hyperjax.testing import MLP

    import flax.linen as nn
    assert ht.MLP is MLP and issubclass(MLP, nn.Module) and MLP.__module__ == "hyperjax.testing"
    assert issubclass(ht.CNN, nn.Module) and issubclass(ht.StackedMLP, nn.Module)
    spec = hj.targets.from_linen(MLP(features=(3,)), X)
    assert spec.shapes == {"Dense_0/bias": (3,), "Dense_0/kernel": (5, 3)}
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        ht.Nope  # noqa: B018


@pytest.mark.parametrize("pool,dense_in", [("mean", 4), ("flatten", 4 * 4 * 4)])
def test_cnn_spec(pool, dense_in, key):
    spec = ht.cnn_spec((2, 4), kernel=3, classes=5, image=(4, 4, 1), pool=pool)
    assert spec.shapes == {"Conv_0/bias": (2,), "Conv_0/kernel": (3, 3, 1, 2), "Conv_1/bias": (4,),
                           "Conv_1/kernel": (3, 3, 2, 4), "Dense_0/bias": (5,), "Dense_0/kernel": (dense_in, 5)}
    y = spec.apply(jax.jit(spec.init)(key), ht.ramp((2, 4, 4, 1), 0.0, 1.0))
    assert y.shape == (2, 5) and bool(jnp.all(jnp.isfinite(y)))
    with pytest.raises(ValueError, match="unknown `pool`='max'; valid options are 'mean', 'flatten'"):
        ht.cnn_spec(pool="max")


def test_stacked_spec_has_a_layer_axis_and_runs_the_layers_in_order(key):
    spec = ht.stacked_spec(depth=3, width=4, d_in=3, d_out=2)
    assert spec.shapes["ScanBlock_0/Dense_0/kernel"] == (3, 4, 4)
    assert spec.shapes["ScanBlock_0/Dense_0/bias"] == (3, 4)
    assert spec.shapes["Dense_0/kernel"] == (3, 4) and spec.shapes["Dense_1/kernel"] == (4, 2)
    p = jax.jit(spec.init)(key)
    x = ht.ramp((2, 3))
    h = x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"][None]
    stack = p["ScanBlock_0"]["Dense_0"]
    for i in range(3):                                   # layer i uses slice i of the stacked leaves
        h = jax.nn.relu(h @ stack["kernel"][i] + stack["bias"][i][None])
    np.testing.assert_allclose(spec.apply(p, x), h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"][None],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", ["in_out", "out_in"])
def test_fn_mlp_spec_layouts(layout, key):
    spec = ht.fn_mlp_spec((5, 7, 3), layout=layout)
    w = "kernel" if layout == "in_out" else "weight"
    assert spec.layout == layout and spec.paths == ("l0/bias", f"l0/{w}", "l1/bias", f"l1/{w}")
    assert spec.shapes[f"l0/{w}"] == ((5, 7) if layout == "in_out" else (7, 5))
    assert spec.fans(f"l0/{w}") == (5, 7)
    p = jax.jit(spec.init)(key)
    k0, k1 = (p["l0"][w], p["l1"][w]) if layout == "in_out" else (p["l0"][w].T, p["l1"][w].T)
    want = jax.nn.relu(X @ k0 + p["l0"]["bias"][None]) @ k1 + p["l1"]["bias"][None]
    np.testing.assert_allclose(spec.apply(p, X), want, rtol=1e-5, atol=1e-6)
    assert spec.apply(p, X[0]).shape == (3,)              # unbatched input: the bias add broadcasts explicitly


def test_fn_mlp_spec_bad_options():
    with pytest.raises(ValueError, match="`dtypes` names no leaf: l0/w"):
        ht.fn_mlp_spec(dtypes={"l0/w": jnp.bfloat16})
    with pytest.raises(ValueError, match="unknown `layout`='oihw'"):
        ht.fn_mlp_spec(layout="oihw")


def test_mixed_dtype_spec(key):
    spec = ht.mixed_dtype_spec()
    assert {p: l.dtype for p, l in spec.leaves.items()} == {
        "l0/bias": jnp.float32, "l0/kernel": jnp.bfloat16, "l1/bias": jnp.float32, "l1/kernel": jnp.float32}
    p = jax.jit(spec.init)(key)
    y = spec.apply(p, X)                                  # runs under strict dtype promotion (conftest)
    assert y.dtype == jnp.float32 and y.shape == (2, 3)
    want = jnp.tanh(X @ p["l0"]["kernel"].astype(jnp.float32) + p["l0"]["bias"][None]) @ p["l1"]["kernel"]
    np.testing.assert_allclose(y, want + p["l1"]["bias"][None], rtol=1e-5, atol=1e-6)
    assert ht.mixed_dtype_spec(low=jnp.float16).leaves["l0/kernel"].dtype == jnp.float16


# ------------------------------------------------------------------------------------------------ paths and values
def test_leaves_with_paths_names_leaves_as_targetspec_does(key):
    spec = ht.stacked_spec()
    params = jax.jit(spec.init)(key)
    assert [p for p, _ in ht.leaves_with_paths(params)] == list(spec.paths)
    tree = {"a": [jnp.zeros(1), (jnp.ones(2),)], "m": eqx.nn.Linear(2, 3, key=key)}
    assert [p for p, _ in ht.leaves_with_paths(tree)] == ["a/0", "a/1/0", "m/weight", "m/bias"]
    assert ht.path_of(jax.tree_util.tree_flatten_with_path(tree)[0][1][0]) == "a/1/0"
    assert list(ht.leaf_dict(params)) == list(spec.paths)
    assert ht.leaf_at(params, "ScanBlock_0/Dense_0/kernel") is params["ScanBlock_0"]["Dense_0"]["kernel"]
    with pytest.raises(KeyError, match="no leaf 'Dense_9/kernel'; the tree has: Dense_0/bias, Dense_0/kernel"):
        ht.leaf_at(params, "Dense_9/kernel")


def test_leaves_with_paths_is_leaf():
    tree = {"a": {"b": 1.0, "c": 2.0}, "d": 3.0}
    got = ht.leaves_with_paths(tree, is_leaf=lambda x: isinstance(x, dict) and "b" in x)
    assert [p for p, _ in got] == ["a", "d"] and got[0][1] == {"b": 1.0, "c": 2.0}


def test_filled_ramp_and_sds():
    abstract = {"w": ht.sds((3, 4)), "v": ht.sds((5,), jnp.bfloat16), "s": ht.sds(())}
    a, b = ht.filled(abstract), ht.filled(abstract)
    ht.assert_tree_like(a, abstract)
    chex.assert_trees_all_equal(a, b)
    np.testing.assert_allclose(np.asarray(a["w"]).ravel(), np.sin(np.arange(12) * 0.37 + 2), rtol=1e-6)
    assert float(a["s"]) == 0.0 and a["v"].dtype == jnp.bfloat16     # leaf i starts at sin(i): "s" is leaf 0
    r = ht.ramp((2, 3), 0.0, 1.0)
    assert r.dtype == jnp.float32 and r.shape == (2, 3)
    np.testing.assert_allclose(np.asarray(r).ravel(), np.linspace(0, 1, 6), rtol=1e-6)
    assert ht.ramp((4,), dtype=jnp.bfloat16).dtype == jnp.bfloat16


# ------------------------------------------------------------------------------------------------ assert_tree_like
def _edit(params, fn):
    """A copy of the nested params dict with fn applied to it in place."""
    p = jax.tree.map(lambda x: x, params)
    fn(p)
    return p


def _set(path, fn):
    def edit(p):
        *parents, last = path.split("/")
        node = p
        for k in parents:
            node = node[k]
        node[last] = fn(node[last])
    return edit


BROKEN_TREES = [
    pytest.param(_set("Dense_0/kernel", jnp.transpose),
                 r"leaf 'Dense_0/kernel' expected \(3, 4\) float32, got \(4, 3\) float32", id="shape"),
    pytest.param(_set("Dense_1/bias", lambda x: x.astype(jnp.bfloat16)),
                 r"leaf 'Dense_1/bias' expected \(2,\) float32, got \(2,\) bfloat16", id="dtype"),
    pytest.param(lambda p: p["Dense_1"].pop("bias"), r"missing: Dense_1/bias\)", id="missing"),
    pytest.param(lambda p: p.update(extra={"w": jnp.zeros(1)}), r"unexpected: extra/w\)", id="unexpected"),
    pytest.param(_set("Dense_0/bias", lambda x: 0.5), r"leaf 'Dense_0/bias' is a float, not an array", id="scalar"),
    pytest.param(_set("Dense_0", lambda d: collections.OrderedDict(kernel=d["kernel"], bias=d["bias"])),
                 "the same leaves in another order: got Dense_0/kernel, Dense_0/bias, ", id="order"),
]


@pytest.mark.parametrize("edit,match", BROKEN_TREES)
def test_assert_tree_like_names_the_leaf(small, edit, match):
    ht.assert_tree_like(small.zeros(), small)
    ht.assert_tree_like(small.zeros(), small.abstract_params)              # a TargetSpec or an abstract tree
    with pytest.raises(AssertionError, match=match):
        ht.assert_tree_like(_edit(small.zeros(), edit), small)


def test_assert_tree_like_container_structure():
    want = {"a": (jax.ShapeDtypeStruct((2,), jnp.float32),)}
    ht.assert_tree_like({"a": (jnp.zeros(2),)}, want)
    with pytest.raises(AssertionError, match=r"another container at 'a': got PyTreeDef\(\[\*\]\), expected "
                                             r"PyTreeDef\(\(\*,\)\)"):
        ht.assert_tree_like({"a": [jnp.zeros(2)]}, want)
    nested = {"x": {"y": (jax.ShapeDtypeStruct((), jnp.float32),)}, "z": jax.ShapeDtypeStruct((), jnp.float32)}
    with pytest.raises(AssertionError, match=r"another container at 'x/y'"):
        ht.assert_tree_like({"x": {"y": [jnp.zeros(())]}, "z": jnp.zeros(())}, nested)
    with pytest.raises(AssertionError, match=r"another container at the root"):
        ht.assert_tree_like([jnp.zeros(2)], (jnp.zeros(2),))


# ------------------------------------------------------------------------------------------------ assert_grads_reach
def test_assert_grads_reach():
    grads = {"hyper": {"w": jnp.ones((2, 2)), "u": jnp.zeros(3)}, "embedding": {"e": jnp.zeros((2, 2))}}
    with pytest.raises(AssertionError, match="no gradient reaches hparams leaf 'embedding/e'"):
        ht.assert_grads_reach(grads)
    with pytest.raises(AssertionError, match="no gradient reaches hparams leaf 'hyper/u'"):
        ht.assert_grads_reach(grads, allow_zero_grad="embedding/*")
    ht.assert_grads_reach(grads, allow_zero_grad=("embedding/*", "*/u"))
    ht.assert_grads_reach(grads, allow_zero_grad=lambda path, g: g.size != 4 or path.startswith("emb"))
    with pytest.raises(ValueError, match="allow_zero_grad glob 'hyper/v' matches no hparams leaf; the leaves are: "
                                         "embedding/e, hyper/u, hyper/w"):
        ht.assert_grads_reach(grads, allow_zero_grad=("*/u", "hyper/v"))
    nan = {"w": jnp.array([1.0, jnp.nan, jnp.inf])}
    with pytest.raises(AssertionError, match=r"gradient of hparams leaf 'w' is not finite \(2 of 3 values"):
        ht.assert_grads_reach(nan)


# ------------------------------------------------------------------------------------------------ assert_generates
@pytest.mark.parametrize("make", [
    pytest.param(lambda: (ht.mlp_spec(), lambda s: hj.generators.dense(s, cond_dim=3, hidden=8), jnp.ones(3)),
                 id="dense-vector"),
    pytest.param(lambda: (ht.mlp_spec(), lambda s: hj.generators.dense(s, cond_dim=2, hidden=4, num_conds=3),
                          jnp.int32(2)), id="dense-id"),
    pytest.param(lambda: (ht.mixed_dtype_spec(), lambda s: hj.generators.chunked(
        s, cond_dim=3, chunk_size=7, hidden=4, where="*/kernel"), jnp.ones(3)), id="chunked-partial-bf16"),
    pytest.param(lambda: (ht.mlp_spec(), lambda s: hj.generators.codebook(s, num_values=4, where="*/kernel"), None),
                 id="codebook-static"),
])
def test_assert_generates_passes_on_library_generators(make):
    spec, factory, cond = make()
    ht.assert_generates(factory(spec), spec, cond)


def linear(spec, edit=None, *, cond_dim=3, extra=None, py_noise=None, init=None):
    """A correct hand-written generator (cond @ W, split into the target's leaves), then broken on purpose:
    `edit` changes the output tree, `extra` adds hparams leaves, `py_noise` adds a Python-side draw."""
    def default_init(key):
        return {"hyper": {"w": 0.3 * jax.random.normal(key, (cond_dim, spec.size), jnp.float32)}, **(extra or {})}

    def apply(hp, cond):
        params = spec.unflatten(cond @ hp["hyper"]["w"])
        if py_noise is not None:
            params = jax.tree.map(lambda x: x + float(py_noise.normal()), params)
        return params if edit is None else _edit(params, lambda p: edit(p, hp))
    return hj.HyperNetwork(init or default_init, apply)


C = jnp.array([0.5, -1.0, 2.0], jnp.float32)
BROKEN = [
    pytest.param({"edit": lambda p, hp: _set("Dense_0/kernel", jnp.transpose)(p)},
                 r"assert_generates: the output of hnet.apply\(hparams, cond\) leaf 'Dense_0/kernel' expected "
                 r"\(3, 4\) float32, got \(4, 3\) float32", id="wrong-shape"),
    pytest.param({"edit": lambda p, hp: _set("Dense_1/kernel", lambda x: x.astype(jnp.bfloat16))(p)},
                 r"leaf 'Dense_1/kernel' expected \(4, 2\) float32, got \(4, 2\) bfloat16", id="wrong-dtype"),
    pytest.param({"edit": lambda p, hp: p.pop("Dense_1")}, "missing: Dense_1/bias, Dense_1/kernel", id="missing"),
    pytest.param({"extra": {"embedding": {"unused": jnp.ones(2, jnp.float32)}}},
                 "no gradient reaches hparams leaf 'embedding/unused'", id="dead-hparams-leaf"),
    pytest.param({"edit": lambda p, hp: _set("Dense_1/bias", lambda x: x * jnp.nan)(p)},
                 r"generated leaf 'Dense_1/bias' is not finite \(2 of 2 values", id="nan-output"),
    pytest.param({"edit": lambda p, hp: _set("Dense_1/bias", lambda x: x + jnp.sqrt(0.0 * hp["hyper"]["w"][0, :2]))(p)},
                 r"the gradient of hparams leaf 'hyper/w' is not finite", id="nan-gradient"),
    pytest.param({"py_noise": np.random.default_rng(0)},
                 "generated leaf 'Dense_0/bias' differs between jax.jit and eager apply .*no Python-side randomness",
                 id="jit-eager-mismatch"),
    pytest.param({"init": lambda key: 1 // 0}, r"hnet.init\(key\) raised ZeroDivisionError", id="init-raises"),
    pytest.param({"init": lambda key: {"ids": jnp.arange(3)}}, "returned no floating-point leaves", id="int-hparams"),
]


@pytest.mark.parametrize("kwargs,match", BROKEN)
def test_assert_generates_fails_on_a_broken_generator(small, kwargs, match):
    with pytest.raises(AssertionError, match=match):
        ht.assert_generates(linear(small, **kwargs), small, C)


def test_assert_generates_allow_zero_grad_and_abstract_target(small):
    gen = linear(small, extra={"embedding": {"unused": jnp.ones(2, jnp.float32)}})
    ht.assert_generates(gen, small, C, allow_zero_grad=("embedding/*",))
    ht.assert_generates(linear(small), small.abstract_params, C, key=jax.random.key(3))


def test_assert_generates_cond_none_calls_apply_without_cond(small):
    with pytest.raises(AssertionError, match=r"hnet.apply\(hparams\) raised TypeError"):
        ht.assert_generates(linear(small), small)                 # a conditioned generator needs cond
    static = hj.HyperNetwork(lambda key: {"hyper": {"w": jax.random.normal(key, (small.size,), jnp.float32)}},
                             lambda hp: small.unflatten(hp["hyper"]["w"]))
    ht.assert_generates(static, small)


def test_assert_generates_apply_kwargs(small):
    def apply(hp, cond, *, scale):
        return small.unflatten(scale * (cond @ hp["w"]))
    gen = hj.HyperNetwork(lambda key: {"w": jax.random.normal(key, (3, small.size), jnp.float32)}, apply)
    ht.assert_generates(gen, small, C, apply_kwargs={"scale": 0.5})
    with pytest.raises(AssertionError, match="missing 1 required keyword-only argument: 'scale'"):
        ht.assert_generates(gen, small, C)
