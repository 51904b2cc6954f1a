"""One convention for every generator factory: signatures, static and conditioned forms, the role-keyed
hparams layout read by `hj.training.labels`, hparams checked against their generator, and the README's
"Generator conventions" table matching the code."""

import inspect
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hyperjax as hj

G = hj.generators
FACTORIES = [getattr(G, name) for name in G.FACTORIES]
REQUIRED = {"dense": set(), "chunked": {"chunk_size"}, "per_layer": set(), "low_rank": {"rank"},
            "scale_modulation": set(), "rowwise": {"where"}, "codebook": {"num_values"}}
# the smallest extra options each factory needs (its required arguments)
NEEDS = {"dense": {"hidden": 4}, "chunked": {"chunk_size": 16, "hidden": 4}, "per_layer": {},
         "low_rank": {"rank": 2, "hidden": 4}, "scale_modulation": {"hidden": 4},
         "rowwise": {"where": "Dense_0/kernel", "emb_dim": 3, "hidden": 4}, "codebook": {"num_values": 3}}
README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


SPEC = hj.testing.mlp_spec((4, 6, 3))


def test_every_public_factory_is_listed():
    """FACTORIES and ADAPTERS name every function of hj.generators that takes a `target` first and returns a
    generator (num_outputs counts, factorised_apply runs the target)."""
    public = {n for n in G.__all__ if callable(getattr(G, n)) and not isinstance(getattr(G, n), type)}
    takes_target = {n for n in public if next(iter(inspect.signature(getattr(G, n)).parameters), None) == "target"}
    assert takes_target - {"num_outputs", "factorised_apply"} == set(G.FACTORIES) | set(G.ADAPTERS)


def test_adapters_follow_the_convention_except_init():
    """lora: target first, keyword-only options, the shared cond_dim / num_conds / where / dtype (its A, B are
    LoRA's init, not hyperfan: no `init`)."""
    params = list(inspect.signature(G.lora).parameters.values())
    assert params[0].name == "target" and all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:])
    names = {p.name: p.default for p in params}
    assert names["cond_dim"] is None and names["num_conds"] is None and names["where"] is None
    assert "dtype" in names and "init" not in names


@pytest.mark.parametrize("factory", FACTORIES, ids=G.FACTORIES)
def test_signature_follows_the_convention(factory):
    params = list(inspect.signature(factory).parameters.values())
    assert params[0].name == "target" and params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:]), factory.__name__
    names = {p.name: p for p in params}
    for common in ("cond_dim", "num_conds", "where", "init", "dtype"):
        assert common in names, (factory.__name__, common)
    assert names["cond_dim"].default is None and names["num_conds"].default is None
    assert names["init"].default == "hyperfan_in"
    required = {p.name for p in params[1:] if p.default is inspect.Parameter.empty}
    assert required == REQUIRED[factory.__name__]
    assert "Raises:" in factory.__doc__ and "apply(hparams, cond=None" in factory.__doc__


def test_from_module_signature():
    params = list(inspect.signature(G.from_module).parameters.values())
    assert [p.name for p in params[:2]] == ["module", "target"]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[2:])
    assert {p.name for p in params[2:] if p.default is inspect.Parameter.empty} == set()


def test_a_missing_required_argument_raises_at_the_call():
    with pytest.raises(TypeError, match=r"missing 1 required keyword-only argument: 'chunk_size'"):
        G.chunked(SPEC, cond_dim=3)
    with pytest.raises(TypeError, match=r"takes 1 positional argument but 2"):
        G.dense(SPEC, 3)


