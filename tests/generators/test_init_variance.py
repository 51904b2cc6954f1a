"""Every generator's init lands within 10% of the variance it documents (hyperfan-in: 1/fan_in per kernel),
measured over 128 init keys (the mean ratio is resolved to 5% or better), and, for the learned codes, per network
(the median network within 10%)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hyperjax as hj
import hyperjax.testing as ht

SPEC = ht.mlp_spec((32, 48, 10))
KERNELS = {"Dense_0/kernel": 32, "Dense_1/kernel": 48}
N_KEYS = 128


class Body(nn.Module):
    @nn.compact
    def __call__(self, c):
        return nn.Dense(hj.generators.num_outputs(SPEC))(nn.relu(nn.Dense(32)(c)))


GENERATORS = {
    "dense-ids": (lambda: hj.generators.dense(SPEC, cond_dim=8, num_conds=4, hidden=32), jnp.int32(1)),
    "dense-static": (lambda: hj.generators.dense(SPEC, hidden=32), None),
    "chunked-ids": (lambda: hj.generators.chunked(SPEC, chunk_size=256, cond_dim=8, num_conds=4, hidden=32),
                    jnp.int32(1)),
    "per_layer": (lambda: hj.generators.per_layer(SPEC), None),
    "low_rank-ids": (lambda: hj.generators.low_rank(SPEC, rank=2, cond_dim=8, num_conds=4, hidden=16), jnp.int32(1)),
    "scale_modulation-ids": (lambda: hj.generators.scale_modulation(SPEC, cond_dim=8, num_conds=4, hidden=16),
                             jnp.int32(1)),
    "rowwise": (lambda: hj.generators.rowwise(SPEC, where="Dense_0/kernel", emb_dim=4, hidden=16), None),
    "codebook": (lambda: hj.generators.codebook(SPEC, num_values=16, where="*/kernel"), None),
    "from_module-ids": (lambda: hj.generators.from_module(Body(), SPEC, cond_dim=8, num_conds=4), jnp.int32(1)),
}


@pytest.mark.parametrize("name", list(GENERATORS))
def test_init_variance_is_the_documented_one(name):
    make, cond = GENERATORS[name]
    gen = make()
    kernels = {"Dense_0/kernel": 32} if name == "rowwise" else KERNELS

    def ratios(key):
        params = gen.apply(gen.init(key), cond)
        return jnp.stack([jnp.var(ht.leaf_at(params, p)) * fan for p, fan in kernels.items()])
    r = np.asarray(jax.jit(jax.vmap(ratios))(jax.random.split(jax.random.key(0), N_KEYS)))
    mean, sem = r.mean(axis=0), r.std(axis=0) / np.sqrt(N_KEYS)
    assert np.all(sem < 0.05), (name, sem)                          # resolves 10% (2 sem)
    np.testing.assert_allclose(mean, 1.0, atol=0.1, err_msg=f"{name}: mean variance / (1/fan_in) = {mean}")
    if cond is not None or name.endswith("static"):
        # per network too: the median network is within 10% in expectation (dense-static over 30 seeds of this
        # test: 0.958 +- 0.04), so a 15% band keeps a 2-sigma seed from failing it while still catching the old
        # 0.3-3.3x scatter of N(0, 1) codes and codebook's 0.62x
        np.testing.assert_allclose(np.median(r, axis=0), 1.0, atol=0.15, err_msg=name)
