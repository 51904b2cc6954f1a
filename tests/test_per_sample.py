"""hj.per_sample / hj.generate_batch: example i runs with the weights generated from conds[i] (vector conds and
integer ids, eager and jit, under jax.grad), mismatched batches raise, and the program has no loop over examples.
The default `example_has_batch_axis=None` follows the target's framework (Equinox: unbatched examples)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hyperjax as hj

B = 3
XS = jnp.asarray(np.cos(np.arange(B * 5) * 0.9).reshape(B, 5), jnp.float32)
VEC_CONDS = jnp.asarray([[1.0, -0.5, 0.2], [-1.0, 0.3, 0.8], [0.1, 0.9, -0.7]], jnp.float32)
IDS = jnp.array([2, 0, 2], jnp.int32)


def _vector_apply(p, x):
    """A target that takes one example without a batch axis: x {"a": f[5], "s": f[]} -> f[2]."""
    return jnp.tanh(x["a"] @ p["w"] + p["b"]) * x["s"]


@pytest.fixture(scope="module")
def cases(tiny_mlp_spec):
    """name -> (spec, generator, hparams, conds, xs, example_has_batch_axis); hparams are initialised once."""
    vec_spec = hj.targets.from_fn(_vector_apply, {"w": jax.ShapeDtypeStruct((5, 2), jnp.float32),
                                                  "b": jax.ShapeDtypeStruct((2,), jnp.float32)})
    vec_xs = {"a": XS, "s": jnp.array([1.0, -2.0, 0.5], jnp.float32)}
    rows = {
        "vector-conds": (tiny_mlp_spec, hj.generators.dense(tiny_mlp_spec, cond_dim=3, hidden=4), VEC_CONDS, XS, True),
        "ids": (tiny_mlp_spec, hj.generators.chunked(tiny_mlp_spec, cond_dim=3, chunk_size=7, hidden=4, num_conds=4), IDS, XS, True),
        "no-batch-axis-tree-xs": (vec_spec, hj.generators.dense(vec_spec, cond_dim=3, hidden=4, where="w"), VEC_CONDS,
                                  vec_xs, False),
    }
    out = {}
    for i, (name, (spec, gen, conds, xs, has_axis)) in enumerate(rows.items()):
        out[name] = (spec, gen, jax.jit(gen.init)(jax.random.key(i)), conds, xs, has_axis)
    return out


CASES = ["vector-conds", "ids", "no-batch-axis-tree-xs"]


def _loop(spec, gen, hparams, conds, xs, has_axis, weights_of=None):
    """Reference: a Python loop over examples; weights_of(i) picks whose weights example i uses."""
    ys = []
    for i in range(B):
        params = gen.apply(hparams, conds[i if weights_of is None else weights_of(i)])
        x = jax.tree.map(lambda a, i=i: a[i], xs)
        if has_axis:
            ys.append(spec.apply(params, jax.tree.map(lambda a: a[None], x))[0])
        else:
            ys.append(spec.apply(params, x))
    return jnp.stack(ys)


@pytest.mark.parametrize("name", CASES)
def test_each_example_uses_its_own_weights(cases, name, maybe_jit):
    spec, gen, hparams, conds, xs, has_axis = cases[name]
    fn = hj.per_sample(gen, spec, example_has_batch_axis=has_axis)
    got = maybe_jit(fn)(hparams, conds, xs)
    want = _loop(spec, gen, hparams, conds, xs, has_axis)
    assert got.shape == want.shape and got.shape[0] == B
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # and not someone else's: example i with the weights of example (i + 1) % B gives other outputs
    # (ids [2, 0, 2]: example 1 is the only one whose neighbour has a different id)
    shifted = _loop(spec, gen, hparams, conds, xs, has_axis, weights_of=lambda i: (i + 1) % B)
    assert not np.allclose(got[1], shifted[1], atol=1e-4)


@pytest.mark.parametrize("name", ["vector-conds", "ids"])
def test_generate_batch_stacks_one_params_tree_per_cond(cases, name):
    spec, gen, hparams, conds, _, _ = cases[name]
    batch = jax.eval_shape(lambda hp, c: hj.generate_batch(gen, hp, c), hparams, conds)
    want = jax.tree.map(lambda s: jax.ShapeDtypeStruct((B, *s.shape), s.dtype), spec.abstract_params)
    chex.assert_trees_all_equal_shapes_and_dtypes(batch, want)
    assert jax.tree_util.tree_structure(batch) == spec.treedef


@pytest.mark.parametrize("name", CASES)
def test_gradients_equal_the_loop(cases, name):
    spec, gen, hparams, conds, xs, has_axis = cases[name]
    fn = hj.per_sample(gen, spec, example_has_batch_axis=has_axis)

    def loss(hp):
        return jnp.sum(jnp.sin(fn(hp, conds, xs)))

    def loop_loss(hp):
        return jnp.sum(jnp.sin(_loop(spec, gen, hp, conds, xs, has_axis)))
    grads = jax.jit(jax.grad(loss))(hparams)
    chex.assert_trees_all_close(grads, jax.jit(jax.grad(loop_loss))(hparams), rtol=1e-5, atol=1e-6)
    if name == "ids":      # only the embedding rows of ids used in the batch (0 and 2) get a gradient
        assert np.asarray(jnp.any(grads["embedding"]["cond_emb"] != 0, axis=1)).tolist() == [True, False, True, False]


@pytest.mark.parametrize("conds,xs,match", [
    (VEC_CONDS, XS[:2], r"conds \(3, 3\) and xs with leading sizes \[2\]"),
    (VEC_CONDS[:2], XS, r"conds \(2, 3\) and xs with leading sizes \[3\]"),
    (VEC_CONDS[0, 0], XS, r"conds \(\) and xs with leading sizes \[3\]"),
    (VEC_CONDS, (XS, XS[:2]), r"conds \(3, 3\) and xs with leading sizes \[2, 3\]"),
    (VEC_CONDS, (XS, jnp.float32(1.0)), r"conds \(3, 3\) and xs with leading sizes \[3, None\]"),
], ids=["fewer-xs", "fewer-conds", "scalar-cond", "ragged-xs-tree", "scalar-x-leaf"])
def test_mismatched_batch_sizes_raise(cases, conds, xs, match, maybe_jit):
    spec, gen, hparams, _, _, _ = cases["vector-conds"]
    with pytest.raises(ValueError, match=r"hyperjax.per_sample: conds and xs need the same leading batch axis, "
                                         r"got " + match):
        maybe_jit(hj.per_sample(gen, spec))(hparams, conds, xs)


def test_generate_batch_needs_a_batch_axis(cases):
    _, gen, hparams, _, _, _ = cases["ids"]
    with pytest.raises(ValueError, match=r"generate_batch: conds needs a leading batch axis .* got shape \(\)"):
        hj.generate_batch(gen, hparams, jnp.int32(1))


@pytest.mark.parametrize("name", ["vector-conds", "ids"])
def test_no_python_loop_over_examples(cases, name):
    """The traced program has the same equations for 2, 3 and 16 examples: one vmap, not one copy per example.
    (A batch of 1 batches the id lookup's gather without one slice, so it is not compared.)"""
    spec, gen, hparams, conds, xs, _ = cases[name]
    fn = hj.per_sample(gen, spec)
    counts = set()
    for n in (2, 3, 16):
        idx = jnp.arange(n) % B
        closed = jax.make_jaxpr(fn)(hparams, conds[idx], xs[idx])
        # equations, not printed lines; without the generator's one-off trace of its abstract init (a dead
        # random_seed equation in whichever trace ran it first, which jit caches then reuse)
        eqns = [e for e in closed.jaxpr.eqns if not e.primitive.name.startswith("random_")]
        counts.add((str(closed).count("dot_general"), len(eqns)))
    assert len(counts) == 1, counts
    assert next(iter(counts))[0] == 2 + 2            # two generator layers + two target layers


# ------------------------------------------------------------------ example_has_batch_axis from the framework
def _eqx_mlp():
    import equinox as eqx
    return eqx.nn.MLP(5, 3, 6, 1, key=jax.random.key(3))


def _linen_spec():
    import flax.linen as nn

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):                  # a Dense works on any leading axes, so both calls would run
            return nn.Dense(3)(jnp.tanh(nn.Dense(6)(x)))
    return hj.targets.from_linen(MLP(), jnp.ones((1, 5)))


