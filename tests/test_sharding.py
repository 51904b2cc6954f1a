"""Sharding rules by leaf path; a sharded joint training step equals the single-device one (8 CPU devices)."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import hyperjax.sharding as hjs

MULTI_DEVICE = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import PartitionSpec as P
    import hyperjax as hj, hyperjax.sharding as hjs
    assert jax.device_count() == 8, jax.devices()
    params = {"l0": {"kernel": jnp.zeros((16, 32)), "bias": jnp.zeros(32)}, "l1": {"kernel": jnp.zeros((32, 8)), "bias": jnp.zeros(8)}}
    def mlp(p, x):
        return jax.nn.relu(x @ p["l0"]["kernel"] + p["l0"]["bias"]) @ p["l1"]["kernel"] + p["l1"]["bias"]
    spec = hj.targets.from_fn(mlp, params)
    hnet = hj.generators.dense(spec, cond_dim=4, hidden=16, num_conds=8)
    def loss_fn(hp, batch, rng):
        x, y, task = batch
        logits = hj.per_sample(hnet, spec, example_has_batch_axis=False)(hp, task, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    opt = optax.adam(1e-2)
    hp = hnet.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (32, 16)); y = jnp.arange(32) % 8; task = jnp.arange(32) % 8
    step = hj.training.make_step(loss_fn, opt, donate=False)
    ref = hj.training.init_state(hp, opt, jax.random.key(2))
    for _ in range(3):
        ref, m_ref = step(ref, (x, y, task))
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    rules = [("hyper/mlp/1/w", P(None, "model")), ("hyper/mlp/1/b", P("model"))]
    hp_sharded = hjs.place(hp, mesh, rules)
    assert hp_sharded["hyper"]["mlp"][1]["w"].sharding.spec == P(None, "model")
    batch = jax.device_put((x, y, task), hjs.batch_sharding(mesh))
    st = hj.training.init_state(hp_sharded, opt, jax.random.key(2))
    for _ in range(3):
        st, m = step(st, batch)
    np.testing.assert_allclose(float(m["loss"]), float(m_ref["loss"]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(st.params), jax.tree.leaves(ref.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    assert len(st.params["hyper"]["mlp"][1]["w"].sharding.device_set) == 8
    print("SHARDED_OK", float(m["loss"]))
""")


def test_sharded_step_matches_single_device():
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8".strip(),
               JAX_PLATFORMS="cpu")   # keeps the suite's compile flags (tests/conftest.py)
    out = subprocess.run([sys.executable, "-c", MULTI_DEVICE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "SHARDED_OK" in out.stdout


def _mesh():
    return jax.make_mesh((1,), ("data",))


def test_rules_first_match_wins_and_default_replicates():
    tree = {"a": {"kernel": np.zeros((4, 2))}, "b": np.zeros(3)}
    sh = hjs.shardings(tree, _mesh(), [("a/*", P("data")), ("*", P(None))])
    assert sh["a"]["kernel"].spec == P("data")
    assert sh["b"].spec == P(None)
    assert hjs.shardings(tree, _mesh())["b"].spec == P()


@pytest.mark.parametrize("rule,match", [
    (P(None, None, "data"), r"leaf 'a/kernel' has shape \(4, 2\) \(rank 2\)"),
    (P("model"), r"leaf 'a/kernel': mesh has no axis 'model'"),
])
def test_bad_rules_name_the_leaf(rule, match):
    with pytest.raises(ValueError, match=match):
        hjs.shardings({"a": {"kernel": np.zeros((4, 2))}}, _mesh(), [("a/kernel", rule)])


def test_indivisible_axis_is_an_error():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1), ("data",))
    # a 3-way axis is not available on one device: an AbstractMesh has the sizes without the devices
    with pytest.raises(ValueError, match=r"leaf 'w' axis of size 4 does not divide over mesh axes 'data' of size 3"):
        hjs.spec_for("w", (4,), jax.sharding.AbstractMesh((3,), ("data",)), [("w", P("data"))])
    assert hjs.spec_for("w", (4,), mesh, [("w", P("data"))]) == P("data")


