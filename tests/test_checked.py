"""Out-of-range ids never give a silent NaN: eager ids raise, traced ids raise under hj.checked (checkify)
and give NaN (the documented unchecked default) without it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hyperjax as hj
import hyperjax.testing as ht

SPEC = ht.mlp_spec()
X = ht.ramp((3, 5))
MATCH = r"generators\.{}: conditioning id {} out of range \[0, 4\)"
ID_GENERATORS = {
    "dense": lambda: hj.generators.dense(SPEC, cond_dim=3, num_conds=4, hidden=4),
    "chunked": lambda: hj.generators.chunked(SPEC, chunk_size=16, cond_dim=3, num_conds=4, hidden=4),
    "per_layer": lambda: hj.generators.per_layer(SPEC, cond_dim=3, num_conds=4),
    "low_rank": lambda: hj.generators.low_rank(SPEC, rank=2, cond_dim=3, num_conds=4, hidden=4),
}


@pytest.fixture(scope="module", params=list(ID_GENERATORS))
def built(request):
    gen = ID_GENERATORS[request.param]()
    return request.param, gen, jax.jit(gen.init)(jax.random.key(0))


def test_eager_id_raises(built):
    name, gen, hp = built
    with pytest.raises(ValueError, match=r"conditioning id 4 out of range \[0, 4\)"):
        gen.apply(hp, jnp.int32(4))


def test_unchecked_traced_id_gives_nan_never_a_valid_embedding(built):
    name, gen, hp = built
    bad = jax.jit(gen.apply)(hp, jnp.int32(9))
    assert np.isnan(np.asarray(bad["Dense_0"]["kernel"])).all()        # generated (low_rank: modulated) leaves


@pytest.mark.parametrize("how", ["jit", "vmap", "generate_batch", "per_sample", "grad"])
def test_checked_raises_naming_the_id(built, how):
    name, gen, hp = built
    ids = jnp.array([1, 6, 2], jnp.int32)
    fn, args = {
        "jit": (gen.apply, (hp, jnp.int32(6))),
        "vmap": (jax.vmap(gen.apply, in_axes=(None, 0)), (hp, ids)),
        "generate_batch": (lambda h, c: hj.generate_batch(gen, h, c), (hp, ids)),
        "per_sample": (hj.per_sample(gen, SPEC), (hp, ids, X)),
        "grad": (jax.grad(lambda h, c: jnp.sum(hj.per_sample(gen, SPEC)(h, c, X))), (hp, ids)),
    }[how]
    with pytest.raises(ValueError, match=MATCH.format(name, 6)):
        hj.checked(fn)(*args)


def test_checked_passes_valid_ids_through_unchanged(built):
    name, gen, hp = built
    ids = jnp.array([0, 3, 1], jnp.int32)
    got = hj.checked(lambda h, c: hj.generate_batch(gen, h, c))(hp, ids)
    want = jax.jit(lambda h, c: hj.generate_batch(gen, h, c))(hp, ids)
    jax.tree.map(np.testing.assert_array_equal, got, want)
    eager = hj.checked(gen.apply, jit=False)(hp, jnp.int32(2))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), eager, gen.apply(hp, jnp.int32(2)))


def test_negative_traced_id_is_caught_too():
    gen = ID_GENERATORS["dense"]()
    hp = gen.init(jax.random.key(1))
    with pytest.raises(ValueError, match=MATCH.format("dense", -1)):
        hj.checked(gen.apply)(hp, jnp.int32(-1))


def test_python_int_ids_work_eagerly_and_under_jit(built):
    name, gen, hp = built
    want = gen.apply(hp, jnp.int32(2))
    for got in (gen.apply(hp, 2), jax.jit(lambda h: gen.apply(h, 2))(hp), hj.checked(lambda h: gen.apply(h, 2))(hp)):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), got, want)
    with pytest.raises(ValueError, match=r"conditioning id 4 out of range \[0, 4\)"):
        gen.apply(hp, 4)
