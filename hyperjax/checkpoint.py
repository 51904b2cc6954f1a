"""Orbax checkpointing: the whole training state plus a JSON config; last-N and best-by-metric retention;
async saves; damaged steps named on restore and skipped by `restore_latest_valid`; `export` of generated
target params (every leaf, with `target=` for a tied spec) as a plain Orbax checkpoint."""

from hyperjax._src.checkpoint import (DamagedCheckpointError, Manager, Restored, export, load_config, load_export,
                                      manager, metrics, restore, restore_latest_valid, save)

__all__ = ["DamagedCheckpointError", "Manager", "Restored", "export", "load_config", "load_export", "manager",
           "metrics", "restore", "restore_latest_valid", "save"]
