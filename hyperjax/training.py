"""Joint Optax training of hypernetwork params, ordinary params and embeddings."""

from hyperjax._src.training import (LABELS, TrainState, count_params, first_nonfinite, frozen, global_norm,
                                    init_state, labels, make_step, multi_optimizer)

__all__ = ["LABELS", "TrainState", "count_params", "first_nonfinite", "frozen", "global_norm", "init_state",
           "labels", "make_step", "multi_optimizer"]