def test_default_batch_axis_follows_the_framework():
    """Equinox modules take one unbatched example: the default gives them x, not x[None] (which an Equinox
    Linear rejects); linen gets x[None] and its output loses the axis again. Both equal the Python loop."""
    eqx_spec = hj.targets.from_equinox(_eqx_mlp())
    lin_spec = _linen_spec()
    for spec, has_axis in ((eqx_spec, False), (lin_spec, True)):
        gen = hj.generators.dense(spec, cond_dim=3, hidden=4)
        hp = gen.init(jax.random.key(0))
        got = jax.jit(hj.per_sample(gen, spec))(hp, VEC_CONDS, XS)
        assert got.shape == (B, 3)
        np.testing.assert_allclose(got, _loop(spec, gen, hp, VEC_CONDS, XS, has_axis), rtol=1e-5, atol=1e-6)
        explicit = hj.per_sample(gen, spec, example_has_batch_axis=has_axis)(hp, VEC_CONDS, XS)
        np.testing.assert_allclose(got, explicit, rtol=1e-6, atol=1e-6)
    # the old default (True) on the Equinox target fails inside Equinox, far from the cause, and says how it was called
    gen = hj.generators.dense(eqx_spec, cond_dim=3, hidden=4)
    with pytest.raises(Exception, match=r"shape|size|dim") as info:
        hj.per_sample(gen, eqx_spec, example_has_batch_axis=True)(gen.init(jax.random.key(0)), VEC_CONDS, XS)
    assert any("example_has_batch_axis=True" in note for note in getattr(info.value, "__notes__", []))


