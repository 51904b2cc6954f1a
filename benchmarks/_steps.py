"""The training steps cases 1, 2 and 4 compare: hyperjax's make_step and the same step written by hand.

Pairs with equal outputs: make_step(grad_norm=False) and the hand-written step (state, loss); make_step()
and the hand-written step with the gradient norm (state, loss, norm). All start from the same hparams.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

import hyperjax as hj
from benchmarks._problem import LR, Context, cross_entropy
from benchmarks._report import find, goal
from benchmarks._timing import jax_step_entry, stacked_batches

HAND, HAND_NORM = "hand-written JAX", "hand-written JAX + grad norm"


def hyperjax_step(gen: hj.HyperNetwork, spec: hj.TargetSpec, key: jax.Array, donate: bool = True,
                  grad_norm: bool = False, steps_per_call: int = 1):
    """(jitted step, initial TrainState) for CE on the target with weights from gen.apply(hparams, 0).

    grad_norm=False (default here) gives the hand-written step's outputs; make_step's own default adds it.
    steps_per_call=k: make_step's k updates in one lax.scan over batches stacked along a leading axis k.
    """
    def loss_fn(params, batch, rng):
        x, y = batch
        return cross_entropy(spec.apply(gen.apply(params, 0), x), y)

    opt = optax.adam(LR)
    step = hj.training.make_step(loss_fn, opt, donate=donate, grad_norm=grad_norm, steps_per_call=steps_per_call)
    return step, hj.training.init_state(gen.init(key), opt, None)  # deterministic loss: no PRNG key in the state


def split_by_paths(spec: hj.TargetSpec, flat: jax.Array) -> dict[str, jax.Array]:
    """Hand-written: slice a flat vector into the spec's leaves in path order."""
    out, offset = {}, 0
    for p, s in spec.leaves.items():
        n = math.prod(s.shape)
        out[p] = flat[offset:offset + n].reshape(s.shape)
        offset += n
    return out


def mlp_forward(leaves: dict[str, jax.Array], x: jax.Array, n_layers: int) -> jax.Array:
    """Hand-written forward of the linen MLP from {path: leaf}."""
    for i in range(n_layers):
        x = x @ leaves[f"Dense_{i}/kernel"] + leaves[f"Dense_{i}/bias"]
        if i < n_layers - 1:
            x = jax.nn.relu(x)
    return x


def handwritten_step(gen_flat: Callable[[Any], jax.Array], spec: hj.TargetSpec, n_layers: int, hparams: Any,
                     donate: bool = True, grad_norm: bool = False, steps_per_call: int = 1):
    """Hand-written jitted step ((params, opt_state), (x, y)) -> ((params, opt_state), loss), optax.adam.

    With grad_norm the step also returns the gradient norm (the same outputs as hyperjax's make_step).
    steps_per_call=k > 1: the same step under `jax.lax.scan` over (x, y) stacked along a leading axis k,
    returning the k losses (what make_step(steps_per_call=k) does, written by hand).
    """
    opt = optax.adam(LR)

    def loss_fn(p, x, y):
        return cross_entropy(mlp_forward(split_by_paths(spec, gen_flat(p)), x, n_layers), y)

    def step(state, batch):
        p, s = state
        loss, g = jax.value_and_grad(loss_fn)(p, *batch)
        upd, s = opt.update(g, s, p)
        return (optax.apply_updates(p, upd), s), ((loss, rows_norm(g)) if grad_norm else loss)

    def steps(state, batches):
        return jax.lax.scan(step, state, batches)

    params = jax.tree.map(jnp.copy, hparams)
    fn = step if steps_per_call == 1 else steps
    return jax.jit(fn, donate_argnums=(0,) if donate else ()), (params, opt.init(params))


def rows_norm(tree: Any) -> jax.Array:
    """Gradient norm summed in rows of 1,024 (optax.global_norm's single reduction is slow on XLA CPU)."""
    total = jnp.zeros((), jnp.float32)
    for x in jax.tree.leaves(tree):
        v = jnp.square(x).ravel()
        if v.shape[0] > 1024:
            v = jnp.sum(jnp.pad(v, (0, -v.shape[0] % 1024)).reshape(-1, 1024), axis=1)
        total = total + jnp.sum(v)
    return jnp.sqrt(total)


