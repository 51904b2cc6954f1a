"""Case 4 of benchmarks.run_all: step time and XLA memory against the target size, dense vs chunked.

The measurement is benchmarks/scaling.py's (also runnable alone); this adapts it to run_all's context.
"""

from __future__ import annotations

from typing import Any

from benchmarks import scaling
from benchmarks._problem import Context


def run(ctx: Context) -> dict[str, Any]:
    return scaling.run(quick=ctx.quick, reps=ctx.cfg["scaling"], batches=ctx.batches, key=ctx.key,
                       out_dir=ctx.out_dir, suffix=("_gpu" if ctx.device == "gpu" else "") + ("_quick" if ctx.quick else ""))
