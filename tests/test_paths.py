"""Leaf path strings and selectors: what `TargetSpec.paths`, `spec.select`, `hj.select` and the error messages show.

Tested through public names: path strings as `TargetSpec.paths` / `spec.leaf_dict` show them (and
`hj.testing.path_of` / `leaves_with_paths`, which must agree with the library), `where=` selectors through
`spec.select`, their description through the no-match message. Only the nested-dict helpers `nest` / `unnest`
and `key_name` have no public form; they are unit-tested at the end from `hyperjax._src.paths` (the one private
import under tests/).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import pytest

import hyperjax as hj


class Pair(NamedTuple):
    w: jax.Array
    b: jax.Array


class Opaque:
    """A pytree node registered without keys: its children get FlattenedIndexKey entries."""

    def __init__(self, a, b):
        self.a, self.b = a, b


jax.tree_util.register_pytree_node(Opaque, lambda o: ((o.a, o.b), None), lambda _, c: Opaque(*c))


def _hand_written_path_str(key_path):
    """The hand-written form paths.path_str replaced: the first of .key / .name / .idx of each entry."""
    def name(k):
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return str(k)
    return "/".join(name(k) for k in key_path)


def _spec(tree):
    return hj.targets.from_fn(lambda p, x: x, tree)


def test_path_strings_for_dicts_sequences_and_attributes():
    tree = {"enc": [Pair(jnp.zeros(2), jnp.zeros(1))], "dec": {"kernel": jnp.zeros(3)}}
    spec = _spec(tree)
    assert spec.paths == ("dec/kernel", "enc/0/w", "enc/0/b")
    assert list(spec.leaf_dict(tree)) == list(spec.paths)
    assert [p for p, _ in hj.testing.leaves_with_paths(tree)] == list(spec.paths)
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    assert [hj.testing.path_of(kp) for kp, _ in flat] == list(spec.paths)


@pytest.mark.parametrize("tree,want", [
    ({"a": {"b": 1.0, "c": {3: 2.0}}}, ["a/b", "a/c/3"]),                     # DictKey (str and int keys)
    ([1.0, (2.0, [3.0])], ["0", "1/0", "1/1/0"]),                              # SequenceKey
    (Pair(1.0, {"k": 2.0}), ["w", "b/k"]),                                     # GetAttrKey (NamedTuple)
    (Opaque(1.0, [2.0]), ["0", "1/0"]),                                        # FlattenedIndexKey
    ({"m": Opaque({"x": 1.0}, Pair(2.0, 3.0))}, ["m/0/x", "m/1/w", "m/1/b"]),  # all four in one path
], ids=["DictKey", "SequenceKey", "GetAttrKey", "FlattenedIndexKey", "mixed"])
def test_keystr_paths_equal_the_hand_written_ones(tree, want):
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    kinds = {type(k).__name__ for kp, _ in flat for k in kp}
    assert kinds and kinds <= {"DictKey", "SequenceKey", "GetAttrKey", "FlattenedIndexKey"}
    assert [_hand_written_path_str(kp) for kp, _ in flat] == want
    assert list(_spec(tree).paths) == want
    assert [p for p, _ in hj.testing.leaves_with_paths(tree)] == want
    assert hj.testing.path_of(()) == ""


def test_equinox_paths_equal_the_hand_written_ones():
    eqx = pytest.importorskip("equinox")
    mlp = eqx.nn.MLP(2, 1, 3, 1, key=jax.random.key(0))
    flat, _ = jax.tree_util.tree_flatten_with_path(eqx.filter(mlp, eqx.is_inexact_array))
    want = [_hand_written_path_str(kp) for kp, _ in flat]
    assert list(hj.targets.from_equinox(mlp).paths) == want
    assert "layers/0/weight" in want


@pytest.mark.parametrize("pattern,path,want", [
    ("*/kernel", "Dense_0/kernel", True),
    ("*/kernel", "a/b/kernel", True),                  # `*` crosses '/'
    ("*/kernel", "kernel", False),
    ("Dense_?/bias", "Dense_1/bias", True),
    ("Dense_[01]/*", "Dense_2/bias", False),
    ("enc/*", "encoder/w", False),
])
def test_select_globs(pattern, path, want):
    assert hj.select(pattern)(path, None) is want


SPEC_TREE = {"a": {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2)}, "head": {"w": jnp.zeros(3)}}


@pytest.mark.parametrize("where,want", [
    ("*/w", ("a/w", "head/w")),                                    # one glob
    (["a/*", "head/w"], ("a/b", "a/w", "head/w")),                 # a list of globs
    (("a/b",), ("a/b",)),                                          # a tuple
    (hj.select("*/b", "head/*"), ("a/b", "head/w")),               # several patterns in one selector
    (lambda p, leaf: leaf.ndim == 2, ("a/w",)),                    # a (path, leaf) predicate
], ids=["glob", "list", "tuple", "select", "predicate"])
def test_where_forms_select_the_same_way(where, want):
    assert _spec(SPEC_TREE).select(where) == want


@pytest.mark.parametrize("bad", [(), (3,), ("a", None)])
def test_select_rejects_non_strings(bad):
    with pytest.raises(TypeError, match=r"^hyperjax.select: expected one or more glob strings"):
        hj.select(*bad)


@pytest.mark.parametrize("bad,shown", [(3, "int"), ({"a": 1}, "dict"), ([1, 2], r"list \[1, 2\]")])
def test_where_of_another_type_is_a_type_error(bad, shown):
    with pytest.raises(TypeError, match=r"^hyperjax.TargetSpec.select: `where` must be a glob string, a list of "
                                        r"globs or a \(path, leaf\) -> bool predicate, got " + shown):
        _spec(SPEC_TREE).select(bad)


def only_kernels(p, leaf):
    return p.endswith("kernel")


@pytest.mark.parametrize("where,shown", [
    ("*/x", "'*/x'"), (["x", "y"], "'x', 'y'"), (hj.select("x", "y"), "'x', 'y'"), (only_kernels, "only_kernels"),
], ids=["glob", "list", "select", "function"])
def test_no_match_message_describes_where(where, shown):
    with pytest.raises(ValueError) as info:
        _spec(SPEC_TREE).select(where)
    assert str(info.value) == (f"hyperjax.TargetSpec.select: `where`={shown} matches no leaf of the target. "
                               f"Available paths: a/b, a/w, head/w")


# ------------------------------------------------------------------ private helpers with no public form
from hyperjax._src import paths  # noqa: E402  (nest / unnest / key_name: used by generators, not exported)


def test_key_name():
    assert paths.key_name(jax.tree_util.DictKey("a")) == "a"
    assert paths.key_name(jax.tree_util.SequenceKey(3)) == "3"
    assert paths.key_name(jax.tree_util.GetAttrKey("w")) == "w"
    assert paths.key_name(jax.tree_util.FlattenedIndexKey(2)) == "2"


def test_nest_unnest_round_trip():
    from flax import traverse_util
    flat = {"a/b": 1, "a/c": 2, "d": 3, "e/f/g": 4}
    nested = paths.nest(flat)
    assert nested == {"a": {"b": 1, "c": 2}, "d": 3, "e": {"f": {"g": 4}}}
    assert nested == traverse_util.unflatten_dict(flat, sep="/")
    assert paths.unnest(nested, flat) == flat
    assert list(paths.unnest(nested, ["e/f/g", "a/b"])) == ["e/f/g", "a/b"]     # the order of `paths`, a subset


def test_nest_unnest_of_a_tree_with_paths():
    """nest({path: leaf}) is an ordinary nested dict whose leaf paths are those paths again."""
    tree = {"enc": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)}, "head": {"w": jnp.ones(1)}}
    flat = hj.testing.leaf_dict(tree)
    nested = paths.nest(flat)
    assert jax.tree.structure(nested) == jax.tree.structure(tree)
    assert list(hj.testing.leaf_dict(nested)) == list(flat)
    assert all(paths.unnest(nested, flat)[p] is flat[p] for p in flat)


def test_unnest_errors():
    with pytest.raises(KeyError, match="a/x"):
        paths.unnest({"a": {"b": 1}}, ["a/x"])
    with pytest.raises(KeyError, match="'a'"):                     # a subtree is not a leaf
        paths.unnest({"a": {"b": 1}}, ["a"])
    with pytest.raises(TypeError, match="expected a nested dict keyed by path parts, got list"):
        paths.unnest([1, 2], ["0"])
