"""experiments.ha_static_cnn, tiny: both models train, the record holds the generated layer's counts."""

import json

import hyperjax as hj
from experiments import ha_static_cnn


def test_tiny_run_writes_record_and_figure(tmp_path):
    out = tmp_path / "ha.json"
    ha_static_cnn.main(["--steps", "6", "--eval-every", "3", "--repeats", "1", "--channels", "4",
                        "--no-progress", "--out", str(out)])
    record = json.loads(out.read_text())
    m = record["metrics"]
    layer = m["generated_layer"]
    assert layer["path"] == "Conv_1/kernel" and layer["shape"] == [5, 5, 4, 4]
    assert layer["kernel_params"] == 5 * 5 * 4 * 4
    assert layer["generator_weights_and_biases"] == hj.generators.per_layer_param_count((5, 5, 4, 4), z_dim=4, d=4)
    assert m["dataset"] == "digits" and m["kernel"] == 5
    assert set(m) >= {"hyper", "plain", "accuracy_gap_points", "target_met", "wall_time_s"}
    # the hyper model is the plain one with its second kernel swapped for the generator and the embedding
    assert m["hyper"]["trainable_params"] == (m["plain"]["trainable_params"] - layer["kernel_params"]
                                              + layer["generator_weights_and_biases"] + layer["layer_embedding"])
    for model in ("hyper", "plain"):
        assert 0.0 <= m[model]["test_accuracy_mean"] <= 1.0
    assert (tmp_path / "ha.png").exists()
