"""Ensembles and uncertainty from hypernetworks: BatchEnsemble, deep ensembles in one vmap, a stochastic
hypernetwork with a repulsive diversity term, and the metrics of the averaged prediction (NLL, ECE, AUROC)."""

from hyperjax._src.ensembles import (auroc, batch_ensemble, BatchEnsemble, deep_ensemble, DeepEnsemble, ece, entropy,
                                     flatten_members, kde_repulsion, mean_probs, members_apply, nll, num_members,
                                     reliability, Reliability, stochastic, Stochastic)

__all__ = ["BatchEnsemble", "DeepEnsemble", "Reliability", "Stochastic", "auroc", "batch_ensemble", "deep_ensemble",
           "ece", "entropy", "flatten_members", "kde_repulsion", "mean_probs", "members_apply", "nll", "num_members",
           "reliability", "stochastic"]
