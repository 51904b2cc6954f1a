"""Target adapters: any stateless network -> `TargetSpec` (structure via `jax.eval_shape`)."""

from hyperjax._src.spec import LeafAxes, TargetSpec, abstract, as_matrix, from_matrix, heuristic_axes, matrix_shape
from hyperjax._src.targets.equinox import from_equinox
from hyperjax._src.targets.function import from_fn
from hyperjax._src.targets.haiku import from_haiku
from hyperjax._src.targets.linen import from_linen
from hyperjax._src.targets.nnx import from_nnx

__all__ = ["LeafAxes", "TargetSpec", "abstract", "as_matrix", "from_matrix", "heuristic_axes", "matrix_shape", "from_equinox", "from_fn", "from_haiku", "from_linen", "from_nnx"]
