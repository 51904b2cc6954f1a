"""benchmarks.lora --quick (the attention case only, in-process): the JSON contract keys, ratios that are the
ratios of the recorded numbers, and factorised and materialised LoRA paths that agree while the adapters move
the logits. No timing asserts."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import lora


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "lora.json"
    payload = lora.main(["--quick", "--cases", "attention", "--out", str(out)])
    return json.loads(out.read_text()), payload, out


def test_contract_keys_and_ratios(record):
    data, payload, out = record
    assert data["benchmark"] == "lora" and data["quick"] is True and data["primary_case"] == "attention"
    for key in ("forward_speedup", "step_speedup", "memory_ratio", "forward_memory_ratio"):
        assert _positive(data[key]), key
    for key in ("forward_ms", "step_ms", "step_peak_bytes", "forward_peak_bytes"):
        assert set(data[key]) == {"factorised", "materialised"}
        assert all(_positive(v) for v in data[key].values()), (key, data[key])
    fwd, step = data["forward_ms"], data["step_ms"]
    assert data["forward_speedup"] == pytest.approx(fwd["materialised"] / fwd["factorised"])
    assert data["step_speedup"] == pytest.approx(step["materialised"] / step["factorised"])
    peak = data["step_peak_bytes"]
    assert data["memory_ratio"] == pytest.approx(peak["materialised"] / peak["factorised"])
    case = data["cases"]["attention"]
    for path in ("factorised", "materialised"):
        m = case["memory_bytes"]["step"][path]
        assert m["peak"] == m["argument"] + m["output"] + m["temp"] - m["alias"]
    assert set(data["targets"]) == {"forward_speedup", "step_speedup", "memory_ratio"}
    for name, t in data["targets"].items():
        assert t["min"] == lora.TARGETS[name] and t["value"] == data[name]
        assert t["met"] is (data[name] >= t["min"])
    assert len(data["load_average_before"]) == 3 and "git_commit" in data["provenance"]
    assert payload["forward_speedup"] == data["forward_speedup"]
    assert _positive(case["base_model_forward_ms"])
    assert "| attention |" in out.with_suffix(".md").read_text()


def test_paths_agree_and_adapters_matter(record):
    data, _, _ = record
    case, cfg = data["cases"]["attention"], lora.QUICK
    # agreement is not trivial: the perturbed adapters move the logits far more than the paths differ
    assert data["max_abs_diff_logits"] <= lora.TOLERANCE * case["logits_max_abs"]
    assert data["adapter_effect_max_abs"] > 1e-2 > 100 * data["max_abs_diff_logits"]
    fl = case["first_step_loss"]
    assert fl["factorised"] == pytest.approx(fl["materialised"], rel=1e-4) and case["first_step_loss_abs_diff"] < 1e-4
    sizes = data["sizes"]
    d, r, n = cfg["width"], cfg["rank"], cfg["layers"]
    assert sizes["adapted_matrices"] == 4 * n                                  # q, k, v, out per scanned layer
    assert sizes["materialised_kernel_floats_per_example"] == 4 * n * d * d
    assert sizes["factor_floats_per_example"] == 4 * n * r * 2 * d
    assert sizes["hparams"]["frozen"] > 0 and "hyper" in sizes["hparams"]
