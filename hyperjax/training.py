"""Joint Optax training of hypernetwork params, ordinary params and embeddings."""

from hyperjax._src.training import (DEFAULT_RULES, LABELS, TrainState, count_params, frozen, init_state,
                                    labels, make_step, multi_optimizer)

__all__ = ["DEFAULT_RULES", "LABELS", "TrainState", "count_params", "frozen", "init_state", "labels",
           "make_step", "multi_optimizer"]
