"""Weight tying: one stored leaf, gradients from every use add up, frameworks, partial generation, errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import hyperjax as hj

X = jnp.linspace(-1.0, 1.0, 10, dtype=jnp.float32).reshape(2, 5)


# ------------------------------------------------------------------------------------------------ targets
def linen_ae():
    import flax.linen as nn

    class AE(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(5, name="dec")(nn.tanh(nn.Dense(3, name="enc")(x)))
    return hj.targets.from_linen(AE(), X), ("enc/kernel", "dec/kernel", jnp.transpose)


def nnx_ae():
    from flax import nnx

    class AE(nnx.Module):
        def __init__(self, rngs):
            self.enc = nnx.Linear(5, 3, rngs=rngs)
            self.dec = nnx.Linear(3, 5, rngs=rngs)

        def __call__(self, x):
            return self.dec(jnp.tanh(self.enc(x)))
    return hj.targets.from_nnx(AE(nnx.Rngs(0))), ("enc/kernel", "dec/kernel", jnp.transpose)


def equinox_ae():
    import equinox as eqx

    class AE(eqx.Module):
        enc: eqx.nn.Linear
        dec: eqx.nn.Linear

        def __init__(self, key):
            k1, k2 = jax.random.split(key)
            self.enc = eqx.nn.Linear(5, 3, key=k1)
            self.dec = eqx.nn.Linear(3, 5, key=k2)

        def __call__(self, x):
            return jax.vmap(lambda v: self.dec(jnp.tanh(self.enc(v))))(x)
    return hj.targets.from_equinox(AE(jax.random.key(0))), ("enc/weight", "dec/weight", jnp.transpose)


TARGETS = [pytest.param(linen_ae, id="linen"), pytest.param(nnx_ae, id="nnx"), pytest.param(equinox_ae, id="equinox")]


# ------------------------------------------------------------------------------------------------ core behaviour
@pytest.mark.parametrize("make", TARGETS)
def test_one_stored_leaf_and_apply_matches_full(make, key, maybe_jit):
    spec, (src, dst, fn) = make()
    tied = hj.tie(spec, source=src, dest=dst, fn=fn)
    free = tied.init(key)
    assert dst not in tied.paths and src in tied.paths and tied.tied_paths == (dst,)
    n_dst = int(np.prod(spec.leaves[dst].shape))
    assert hj.training.count_params(free) == tied.size == spec.size - n_dst
    full = tied.expand(free)
    spec.check(full)
    np.testing.assert_array_equal(hj.testing.leaf_at(full, dst), fn(hj.testing.leaf_at(free, src)))
    chex.assert_trees_all_close(maybe_jit(tied.apply)(free, X), spec.apply(full, X), atol=1e-6)
    chex.assert_trees_all_equal(tied.collapse(full), free)


@pytest.mark.parametrize("make", TARGETS)
def test_gradients_from_every_use_add_up(make, key, maybe_jit):
    """d loss / d source = (direct gradient at source) + transpose(gradient at dest), per framework."""
    spec, (src, dst, fn) = make()
    tied = hj.tie(spec, source=src, dest=dst, fn=fn)
    free = tied.init(key)
    loss_full = lambda p: jnp.sum(spec.apply(p, X) ** 2)
    g_free = maybe_jit(jax.grad(lambda f: loss_full(tied.expand(f))))(free)
    g_full = jax.grad(loss_full)(tied.expand(free))
    want = hj.testing.leaf_at(g_full, src) + jnp.transpose(hj.testing.leaf_at(g_full, dst))
    np.testing.assert_allclose(hj.testing.leaf_at(g_free, src), want, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(hj.testing.leaf_at(g_full, dst)).sum()) > 0   # the tied use really contributes


def test_gradient_hand_computed(maybe_jit):
    """y = W x + W^T z with loss c1.(W x) + c2.(W^T z): dL/dW = outer(c1, x) + outer(z, c2)."""
    W = jnp.arange(12, dtype=jnp.float32).reshape(3, 4) / 10
    x, z = jnp.array([1.0, -2.0, 0.5, 3.0]), jnp.array([0.5, 1.0, -1.0])
    c1, c2 = jnp.array([1.0, 2.0, -1.0]), jnp.array([0.0, 1.0, 2.0, -3.0])

    def apply(p, x, z):
        return p["a"]["w"] @ x, p["b"]["w"] @ z
    spec = hj.targets.from_fn(apply, {"a": {"w": W}, "b": {"w": W.T}})
    tied = hj.tie(spec, source="a/w", dest="b/w", fn=jnp.transpose)

    def loss(free):
        ya, yb = tied.apply(free, x, z)
        return c1 @ ya + c2 @ yb
    g = maybe_jit(jax.grad(loss))({"a": {"w": W}})
    assert list(g) == ["a"] and list(g["a"]) == ["w"]
    np.testing.assert_allclose(g["a"]["w"], np.outer(c1, x) + np.outer(z, c2), rtol=1e-6)


def test_check_grads_through_tie(key):
    spec, (src, dst, fn) = linen_ae()
    tied = hj.tie(spec, source=src, dest=dst, fn=fn)
    free = jax.tree.map(lambda a: a.astype(jnp.float32), tied.init(key))
    check_grads(lambda f: jnp.sum(jnp.sin(tied.apply(f, X))), (free,), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


def test_glob_dests_and_chains(maybe_jit):
    """l1, l2 = l0 (glob, several dests); l3 = flip(l2^T) (chain through a dest); biases sliced from one."""
    params = {f"l{i}": {"kernel": jnp.zeros((4, 4)), "bias": jnp.zeros(4)} for i in range(4)}
    params["wide"] = {"bias": jnp.zeros(8)}

    def apply(p, x):
        for i in range(4):
            x = jnp.tanh(x @ p[f"l{i}"]["kernel"] + p[f"l{i}"]["bias"])
        return x + p["wide"]["bias"][:4]
    spec = hj.targets.from_fn(apply, params)
    tied = hj.tie(spec, ties=[
        hj.Tie("l0/kernel", "l[12]/kernel"),
        ("l2/kernel", "l3/kernel", lambda k: jnp.flip(k.T, axis=0)),
        hj.Tie("wide/bias", ["l*/bias"], lambda b: b[2:6]),
    ])
    assert set(tied.tied_paths) == {"l1/kernel", "l2/kernel", "l3/kernel", "l0/bias", "l1/bias", "l2/bias", "l3/bias"}
    assert tied.paths == ("l0/kernel", "wide/bias") and tied.size == 16 + 8
    free = {"l0": {"kernel": jnp.arange(16.0).reshape(4, 4)}, "wide": {"bias": jnp.arange(8.0)}}
    full = maybe_jit(tied.expand)(free)
    np.testing.assert_array_equal(full["l1"]["kernel"], free["l0"]["kernel"])
    np.testing.assert_array_equal(full["l3"]["kernel"], jnp.flip(free["l0"]["kernel"].T, axis=0))
    np.testing.assert_array_equal(full["l3"]["bias"], jnp.arange(2.0, 6.0))
    broken = {**full, "l2": {**full["l2"], "kernel": full["l2"]["kernel"] + 1.0}}
    assert tied.consistent(full) and not tied.consistent(broken)


def test_tie_across_targets(key, maybe_jit):
    """Two targets share a decoder: the dict of specs is one free tree, apply takes {name: x}."""
    spec_a, _ = linen_ae()
    spec_b, _ = nnx_ae()
    tied = hj.tie({"a": spec_a, "b": spec_b}, ties=[("a/dec/kernel", "b/dec/kernel"), ("a/dec/bias", "b/dec/bias")])
    free = tied.init(key)
    assert "dec" not in free["b"] and hj.training.count_params(free) == spec_a.size + spec_b.size - 3 * 5 - 5
    ys = maybe_jit(tied.apply)(free, {"a": X, "b": X})
    full = tied.expand(free)
    np.testing.assert_allclose(ys["b"], spec_b.apply(full["b"], X), rtol=1e-6)
    np.testing.assert_array_equal(full["b"]["dec"]["kernel"], free["a"]["dec"]["kernel"])
    only_b = maybe_jit(tied.apply)(free, {"b": X})
    assert list(only_b) == ["b"]


def test_generated_tree_ties_into_ordinary_one(key):
    """Target a's leaves are generated; target b is ordinary except its kernel, which is a's kernel."""
    spec_a, _ = linen_ae()
    spec_b, _ = linen_ae()
    tied = hj.tie({"gen": spec_a, "own": spec_b}, source="gen/enc/kernel", dest="own/enc/kernel")
    hnet = hj.generators.partial(hj.generators.dense, tied, where="gen/*", cond_dim=2, hidden=4)
    hp = hnet.init(key)
    assert "enc" in hp["direct"]["own"] and "kernel" not in hp["direct"]["own"]["enc"]

    def loss(hp):   # only target "own" is used: its kernel gradient must reach the generator
        return jnp.sum(tied.apply(hnet.apply(hp, jnp.ones(2)), {"own": X})["own"] ** 2)
    g = jax.grad(loss)(hp)
    assert float(jnp.abs(g["hyper"]["mlp"][-1]["w"]).sum()) > 0
    full = tied.expand(hnet.apply(hp, jnp.ones(2)))
    np.testing.assert_array_equal(full["own"]["enc"]["kernel"], full["gen"]["enc"]["kernel"])


@pytest.mark.parametrize("make", TARGETS)
def test_generators_see_only_free_leaves(make, key, maybe_jit):
    spec, (src, dst, fn) = make()
    tied = hj.tie(spec, source=src, dest=dst, fn=fn)
    whole = hj.generators.dense(tied, cond_dim=3, hidden=8)
    params = maybe_jit(whole.apply)(whole.init(key), jnp.ones(3))
    chex.assert_trees_all_equal_shapes_and_dtypes(params, tied.zeros())
    assert whole.init(key)["hyper"]["mlp"][-1]["w"].shape[1] == tied.size
    # partial generation of the source while the dest stays tied to it
    part = hj.generators.partial(hj.generators.dense, tied, where=src, cond_dim=3, hidden=8)
    hp = part.init(key)
    hp_paths = hj.testing.leaf_dict(hp)
    assert dst not in hp_paths and f"direct/{dst}" not in hp_paths
    full = tied.expand(maybe_jit(part.apply)(hp, jnp.ones(3)))
    np.testing.assert_array_equal(hj.testing.leaf_at(full, dst), fn(hj.testing.leaf_at(full, src)))
    g = jax.grad(lambda h: jnp.sum(tied.apply(part.apply(h, jnp.ones(3)), X) ** 2))(hp)
    assert float(jnp.abs(g["hyper"]["mlp"][-1]["w"]).sum()) > 0


def test_free_bias_keeps_fans_of_tied_kernel():
    spec, (src, dst, fn) = linen_ae()
    tied = hj.tie(spec, source=src, dest=dst, fn=fn)
    assert tied.fans("dec/bias") == spec.fans("dec/bias") == (3, 5)
    assert tied.init_moments("dec/bias") == spec.init_moments("dec/bias")


def test_training_keeps_tie(key):
    import optax
    spec, (src, dst, fn) = linen_ae()
    tied = hj.tie(spec, source=src, dest=dst, fn=fn)
    step = hj.training.make_step(lambda p, b, r: jnp.mean((tied.apply(p, b) - b) ** 2), optax.adam(3e-2))
    state = hj.training.init_state(tied.init(key), optax.adam(3e-2), key)
    losses = []
    for _ in range(30):
        state, m = step(state, X)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.5 * losses[0]
    full = tied.expand(state.params)
    np.testing.assert_array_equal(hj.testing.leaf_at(full, dst), fn(hj.testing.leaf_at(full, src)))


# ------------------------------------------------------------------------------------------------ properties
@settings(max_examples=10, deadline=None)
@given(width=st.integers(1, 5), depth=st.integers(2, 5), n_tied=st.integers(1, 4), transpose=st.booleans(),
       dtype=st.sampled_from([jnp.float32, jnp.bfloat16]))
def test_expand_collapse_round_trip(width, depth, n_tied, transpose, dtype):
    n_tied = min(n_tied, depth - 1)
    params = {f"l{i}": {"kernel": jax.ShapeDtypeStruct((width, width), dtype),
                        "bias": jax.ShapeDtypeStruct((width,), jnp.float32)} for i in range(depth)}
    fn = jnp.transpose if transpose else None
    ties = [hj.Tie(f"l{i}/kernel", f"l{i + 1}/kernel", fn) for i in range(n_tied)]   # a chain l0 -> l1 -> ...
    tied = hj.tie(params, ties)
    assert tied.size == depth * (width * width + width) - n_tied * width * width
    free = tied.init(jax.random.key(width * 7 + depth))
    full = tied.expand(free)
    chex.assert_trees_all_equal(tied.collapse(full), free)
    assert tied.consistent(full)
    for i in range(1, n_tied + 1):
        want = free["l0"]["kernel"] if not transpose or i % 2 == 0 else free["l0"]["kernel"].T
        np.testing.assert_array_equal(full[f"l{i}"]["kernel"], want)
    chex.assert_trees_all_equal_shapes_and_dtypes(full, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params))


# ------------------------------------------------------------------------------------------------ errors
def _abstract():
    return {"enc": {"kernel": jax.ShapeDtypeStruct((5, 3), jnp.float32)},
            "dec": {"kernel": jax.ShapeDtypeStruct((3, 5), jnp.float32), "bias": jax.ShapeDtypeStruct((5,), jnp.float32)}}


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(source="enc/kernel", dest="dec/kernel"), ValueError,
     r"cannot tie dest 'dec/kernel' \(3, 5\) float32 to source 'enc/kernel' \(5, 3\) float32: the source as is"),
    (dict(source="enc/kernel", dest="dec/kernel", fn=lambda k: k.T.astype(jnp.bfloat16)), ValueError,
     r"dest 'dec/kernel' \(3, 5\) float32 .* gives \(3, 5\) bfloat16"),
    (dict(source="enc/kernel", dest="dec/bias", fn=lambda k: k @ k), ValueError,
     r"fn for dest 'dec/bias' \(5,\) float32 fails on source 'enc/kernel' \(5, 3\) float32"),
    (dict(source="enc/kern", dest="dec/kernel"), ValueError,
     r"source 'enc/kern' is not a leaf path .* Available paths: dec/bias, dec/kernel, enc/kernel"),
    (dict(source="enc/kernel", dest="dec/w*"), ValueError,
     r"dest 'dec/w\*' \(tied to source 'enc/kernel'\) matches no leaf .* Available paths: dec/bias"),
    (dict(source="enc/kernel", dest="enc/kernel"), ValueError, r"matches no leaf other than the source"),
    (dict(ties=[("enc/kernel", "dec/kernel", jnp.transpose), ("dec/bias", "dec/kernel")]), ValueError,
     r"leaf 'dec/kernel' is tied twice \(to 'enc/kernel' and to 'dec/bias'\)"),
    (dict(source="enc/kernel", dest="dec/kernel", fn=3), TypeError, r"fn for source 'enc/kernel' must be callable"),
    (dict(source="enc/kernel"), ValueError, r"give both `source` and `dest`"),
    (dict(), ValueError, r"no ties given"),
    (dict(ties=[["enc/kernel"]]), TypeError, r"each tie must be hj.Tie"),
])
def test_tie_errors(kwargs, err, match):
    with pytest.raises(err, match=match):
        hj.tie(_abstract(), **kwargs)


def test_cycle_error():
    tree = {"a": jax.ShapeDtypeStruct((2,), jnp.float32), "b": jax.ShapeDtypeStruct((2,), jnp.float32)}
    with pytest.raises(ValueError, match=r"ties form a cycle: b <- a <- b"):
        hj.tie(tree, ties=[("a", "b"), ("b", "a")])


def test_expand_and_apply_errors(key):
    tied = hj.tie(_abstract(), source="enc/kernel", dest="dec/kernel", fn=jnp.transpose)
    free = tied.init(key)
    with pytest.raises(ValueError, match=r"unexpected: dec/kernel"):
        tied.expand({**free, "dec": {**free["dec"], "kernel": jnp.zeros((3, 5))}})
    with pytest.raises(ValueError, match=r"missing: enc/kernel"):
        tied.expand({"dec": free["dec"]})
    with pytest.raises(ValueError, match=r"leaf 'enc/kernel' expected \(5, 3\) float32, got \(5, 4\) float32"):
        tied.expand({**free, "enc": {"kernel": jnp.zeros((5, 4))}})
    with pytest.raises(ValueError, match=r"built from a parameter tree, not a TargetSpec, so it has no apply"):
        tied.apply(free, X)
    with pytest.raises(TypeError, match=r"`target` must be a TargetSpec, a dict of TargetSpecs"):
        hj.tie(None, source="a", dest="b")
    spec_a, _ = linen_ae()
    across = hj.tie({"a": spec_a, "b": spec_a}, source="a/enc/kernel", dest="b/enc/kernel")
    with pytest.raises(ValueError, match=r"applied as apply\(params, \{name: x\}\) .* got dict with keys \['c'\]"):
        across.apply(across.init(key), {"c": X})
