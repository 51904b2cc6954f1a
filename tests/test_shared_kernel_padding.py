"""experiments.shared_kernel_padding, tiny: the record says one shared kernel before and after restore."""

import json

from experiments import shared_kernel_padding


def test_tiny_run_keeps_one_shared_kernel_through_save_and_restore(tmp_path):
    out = tmp_path / "skp.json"
    shared_kernel_padding.main(["--steps", "20", "--eval-every", "10", "--features", "4", "--no-progress",
                                "--out", str(out), "--ckpt-dir", str(tmp_path / "ckpt")])
    m = json.loads(out.read_text())["metrics"]
    assert m["shared_after_restore"] is True
    assert m["shared_kernel_leaves_in_trainable_tree"] == 1 if isinstance(m["shared_kernel_leaves_in_trainable_tree"], int) \
        else len(m["shared_kernel_leaves_in_trainable_tree"]) == 1
    ck = m["checkpoint"]
    assert ck["restored_kernel_leaves_of_shared_layers"] == ["conv_same/kernel"]
    assert ck["test_logits_bitwise_equal"] and ck["restored_state_bitwise_equal"] and ck["config_round_trip"]
    assert ck["layers_equal_after_update"] and min(ck["update_after_restore_max_kernel_change"].values()) > 0
    assert ck["grad_shared_minus_sum_max_abs"] < 1e-6          # the shared gradient is the sum of both uses
    assert m["trainable_params"]["tied"] < m["trainable_params"]["untied"]
    assert (tmp_path / "skp.png").exists()
