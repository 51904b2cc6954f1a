"""Shared fixtures: strict dtype/rank promotion, a PRNG key, and eager/jit variants of each test."""

import os

SLOW = os.environ.get("HYPERJAX_SLOW", "") not in ("", "0")

# The default profile compiles with XLA's cheap backend passes: almost every test here is a handful of tiny
# programs, so compile time, not run time, is the suite's time (about a third less wall time on 2 CPU cores).
# Numerics stay within the tests' tolerances and bitwise comparisons compare programs built with the same flags.
# The slow profile (HYPERJAX_SLOW=1) and any XLA_FLAGS that already set the level keep XLA's default optimisation.
# On jaxlib >= 0.10 the CPU backend's legacy elemental emitters also compile fusions about 3x faster than its
# MLIR fusion emitters (a tiny task_lora run: 13.3 -> 4.7 s of XLA compile time); older jaxlibs lack the flag.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if not SLOW and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    from importlib.metadata import version

    if tuple(int(p) for p in version("jaxlib").split(".")[:2]) >= (0, 10):
        FAST_COMPILE += " --xla_cpu_use_fusion_emitters=false"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()

import jax  # noqa: E402  (after XLA_FLAGS: XLA reads them once, when the backend starts)
import pytest  # noqa: E402

import hyperjax as hj  # noqa: E402

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


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.slow` tests (long fuzzing, multi-process runs, full experiments) run only with HYPERJAX_SLOW=1."""
    if SLOW:
        return
    skip = pytest.mark.skip(reason="slow profile: set HYPERJAX_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
