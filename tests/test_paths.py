"""Leaf path strings and selectors (hyperjax._src.paths)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import pytest

import hyperjax as hj
from hyperjax._src import paths


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


def test_path_strings_for_dicts_sequences_and_attributes():
    tree = {"enc": [Pair(jnp.zeros(2), jnp.zeros(1))], "dec": {"kernel": jnp.zeros(3)}}
    got = [p for p, _ in paths.leaves_with_paths(tree)]
    assert got == ["dec/kernel", "enc/0/w", "enc/0/b"]
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    assert [paths.path_str(kp) for kp, _ in flat] == got
    assert paths.key_name(jax.tree_util.DictKey("a")) == "a"
    assert paths.key_name(jax.tree_util.SequenceKey(3)) == "3"
    assert paths.key_name(jax.tree_util.GetAttrKey("w")) == "w"
    assert paths.key_name(jax.tree_util.FlattenedIndexKey(2)) == "2"


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
    assert [paths.path_str(kp) for kp, _ in flat] == [_hand_written_path_str(kp) for kp, _ in flat] == want
    assert [p for p, _ in paths.leaves_with_paths(tree)] == want
    assert paths.path_str(()) == ""


def test_equinox_paths_equal_the_hand_written_ones():
    eqx = pytest.importorskip("equinox")
    mlp = eqx.nn.MLP(2, 1, 3, 1, key=jax.random.key(0))
    flat, _ = jax.tree_util.tree_flatten_with_path(mlp)
    got = [paths.path_str(kp) for kp, _ in flat]
    assert got == [_hand_written_path_str(kp) for kp, _ in flat]
    assert "layers/0/weight" in got


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


def test_select_several_patterns_and_as_selector():
    sel = hj.select("*/bias", "head/*")
    assert sel("x/bias") and sel("head/w") and not sel("x/w")
    assert paths.as_selector("*/w")("a/w", None)
    assert paths.as_selector(["a/*", "b"])("b", None)
    pred = lambda p, leaf: leaf.ndim == 2          # noqa: E731
    assert paths.as_selector(pred) is pred


@pytest.mark.parametrize("bad", [(), (3,), ("a", None)])
def test_select_rejects_non_strings(bad):
    with pytest.raises(TypeError, match="expected one or more glob strings"):
        hj.select(*bad)


def test_as_selector_rejects_other_types():
    with pytest.raises(TypeError, match=r"`where` must be a glob string, a list of globs or a .* got int"):
        paths.as_selector(3)


def test_describe():
    assert paths.describe("*/w") == "'*/w'"
    assert paths.describe(["a", "b"]) == "'a', 'b'"
    assert paths.describe(hj.select("a", "b")) == "'a', 'b'"

    def only_kernels(p, leaf):
        return p.endswith("kernel")
    assert paths.describe(only_kernels) == "only_kernels"


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
    flat = dict(paths.leaves_with_paths(tree))
    nested = paths.nest(flat)
    assert jax.tree.structure(nested) == jax.tree.structure(tree)
    assert [p for p, _ in paths.leaves_with_paths(nested)] == list(flat)
    assert all(paths.unnest(nested, flat)[p] is flat[p] for p in flat)


def test_unnest_errors():
    with pytest.raises(KeyError, match="a/x"):
        paths.unnest({"a": {"b": 1}}, ["a/x"])
    with pytest.raises(KeyError, match="'a'"):                     # a subtree is not a leaf
        paths.unnest({"a": {"b": 1}}, ["a"])
    with pytest.raises(TypeError, match="expected a nested dict keyed by path parts, got list"):
        paths.unnest([1, 2], ["0"])
