"""Shared fixtures: strict dtype/rank promotion, a PRNG key, and eager/jit variants of each test."""

import jax
import jax.numpy as jnp
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture(params=[False, True], ids=["eager", "jit"])
def maybe_jit(request):
    """Run the test body once eagerly and once under jax.jit."""
    return jax.jit if request.param else (lambda f, **kw: f)


@pytest.fixture(scope="session")
def tiny_mlp_spec():
    """TargetSpec of a linen MLP 5 -> 7 -> 3 (kernels and biases)."""
    import flax.linen as nn
    import hyperjax as hj

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Dense(7)(x))
            return nn.Dense(3)(x)

    return hj.targets.from_linen(MLP(), jnp.ones((1, 5)))
