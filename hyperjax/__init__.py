"""hyperjax: hypernetworks and weight sharing for JAX.

A target network is a `TargetSpec` (hyperjax.targets); a hypernetwork is `HyperNetwork(init, apply)`
(hyperjax.generators); training wires Optax (hyperjax.training).
"""

from hyperjax import checkpoint, continual, ensembles, generators, inr, recurrent, sharding, targets, testing, training, tying
from hyperjax._src.checked import checked
from hyperjax._src.paths import select
from hyperjax._src.per_sample import generate_batch, per_sample
from hyperjax._src.spec import TargetSpec
from hyperjax._src.tying import Tie, Tied, tie
from hyperjax._src.types import HyperNetwork

__version__ = "0.1.0"

__all__ = ["HyperNetwork", "TargetSpec", "Tie", "Tied", "checked", "checkpoint", "continual", "ensembles", "generate_batch",
           "generators", "inr", "per_sample", "recurrent", "select", "sharding", "targets", "testing", "tie", "training",
           "tying", "__version__"]
