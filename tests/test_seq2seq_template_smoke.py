"""Smoke tests of experiments.tandem_seq2seq and experiments.template_matching on tiny settings.

Checks the JSON records, that the seq2seq decoder is one subtree updated by both phases, that each
phase's label tree freezes the other encoder, and that the template-matching kernel is generated per
example (and its FFT correlation equals lax.conv_general_dilated).
"""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hyperjax as hj
from experiments import tandem_seq2seq as ts
from experiments import template_matching as tm

# ------------------------------------------------------------------------------------------------ seq2seq
TS_TINY = ["--max-words", "260", "--n-test", "40", "--n-pairs", "50", "--hidden", "12", "--z-dim", "8",
           "--embed-dim", "6", "--batch-size", "16", "--steps", "12", "--eval-every", "6", "--warmup", "2",
           "--no-progress"]


def test_respelling_is_a_reversed_bijective_cipher():
    cipher = ts.make_cipher(0)
    assert sorted(cipher.values()) == sorted(cipher) and cipher != {c: c for c in cipher}
    assert ts.make_cipher(0) == cipher and ts.make_cipher(1) != cipher       # fixed by the seed
    words = ts.load_words()
    assert len(words) > 2000 and all(w.isalpha() and w.islower() and 3 <= len(w) <= 10 for w in words)
    inverse = {v: k for k, v in cipher.items()}
    for w in words[:50]:
        a = ts.respell(w, cipher)
        assert len(a) == len(w) and "".join(inverse[c] for c in a[::-1]) == w


def test_split_holds_test_words_out_of_both_training_sets():
    test, pairs, b_set = ts.split(ts.load_words(), 300, 500, seed=0)
    assert len(set(test)) == 300 and len(pairs) == 500
    assert not set(test) & set(pairs) and not set(test) & set(b_set) and set(pairs) <= set(b_set)
    with pytest.raises(ValueError, match="exceeds the"):
        ts.split(["abc"] * 10, 8, 5, seed=0)


def test_decoder_io_shifts_by_one_and_ends_with_eos():
    toks, lens = ts.encode(["cat", "horse"], 6)
    inputs, targets = ts.decoder_io(toks, lens)
    np.testing.assert_array_equal(inputs[0], [ts.BOS, *toks[0, :3], 0, 0, 0])
    np.testing.assert_array_equal(targets[0, :4], [*toks[0, :3], ts.EOS])
    assert targets[1, 5] == ts.EOS and (targets[0, 4:] == ts.PAD).all()


@pytest.fixture(scope="module")
def tiny_seq2seq():
    """A tiny GRU model (embed 4, hidden 6, code 5, words up to 8 letters), its params and a 3-word batch."""
    model = ts.Model("gru", 4, 6, 5, 8)
    params = jax.jit(model.init)(jax.random.key(0))
    batch = jax.tree.map(jnp.asarray, ts.make_set(["alpha", "beta", "gamma"], ts.make_cipher(0), 8))
    return model, params, batch


@pytest.mark.parametrize("train,frozen", [(("enc_a", "dec"), "enc_b"), (("enc_b", "dec"), "enc_a")])
def test_phase_updates_its_encoder_and_the_one_decoder_only(train, frozen, tiny_seq2seq):
    """Tandem phases: the other encoder's leaves stay bitwise equal; the shared decoder moves."""
    model, params, batch = tiny_seq2seq
    assert set(params) == {"enc_a", "enc_b", "dec"}                    # one decoder subtree, no copy
    side = train[0][-1]
    loss = lambda p, b, rng: model.xent(p, model.encode(p, side, b[f"{side}_tok"], b[f"{side}_len"]), b)
    args = ts.build_parser().parse_args(["--warmup", "1"])
    opt = ts.only(ts.make_optimizer(args, 10), params, train)
    step = hj.training.make_step(loss, opt, donate=False)
    state = hj.training.init_state(params, opt)
    for _ in range(2):
        state, _ = step(state, batch)
    chex.assert_trees_all_equal(state.params[frozen], params[frozen])
    for name in train:
        changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params[name], params[name])
        assert all(jax.tree.leaves(changed)), f"{name} has leaves that did not move"


