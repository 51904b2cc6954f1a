"""Smoke tests for benchmarks.batched_grad and benchmarks.startup: --quick runs write the documented JSON keys.

Subsets keep this near a minute on 2 idle CPU cores: batched_grad on the tiny MLP for two generators (one
with a conditioning id, codebook with its temperature), startup for hand-written JAX and one generator
(4 fresh processes).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args: list[str], tmp_path, timeout: float = 900) -> None:
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-4000:]


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@pytest.fixture(scope="module")
def batched(tmp_path_factory):
    out = tmp_path_factory.mktemp("batched_grad") / "batched_grad.json"
    _run(["benchmarks.batched_grad", "--quick", "--targets", "mlp", "--generators", "chunked,codebook",
          "--no-reference", "--out", str(out)], out.parent)
    return json.loads(out.read_text()), out


@pytest.mark.slow   # a benchmark run (HYPERJAX_SLOW=1)
def test_batched_grad_schema(batched):
    data, out = batched
    assert set(data["cases"]) == {"mlp"}
    assert set(data["cases"]["mlp"]) == {"chunked", "codebook"}
    for gen, r in data["cases"]["mlp"].items():
        for key in ("one_ms", "loop_ms", "vmap_ms", "bytes_loop", "bytes_vmap", "bytes_one"):
            assert _number(r[key]) and r[key] > 0, (gen, key, r.get(key))
        assert r["vmap_over_loop"] == pytest.approx(r["vmap_ms"] / r["loop_ms"])
    assert data["cases"]["mlp"]["codebook"]["cond"].startswith("temperature")
    assert data["reference"] == {}
    assert len(data["load_average_before"]) == 3
    assert data["config"]["quick"] is True
    table = out.with_suffix(".md").read_text()
    assert "| mlp | chunked |" in table and "| mlp | codebook |" in table


@pytest.mark.slow   # a benchmark run (HYPERJAX_SLOW=1)
def test_startup_schema(tmp_path):
    out = tmp_path / "startup.json"
    _run(["benchmarks.startup", "--quick", "--cases", "hand,dense", "--out", str(out),
          "--compilation-cache", str(tmp_path / "cache")], tmp_path)
    data = json.loads(out.read_text())
    for section in (data["cases"], data["warm_cache"]["cases"]):
        assert set(section) == {"hand", "dense"}
        for name, c in section.items():
            for key in ("total_s", "spec_s", "init_s", "first_step_s", "ratio_to_hand"):
                assert _number(c[key]), (name, key, c.get(key))
            assert isinstance(c["init_compilations"], int) and c["init_compilations"] >= 0
            assert c["init_s"] + c["first_step_s"] + c["spec_s"] <= c["total_s"]
        assert section["hand"]["ratio_to_hand"] == pytest.approx(1.0)
        assert section["hand"]["spec_s"] == 0.0
    # the warm run found the programs its cold run cached
    assert data["warm_cache"]["cases"]["dense"]["step_cache_hits"] >= 1
    assert data["cases"]["dense"]["step_cache_hits"] == 0
    assert data["cases"]["dense"]["step_compilations"] >= 1
    assert sorted(os.listdir(tmp_path / "cache")) == ["dense-0", "hand-0"]
    assert "| dense |" in out.with_suffix(".md").read_text()
