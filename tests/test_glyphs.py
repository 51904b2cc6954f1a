"""experiments._data.glyphs: characters rendered with matplotlib's bundled fonts, deterministic per seed,
value ranges of both intensities, labels/fonts bookkeeping, in-memory cache and argument errors."""

import os

import numpy as np
import pytest

from experiments import _data

FONTS = ("DejaVuSans.ttf", "cmr10.ttf")
CHARS = "0Aag"


@pytest.fixture(scope="module")
def unit():
    return _data.glyphs(32, chars=CHARS, fonts=FONTS, n_per=3, seed=1)


def test_shapes_labels_and_fonts(unit):
    n = len(FONTS) * len(CHARS) * 3
    assert unit.images.shape == (n, 32, 32, 1) and unit.images.dtype == np.float32
    assert unit.labels.dtype == np.int32 and unit.font.dtype == np.int32
    assert unit.chars == CHARS and unit.fonts == FONTS
    # font-major, then char, then repeat
    assert unit.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3] * 2
    assert unit.font.tolist() == [0] * 12 + [1] * 12


def test_unit_range_and_ink(unit):
    x = unit.images
    assert x.min() == 0.0 and x.max() == 1.0
    assert len(np.unique(x)) > 20                           # antialiased, not binary
    ink = x.reshape(len(x), -1).mean(axis=1)
    assert (ink > 0.02).all() and (ink < 0.5).all()          # every glyph drawn, mostly background
    corners = x[:, [0, 0, -1, -1], [0, -1, 0, -1], 0]
    assert (corners < 0.5).all()                             # ink in the middle, background in the corners
    # lower-case 'a' is smaller than 'A' with fit="font" (font proportions kept)
    a_small = ink[unit.labels == 2].mean()
    a_cap = ink[unit.labels == 1].mean()
    assert a_small < a_cap


def test_deterministic_for_a_seed_and_different_across_seeds(unit):
    _data.glyphs.cache_clear()
    again = _data.glyphs(32, chars=CHARS, fonts=FONTS, n_per=3, seed=1)
    assert again is not unit and np.array_equal(again.images, unit.images)
    other = _data.glyphs(32, chars=CHARS, fonts=FONTS, n_per=3, seed=2)
    assert not np.array_equal(other.images, unit.images)
    # repeats of one (font, char) differ by their random rotation/scale/offset
    assert not np.array_equal(unit.images[0], unit.images[1])


def test_cached_in_memory_and_read_only():
    first = _data.glyphs(16, chars=CHARS, fonts=FONTS, seed=3)
    assert _data.glyphs(16, chars=CHARS, fonts=FONTS, seed=3) is first
    with pytest.raises(ValueError, match="read-only"):
        first.images[0, 0, 0, 0] = 1.0


def test_no_augmentation_gives_identical_repeats():
    g = _data.glyphs(16, chars="B", fonts=FONTS[:1], n_per=2, rotation=0.0, scale=(1.0, 1.0), offset=0.0)
    assert np.array_equal(g.images[0], g.images[1])


def test_digits_intensity_levels():
    g = _data.glyphs(8, chars=CHARS, fonts=FONTS, intensity="digits", fit="glyph", seed=0)
    assert g.images.shape == (len(FONTS) * len(CHARS), 8, 8, 1)
    levels = g.images * 16
    assert np.array_equal(levels, np.round(levels))         # k / 16 for integer k, like load_digits
    assert levels.min() == 0 and levels.max() == 16
    x_digits = _data.load_digits()[0]
    assert x_digits.max() == g.images.max() == 1.0           # the same scale as the digits loader


def test_fit_glyph_fills_more_of_the_canvas_than_fit_font():
    kw = dict(chars="acox", fonts=FONTS[:1], rotation=0.0, scale=(1.0, 1.0), offset=0.0)
    font, glyph = _data.glyphs(32, fit="font", **kw), _data.glyphs(32, fit="glyph", **kw)
    assert (glyph.images.mean(axis=(1, 2, 3)) > 1.3 * font.images.mean(axis=(1, 2, 3))).all()


def test_default_fonts_exist_and_render_every_char():
    for f in _data.GLYPH_FONTS:
        assert os.path.isfile(os.path.join(_data.glyph_font_dir(), f)), f
    g = _data.glyphs(16, n_per=1)
    assert g.images.shape == (len(_data.GLYPH_FONTS) * 62, 16, 16, 1)
    assert (g.images.reshape(len(g.images), -1).max(axis=1) > 0.5).all()


@pytest.mark.parametrize("kwargs,match", [
    (dict(size=2), "size= must be an int >= 4"),
    (dict(intensity="bright"), "intensity= must be one of"),
    (dict(fit="box"), "fit= must be one of"),
    (dict(chars="aa"), "distinct characters"),
    (dict(fonts="DejaVuSans.ttf"), "tuple of TTF file names"),
    (dict(fonts=("NoSuch.ttf",)), "fonts= names 'NoSuch.ttf'"),
    (dict(n_per=0), "n_per= must be an int >= 1"),
    (dict(scale=(1.0, 0.5)), "scale= must be"),
])
def test_bad_arguments_name_the_argument(kwargs, match):
    kwargs = {"size": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        _data.glyphs(**kwargs)
