"""Hypothesis properties over random small targets: generated params have exactly the spec's tree, shapes and
dtypes (random MLP widths, leaf dtypes, chunk sizes that divide or not, 1 and larger than the target, partial
generation); the chunked parameter-count formula; flatten/unflatten round trips; paths are unique and equal the
`jax.tree_util` key paths; glob and predicate selection equal a brute-force fnmatch filter.

Generators are only traced (`jax.eval_shape`), never compiled, so each example costs milliseconds.
"""

import fnmatch
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import hyperjax as hj

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
FAST = settings(max_examples=25, deadline=None)
KEY = jax.random.key(0)


def _mlp_apply(p, x):
    for layer in p["layers"]:
        x = jnp.tanh(x @ layer["w"].astype(jnp.float32) + layer["b"].astype(jnp.float32))
    return x


@st.composite
def mlp_specs(draw, max_layers=3):
    """A from_fn spec of an MLP with random widths and a random dtype per leaf ({"layers": [{"w", "b"}, ...]})."""
    widths = draw(st.lists(st.integers(1, 6), min_size=2, max_size=max_layers + 1))
    layers = [{"w": jax.ShapeDtypeStruct((a, b), draw(st.sampled_from(DTYPES))),
               "b": jax.ShapeDtypeStruct((b,), draw(st.sampled_from(DTYPES)))}
              for a, b in itertools.pairwise(widths)]
    return hj.targets.from_fn(_mlp_apply, {"layers": layers})


@st.composite
def chunk_sizes(draw, n):
    """A chunk size for n generated scalars: 1, a divisor, one that leaves a ragged tail, n, or more than n."""
    kind = draw(st.sampled_from(["one", "divides", "ragged", "all", "bigger"]))
    if kind == "one":
        return 1
    if kind == "divides":
        return draw(st.sampled_from([d for d in range(1, n + 1) if n % d == 0]))
    if kind == "ragged" and n > 2:
        return draw(st.sampled_from([d for d in range(2, n) if n % d]))
    if kind == "bigger":
        return n + draw(st.integers(1, 10))
    return n


def subset(draw, paths):
    """None (generate every leaf) or a non-empty list of exact paths (partial generation)."""
    if draw(st.booleans()):
        return None
    return draw(st.lists(st.sampled_from(paths), min_size=1, max_size=len(paths), unique=True))


def _assert_matches_spec(out, spec):
    assert jax.tree_util.tree_structure(out) == spec.treedef
    got = dict(hj.testing.leaves_with_paths(out))
    assert list(got) == list(spec.paths)
    for p, want in spec.leaves.items():
        assert (got[p].shape, got[p].dtype) == (want.shape, want.dtype), p


@FAST
@given(data=st.data(), spec=mlp_specs(), cond_dim=st.integers(1, 4), emb=st.integers(1, 3),
       hidden=st.lists(st.integers(1, 5), max_size=2), num_conds=st.sampled_from([None, 2]))
