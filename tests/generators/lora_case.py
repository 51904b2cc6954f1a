"""The LoRA test case both tests/generators/test_lora*.py files share: an lm1b-style linen Transformer (nn.scan,
DenseGeneral attention kernels, logical partitioning) with pretrained-style weights, conds and helpers."""

import jax
import jax.numpy as jnp

import hyperjax as hj

G = hj.generators
LM = hj.testing.Transformer(vocab=11, width=16, heads=2, mlp=24, layers=2, max_len=8)
TOKENS = jax.random.randint(jax.random.key(4), (3, 6), 0, 11)
VARIABLES = LM.init(jax.random.key(1), TOKENS)
SPEC = hj.targets.from_linen(LM, TOKENS, params=VARIABLES)
CONDS = jax.random.normal(jax.random.key(2), (3, 5))
ATTN = "layers/attention/*/kernel"


def build(mode, spec=SPEC, **kw):
    if mode == "static":
        return G.lora(spec, rank=2, **kw)
    if mode == "ids":
        return G.lora(spec, rank=2, cond_dim=5, num_conds=4, **kw)
    return G.lora(spec, rank=2, cond_dim=5, share=mode, hidden=(12,), **kw)


def cond_of(mode, i=0):
    return {"static": None, "ids": jnp.int32(i)}.get(mode, CONDS[i])


def conds_of(mode):
    return {"static": None, "ids": jnp.arange(3)}.get(mode, CONDS)


def nudge(hp, scale=0.3, seed=7):
    """Move every trainable leaf off its init (B = 0 at init would make every adapter vanish)."""
    keys = iter(jax.random.split(jax.random.key(seed), 64))
    train = {r: jax.tree.map(lambda a: a + scale * jax.random.normal(next(keys), a.shape, a.dtype), v)
             for r, v in hp.items() if r != "frozen"}
    return {**hp, **train}


MODES = ["static", "leaf", "layers", "ids"]


def factor_at(spec, factors, path):
    """The leaf at `path` of a factors tree (LoRAFactors are pytrees: flatten with them as leaves)."""
    flat = jax.tree.leaves(factors, is_leaf=lambda x: isinstance(x, G.LoRAFactors))
    return dict(zip(spec.paths, flat))[path]