@pytest.mark.slow   # the three schedules end to end; by default the phase test above checks the tandem updates
def test_tandem_seq2seq_tiny_run_writes_record(tmp_path):
    out = tmp_path / "tandem.json"
    metrics = ts.main([*TS_TINY, "--out", str(out)])
    record = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 10_000
    m = record["metrics"]
    assert m == json.loads(json.dumps(metrics)) and record["seed"] == 0
    assert m["n_test"] == 40 and m["n_pairs"] == 50 and m["n_b_unpaired"] == 220
    tops = {p.split("/")[0] for p in m["param_paths"]}
    assert tops == {"enc_a", "enc_b", "dec"} and m["dec_subtrees"] == ["dec"]
    assert sum(p.startswith("dec/") for p in m["param_paths"]) == m["tandem"]["dec_leaves"]
    assert m["n_params"]["enc_a"] == m["n_params"]["enc_b"]
    for method, updates in [("two_stage", 24), ("tandem", 24), ("pairs_only", 24)]:
        r = m[method]
        assert r["updates"] == updates
        for key in ("test_exact", "test_char", "train_pairs_exact", "test_b_autoenc_exact"):
            assert 0.0 <= r[key] <= 1.0
        assert r["test_exact"] <= r["test_char"] + 1e-6 or r["test_char"] == 1.0
        curve = record["curves"][method]
        assert len(curve["update"]) == len(curve["test_exact"]) == len(curve["test_code_gap"])
        assert np.isfinite(curve["loss"][1:]).all()
    assert record["curves"]["two_stage"]["phase"][-1] == "stage2_regress_a"
    assert m["target_met"] == (m["tandem_above_two_stage"] and m["tandem_above_pairs_only"])
    assert m["tandem_above_two_stage"] == (m["tandem"]["test_exact"] > m["two_stage"]["test_exact"])
    assert isinstance(m["target_met"], bool) and m["examples"]["python"] == ts.respell("python", ts.make_cipher(0))


# ------------------------------------------------------------------------------------------------ template
TM_TINY = ["--steps", "6", "--n-test", "20", "--eval-batch", "10", "--eval-every", "2", "--channels", "2",
           "--width", "4", "--baseline-width", "4", "--batch-size", "4", "--warmup", "1", "--no-progress"]


def test_canvases_hold_the_template_digit_and_other_class_distractors():
    x, y, _, _, _ = tm.digit_images(None, 0)
    assert x.shape[1:] == (16, 16, 1)
    d = tm.make_canvases(np.random.default_rng(0), x, y, 30, canvas=48, noise=0.0)
    for i in range(30):
        boxes = [b for b in d["boxes"][i] if b[0] >= 0]
        assert 3 <= len(boxes) <= 5
        for j, a in enumerate(boxes):                                     # non-overlapping
            for b in boxes[j + 1:]:
                assert abs(a[0] - b[0]) >= 16 or abs(a[1] - b[1]) >= 16
        classes = d["classes"][i, :len(boxes)]
        assert (classes[1:] != classes[0]).all() and (d["classes"][i, len(boxes):] == -1).all()
        r, c = boxes[0]
        np.testing.assert_array_equal(d["canvas"][i, r:r + 16, c:c + 16], d["template"][i])   # exact template
        assert tuple(d["pos"][i]) == (r + 7, c + 7) and d["target"][i] == (r + 7) * 48 + c + 7
    anyc = tm.make_canvases(np.random.default_rng(0), x, y, 30, canvas=48, noise=0.0, distractor_classes="any")
    assert any((anyc["classes"][i, 1:] == anyc["classes"][i, 0]).any() for i in range(30))
    inst = tm.make_canvases(np.random.default_rng(0), x, y, 5, canvas=48, noise=0.0, template="instance")
    for i in range(5):
        r, c = inst["boxes"][i, 0]
        assert not np.array_equal(inst["canvas"][i, r:r + 16, c:c + 16], inst["template"][i])


def test_fft_correlation_equals_conv_general_dilated(maybe_jit):
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    params = {"kernel": jax.random.normal(k1, (5, 5, 3, 1)), "bias": jax.random.normal(k2, (1,))}
    feat = jax.random.normal(k3, (1, 11, 9, 3))
    chex.assert_trees_all_close(maybe_jit(tm.correlate_fft)(params, feat), tm.correlate_direct(params, feat),
                                atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def generated_model():
    """The generated-kernel model (FFT correlation) on 6x6 templates and 18x18 canvases, initialised once."""
    args = tm.build_parser().parse_args(["--channels", "2", "--width", "4"])
    init, respond, extra = tm.response_fn("generated", args, 6)
    params = jax.jit(init)(jax.random.key(0))
    canvas = jax.random.normal(jax.random.key(1), (3, 18, 18, 1))
    templates = jax.random.normal(jax.random.key(2), (3, 6, 6, 1))
    return params, respond, jax.jit(respond), extra, canvas, templates


def test_kernel_is_generated_per_example_and_both_legs_get_gradients(generated_model):
    params, respond, respond_j, extra, canvas, templates = generated_model
    spec, hnet = extra["spec"], extra["hnet"]
    assert spec.paths == ("bias", "kernel") and spec.leaves["kernel"].shape == (6, 6, 2, 1)
    kernels = jax.jit(hj.generate_batch, static_argnums=0)(hnet, params["template_leg"], templates)["kernel"]
    assert kernels.shape == (3, 6, 6, 2, 1) and float(jnp.abs(kernels[0] - kernels[1]).max()) > 1e-4
    resp = respond_j(params, canvas, templates)
    assert resp.shape == (3, 18, 18)
    one = respond_j(params, canvas[1:2], templates[1:2])              # example 1 alone, its own kernel
    chex.assert_trees_all_close(resp[1:2], one, atol=1e-4, rtol=1e-4)
    swapped = respond_j(params, canvas, templates[::-1])               # another template -> another map
    assert float(jnp.abs(swapped[0] - resp[0]).max()) > 1e-4
    chex.assert_trees_all_close(swapped[1], resp[1], atol=1e-4, rtol=1e-4)
    loss = lambda p: jnp.sum(jax.nn.log_softmax(respond(p, canvas, templates).reshape(3, -1))[:, 0])
    grads = jax.jit(jax.grad(loss))(params)
    for leg in ("template_leg", "search_leg"):
        assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads[leg])), leg


