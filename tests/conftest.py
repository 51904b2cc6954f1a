"""Shared fixtures: strict dtype/rank promotion, a PRNG key, and eager/jit variants of each test."""

import os

import jax
import pytest

import hyperjax as hj

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
    """`hj.testing.mlp_spec()`: the linen ReLU MLP 5 -> 7 -> 3 (paths Dense_i/kernel, Dense_i/bias)."""
    return hj.testing.mlp_spec()


SLOW = os.environ.get("HYPERJAX_SLOW", "") not in ("", "0")


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.slow` tests (long fuzzing, multi-process runs, full experiments) run only with HYPERJAX_SLOW=1."""
    if SLOW:
        return
    skip = pytest.mark.skip(reason="slow profile: set HYPERJAX_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
