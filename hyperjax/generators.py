"""Generator factories; each returns a `hyperjax.HyperNetwork(init, apply)`."""

from hyperjax._src.generators.chunked import chunked
from hyperjax._src.generators.codebook import (codebook, codebook_entropy, codebook_export, codebook_usage,
                                               codebook_usage_kl)
from hyperjax._src.generators.dense import dense
from hyperjax._src.generators.low_rank import low_rank
from hyperjax._src.generators.modulation import (LowRankFactors, Modulated, modulated_matmul, ScaleFactors,
                                                 scale_modulation)
from hyperjax._src.generators.partial import partial
from hyperjax._src.generators.per_layer import per_layer, per_layer_param_count
from hyperjax._src.generators.rowwise import rowwise, rowwise_param_count

__all__ = ["chunked", "dense", "partial", "rowwise", "rowwise_param_count", "codebook", "codebook_entropy",
           "codebook_export", "codebook_usage", "codebook_usage_kl", "per_layer", "per_layer_param_count", "low_rank",
           "scale_modulation", "Modulated", "LowRankFactors", "ScaleFactors", "modulated_matmul"]
