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


def test_path_strings_for_dicts_sequences_and_attributes():
    tree = {"enc": [Pair(jnp.zeros(2), jnp.zeros(1))], "dec": {"kernel": jnp.zeros(3)}}
    got = [p for p, _ in paths.leaves_with_paths(tree)]
    assert got == ["dec/kernel", "enc/0/w", "enc/0/b"]
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    assert [paths.path_str(kp) for kp, _ in flat] == got
    assert paths.key_name(jax.tree_util.DictKey("a")) == "a"
    assert paths.key_name(jax.tree_util.SequenceKey(3)) == "3"
    assert paths.key_name(jax.tree_util.GetAttrKey("w")) == "w"


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
    flat = {"a/b": 1, "a/c": 2, "d": 3, "e/f/g": 4}
    nested = paths.nest(flat)
    assert nested == {"a": {"b": 1, "c": 2}, "d": 3, "e": {"f": {"g": 4}}}
    assert paths.unnest(nested, flat) == flat