def test_default_batch_axis_of_other_frameworks(key):
    """from_fn: a batch of one (x[None]), as before; a tie across Equinox targets: unbatched examples."""
    seen = []

    def spy(p, x):                                  # records the example shape apply is called with
        seen.append(tuple(jnp.shape(x)))
        return x @ p["w"]
    fn_spec = hj.targets.from_fn(spy, {"w": jax.ShapeDtypeStruct((5, 2), jnp.float32)})
    gen = hj.generators.dense(fn_spec, cond_dim=3, hidden=4)
    out = jax.eval_shape(hj.per_sample(gen, fn_spec), jax.eval_shape(gen.init, key), VEC_CONDS, XS)
    assert seen[-1] == (1, 5) and out.shape == (B, 2)
    eqx_spec = hj.targets.from_equinox(_eqx_mlp())
    tied = hj.tie({"a": eqx_spec, "b": eqx_spec}, source="a/layers/0/bias", dest="b/layers/0/bias")
    assert tied.framework == "equinox+equinox"
    gen = hj.generators.dense(tied, cond_dim=3, hidden=4)
    hp = jax.eval_shape(gen.init, key)
    out = jax.eval_shape(hj.per_sample(gen, tied), hp, VEC_CONDS, {"a": XS, "b": XS})   # x, not x[None]
    assert out["a"].shape == out["b"].shape == (B, 3)
    with pytest.raises(Exception, match=r"shape|size|dim"):          # what x[None] does to an Equinox Linear
        jax.eval_shape(hj.per_sample(gen, tied, example_has_batch_axis=True), hp, VEC_CONDS, {"a": XS, "b": XS})
    mixed = hj.tie({"a": eqx_spec, "b": _linen_spec()}, source="a/layers/1/bias", dest="b/Dense_0/bias")
    gen = hj.generators.dense(mixed, cond_dim=3, hidden=4)
    with pytest.raises(ValueError, match=r"hyperjax.per_sample: the target mixes frameworks \(equinox\+linen\).*"
                                         r"pass example_has_batch_axis=True or False"):
        hj.per_sample(gen, mixed)
    assert callable(hj.per_sample(gen, mixed, example_has_batch_axis=False))


