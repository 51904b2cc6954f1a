"""The one place the benchmarks read generator hparams by key.

The hand-written references recompute a generator's output from its hparams, and some benchmarks count
what a generator holds, so they need to know where its weights live. Every such access to the generators'
hparams layout is in this module: a layout change is an edit here and nowhere else in benchmarks/.
"""

from __future__ import annotations

from typing import Any


def mlp(hparams: Any) -> list[dict[str, Any]]:
    """dense / chunked: the generator MLP's layers [{"w": f[n_in, n_out], "b": f[n_out]}, ...]."""
    return hparams["hyper"]["mlp"]


def cond_emb(hparams: Any) -> Any:
    """dense / chunked built with num_conds: the learned condition embeddings f[num_conds, cond_dim]."""
    return hparams["embedding"]["cond_emb"]


def chunk_emb(hparams: Any) -> Any:
    """chunked: the learned chunk embeddings f[n_chunks, chunk_emb_dim]."""
    return hparams["embedding"]["chunk_emb"]


def per_layer_sizes(hparams: Any) -> dict[str, int]:
    """per_layer (arrays or ShapeDtypeStructs): {"generator_weights": the generators' weights and biases,
    "layer_emb": the layer embeddings}, counted in scalars over every generated group."""
    groups = hparams["hyper"]["per_layer"].values()
    return {"generator_weights": sum(int(v.size) for g in groups for v in g.values()),
            "layer_emb": sum(int(z.size) for z in hparams["embedding"]["layer_emb"].values())}


def modulation_base(hparams: Any) -> dict[str, dict[str, Any]]:
    """low_rank / scale_modulation on a linen MLP: {layer: {"kernel": base W0, "bias": the direct bias}}."""
    return {k: {"kernel": hparams["base"][k]["kernel"], "bias": hparams["direct"][k]["bias"]}
            for k in hparams["base"]}
