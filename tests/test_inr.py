"""hyperjax.inr: SIREN target (its init; generated weights at init follow SIREN's distribution within 20%),
grid, render (factorised equals materialised), errors, and a tiny smoke run of experiments.inr_glyphs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hyperjax as hj
from experiments import inr_glyphs

D = 16
SIREN = hj.inr.siren(hidden=(32, 32), omega_0=30.0)


def generators():
    spec = SIREN.spec
    return {
        "shift": hj.generators.dense(spec, cond_dim=D, where="*/bias", hidden=(32,)),
        "scale": hj.inr.with_target_base(hj.generators.scale_modulation(spec, cond_dim=D, hidden=(32,)), SIREN),
        "low_rank": hj.inr.with_target_base(hj.generators.low_rank(spec, rank=4, cond_dim=D, hidden=(32,)), SIREN),
        "chunked": hj.generators.chunked(spec, chunk_size=128, cond_dim=D, hidden=(32,)),
    }


GENS = generators()
CONDS = jax.random.normal(jax.random.key(7), (64, D))
UNIFORM_Q = np.array([0.25, 0.5, 0.75, 0.95])          # quantiles of |W| / a for W ~ U(-a, a); checked to 0.12 a


def generated_weights(kind):
    """Effective SIREN kernels generated at init for 8 conds under each of 8 generator inits (a shared base is
    one draw per init, so the first layer's 64 base values need several inits for stable quantiles)."""
    g = GENS[kind]
    run = jax.jit(jax.vmap(lambda hp, c: SIREN.weights(g.apply(hp, c)), in_axes=(None, 0)))
    outs = [run(g.init(k), CONDS[8 * i:8 * i + 8]) for i, k in enumerate(jax.random.split(jax.random.key(3), 8))]
    return jax.tree.map(lambda *a: jnp.concatenate(a), *outs)


def test_siren_own_init_is_sirens_uniform():
    w = SIREN.weights(SIREN.spec.init(jax.random.key(0)))
    for l, a in enumerate(SIREN.bounds()):
        x = np.abs(np.asarray(w[f"layer_{l}/kernel"])) / a
        assert x.max() <= 1.0 + 1e-6 and x.max() > 0.9
    assert SIREN.bounds()[0] == pytest.approx(0.5) and SIREN.bounds()[1] == pytest.approx(np.sqrt(6 / 32) / 30)


@pytest.mark.parametrize("kind", ["shift", "scale", "low_rank"])
def test_generated_weights_follow_siren_distribution(kind):
    w = generated_weights(kind)
    for l, a in enumerate(SIREN.bounds()):
        x = np.abs(np.asarray(w[f"layer_{l}/kernel"])).ravel() / a
        assert np.std(np.asarray(w[f"layer_{l}/kernel"])) == pytest.approx(a / np.sqrt(3), rel=0.2), l
        np.testing.assert_allclose(np.quantile(x, UNIFORM_Q), UNIFORM_Q, atol=0.12, err_msg=f"{kind} layer {l}")


def test_chunked_matches_siren_variance():
    """chunked emits Gaussian weights: SIREN's variance (within 20%), not its uniform shape."""
    w = generated_weights("chunked")
    for l, a in enumerate(SIREN.bounds()):
        assert np.std(np.asarray(w[f"layer_{l}/kernel"])) == pytest.approx(a / np.sqrt(3), rel=0.2), l


def test_gaussian_of_siren_variance_fails_the_shape_check():
    """The quantile check above can fail: a Gaussian with SIREN's std is off by > 0.12 a at the 0.95 quantile."""
    z = np.abs(np.random.default_rng(0).normal(size=100_000)) / np.sqrt(3)
    assert not np.allclose(np.quantile(z, UNIFORM_Q), UNIFORM_Q, rtol=0.0, atol=0.12)


@pytest.mark.parametrize("kind", ["scale", "low_rank"])
def test_factorised_render_equals_materialised(kind):
    g = GENS[kind]
    hp = g.init(jax.random.key(1))
    a = hj.inr.render(g, SIREN, hp, CONDS[:3], hj.inr.grid(5))
    b = hj.inr.render(g, SIREN, hp, CONDS[:3], hj.inr.grid(5), factorised=False)
    assert a.shape == (3, 25, 1)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_render_matches_spec_apply_per_image_and_any_resolution():
    g = GENS["shift"]
    hp = g.init(jax.random.key(2))
    coords = hj.inr.grid(7)
    out = hj.inr.render(g, SIREN, hp, CONDS[:2], coords)
    for i in range(2):
        np.testing.assert_allclose(out[i], SIREN.spec.apply(g.apply(hp, CONDS[i]), coords), rtol=1e-5, atol=1e-6)
    assert hj.inr.render(g, SIREN, hp, CONDS[:2], hj.inr.grid(12)).shape == (2, 144, 1)


def test_grid():
    g = np.asarray(hj.inr.grid(4))
    assert g.shape == (16, 2) and g.min() == -0.75 and g.max() == 0.75
    assert np.array_equal(g[1], [-0.75, -0.25])      # row-major: the second coordinate moves fastest


def test_errors():
    with pytest.raises(ValueError, match="hidden"):
        hj.inr.siren(hidden=())
    with pytest.raises(ValueError, match="omega_0"):
        hj.inr.siren(omega_0=0.0)
    with pytest.raises(ValueError, match=r"coords must have shape \(\.\.\., 2\)"):
        SIREN.spec.apply(SIREN.spec.init(jax.random.key(0)), jnp.ones((4, 3)))
    with pytest.raises(TypeError, match="must be the Siren"):
        hj.inr.render(GENS["shift"], SIREN.spec, None, CONDS[:2], hj.inr.grid(2))
    with pytest.raises(ValueError, match="factorised=True needs"):
        hj.inr.render(GENS["chunked"], SIREN, GENS["chunked"].init(jax.random.key(0)), CONDS[:2], hj.inr.grid(2),
                      factorised=True)
    with pytest.raises(TypeError, match="scale_modulation or low_rank"):
        hj.inr.with_target_base(GENS["chunked"], SIREN)


def test_experiment_smoke(tmp_path):
    out = tmp_path / "inr.json"
    m = inr_glyphs.main(["--kinds", "shift", "scale", "spatial", "--steps", "4", "--eval-every", "2", "--steps-per-call", "2",
                         "--siren", "16", "--size", "16", "--n-per", "1", "--fit-steps", "3", "--fit-images", "4",
                         "--clf-steps", "3", "--clf-hidden", "16", "--hidden", "16", "--latent-dim", "8",
                         "--batch-size", "8", "--latent-grid", "4", "2", "--latent-siren", "16", "--no-progress",
                         "--out", str(out)])
    rec = json.loads(out.read_text())["metrics"]
    for k in ("shift", "scale", "spatial"):
        assert np.isfinite(rec["hypernet"][k]["psnr_db"]) and rec["hypernet"][k]["ms_per_image"] > 0
    for key in ("per_image_fit", "cnn_autoencoder"):
        assert np.isfinite(rec[key]["psnr_db"])
    assert 0 <= rec["weight_space_accuracy"] <= 1 and 0 <= rec["pixel_accuracy"] <= 1
    assert rec["background_psnr_db"] > 0 and m["best_kind"] in ("shift", "scale", "spatial")
    assert rec["hypernet"]["scale"]["factorised_render"] and not rec["hypernet"]["shift"]["factorised_render"]
    assert rec["hypernet"]["spatial"]["params_per_image"] == 4 * 4 * 2    # only the latent grid is per image
    assert out.with_suffix(".png").exists()


GRID_SIREN = hj.inr.siren(hidden=(16, 16), latent_grid=(4, 3))


def test_latent_grid_leaves_and_interpolation():
    spec = GRID_SIREN.spec
    assert spec.leaves["latent/grid"].shape == (4, 4, 3)
    assert [spec.leaves[f"layer_{l}/latent_kernel"].shape for l in range(2)] == [(3, 16), (3, 16)]
    assert "layer_2/latent_kernel" not in spec.leaves               # the linear output layer gets no shift
    lat = jax.random.normal(jax.random.key(0), (4, 4, 3))
    centres = hj.inr.grid(4)                                         # the cells' centres, row-major
    np.testing.assert_allclose(hj.inr.interpolate(lat, centres), lat.reshape(16, 3), rtol=1e-6, atol=1e-6)
    mid = jnp.array([[-0.5, -0.5], [-0.75, 0.0], [-1.0, 1.0]])      # between 4 cells, between 2, outside a corner
    out = hj.inr.interpolate(lat, mid)
    np.testing.assert_allclose(out[0], lat[0:2, 0:2].mean((0, 1)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[1], lat[0, 1:3].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[2], lat[0, 3], rtol=1e-6, atol=1e-6)


def test_latent_grid_generated_render_any_resolution_and_gradient():
    g = hj.generators.dense(GRID_SIREN.spec, cond_dim=D, where="latent/grid", hidden=())
    hp = g.init(jax.random.key(2))

    @jax.jit
    def run(hp, conds):
        params = g.apply(hp, conds[0])
        grad = jax.grad(lambda p: jnp.sum(GRID_SIREN.spec.apply(p, hj.inr.grid(5)) ** 2))(params)
        return (hj.inr.render(g, GRID_SIREN, hp, conds, hj.inr.grid(6)), hj.inr.render(g, GRID_SIREN, hp, conds,
                hj.inr.grid(9)), GRID_SIREN.spec.apply(params, hj.inr.grid(6)), grad)

    out, out9, own, grad = run(hp, CONDS[:2])
    np.testing.assert_allclose(out[0], own, rtol=1e-5, atol=1e-6)          # render == the spec's apply per image
    assert not np.allclose(out[0], out[1], atol=1e-3)                      # the grid carries the image
    assert out9.shape == (2, 81, 1)
    for l in range(2):
        assert float(jnp.abs(grad[f"layer_{l}"]["latent_kernel"]).max()) > 0
    assert float(jnp.abs(grad["latent"]["grid"]).max()) > 0


@pytest.mark.parametrize("bad", [(1, 4), (8, 0), (8,), 8, (8.0, 4)])
def test_latent_grid_errors(bad):
    with pytest.raises(ValueError, match=r"latent_grid. must be \(cells per axis >= 2, channels >= 1\)"):
        hj.inr.siren(hidden=(8,), latent_grid=bad)


@pytest.mark.parametrize("lat_shape,coord_shape", [((4, 3), (5, 2)), ((4, 1, 3), (5, 2)), ((4, 4, 3), (5,))])
def test_interpolate_errors_name_the_shapes(lat_shape, coord_shape):
    with pytest.raises(ValueError, match=r"hyperjax\.inr\.interpolate: (latents|coords) must be"):
        hj.inr.interpolate(jnp.zeros(lat_shape), jnp.zeros(coord_shape))
