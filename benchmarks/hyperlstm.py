"""HyperLSTM training step: time against the layer-normed LSTM, memory against a per-step weight matrix.

    python -m benchmarks.hyperlstm            # the size of experiments.hyperlstm_charlm (a few minutes on 2 cores)
    python -m benchmarks.hyperlstm --quick    # tiny sizes, for tests

Model as in experiments.hyperlstm_charlm (written again here: benchmarks import nothing from experiments):
character embedding -> one recurrent cell over `seq` steps -> softmax over the vocabulary, random tokens.
One training step = truncated-BPTT forward + backward + clip_by_global_norm + Adam, `hj.training.make_step`
(jitted, state donated, the carried state threaded as model_state). Variants:

* lstm:         `hj.recurrent.lstm_cell`, width matched to the HyperLSTM's parameter count (as the experiment).
* hyperlstm:    `hj.recurrent.hyperlstm_cell`: d_x * (x W_x) + d_h * (h W_h), never a per-step matrix.
* materialised: the same HyperLSTM written with the weights the paper's scaling stands for, built at every
                step for every example: W_x(t) = W_x diag(d_x) f[B, in, 4H] and W_h(t) f[B, H, 4H], then
                batched matrix-vector products (checked equal to `hyperlstm_cell`, same params).

Step time: median over rounds (each round runs every variant once, order rotating), warm-up excluded,
`jax.block_until_ready`. Memory: XLA's `compiled.memory_analysis()` of each compiled step (argument, output,
temp, alias bytes; peak ~ argument + output + temp - alias), at the experiment's batch and at 4x that batch
(compiled only). Writes benchmarks/results/hyperlstm.json and .md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import optax

import hyperjax as hj
from benchmarks import _common

NAME = "hyperlstm"
VARIANTS = ("lstm", "hyperlstm", "materialised")
# experiments.hyperlstm_charlm defaults (vocab: the 103 characters of Python 3.11's pydoc_data topics)
FULL = {"vocab": 103, "embed": 32, "hidden": 96, "hyper_hidden": 32, "emb_dim": 8, "lstm_hidden": 125,
        "batch": 16, "seq": 100, "memory_batches": (16, 64), "rounds": 15, "warmup": 3}
QUICK = {"vocab": 11, "embed": 4, "hidden": 8, "hyper_hidden": 4, "emb_dim": 2, "lstm_hidden": 11,
         "batch": 2, "seq": 5, "memory_batches": (2,), "rounds": 3, "warmup": 1}


# ------------------------------------------------------------------------- the materialised HyperLSTM
def _ln(y: jax.Array, ln: dict, groups: int) -> jax.Array:
    g = y.reshape(*y.shape[:-1], groups, y.shape[-1] // groups)
    g = (g - g.mean(-1, keepdims=True)) * jax.lax.rsqrt(g.var(-1, keepdims=True) + hj.recurrent.LN_EPS)
    return g.reshape(y.shape) * ln["scale"][None, :] + ln["bias"][None, :]


def _proj(p: dict, h_hat: jax.Array) -> jax.Array:
    z = jnp.einsum("bk,kge->bge", h_hat, p["w_z"]) + (p["b_z"][None] if "b_z" in p else 0.0)
    return jnp.einsum("bge,geh->bgh", z, p["w_d"]).reshape(h_hat.shape[0], -1)


def materialised_cell(params: dict, state: Any, x: jax.Array) -> tuple[Any, jax.Array]:
    """hyperlstm_cell with the per-step, per-example weight matrices built: x f[B, in] -> h f[B, H]."""
    main, (c, h) = params["main"], state.main
    hyper_state, h_hat = hj.recurrent.lstm_cell(params["hyper"], state.hyper, jnp.concatenate([x, h], -1))
    d_x, d_h, d_b = (_proj(params["proj"][k], h_hat) for k in ("x", "h", "bias"))
    w_x = main["kernel_x"][None] * d_x[:, None, :]                   # f[B, in, 4H]: one matrix per example
    w_h = main["kernel_h"][None] * d_h[:, None, :]                   # f[B, H, 4H]
    pre = jnp.einsum("bi,bij->bj", x, w_x) + jnp.einsum("bi,bij->bj", h, w_h) + (main["bias"][None, :] + d_b)
    i, j, f, o = jnp.split(_ln(pre, main["ln_gates"], 4), 4, axis=-1)
    c = jax.nn.sigmoid(f + hj.recurrent.FORGET_BIAS) * c + jax.nn.sigmoid(i) * jnp.tanh(j)
    h = jax.nn.sigmoid(o) * jnp.tanh(_ln(c, main["ln_cell"], 1))
    return hj.recurrent.HyperLSTMState(hj.recurrent.LSTMState(c, h), hyper_state), h


# ------------------------------------------------------------------------------------------- model
def build(variant: str, cfg: dict, key: jax.Array) -> tuple[dict, Any]:
    """-> (params {"embed", "cell", "out"}, cell function)."""
    k_e, k_c, k_o = jax.random.split(key, 3)
    hidden = cfg["lstm_hidden"] if variant == "lstm" else cfg["hidden"]
    if variant == "lstm":
        cell, fn = hj.recurrent.lstm_init(k_c, in_dim=cfg["embed"], hidden=hidden), hj.recurrent.lstm_cell
    else:
        cell = hj.recurrent.hyperlstm_init(k_c, in_dim=cfg["embed"], hidden=hidden, hyper_hidden=cfg["hyper_hidden"],
                                           emb_dim=cfg["emb_dim"])
        fn = hj.recurrent.hyperlstm_cell if variant == "hyperlstm" else materialised_cell
    params = {"embed": 0.1 * jax.random.normal(k_e, (cfg["vocab"], cfg["embed"])), "cell": cell,
              "out": {"kernel": 0.1 * jax.random.normal(k_o, (hidden, cfg["vocab"])), "bias": jnp.zeros(cfg["vocab"])}}
    return params, fn


def loss_for(fn: Any):
    def loss_fn(params, carry, tokens, rng):
        xs = jnp.swapaxes(params["embed"][tokens[:, :-1]], 0, 1)
        carry = jax.lax.stop_gradient(carry)
        carry, hs = jax.lax.scan(lambda s, x: fn(params["cell"], s, x), carry, xs)
        logits = hs @ params["out"]["kernel"] + params["out"]["bias"][None, None, :]
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:].T).mean(), carry
    return loss_fn


def optimizer() -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))


def setup(variant: str, cfg: dict, batch: int) -> tuple[Any, Any, jax.Array]:
    """-> (jitted donated step, initial TrainState, tokens int32[batch, seq + 1])."""
    params, fn = build(variant, cfg, jax.random.key(0))
    carry = hj.recurrent.zero_state(params["cell"], (batch,))
    state = hj.training.init_state(params, optimizer(), None, model_state=carry)
    step = hj.training.make_step(loss_for(fn), optimizer(), with_model_state=True, grad_norm=False)
    tokens = jax.random.randint(jax.random.key(1), (batch, cfg["seq"] + 1), 0, cfg["vocab"])
    return step, state, tokens


def memory(compiled: Any) -> dict[str, float | None]:
    """MB from XLA's memory analysis of the compiled program (None where the backend has none)."""
    return {f"{k}_mb": v for k, v in _common.memory_analysis(compiled, 2 ** 20).items()}


