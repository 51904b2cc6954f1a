"""Real image data for experiments: scikit-learn digits (ships with the package) or a local MNIST file.

`load_images(mnist=None)` returns (x_train, y_train, x_test, y_test) as float32 images in [0, 1] with
shape (N, H, W, 1) and int32 labels. With `mnist=PATH` it reads real MNIST from a local `.npz`
(keys x_train/y_train/x_test/y_test, as keras.datasets.mnist saves it) or from a folder of the four IDX
files (gzipped or not). Nothing is downloaded.

`glyphs(size, ...)` renders 0-9 A-Z a-z with the TTF fonts that ship inside matplotlib (DejaVu, STIX,
Computer Modern), with seeded random rotation, scale and offset: 32x32 in [0, 1] for implicit neural
representations, 8x8 with digits' 0-16 levels (`intensity="digits"`) for out-of-distribution tests.
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
from typing import NamedTuple

import numpy as np

IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte",
}


def read_idx(path: str) -> np.ndarray:
    """One IDX file (optionally .gz) -> numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4]!r}).")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(folder: str, stem: str) -> str:
    for name in os.listdir(folder):
        if name.startswith(stem) or name.replace(".", "-").startswith(stem):
            return os.path.join(folder, name)
    raise FileNotFoundError(f"MNIST folder {folder} has no file starting with {stem} (IDX format expected).")


def load_mnist(path: str):
    """Real MNIST from a local .npz file or a folder of IDX files -> (x_tr, y_tr, x_te, y_te), x in [0,1] NHWC."""
    if os.path.isdir(path):
        arrays = {k: read_idx(_find_idx(path, stem)) for k, stem in IDX_NAMES.items()}
    elif path.endswith(".npz"):
        with np.load(path) as z:
            missing = [k for k in IDX_NAMES if k not in z]
            if missing:
                raise ValueError(f"{path}: .npz lacks {missing}; expected keys x_train, y_train, x_test, y_test.")
            arrays = {k: z[k] for k in IDX_NAMES}
    else:
        raise ValueError(f"--mnist {path}: give a .npz file or a folder holding the four MNIST IDX files.")
    xs = {k: (arrays[k].astype(np.float32) / 255.0)[..., None] for k in ("x_train", "x_test")}
    return xs["x_train"], arrays["y_train"].astype(np.int32), xs["x_test"], arrays["y_test"].astype(np.int32)


def load_digits(seed: int = 0, test_fraction: float = 0.25):
    """scikit-learn's 1,797 real 8x8 digits, shuffled with `seed` and split -> (x_tr, y_tr, x_te, y_te)."""
    from sklearn.datasets import load_digits as _load

    d = _load()
    x = (d.images.astype(np.float32) / 16.0)[..., None]
    y = d.target.astype(np.int32)
    perm = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]


def load_images(mnist: str | None = None, seed: int = 0):
    """Digits by default; real MNIST when `mnist` names a local file or folder. Returns (x_tr, y_tr, x_te, y_te, name)."""
    if mnist:
        return (*load_mnist(mnist), "mnist")
    return (*load_digits(seed), "digits")


def batches(rng: np.random.Generator, n: int, batch_size: int):
    """Endless shuffled index batches of size `batch_size` over range(n)."""
    while True:
        perm = rng.permutation(n)
        for i in range(0, n - batch_size + 1, batch_size):
            yield perm[i:i + batch_size]


# --- rendered glyphs: matplotlib's bundled TTF fonts ------------------------------------------------------

GLYPH_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# matplotlib's bundled text fonts that cover 0-9 A-Z a-z (the Display, LastResort, STIXNonUni / STIXSiz and
# cmex/cmsy/cmmi files are symbol or partial fonts and are left out).
GLYPH_FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmti10.ttf", "cmss10.ttf", "cmtt10.ttf",
)
GLYPH_INTENSITIES = ("unit", "digits")
GLYPH_FITS = ("font", "glyph")


class Glyphs(NamedTuple):
    """A rendered glyph set: images f32[N, size, size, 1], labels i32[N] (index into `chars`), font i32[N]."""
    images: np.ndarray
    labels: np.ndarray
    font: np.ndarray
    chars: str
    fonts: tuple[str, ...]


def glyph_font_dir() -> str:
    """The folder of TTF files that ships inside matplotlib."""
    import matplotlib
    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


