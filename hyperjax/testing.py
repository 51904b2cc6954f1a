"""Shared by tests, benchmarks and experiments: small ready targets and checks for your own generator.

    spec = hj.testing.mlp_spec((5, 7, 3))                      # linen MLP, paths 'Dense_0/kernel', ...
    hj.testing.assert_generates(hj.generators.dense(spec, cond_dim=3, hidden=8), spec, jnp.ones(3))

The linen classes `MLP`, `CNN`, `StackedMLP` and `Transformer` (a small lm1b-style LM: logical partitioning,
attention kernels, nn.scan layers) are defined on first access (flax is not imported before).
"""

from hyperjax._src import testing as _testing
from hyperjax._src.testing import (assert_generates, assert_grads_reach, assert_tree_like, cnn_spec, filled,
                                   fn_mlp_spec, leaf_at, leaf_dict, leaves_with_paths, mixed_dtype_spec, mlp_spec,
                                   path_of, ramp, sds, stacked_spec)

__all__ = ["CNN", "MLP", "StackedMLP", "Transformer", "assert_generates", "assert_grads_reach", "assert_tree_like", "cnn_spec",
           "filled", "fn_mlp_spec", "leaf_at", "leaf_dict", "leaves_with_paths", "mixed_dtype_spec", "mlp_spec",
           "path_of", "ramp", "sds", "stacked_spec"]


def __getattr__(name: str):
    if name in _testing.LINEN_MODULES:
        return getattr(_testing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
