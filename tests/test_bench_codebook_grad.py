"""benchmarks.codebook_grad --quick: the documented JSON keys, and hyperjax's codebook weights equal the
textbook softmax(A / tau) @ v."""

import math

from benchmarks import codebook_grad


def test_quick_run_writes_the_keys_and_the_two_forms_agree(tmp_path):
    rec = codebook_grad.main(["--quick", "--out-dir", str(tmp_path)])
    assert (tmp_path / "codebook_grad.json").exists()
    for method in ("textbook", "hyperjax"):
        for k in ("one_ms", "loop_ms", "vmap_ms"):
            assert math.isfinite(rec["cases"][method][k]) and rec["cases"][method][k] > 0
    assert set(rec["speedup"]) == {"one", "loop", "vmap"}
    assert rec["max_abs_diff"] < 1e-5
    assert rec["config"]["slots"] == 16 * 32 + 32 * 10