def test_direct_conv_gives_the_fft_response_maps(generated_model):
    """--conv direct (a grouped lax.conv under vmap) and --conv fft: same params tree, same response maps."""
    params, _, respond_j, _, canvas, templates = generated_model
    args_d = tm.build_parser().parse_args(["--channels", "2", "--width", "4", "--conv", "direct"])
    init_d, respond_d, _ = tm.response_fn("generated", args_d, 6)
    chex.assert_trees_all_equal_shapes_and_dtypes(jax.eval_shape(init_d, jax.random.key(0)), params)
    chex.assert_trees_all_close(jax.jit(respond_d)(params, canvas, templates),
                                respond_j(params, canvas, templates), atol=1e-4, rtol=1e-4)


def test_hypernet_checks_its_output_against_the_spec():
    hnet = tm.template_hypernet(tm.conv_spec(6, 3, "fft"), 6, 2, 4)    # the leg emits 2 channels, spec wants 3
    hparams = jax.eval_shape(hnet.init, jax.random.key(0))
    with pytest.raises(ValueError, match=r"TargetSpec.check: leaf 'kernel' expected \(6, 6, 3, 1\)"):
        jax.eval_shape(hnet.apply, hparams, jax.ShapeDtypeStruct((6, 6, 1), jnp.float32))


@pytest.mark.parametrize("schedule", [pytest.param("joint", marks=pytest.mark.slow), "alternate"])   # alternate: one model
def test_template_matching_tiny_run_writes_record(schedule, tmp_path):
    out = tmp_path / "tm.json"
    extra = [] if schedule == "joint" else ["--skip-baseline"]
    metrics = tm.main([*TM_TINY, "--schedule", schedule, *extra, "--out", str(out)])
    record = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 10_000
    m = record["metrics"]
    assert m == json.loads(json.dumps(metrics)) and record["config"]["schedule"] == schedule
    assert m["canvas_size"] == 48 and m["tolerance_px"] == 2.0 and m["target_paths"] == ["bias", "kernel"]
    assert m["kernel_batch_shape"] == [8, 16, 16, 2, 1] and m["kernel_pairwise_rel_diff"] > 0.0
    models = ["generated"] + (["static_baseline"] if schedule == "joint" else [])
    assert [k for k in ("generated", "static_baseline") if k in m] == models
    for k in models:
        assert 0.0 <= m[k]["test_accuracy"] <= 1.0
        assert record["curves"][k]["step"] == [0, 2, 4, 6]
        assert all(g > 0 for g in m[k]["first_step_grad_norm"])
    assert len(m["generated"]["first_step_grad_norm"]) == (2 if schedule == "alternate" else 1)
    assert set(m["generated"]["trainable_params"]) == {"template_leg", "search_leg"}


def test_mnist_file_gives_14px_digits_on_42px_canvases(tmp_path):
    """--mnist reads a local .npz; 28x28 images are 2x2-mean-pooled to 14x14, each scaled to max 1."""
    rng = np.random.default_rng(0)
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=rng.integers(0, 256, (40, 28, 28), dtype=np.uint8), y_train=np.arange(40) % 10,
             x_test=rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), y_test=np.arange(20) % 10)
    x_tr, y_tr, x_te, _, name = tm.digit_images(str(path), 0)
    assert name == "mnist" and x_tr.shape == (40, 14, 14, 1) and x_te.shape == (20, 14, 14, 1)
    np.testing.assert_allclose(x_tr.max(axis=(1, 2, 3)), 1.0)
    d = tm.make_canvases(np.random.default_rng(0), x_tr, y_tr, 4, canvas=42, noise=0.0)
    assert d["canvas"].shape == (4, 42, 42, 1) and (d["pos"] == d["boxes"][:, 0] + 6).all()
