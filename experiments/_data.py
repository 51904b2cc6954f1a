"""Real image data for experiments: scikit-learn digits (ships with the package) or a local MNIST file.

`load_images(mnist=None)` returns (x_train, y_train, x_test, y_test) as float32 images in [0, 1] with
shape (N, H, W, 1) and int32 labels. With `mnist=PATH` it reads real MNIST from a local `.npz`
(keys x_train/y_train/x_test/y_test, as keras.datasets.mnist saves it) or from a folder of the four IDX
files (gzipped or not). Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import os
import struct

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
