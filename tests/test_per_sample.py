"""hj.per_sample / hj.generate_batch: example i runs with the weights generated from conds[i] (vector conds and
integer ids, eager and jit, under jax.grad), mismatched batches raise, and the program has no loop over examples."""

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
    """The traced program has the same equations for 1, 3 and 16 examples: one vmap, not one copy per example."""
    spec, gen, hparams, conds, xs, _ = cases[name]
    fn = hj.per_sample(gen, spec)
    counts = set()
    for n in (1, 3, 16):
        idx = jnp.arange(n) % B
        closed = jax.make_jaxpr(fn)(hparams, conds[idx], xs[idx])
        counts.add((str(closed).count("dot_general"), len(closed.jaxpr.eqns)))   # equations, not printed lines
    assert len(counts) == 1, counts
    assert next(iter(counts))[0] == 2 + 2            # two generator layers + two target layers