def _readme_table():
    text = README.read_text()
    section = text.split("## Generator conventions", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.fullmatch(r"`(\w+)`", cells[0]) if len(cells) > 3 else None
        if m:
            rows[m.group(1)] = cells
    return rows


def test_readme_conventions_table_matches_the_signatures():
    rows = _readme_table()
    assert set(G.FACTORIES) <= set(rows)
    for name in G.FACTORIES:
        sig = inspect.signature(getattr(G, name)).parameters
        required = set(re.findall(r"`(\w+)`", rows[name][1]))
        assert required == REQUIRED[name], name
        where = sig["where"].default
        shown = rows[name][2]
        if where is inspect.Parameter.empty:
            assert "required" in shown, name
        elif where is None:
            assert shown.startswith("`None`"), name
        else:
            assert shown.startswith(f"`{where.__name__}`"), name


# ------------------------------------------------------------------------------------------------ forms
@pytest.mark.parametrize("name", G.FACTORIES)
def test_static_form(name, key):
    """cond_dim=None and num_conds=None: apply(hparams) == apply(hparams, None); a cond raises."""
    gen = getattr(G, name)(SPEC, **NEEDS[name])
    hp = jax.jit(gen.init)(key)
    a, b = jax.jit(gen.apply)(hp), gen.apply(hp, None)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b)
    jax.tree.map(lambda x, s: (x.shape, x.dtype) == (s.shape, s.dtype) or pytest.fail(str(s)), a, SPEC.abstract_params)
    with pytest.raises(ValueError, match=r"built without conditioning \(cond_dim=None\), so `cond` must be None"):
        gen.apply(hp, jnp.ones(3))
    with pytest.raises(ValueError, match=r"`num_conds` needs `cond_dim`|codebook has no conditioned form"):
        getattr(G, name)(SPEC, num_conds=2, **NEEDS[name])


@pytest.mark.parametrize("name", [n for n in G.FACTORIES if n != "codebook"])
@pytest.mark.parametrize("ids", [False, True], ids=["vector", "ids"])
def test_conditioned_form(name, ids, key):
    gen = getattr(G, name)(SPEC, cond_dim=3, num_conds=4 if ids else None, **NEEDS[name])
    hp = jax.jit(gen.init)(key)
    c0, c1 = (jnp.int32(0), jnp.int32(1)) if ids else (jnp.ones(3), -jnp.ones(3))
    apply = jax.jit(gen.apply)
    p0, p1 = apply(hp, c0), apply(hp, c1)
    assert not np.allclose(SPEC.flatten(p0), SPEC.flatten(p1))                   # the cond matters
    with pytest.raises(ValueError, match=r"this generator (is conditioned|was built with num_conds)"):
        gen.apply(hp)


def test_codebook_has_no_conditioned_form():
    with pytest.raises(ValueError, match=r"codebook has no conditioned form \(cond_dim=3, num_conds=None\)"):
        G.codebook(SPEC, num_values=3, cond_dim=3)


def test_per_call_values_are_keywords(key):
    """The temperature and fixed feature embeddings are apply keywords, never `cond`."""
    book = G.codebook(SPEC, num_values=3)
    hp = book.init(key)
    assert "tau" in inspect.signature(book.apply).parameters
    sharp, soft = book.apply(hp, tau=jnp.float32(0.05)), book.apply(hp, tau=2.0)
    assert not np.allclose(SPEC.flatten(sharp), SPEC.flatten(soft))
    emb = jax.random.normal(key, (4, 2))
    row = G.rowwise(SPEC, where="Dense_0/kernel", feature_emb=jax.ShapeDtypeStruct((4, 2), jnp.float32), hidden=4)
    hp = row.init(key)
    out = row.apply(hp, feature_emb=emb)["Dense_0"]["kernel"]
    assert out.shape == (4, 6) and not np.allclose(out, row.apply(hp, feature_emb=emb[::-1])["Dense_0"]["kernel"])


# ------------------------------------------------------------------------------------------------ hparams
ROLE_OF = {"dense": {"hyper", "embedding"}, "chunked": {"hyper", "embedding"},
           "per_layer": {"hyper", "embedding"}, "low_rank": {"hyper", "embedding", "base", "direct"},
           "scale_modulation": {"hyper", "embedding", "base", "direct"},
           "rowwise": {"hyper", "embedding", "direct"}, "codebook": {"hyper"}}


