"""Any network module (linen, NNX, Equinox) or a TargetSpec -> (TargetSpec, init from its own weights)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import jax

from hyperjax._src.spec import TargetSpec
from hyperjax._src.targets.equinox import from_equinox
from hyperjax._src.targets.linen import from_linen
from hyperjax._src.targets.nnx import from_nnx
from hyperjax._src.types import Params, PRNGKey


def module_spec(module: Any, example_input: jax.ShapeDtypeStruct, who: str
                ) -> tuple[TargetSpec, Callable[[PRNGKey], Params]]:
    """(spec, init) of a module used as a function of one input f[...]: linen modules are initialised from
    the key (`module.init`); NNX and Equinox modules hold their weights already, and init returns copies.
    A TargetSpec is used as it is (init: `spec.init`). Raises TypeError for anything else."""
    import flax.linen as nn
    from flax import nnx

    if isinstance(module, TargetSpec):
        return module, module.init
    if isinstance(module, nn.Module):
        spec = from_linen(module, jax.numpy.zeros(example_input.shape, example_input.dtype))
        return spec, spec.init
    if isinstance(module, nnx.Module):
        spec = from_nnx(module)
        return spec, spec.init          # the module's own weights (copies)
    eqx = sys.modules.get("equinox")
    if eqx is not None and isinstance(module, eqx.Module):
        spec = from_equinox(module)
        return spec, spec.init
    raise TypeError(f"hyperjax.{who}: `module` must be a flax.linen.Module, a flax.nnx.Module, an equinox.Module "
                    f"or a TargetSpec, got {type(module).__name__}.")
