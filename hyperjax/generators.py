"""Generator factories; each returns a `hyperjax.HyperNetwork(init, apply)`."""

from hyperjax._src.generators.chunked import chunked
from hyperjax._src.generators.dense import dense
from hyperjax._src.generators.partial import partial

__all__ = ["chunked", "dense", "partial"]