@pytest.mark.parametrize("call,exc,match", [
    (lambda gen, spec: hj.per_sample(3, spec), TypeError, r"^hyperjax.per_sample: `hnet` must be a hypernetwork"),
    (lambda gen, spec: hj.per_sample(gen, spec.abstract_params), TypeError,
     r"^hyperjax.per_sample: `target` must be a TargetSpec .* got dict"),
    (lambda gen, spec: hj.per_sample(gen, spec, example_has_batch_axis="yes"), TypeError,
     r"^hyperjax.per_sample: `example_has_batch_axis` must be True, False or None .* got 'yes'"),
    (lambda gen, spec: hj.generate_batch(None, {}, jnp.ones((2, 3))), TypeError,
     r"^hyperjax.generate_batch: `hnet` must be a hypernetwork .* got NoneType"),
], ids=["hnet", "target", "flag", "generate_batch-hnet"])
def test_bad_arguments_are_type_errors(cases, call, exc, match):
    spec, gen, _, _, _, _ = cases["vector-conds"]
    with pytest.raises(exc, match=match):
        call(gen, spec)


@pytest.mark.parametrize("conds,exc,match", [
    (None, ValueError, r"`conds` is None, but per-example weights need one cond per example .* call "
                       r"target.apply\(hnet.apply\(hparams\), xs\)"),
    ([[1.0, 0.0, 0.0]] * B, TypeError, r"`conds` must be an array f\[B, cond_dim\] .* got list"),
], ids=["none", "list"])
def test_conds_must_be_an_array(cases, conds, exc, match):
    spec, gen, hparams, _, _, _ = cases["vector-conds"]
    with pytest.raises(exc, match=r"^hyperjax.per_sample: " + match):
        hj.per_sample(gen, spec)(hparams, conds, XS)
    with pytest.raises(exc, match=r"^hyperjax.generate_batch: " + match):
        hj.generate_batch(gen, hparams, conds)


@pytest.mark.parametrize("name", ["vector-conds", "ids"])
def test_empty_batch_gives_empty_outputs(cases, name, maybe_jit):
    """B = 0 works (vmap over an empty axis fails inside the generator's traced id check): every output leaf has a
    leading axis of 0, and the generator's trace-time checks still run on the row shape."""
    spec, gen, hparams, conds, xs, has_axis = cases[name]
    ys = maybe_jit(hj.per_sample(gen, spec, example_has_batch_axis=has_axis))(hparams, conds[:0], xs[:0])
    assert ys.shape == (0, 3) and ys.dtype == jnp.float32
    batch = maybe_jit(lambda hp, c: hj.generate_batch(gen, hp, c))(hparams, conds[:0])
    want = jax.tree.map(lambda s: jax.ShapeDtypeStruct((0, *s.shape), s.dtype), spec.abstract_params)
    chex.assert_trees_all_equal_shapes_and_dtypes(batch, want)
    wrong_row = jnp.zeros((0, 4), jnp.float32) if name == "vector-conds" else jnp.zeros((0, 2), jnp.int32)
    with pytest.raises(ValueError, match=r"^hyperjax.generators.(dense|chunked): "):
        hj.generate_batch(gen, hparams, wrong_row)



def test_numpy_conds_under_jit(cases):
    """NumPy conds closed over in a jitted function: converted first (vmapping a NumPy constant breaks checkify's
    batching of the generators' traced id check with a TracerArrayConversionError)."""
    spec, gen, hparams, conds, xs, has_axis = cases["ids"]
    ids = np.asarray(conds)
    ys = jax.jit(lambda hp: hj.per_sample(gen, spec)(hp, ids, xs))(hparams)
    np.testing.assert_allclose(ys, hj.per_sample(gen, spec)(hparams, conds, xs), rtol=1e-6, atol=1e-6)
    batch = jax.jit(lambda hp: hj.generate_batch(gen, hp, ids))(hparams)
    chex.assert_trees_all_close(batch, hj.generate_batch(gen, hparams, conds), rtol=1e-6, atol=1e-6)