def check_equal(cfg: dict) -> float:
    """max |h_hyperlstm - h_materialised| over a sequence, same params (raises beyond float32 tolerance)."""
    params, _ = build("hyperlstm", cfg, jax.random.key(2))
    params = jax.tree.map(lambda p: p + 0.2 * jax.random.normal(jax.random.key(3), p.shape), params)  # no zero w_z
    xs = jax.random.normal(jax.random.key(4), (cfg["seq"], cfg["batch"], cfg["embed"]))
    carry = hj.recurrent.zero_state(params["cell"], (cfg["batch"],))
    run = jax.jit(lambda p, c, x, fn: jax.lax.scan(lambda s, v: fn(p, s, v), c, x)[1], static_argnums=3)
    a = run(params["cell"], carry, xs, hj.recurrent.hyperlstm_cell)
    b = run(params["cell"], carry, xs, materialised_cell)
    diff = float(jnp.max(jnp.abs(a - b)))
    if not diff < 1e-4:
        raise AssertionError(f"materialised_cell differs from hyperlstm_cell by {diff:.3g}")
    return diff


def timed_rounds(fns: dict[str, Any], rounds: int, warmup: int) -> dict[str, float]:
    """Median ms per function; each round calls every function once, the order rotating and alternating."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for k in (order if r % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            f = fns[k]
            f()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.hyperlstm", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, a few rounds (for tests)")
    p.add_argument("--results-dir", default=_common.RESULTS_DIR)
    p.add_argument("--label", default=None, help="free-text label stored in the provenance")
    args = p.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    load_before = _common.load_average()
    max_diff = check_equal(cfg)

    params_count, compile_s, mem, runners = {}, {}, {}, {}
    for variant in VARIANTS:
        mem[variant] = {}
        for batch in cfg["memory_batches"]:
            step, state, tokens = setup(variant, cfg, batch)
            compiled, seconds = _common.compile_time(step, state, tokens)
            mem[variant][str(batch)] = memory(compiled)
            if batch == cfg["batch"]:
                compile_s[variant] = seconds
                params_count[variant] = hj.training.count_params(state.params)
                holder = {"state": state}

                def run(holder=holder, compiled=compiled, tokens=tokens):
                    holder["state"], metrics = compiled(holder["state"], tokens)
                    jax.block_until_ready(metrics["loss"])
                runners[variant] = run
    step_ms = timed_rounds(runners, cfg["rounds"], cfg["warmup"])
    b0 = str(cfg["batch"])
    weights_mb = {str(b): cfg["seq"] * b * (cfg["embed"] + cfg["hidden"]) * 4 * cfg["hidden"] * 4 / 2 ** 20
                  for b in cfg["memory_batches"]}
    ratio = lambda a, b: (a / b) if a is not None and b else None  # noqa: E731
    payload = {
        "quick": args.quick, "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        "params": params_count, "compile_s": compile_s, "step_ms": step_ms,
        "ratios": {"step_hyperlstm_over_lstm": step_ms["hyperlstm"] / step_ms["lstm"],
                   "step_materialised_over_hyperlstm": step_ms["materialised"] / step_ms["hyperlstm"],
                   **{f"peak_materialised_over_hyperlstm/batch={b}":
                      ratio(mem["materialised"][b]["peak_mb"], mem["hyperlstm"][b]["peak_mb"]) for b in mem["lstm"]},
                   **{f"temp_materialised_over_hyperlstm/batch={b}":
                      ratio(mem["materialised"][b]["temp_mb"], mem["hyperlstm"][b]["temp_mb"]) for b in mem["lstm"]},
                   **{f"peak_hyperlstm_over_lstm/batch={b}":
                      ratio(mem["hyperlstm"][b]["peak_mb"], mem["lstm"][b]["peak_mb"]) for b in mem["lstm"]}},
        "memory": mem,
        "materialised_weights_mb": weights_mb,   # seq x B x (in + H) x 4H float32: the per-step matrices of one window
        "max_abs_diff_materialised": max_diff,
        "load_average": {"before": load_before, "after": _common.load_average()},
        "provenance": _common.provenance(args.label),
    }
    _common.write_json(NAME, payload, args.results_dir)
    header = ["variant", "params", f"step ms (batch {b0})", "compile s"] + \
             [f"peak MB (batch {b})" for b in mem["lstm"]] + [f"temp MB (batch {b})" for b in mem["lstm"]]
    rows = [[v, params_count[v], step_ms[v], compile_s[v]] + [mem[v][b]["peak_mb"] for b in mem[v]]
            + [mem[v][b]["temp_mb"] for b in mem[v]] for v in VARIANTS]
    _common.write_markdown(NAME, header, rows, args.results_dir,
                           title=f"HyperLSTM training step, seq {cfg['seq']}: vs LSTM (time) and vs per-step weight "
                                 f"matrices (memory)")
    r = payload["ratios"]
    print(f"step ms: lstm {step_ms['lstm']:.2f}, hyperlstm {step_ms['hyperlstm']:.2f} "
          f"(x{r['step_hyperlstm_over_lstm']:.2f}), materialised {step_ms['materialised']:.2f}; peak MB at batch "
          f"{b0}: hyperlstm {mem['hyperlstm'][b0]['peak_mb']}, materialised {mem['materialised'][b0]['peak_mb']} "
          f"(x{r[f'peak_materialised_over_hyperlstm/batch={b0}']}); load {payload['load_average']}")
    return payload


if __name__ == "__main__":
    main()
