"""Implicit neural representations: a SIREN target (`siren`), coordinate grids, latent-grid
interpolation (spatial functa), batched rendering from a generator."""

from hyperjax._src.inr import grid, interpolate, render, Siren, siren, with_target_base

__all__ = ["Siren", "grid", "interpolate", "render", "siren", "with_target_base"]
