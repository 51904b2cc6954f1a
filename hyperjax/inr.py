"""Implicit neural representations: a SIREN target (`siren`), coordinate grids, batched rendering from a generator."""

from hyperjax._src.inr import grid, render, Siren, siren, with_target_base

__all__ = ["Siren", "grid", "render", "siren", "with_target_base"]