def test_rules_match_through_select_globs_lists_and_predicates():
    tree = {"hyper": {"mlp": [{"w": np.zeros((4, 2))}]}, "direct": {"Dense_0": {"kernel": np.zeros((2, 2))}}}
    sh = hjs.shardings(tree, _mesh(), [("*/w", P("data")),                          # `*` crosses '/'
                                       (lambda p, leaf: leaf.shape == (2, 2), P(None, "data"))])
    assert sh["hyper"]["mlp"][0]["w"].spec == P("data")
    assert sh["direct"]["Dense_0"]["kernel"].spec == P(None, "data")
    assert hjs.shardings(tree, _mesh(), [(["nope", "direct/*"], P("data"))])["direct"]["Dense_0"]["kernel"].spec == P("data")
    assert hjs.spec_for("hyper/mlp/0/w", (4, 2), _mesh(), [("hyper/*", P("data"))]) == P("data")


@pytest.mark.parametrize("rules,default,match", [
    ("*", P(), r"`rules` must be a sequence of \(glob, PartitionSpec\) pairs, got str"),
    ([("*", "data")], P(), r"each rule must be a \(glob, PartitionSpec\) pair, got \('\*', 'data'\)"),
    ([(P("data"), "*")], P(), r"each rule must be a \(glob, PartitionSpec\) pair"),
    ([(3, P("data"))], P(), r"`where` must be a glob string, a list of globs or a .* got int"),
    ((), "data", r"`default` must be a PartitionSpec, got str"),
], ids=["str-rules", "str-spec", "swapped", "int-glob", "default"])
def test_malformed_rules_are_type_errors(rules, default, match):
    with pytest.raises(TypeError, match=r"^hyperjax.sharding.shardings: " + match):
        hjs.shardings({"w": np.zeros(4)}, _mesh(), rules, default)


def test_abstract_with_shardings_for_restore():
    tree = {"w": jax.ShapeDtypeStruct((4, 2), np.float32)}
    abs_tree = hjs.abstract_with_shardings(tree, _mesh(), [("w", P("data"))])
    assert abs_tree["w"].sharding.spec == P("data") and abs_tree["w"].shape == (4, 2)
    with pytest.raises(ValueError, match="mesh has no axis 'batch'"):
        hjs.batch_sharding(_mesh(), "batch")


# ------------------------------------------------------------------ rules that match no leaf
TREE = {"hyper": {"mlp": [{"w": np.zeros((4, 2)), "b": np.zeros(2)}]}, "direct": {"bias": np.zeros(3)}}
AVAILABLE = r"Available paths: direct/bias, hyper/mlp/0/b, hyper/mlp/0/w\."


@pytest.mark.parametrize("fn", [hjs.shardings, hjs.place, hjs.abstract_with_shardings],
                         ids=["shardings", "place", "abstract_with_shardings"])
def test_a_rule_that_matches_no_leaf_is_an_error(fn):
    """A misspelt path ("hyper/mlp/1/w" for a one-layer MLP) used to leave the leaf silently replicated."""
    rules = [("hyper/mlp/0/w", P("data")), ("hyper/mlp/1/w", P(None, "data"))]
    with pytest.raises(ValueError, match=rf"^hyperjax.sharding.{fn.__name__}: rule 'hyper/mlp/1/w' matches no leaf of the tree, so "
                                         r"it is never applied\. " + AVAILABLE):
        fn(TREE, _mesh(), rules)
    with pytest.warns(UserWarning, match=rf"^hyperjax.sharding.{fn.__name__}: rule 'hyper/mlp/1/w' matches no leaf"
                      ) as record:
        out = fn(TREE, _mesh(), rules, unmatched="warn")
    assert record[0].filename == __file__          # the warning points at the caller's line
    spec_of = (lambda x: x.spec) if fn is hjs.shardings else (lambda x: x.sharding.spec)
    assert spec_of(out["hyper"]["mlp"][0]["w"]) == P("data")       # the matching rule still applies
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = fn(TREE, _mesh(), rules, unmatched="ignore")
    assert spec_of(out["direct"]["bias"]) == P()


