"""Placement rules keyed on leaf paths, over `jax.sharding` meshes; model-parallel rules for the generators,
constraints inside jitted code, and multi-process set-up (`initialize`, `global_batch`)."""

from hyperjax._src.sharding import (abstract_with_shardings, batch_sharding, constrain, global_batch, initialize,
                                    largest_axis_rules, logical_rules, make_mesh, mesh_name, model_parallel_rules, place, shardings,
                                    spec_for)

__all__ = ["abstract_with_shardings", "batch_sharding", "constrain", "global_batch", "initialize",
           "largest_axis_rules", "logical_rules", "make_mesh", "mesh_name", "model_parallel_rules", "place", "shardings", "spec_for"]