def test_chunked_output_tree_and_param_count(data, spec, cond_dim, emb, hidden, num_conds):
    where = subset(data.draw, spec.paths)
    chosen = spec.paths if where is None else tuple(p for p in spec.paths if p in where)
    n = sum(math.prod(spec.shapes[p]) for p in chosen)
    chunk = data.draw(chunk_sizes(n), label="chunk_size")
    gen = hj.generators.chunked(spec, cond_dim=cond_dim, chunk_size=chunk, chunk_emb_dim=emb, hidden=tuple(hidden), num_conds=num_conds,
                                where=where)
    hparams = jax.eval_shape(gen.init, KEY)
    cond = jax.ShapeDtypeStruct((), jnp.int32) if num_conds else jax.ShapeDtypeStruct((cond_dim,), jnp.float32)
    _assert_matches_spec(jax.eval_shape(gen.apply, hparams, cond), spec)

    n_chunks = -(-n // chunk)
    sizes = (cond_dim + emb, *hidden, chunk)
    want = (n_chunks * emb + sum((a + 1) * b for a, b in itertools.pairwise(sizes))
            + (num_conds or 0) * cond_dim + (spec.size - n))          # task embeddings + direct leaves
    assert hparams["embedding"]["chunk_emb"].shape == (n_chunks, emb)
    assert hj.training.count_params(hparams) == want
    assert ("direct" in hparams) == (where is not None and len(chosen) < len(spec.paths))


@FAST
@given(data=st.data(), spec=mlp_specs(), cond_dim=st.integers(1, 4), hidden=st.lists(st.integers(1, 5), max_size=2))
def test_dense_output_tree_and_param_count(data, spec, cond_dim, hidden):
    where = subset(data.draw, spec.paths)
    gen = hj.generators.dense(spec, cond_dim=cond_dim, hidden=tuple(hidden), where=where)
    hparams = jax.eval_shape(gen.init, KEY)
    _assert_matches_spec(jax.eval_shape(gen.apply, hparams, jax.ShapeDtypeStruct((cond_dim,), jnp.float32)), spec)
    n = spec.size if where is None else sum(math.prod(spec.shapes[p]) for p in where)
    sizes = (cond_dim, *hidden, n)
    assert hj.training.count_params(hparams) == sum((a + 1) * b for a, b in itertools.pairwise(sizes)) + spec.size - n


# ------------------------------------------------------------------------------------------------ structure
_LEAF = jax.ShapeDtypeStruct((2,), jnp.float32)
_KEYS = st.text("aK_0-", min_size=1, max_size=3)     # '-' sorts before '/', 'K' tests case
_LEAVES = st.builds(lambda shape, dtype: jax.ShapeDtypeStruct(tuple(shape), dtype),
                    st.lists(st.integers(1, 3), max_size=2), st.sampled_from(DTYPES))
TREES = st.recursive(_LEAVES, lambda inner: st.one_of(
    st.dictionaries(_KEYS, inner, min_size=1, max_size=3),
    st.lists(inner, min_size=1, max_size=3),
    st.lists(inner, min_size=1, max_size=2).map(tuple)), max_leaves=8)


@FAST
@given(tree=TREES)
def test_paths_are_unique_key_paths(tree):
    spec = hj.targets.from_fn(lambda p, x: x, tree)
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    assert spec.paths == tuple(jax.tree_util.keystr(kp, simple=True, separator="/") for kp, _ in flat)
    assert len(set(spec.paths)) == len(flat)
    assert spec.treedef == treedef
    assert spec.size == sum(math.prod(leaf.shape) for _, leaf in flat)


def _filled(spec, seed):
    """Non-zero values that differ between positions and leaves, rounded to each leaf's dtype."""
    return spec.from_leaves({p: jnp.asarray((np.arange(math.prod(s.shape)) % 61 + seed + i / 8).reshape(s.shape),
                                            s.dtype) for i, (p, s) in enumerate(spec.leaves.items())})


@settings(max_examples=12, deadline=None)
@given(tree=TREES, seed=st.integers(0, 3))
def test_flatten_unflatten_round_trip(tree, seed):
    spec = hj.targets.from_fn(lambda p, x: x, tree)
    params = _filled(spec, seed)
    flat = spec.flatten(params)
    assert flat.shape == (spec.size,)
    with jax.numpy_dtype_promotion("standard"):
        assert flat.dtype == jnp.result_type(*(s.dtype for s in spec.leaves.values()))
    want = np.concatenate([np.ravel(np.asarray(leaf, np.float32)) for leaf in jax.tree.leaves(params)])
    np.testing.assert_array_equal(np.asarray(flat, np.float32), want)          # path order, exact values
    back = spec.unflatten(flat)
    assert jax.tree_util.tree_structure(back) == spec.treedef
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


# ------------------------------------------------------------------------------------------------ selection
@st.composite
def patterns(draw, paths):
    """Globs built from a real path (parts kept, replaced by * or ?, or prefixed/suffixed) or random globs."""
    if draw(st.booleans()):
        return draw(st.text("aAkK_0-/*?[]", min_size=1, max_size=6))
    parts = draw(st.sampled_from(paths)).split("/")
    out = []
    for part in parts:
        how = draw(st.sampled_from(["keep", "star", "qmark", "prefix"]))
        out.append({"keep": part, "star": "*", "qmark": "?" * len(part), "prefix": part[:1] + "*"}[how])
    return "/".join(out[draw(st.integers(0, len(out) - 1)):])


@st.composite
def selections(draw):
    """(tree, globs, ndim): a random tree, 1-3 globs for it and a leaf rank for a predicate."""
    tree = draw(TREES)
    paths = hj.targets.from_fn(lambda p, x: x, tree).paths
    return tree, draw(st.lists(patterns(paths), min_size=1, max_size=3)), draw(st.integers(0, 2))


# flatten order is not string order: 'a/x' comes before 'a-' although '-' < '/'
@example(case=({"a": {"x": _LEAF}, "a-": _LEAF, "a0": [_LEAF, _LEAF]}, ["a*"], 1))
@FAST
@given(case=selections())
def test_select_equals_brute_force_fnmatch(case):
    tree, globs, ndim = case
    spec = hj.targets.from_fn(lambda p, x: x, tree)
    want = tuple(p for p in spec.paths if any(fnmatch.fnmatchcase(p, g) for g in globs))
    for where in (globs, hj.select(*globs)) + ((globs[0],) if len(globs) == 1 else ()):
        if want:
            assert spec.select(where) == want
        else:
            with pytest.raises(ValueError, match="matches no leaf of the target. Available paths: "
                                                 + ", ".join(spec.paths[:3])):
                spec.select(where)
    sel = hj.select(*globs)
    assert tuple(p for p in spec.paths if sel(p, None)) == want
    by_rank = tuple(p for p, s in spec.leaves.items() if len(s.shape) == ndim)
    if by_rank:
        assert spec.select(lambda p, leaf: leaf.ndim == ndim) == by_rank