def _glyph_paths(font: str, chars: str):
    """(per-char TextPaths at size 1, the font's vertical extent (y0, y1) over 0-9 A-Z a-z and `chars`)."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath

    path = os.path.join(glyph_font_dir(), font)
    if not os.path.isfile(path):
        raise ValueError(f"glyphs: fonts= names {font!r}, not a file in matplotlib's font folder {glyph_font_dir()}; "
                         f"available: {sorted(f for f in os.listdir(glyph_font_dir()) if f.endswith('.ttf'))}.")
    prop = FontProperties(fname=path)
    paths = [TextPath((0, 0), c, size=1.0, prop=prop) for c in chars]
    for c, p in zip(chars, paths):
        if len(p.vertices) == 0:
            raise ValueError(f"glyphs: font {font!r} has no outline for character {c!r}; leave it out of chars=.")
    reference = paths + [TextPath((0, 0), c, size=1.0, prop=prop) for c in GLYPH_CHARS if c not in chars]
    ext = [p.get_extents() for p in reference if len(p.vertices)]
    return paths, (min(e.y0 for e in ext), max(e.y1 for e in ext))


@functools.lru_cache(maxsize=16)
def glyphs(size: int = 32, *, chars: str = GLYPH_CHARS, fonts: tuple[str, ...] = GLYPH_FONTS, n_per: int = 1,
           seed: int = 0, rotation: float = 10.0, scale: tuple[float, float] = (0.85, 1.05), offset: float = 0.06,
           intensity: str = "unit", fit: str = "font") -> Glyphs:
    """Characters rendered with matplotlib's bundled fonts, with seeded random rotation, scale and offset.

    Each (font, char) pair is drawn `n_per` times. fit="font" keeps the font's proportions (a lower-case
    'o' stays smaller than 'O'): the font's vertical extent over 0-9 A-Z a-z (and `chars`) spans
    `0.9 * size * s` pixels with s ~ U(scale) and the glyph is centred horizontally; fit="glyph" scales
    each glyph's own box (its longer side) to that span and centres it, as digits and MNIST are
    size-normalised. Then it is rotated by U(-rotation, rotation) degrees and shifted by
    U(-offset, offset) * size pixels on each axis. Ink is bright on a 0 background, like digits and MNIST.
    intensity="unit": antialiased coverage in [0, 1]. intensity="digits": sklearn digits' recipe, a
    4x-size binary bitmap counted over 4x4 blocks (0..16 levels), divided by 16 like `load_digits`.
    Returns `Glyphs` (order: font-major, then char, then repeat); deterministic for a seed and cached in
    memory only (arrays are read-only). Thousands of glyphs render in well under a second.
    """
    if not isinstance(size, int) or size < 4:
        raise ValueError(f"glyphs: size= must be an int >= 4, got {size!r}.")
    if intensity not in GLYPH_INTENSITIES:
        raise ValueError(f"glyphs: intensity= must be one of {GLYPH_INTENSITIES}, got {intensity!r}.")
    if fit not in GLYPH_FITS:
        raise ValueError(f"glyphs: fit= must be one of {GLYPH_FITS}, got {fit!r}.")
    if not chars or len(set(chars)) != len(chars):
        raise ValueError(f"glyphs: chars= must be a non-empty string of distinct characters, got {chars!r}.")
    if isinstance(fonts, str) or not fonts:
        raise ValueError(f"glyphs: fonts= must be a non-empty tuple of TTF file names, got {fonts!r}.")
    if not isinstance(n_per, int) or n_per < 1:
        raise ValueError(f"glyphs: n_per= must be an int >= 1, got {n_per!r}.")
    if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
        raise ValueError(f"glyphs: scale= must be (low, high) with 0 < low <= high, got {scale!r}.")
    import matplotlib
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.transforms import Affine2D

    raster = size * 4 if intensity == "digits" else size
    renderer = RendererAgg(raster, raster, 72)
    gc = renderer.new_gc()
    gc.set_linewidth(0.0)
    gc.set_antialiased(intensity == "unit")
    rng = np.random.default_rng(seed)
    n = len(fonts) * len(chars) * n_per
    rot = rng.uniform(-rotation, rotation, n)
    scl = rng.uniform(scale[0], scale[1], n)
    off = rng.uniform(-offset, offset, (n, 2)) * raster
    images = np.empty((n, raster, raster), np.float32)
    i = 0
    with matplotlib.rc_context({"path.simplify": False}):
        for font in fonts:
            paths, (y0, y1) = _glyph_paths(font, chars)
            for path in paths:
                ext = path.get_extents()
                if fit == "font":
                    cx, cy, span = (ext.x0 + ext.x1) / 2, (y0 + y1) / 2, y1 - y0
                else:
                    cx, cy, span = (ext.x0 + ext.x1) / 2, (ext.y0 + ext.y1) / 2, max(ext.width, ext.height)
                for _ in range(n_per):
                    k = 0.9 * raster * scl[i] / span
                    tr = (Affine2D().translate(-cx, -cy).scale(k).rotate_deg(rot[i])
                          .translate(raster / 2 + off[i, 0], raster / 2 + off[i, 1]))
                    renderer.clear()
                    renderer.draw_path(gc, path, tr, (1.0, 1.0, 1.0, 1.0))
                    images[i] = np.asarray(renderer.buffer_rgba())[..., 3] / np.float32(255.0)
                    i += 1
    if intensity == "digits":
        bits = (images >= 0.5).astype(np.float32)
        images = bits.reshape(n, size, 4, size, 4).sum(axis=(2, 4)) / np.float32(16.0)
    labels = np.tile(np.repeat(np.arange(len(chars), dtype=np.int32), n_per), len(fonts))
    font_idx = np.repeat(np.arange(len(fonts), dtype=np.int32), len(chars) * n_per)
    out = Glyphs(images[..., None], labels, font_idx, chars, tuple(fonts))
    for a in (out.images, out.labels, out.font):
        a.setflags(write=False)
    return out
