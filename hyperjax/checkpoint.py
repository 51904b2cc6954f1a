"""Orbax checkpointing: the whole training state plus a JSON config; last-N and best-by-metric retention;
async saves; `export` of generated target params as a plain Orbax checkpoint."""

from hyperjax._src.checkpoint import Manager, export, load_config, load_export, manager, metrics, restore, save

__all__ = ["Manager", "export", "load_config", "load_export", "manager", "metrics", "restore", "save"]
