"""Continual learning with task-conditioned hypernetworks (von Oswald et al., 2020): the output regulariser,
a task-sequence runner with checkpoints between tasks, fine-tuning / online-EWC / joint baselines, and task
inference by lowest predictive entropy (CL3)."""

from hyperjax._src.continual import (accuracy, earlier_tasks, ewc_method, ewc_penalty, finetune_method,
                                     fisher_diagonal, freeze_other_embeddings, hypernet_method, infer_task, Method,
                                     online_fisher, output_regularizer, predictive_entropy, regularizer_targets,
                                     SequenceResult, squared_error, Task, train_joint, train_sequence)

__all__ = ["Method", "SequenceResult", "Task", "accuracy", "earlier_tasks", "ewc_method", "ewc_penalty",
           "finetune_method", "fisher_diagonal", "freeze_other_embeddings", "hypernet_method", "infer_task",
           "online_fisher", "output_regularizer", "predictive_entropy", "regularizer_targets", "squared_error",
           "train_joint", "train_sequence"]
