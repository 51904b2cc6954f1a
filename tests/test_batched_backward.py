"""Proposed tests (for the lead): the backward pass of a batch of generated params stays batch-sized.

The slice-per-leaf split made the vmapped gradient of chunked pad every leaf's cotangent back to the full
flat length (one f[B, n] buffer per leaf); the fixed split's transpose is one concatenate. Traced only
(make_jaxpr), so each case costs a trace, not a compile.
"""

import jax
import jax.extend
import jax.numpy as jnp
import pytest

import hyperjax as hj


def _eqns(jaxpr):
    for e in jaxpr.eqns:
        yield e
        for sub in jax.extend.core.jaxprs_in_params(e.params):
            yield from _eqns(sub)


FACTORIES = [
    pytest.param(lambda s: hj.generators.dense(s, cond_dim=3, num_conds=4, hidden=8), id="dense"),
    pytest.param(lambda s: hj.generators.chunked(s, cond_dim=3, num_conds=4, chunk_size=16, hidden=8), id="chunked"),
]


@pytest.mark.parametrize("make", FACTORIES)
def test_vmapped_backward_pads_no_leaf_to_full_length(make):
    spec = hj.testing.mlp_spec((5, 7, 3))
    gen = make(spec)
    hp = gen.init(jax.random.key(0))

    def loss(hp):
        params = hj.generate_batch(gen, hp, jnp.arange(4))
        return sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(params))

    jaxpr = jax.make_jaxpr(jax.grad(loss))(hp).jaxpr
    pads = [e for e in _eqns(jaxpr) if e.primitive.name == "pad"]
    assert not pads, f"{len(pads)} pads in the backward pass, e.g. {pads[0]}"


# ---------------------------------------------------------------- compiled cost: vmap vs a Python loop
N_CONDS = 4


@pytest.mark.parametrize("name", ["dense", "chunked", "per_layer", "low_rank", "scale_modulation", "rowwise",
                                  "codebook"])
def test_vmapped_gradient_moves_at_most_1_5x_the_bytes_of_the_loop(name):
    """XLA's cost_analysis of jit(grad) over N_CONDS conds: the vmapped loss accesses <= 1.5x the bytes of the
    same loss written as a Python loop (chunked's vmapped backward was 1.81x before the split fix; a
    per-leaf full-length pad would be ~#leaves x). Generators as in benchmarks/batched_grad.py."""
    from benchmarks import batched_grad as bg

    spec = hj.testing.mlp_spec((16, 32, 32, 4))
    gen = bg.GENERATORS[name](spec, N_CONDS)
    hp = jax.jit(gen.init)(jax.random.key(1))
    apply, conds = bg.apply_fn(name, gen), bg.conds_for(name, N_CONDS)
    x = jax.random.normal(jax.random.key(2), (N_CONDS, 16, 16))
    y = jnp.arange(N_CONDS * 16).reshape(N_CONDS, 16) % 4

    def loss_one(p, i):
        logits = spec.apply(apply(p, conds[i]), x[i])
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[i][:, None], axis=1))

    fns = bg.gradients(loss_one, N_CONDS)
    nbytes = {k: bg.cost(jax.jit(jax.grad(fns[k])).lower(hp).compile())["bytes"] for k in ("loop", "vmap")}
    ratio = nbytes["vmap"] / nbytes["loop"]
    print(f"{name}: bytes vmap/loop {ratio:.3f}")
    assert ratio <= 1.5, f"{name}: vmapped gradient accesses {ratio:.2f}x the bytes of the loop ({nbytes})"
