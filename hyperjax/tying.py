"""Weight tying: several leaf paths stored as one parameter, optionally through a transform."""

from hyperjax._src.tying import Tie, Tied, tie

__all__ = ["Tie", "Tied", "tie"]