def test_every_unmatched_rule_is_named_and_predicates_too():
    rules = [(["nope/*", "nada"], P("data")), ("*/b", P()), (lambda p, leaf: leaf.ndim == 3, P())]
    with pytest.raises(ValueError, match=r"rules 'nope/\*', 'nada'; <lambda> match no leaf of the tree, so they are "
                                         r"never applied\. " + AVAILABLE):
        hjs.shardings(TREE, _mesh(), rules)
    with pytest.raises(ValueError, match=r"rule '\*' matches no leaf .* \(none: the tree has no leaves\)"):
        hjs.shardings({}, _mesh(), [("*", P())])
    assert hjs.shardings({}, _mesh(), []) == {}
    # a rule shadowed by an earlier one still matches a leaf: not an error (the first match wins)
    assert hjs.shardings(TREE, _mesh(), [("*", P()), ("direct/*", P("data"))])["direct"]["bias"].spec == P()
    # spec_for sees one leaf: a rule for other leaves is normal there
    assert hjs.spec_for("direct/bias", (3,), _mesh(), [("hyper/*", P("data"))]) == P()


@pytest.mark.parametrize("unmatched", ["raise", None, True])
def test_unknown_unmatched_option(unmatched):
    with pytest.raises(ValueError, match=r"^hyperjax.sharding.shardings: unknown `unmatched`=.*; valid options are 'error', "
                                         r"'warn', 'ignore'\."):
        hjs.shardings(TREE, _mesh(), [], unmatched=unmatched)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: hjs.shardings({"w": np.zeros(2)}, "mesh"), TypeError,
     r"`mesh` must be a jax.sharding.Mesh or AbstractMesh .* got str"),
    (lambda: hjs.place({"w": np.zeros(2)}, jax.sharding.AbstractMesh((1,), ("data",))), TypeError,
     r"`mesh` must be a jax.sharding.Mesh \(e.g."),
    (lambda: hjs.shardings({"w": "abc"}, _mesh()), TypeError,
     r"leaf 'w' must be an array or a jax.ShapeDtypeStruct, got str"),
    (lambda: hjs.shardings({"w": np.zeros((2, 2))}, _mesh(), [("w", P("data", "data"))]), ValueError,
     r"leaf 'w': PartitionSpec\('data', 'data'\) uses mesh axis 'data' for more than one dimension"),
    (lambda: hjs.spec_for("w", "ab", _mesh(), []), TypeError, r"`shape` of leaf 'w' must be a tuple of ints"),
    (lambda: hjs.batch_sharding(None), TypeError, r"`mesh` must be a jax.sharding.Mesh"),
], ids=["mesh-str", "place-abstract-mesh", "str-leaf", "axis-twice", "spec_for-shape", "batch_sharding-mesh"])
def test_bad_meshes_leaves_and_specs(call, exc, match):
    """Each used to surface as an AttributeError or a jax DuplicateSpecError far from the argument."""
    with pytest.raises(exc, match=r"^hyperjax.sharding.(shardings|place|spec_for|batch_sharding): " + match):
        call()


def test_python_numbers_and_abstract_meshes():
    """Python floats are leaves of shape (); an AbstractMesh (no devices) plans shardings, e.g. for 2 x 3 devices,
    with the divisibility checks of the real layout."""
    assert hjs.place({"w": 1.0}, _mesh(), [("w", P())])["w"].shape == ()
    mesh = jax.sharding.AbstractMesh((2, 3), ("data", "model"))
    tree = {"w": jax.ShapeDtypeStruct((4, 6), np.float32)}
    assert hjs.abstract_with_shardings(tree, mesh, [("w", P("data", "model"))])["w"].sharding.spec == P("data", "model")
    with pytest.raises(ValueError, match=r"leaf 'w' axis of size 4 does not divide over mesh axes 'model' of size 3"):
        hjs.abstract_with_shardings(tree, mesh, [("w", P("model"))])
