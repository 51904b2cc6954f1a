"""Placement rules keyed on leaf paths, over `jax.sharding` meshes."""

from hyperjax._src.sharding import abstract_with_shardings, batch_sharding, place, shardings, spec_for

__all__ = ["abstract_with_shardings", "batch_sharding", "place", "shardings", "spec_for"]