def jax_entries(ctx: Context, kind: str, gen: hj.HyperNetwork, spec: hj.TargetSpec, gen_flat: Callable,
                n_layers: int, with_no_donation: bool = False) -> list[dict]:
    """hyperjax make_step against the hand-written step with the same outputs: loss only
    (make_step(grad_norm=False)) and loss + gradient norm (make_step's default metrics); all from the same
    initial hparams (their first-step losses are recorded to check they agree)."""
    entries = []
    for donate in (True, False) if with_no_donation else (True,):
        suffix = "" if donate else ", no donation"
        step, state = hyperjax_step(gen, spec, ctx.key, donate)
        entries.append(jax_step_entry(lib_name(kind) + suffix, step, state, ctx.batches,
                                      trainable_params=hj.training.count_params(state.params)))
        step, state = handwritten_step(gen_flat, spec, n_layers, gen.init(ctx.key), donate=donate)
        entries.append(jax_step_entry(HAND + suffix, step, state, ctx.batches))
        if donate:
            step, state = hyperjax_step(gen, spec, ctx.key, grad_norm=True)
            entries.append(jax_step_entry(lib_name(kind, default=True), step, state, ctx.batches))
            step, state = handwritten_step(gen_flat, spec, n_layers, gen.init(ctx.key), grad_norm=True)
            entries.append(jax_step_entry(HAND_NORM, step, state, ctx.batches))
    return entries


def multi_step_entries(ctx: Context, kind: str, gen: hj.HyperNetwork, spec: hj.TargetSpec, gen_flat: Callable,
                       n_layers: int, ks: Sequence[int]) -> list[dict]:
    """For each k: make_step(grad_norm=False, steps_per_call=k) and the hand-written lax.scan over k steps,
    both donated, from the same hparams, each call fed the next k rotating batches stacked (the sequence
    the single-step rows walk); timed per call, reported per step (`measure` divides by k)."""
    entries = []
    for k in ks:
        stacked = stacked_batches(ctx.batches, k)
        step, state = hyperjax_step(gen, spec, ctx.key, steps_per_call=k)
        entries.append(jax_step_entry(multi_lib_name(kind, k), step, state, stacked, steps_per_call=k))
        step, state = handwritten_step(gen_flat, spec, n_layers, gen.init(ctx.key), steps_per_call=k)
        entries.append(jax_step_entry(multi_hand_name(k), step, state, stacked, steps_per_call=k))
    return entries


def multi_lib_name(kind: str, k: int) -> str:
    return f"{lib_name(kind)} k={k}"


def multi_hand_name(k: int) -> str:
    return f"{HAND} lax.scan k={k}"


def lib_name(kind: str, default: bool = False) -> str:
    return f"hyperjax {kind} + " + ("make_step() default metrics (loss, grad_norm)" if default
                                    else "make_step(grad_norm=False)")


def first_loss_note(rows: Sequence[dict]) -> str:
    firsts = [r["first_loss"] for r in rows if r["framework"] == "jax" and "first_loss" in r]
    return (f"Same initial hparams on every JAX row: first-step losses agree to {max(firsts) - min(firsts):.1e} "
            f"({firsts[0]:.6f}). Pairs with equal outputs: make_step(grad_norm=False) and '{HAND}' (state, loss); "
            f"make_step() and '{HAND_NORM}' (state, loss, gradient norm).")


def step_goals(rows: Sequence[dict], kind: str) -> list[dict]:
    """hyperjax / hand-written for both equal-output pairs (goal <= 1.05)."""
    lib, lib_d = find(rows, lib_name(kind)), find(rows, lib_name(kind, default=True))
    hand, hand_n = find(rows, HAND), find(rows, HAND_NORM)
    return [goal("hyperjax make_step(grad_norm=False) / hand-written JAX", lib["median_ms"] / hand["median_ms"],
                 "<=", 1.05, "same outputs: state and loss"),
            goal("hyperjax make_step() / hand-written JAX + grad norm", lib_d["median_ms"] / hand_n["median_ms"],
                 "<=", 1.05, "same outputs: state, loss and gradient norm")]
