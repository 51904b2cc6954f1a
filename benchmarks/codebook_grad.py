"""Codebook soft sharing: the gradient of hyperjax's `codebook` against the textbook softmax(A / tau) @ v.

    python -m benchmarks.codebook_grad                 # the quickstart MLP's kernels, K = 16, 8 temperatures
    python -m benchmarks.codebook_grad --quick         # tiny sizes (for tests)

Both compute w = softmax(A / tau) @ v for every kernel slot of the quickstart MLP 64-256-256-10 (85,504 slots,
A: f[slots, K]) and the gradient of sum(w * g) w.r.t. (A, v), for one temperature, 8 temperatures in a Python
loop and 8 vmapped. `textbook`: `jax.nn.softmax(A / t) @ v` written by hand; `hyperjax`:
`hj.generators.codebook(spec, num_values=K).apply(hp, tau=t)` (its sums over K are matrix-vector products
and the logits enter through `hj.generators.shared`). Timed by `batched_grad.measure` (jitted, warmed up, interleaved rounds,
medians, XLA bytes); side by side in one run.
Writes benchmarks/results/codebook_grad.json (`cases.<textbook|hyperjax>.{one_ms, loop_ms, vmap_ms}`,
`speedup.<one|loop|vmap>` = textbook / hyperjax) and the values' largest difference.
"""

from __future__ import annotations

import argparse
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import hyperjax as hj
from benchmarks import _common
from benchmarks import batched_grad as bg

NAME = "codebook_grad"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a 16-32-10 MLP, 2 temperatures, 2 rounds")
    p.add_argument("--values", type=int, default=16, help="K, the codebook size")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 20, quick 2)")
    p.add_argument("--out-dir", default=_common.RESULTS_DIR)
    p.add_argument("--label", default=None)
    args = p.parse_args(argv)
    widths, n_tau, repeats = ((16, 32, 10), 2, 2) if args.quick else ((64, 256, 256, 10), 8, 20)
    repeats = args.repeats or repeats
    spec = hj.testing.mlp_spec(widths)
    hnet = hj.generators.codebook(spec, num_values=args.values, where="*/kernel")
    hp = hnet.init(jax.random.key(0))
    book = hp["hyper"]
    taus = jnp.linspace(0.5, 2.0, n_tau, dtype=jnp.float32)
    kernels = [path for path in spec.paths if path.endswith("kernel")]
    grads_out = {path: jax.random.normal(jax.random.fold_in(jax.random.key(1), i), spec.leaves[path].shape)
                 for i, path in enumerate(kernels)}

    def textbook(b, t):
        logits = hj.testing.leaf_dict(b["logits"])
        return {path: jax.nn.softmax(logits[path] / t, axis=-1) @ b["values"] for path in kernels}

    def library(b, t):
        params = hj.testing.leaf_dict(hnet.apply({**hp, "hyper": b}, tau=t))
        return {path: params[path] for path in kernels}

    def timed(weights) -> dict[str, Any]:
        def loss_one(b, i):
            return sum(jnp.sum(w * grads_out[path]) for path, w in weights(b, taus[i]).items())
        r = bg.measure(bg.gradients(loss_one, n_tau), book, repeats, warmup=3)
        return {k: r[k] for k in ("one_ms", "loop_ms", "vmap_ms", "bytes_one", "bytes_loop", "bytes_vmap")}

    cases = {"textbook": timed(textbook), "hyperjax": timed(library)}
    speedup = {k: cases["textbook"][f"{k}_ms"] / cases["hyperjax"][f"{k}_ms"] for k in ("one", "loop", "vmap")}
    diff = max(float(jnp.max(jnp.abs(textbook(book, t)[path] - library(book, t)[path])))
               for t in np.asarray(taus) for path in kernels)
    payload = {"config": {"widths": list(widths), "slots": sum(spec.leaves[q].size for q in kernels),
                          "values": args.values, "temperatures": n_tau, "repeats": repeats},
               "provenance": _common.provenance(args.label), "load_average": _common.load_average(),
               "cases": cases, "speedup": speedup, "max_abs_diff": diff}
    path = _common.write_json(NAME, payload, args.out_dir)
    for m, c in cases.items():
        print(f"{m:9s} one {c['one_ms']:8.2f} ms  loop {c['loop_ms']:8.2f} ms  vmap {c['vmap_ms']:8.2f} ms")
    print(f"speedup (textbook / hyperjax): one {speedup['one']:.2f}x  loop {speedup['loop']:.2f}x  vmap "
          f"{speedup['vmap']:.2f}x; values differ by at most {diff:.2e}; wrote {path}")
    return payload


if __name__ == "__main__":
    main()
