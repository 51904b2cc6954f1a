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
