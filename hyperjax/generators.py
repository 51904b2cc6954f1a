"""Generator factories; each returns a `hyperjax.HyperNetwork(init, apply)` (or a `Modulated` with `factors`).

Conventions (README "Generator conventions"): `factory(target, *, ...)`; `cond_dim=None` and
`num_conds=None` build a static generator (`apply(hparams, cond=None)`); `where=` picks the generated
leaves, the rest are ordinary params in hparams["direct"]; hparams are keyed by role ("hyper",
"embedding", "base", "direct"), which `hyperjax.training.labels` reads.
"""

from hyperjax._src.generators.chunked import chunked
from hyperjax._src.generators.codebook import (codebook, codebook_entropy, codebook_export, codebook_usage,
                                               codebook_usage_kl)
from hyperjax._src.generators.common import DEFAULT_HIDDEN, matrices, ROLES, shared, SHARED_MIN_SIZE
from hyperjax._src.generators.dense import dense
from hyperjax._src.generators.factorised import factorised_apply
from hyperjax._src.generators.lora import lora
from hyperjax._src.generators.low_rank import low_rank
from hyperjax._src.generators.modulation import (LoRAFactors, LowRankFactors, Modulated, modulated_matmul, ScaleFactors,
                                                 scale_modulation)
from hyperjax._src.generators.module import from_module, num_outputs
from hyperjax._src.generators.partial import partial
from hyperjax._src.generators.per_layer import per_layer, per_layer_param_count
from hyperjax._src.generators.rowwise import rowwise, rowwise_param_count

FACTORIES = ("dense", "chunked", "per_layer", "low_rank", "scale_modulation", "rowwise", "codebook")
ADAPTERS = ("lora",)   # generators of adapters on a (pretrained) base

__all__ = ["ADAPTERS", "DEFAULT_HIDDEN", "FACTORIES", "LoRAFactors", "LowRankFactors", "Modulated", "ROLES", "ScaleFactors", "chunked",
           "codebook", "codebook_entropy", "codebook_export", "codebook_usage", "codebook_usage_kl", "dense",
           "factorised_apply", "from_module", "lora", "low_rank", "matrices", "modulated_matmul", "num_outputs", "partial", "per_layer",
           "per_layer_param_count", "rowwise", "rowwise_param_count", "scale_modulation", "shared", "SHARED_MIN_SIZE"]
