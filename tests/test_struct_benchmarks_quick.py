"""benchmarks.compile_depth and benchmarks.modulation: --quick runs write the JSON/markdown schema the README
quotes, and the benchmarks measure what they say (parameter counts, both paths equal). No timing asserts."""

import json

import pytest

from benchmarks import compile_depth, modulation


@pytest.mark.slow   # a benchmark run (HYPERJAX_SLOW=1)
def test_compile_depth_quick_schema(tmp_path):
    payload = compile_depth.main(["--quick", "--results-dir", str(tmp_path)])
    record = json.loads((tmp_path / "compile_depth.json").read_text())
    assert (tmp_path / "compile_depth.md").read_text().startswith("# Compile time vs generated depth")
    assert record["benchmark"] == "compile_depth" and record["quick"] is True and record["goal_ratio"] == 1.5
    cfg = compile_depth.QUICK
    d0, d1 = cfg["depths"][0], cfg["depths"][-1]
    rows = {(r["variant"], r["depth"]): r for r in record["rows"]}
    assert set(rows) == {(v, d) for v in compile_depth.VARIANTS for d in cfg["depths"]}
    width, z, d = cfg["dims"][1], cfg["z_dim"], cfg["d"]
    for (variant, depth), r in rows.items():
        for k in ("lower_s", "compile_s", "total_s", "step_median_ms", "hlo_chars"):
            assert r[k] > 0, k
        assert r["total_s"] == pytest.approx(r["lower_s"] + r["compile_s"])
        assert r["generated_params"] == depth * (width * width + width)
        # kernel group: width (d z + d) + width (d + 1); bias group: 1 (d z + d) + width (d + 1)
        assert r["generator_weights"] == width * (d * z + d) + width * (d + 1) + (d * z + d) + width * (d + 1)
        assert r["layer_emb"] == 2 * depth * z
    ratios = record["ratios"][f"L={d1}/L={d0}"]
    assert ratios["lax_scan"]["total"] == pytest.approx(rows[("lax_scan", d1)]["total_s"] /
                                                        rows[("lax_scan", d0)]["total_s"])
    assert record["goal_met"] == (ratios["lax_scan"]["total"] <= 1.5) == payload["goal_met"]
    # the scanned program does not grow with depth (only its shape literals do); the unrolled one does
    assert ratios["lax_scan"]["hlo_chars"] < 1.05 < ratios["python_loop"]["hlo_chars"]


@pytest.mark.slow   # a benchmark run (HYPERJAX_SLOW=1)
def test_modulation_quick_schema(tmp_path):
    modulation.main(["--quick", "--results-dir", str(tmp_path)])
    record = json.loads((tmp_path / "modulation.json").read_text())
    assert record["benchmark"] == "modulation" and record["quick"] is True and record["goal_speedup"] == 5.0
    assert set(record["cases"]) == {"low_rank/8-6-3", "scale_rowcol/8-6-3"}
    for name, c in record["cases"].items():
        assert set(c["forward_ms"]) == {"materialise", "factorised", "base_only"}
        assert set(c["grad_ms"]) == {"materialise", "factorised"}
        assert c["forward_speedup"] == pytest.approx(c["forward_ms"]["materialise"] / c["forward_ms"]["factorised"])
        assert c["max_abs_output_diff"] < 1e-5 and c["max_abs_grad_diff"] < 1e-5
        assert c["materialised_floats_per_batch"] == 4 * (8 * 6 + 6 * 3)
        assert record["goal_met"][name] == (c["forward_speedup"] >= 5.0)
    lr = record["cases"]["low_rank/8-6-3"]
    # base 66 + biases 9 + U, V (rank 2) 2 * (8 + 6 + 6 + 3) + MLP (2 -> 4 -> 2 * 2 scales)
    assert lr["hparams"] == 66 + 9 + 2 * 23 + (2 + 1) * 4 + (4 + 1) * 4
    assert "| case |" in (tmp_path / "modulation.md").read_text()
