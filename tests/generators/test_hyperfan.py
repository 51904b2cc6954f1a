"""Hyperfan-in / hyperfan-out (Chang, Flokas & Lipson, ICLR 2020): generated weights start with the variance of
a standard fan-in (fan-out) init of the target, checked statistically over a large target.

The variance of one generated kernel fluctuates with the generator's random hidden layer and the random cond,
so each estimate averages KEYS generators x CONDS unit-normal conds (what learned cond embeddings are), and the
test also asserts the estimate is precise enough to reject a factor-2 scaling error.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hyperjax as hj

COND_DIM, HIDDEN, KEYS, CONDS = 64, 256, 4, 8
TOL = 0.2


@pytest.fixture(scope="module")
def spec():
    """Kernels with fan_in != fan_out (hyperfan-in and -out differ 4x), biases and a norm scale."""
    f32 = jnp.float32
    tree = {"a": {"kernel": jax.ShapeDtypeStruct((32, 128), f32), "bias": jax.ShapeDtypeStruct((128,), f32)},
            "b": {"kernel": jax.ShapeDtypeStruct((128, 32), f32), "bias": jax.ShapeDtypeStruct((32,), f32)},
            "norm": {"scale": jax.ShapeDtypeStruct((128,), f32)}}
    return hj.targets.from_fn(lambda p, x: x, tree)


GENERATORS = [
    pytest.param(lambda spec, init: hj.generators.dense(spec, cond_dim=COND_DIM, hidden=HIDDEN, init=init), id="dense"),
    pytest.param(lambda spec, init: hj.generators.chunked(spec, cond_dim=COND_DIM, chunk_size=96, chunk_emb_dim=8, hidden=HIDDEN, init=init),
                 id="chunked"),
]
PARTIAL = pytest.param(lambda spec, init: hj.generators.dense(spec, cond_dim=COND_DIM, hidden=HIDDEN, init=init,
                                                               where="*/kernel"), id="partial-dense")
INITS = [("hyperfan_in", "fan_in", "fan_out"), ("hyperfan_out", "fan_out", "fan_in")]


def moments(gen):
    """-> {path: (means f[KEYS, CONDS], variances f[KEYS, CONDS])} of each generated leaf."""
    @jax.jit
    def one_key(key):
        k_init, k_cond = jax.random.split(key)
        hp = gen.init(k_init)
        conds = jax.random.normal(k_cond, (CONDS, COND_DIM), jnp.float32)
        params = jax.vmap(gen.apply, in_axes=(None, 0))(hp, conds)
        leaves = hj.testing.leaves_with_paths(params)
        return {p: (jnp.mean(l.reshape(CONDS, -1), 1), jnp.var(l.reshape(CONDS, -1), 1)) for p, l in leaves}

    runs = [one_key(k) for k in jax.random.split(jax.random.key(42), KEYS)]
    return {p: (np.stack([r[p][0] for r in runs]), np.stack([r[p][1] for r in runs])) for p in runs[0]}


def check_kernels(spec, stats, mode, other):
    for path in ("a/kernel", "b/kernel"):
        means, variances = stats[path]
        _, want = spec.init_moments(path, mode)
        per_key = np.mean(variances / want, axis=1)          # conds of one generator are not independent
        est, stderr = float(np.mean(per_key)), float(np.std(per_key) / np.sqrt(KEYS - 1))
        assert abs(est - 1.0) < TOL, f"{path}: variance {est:.3f} x the {mode} formula"
        # precise enough that a factor-2 error (or the other fan) would fail the same assertion
        assert stderr < TOL / 3, f"{path}: estimate too noisy (stderr {stderr:.3f})"
        assert abs(2 * est - 1.0) > TOL and abs(est / 2 - 1.0) > TOL
        _, wrong = spec.init_moments(path, other)
        assert abs(float(np.mean(variances / wrong)) - 1.0) > TOL
        assert abs(float(np.mean(means))) < 0.1 * np.sqrt(want)


@pytest.mark.parametrize("make", GENERATORS)
@pytest.mark.parametrize("init,mode,other", INITS)
def test_generated_leaves_have_the_standard_init_moments(spec, make, init, mode, other):
    """Kernels: variance 1/fan_in (1/fan_out). Vectors: mean 0 (1 for norm scales), variance 1/(3 fan_in)."""
    gen = make(spec, init)
    stats = moments(gen)
    check_kernels(spec, stats, mode, other)
    chunked = "chunk_emb" in jax.eval_shape(gen.init, jax.random.key(0)).get("embedding", {})
    for path in ("a/bias", "b/bias", "norm/scale"):
        means, variances = stats[path]
        want_mean, want_var = spec.init_moments(path, mode)
        assert abs(float(np.mean(means)) - want_mean) < 0.1, path
        if not chunked:       # a small leaf fills part of one chunk: its variance varies much from key to key
            assert abs(float(np.mean(variances)) / want_var - 1.0) < TOL, path


@pytest.mark.parametrize("make", [PARTIAL])
def test_partial_generation_keeps_the_kernel_statistics(spec, make):
    check_kernels(spec, moments(make(spec, "hyperfan_in")), "fan_in", "fan_out")


def test_partial_direct_leaves_use_the_framework_init(spec):
    gen = hj.generators.dense(spec, cond_dim=COND_DIM, hidden=8, where="*/kernel")
    hp = jax.jit(gen.init)(jax.random.key(0))
    np.testing.assert_allclose(float(jnp.mean(hp["direct"]["norm"]["scale"])), 1.0, atol=0.05)
    assert float(jnp.max(jnp.abs(hp["direct"]["a"]["bias"]))) <= 1 / np.sqrt(32)