@pytest.mark.parametrize("name", G.FACTORIES)
def test_hparams_are_keyed_by_role_and_labelled_by_it(name, key):
    gen = getattr(G, name)(SPEC, **NEEDS[name])
    hp = jax.eval_shape(gen.init, key)
    assert set(hp) == ROLE_OF[name] and set(hp) <= set(hj.training.LABELS) == set(G.ROLES)
    labels = hj.training.labels(hp)
    for role in hp:
        assert set(jax.tree.leaves(labels[role])) == {role}, (name, role)


def test_low_rank_base_weight_is_labelled_base_not_hyper(key):
    gen = G.low_rank(SPEC, rank=2, cond_dim=3)
    labels = hj.training.labels(jax.eval_shape(gen.init, key))
    assert labels["base"]["Dense_0"]["kernel"] == "base"
    assert labels["hyper"]["u"]["Dense_0"]["kernel"] == "hyper"


def test_hparams_from_another_configuration_raise_naming_the_path(key):
    small, big = G.dense(SPEC, cond_dim=3, hidden=8), G.dense(SPEC, cond_dim=3, hidden=16)
    with pytest.raises(ValueError, match=r"generators.dense: leaf 'hyper/mlp/0/b' expected \(8,\) float32, got "
                                         r"\(16,\) float32"):
        jax.jit(small.apply)(big.init(key), jnp.ones(3))
    chunk = G.chunked(SPEC, cond_dim=3, chunk_size=8)
    with pytest.raises(ValueError, match=r"generators.chunked: hparams tree does not match the target "
                                         r"\(missing: embedding/chunk_emb"):
        chunk.apply(small.init(key), jnp.ones(3))
    with pytest.raises(TypeError, match=r"hparams must be the dict returned by this generator's init"):
        small.apply([1, 2], jnp.ones(3))


# ------------------------------------------------------------------------------------------------ Modulated
def test_modulated_is_a_plain_namedtuple(key):
    gen = G.low_rank(SPEC, rank=2, cond_dim=3)
    assert gen._fields == ("init", "apply", "factors")
    moved = gen._replace(init=gen.init)
    assert moved.factors is gen.factors                       # _replace keeps every field
    names = jax.tree.map(lambda f: f.__name__, gen)           # a pytree of three functions
    assert names == type(gen)("init", "apply", "factors")
    assert isinstance(gen.hypernetwork, hj.HyperNetwork)


# ------------------------------------------------------------------------------------------------ zero-size leaves
ZERO = hj.targets.from_fn(lambda p, x: x @ p["w"] + p["b"][None],
                          {"w": jax.ShapeDtypeStruct((4, 3), jnp.float32), "b": jax.ShapeDtypeStruct((3,), jnp.float32),
                           "empty": {"kernel": jax.ShapeDtypeStruct((0, 3), jnp.float32),
                                     "bias": jax.ShapeDtypeStruct((0,), jnp.float32)}})


@pytest.mark.parametrize("name", G.FACTORIES)
def test_zero_size_leaves_are_legal_and_come_out_as_zeros(name, key):
    """A target with zero-size leaves: spec.init works, every generator emits them (empty) and generates the rest."""
    assert jax.tree.map(jnp.shape, ZERO.init(key))["empty"] == {"bias": (0,), "kernel": (0, 3)}
    needs = {**NEEDS[name], **({"where": "w"} if name == "rowwise" else {})}
    gen = getattr(G, name)(ZERO, **needs)
    hp = jax.jit(gen.init)(key)
    params = jax.jit(gen.apply)(hp)
    assert params["empty"]["kernel"].shape == (0, 3) and params["w"].shape == (4, 3)
    assert np.isfinite(np.asarray(params["w"])).all()
    assert not any("empty" in jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(hp)[0])


def test_selecting_only_zero_size_leaves_raises():
    with pytest.raises(ValueError, match=r"every leaf `where` selects has size 0, so there is nothing to generate: "
                                         r"'empty/bias' \(0,\), 'empty/kernel' \(0, 3\)"):
        G.dense(ZERO, where="empty/*")
