"""Fashion-MNIST read straight from Debian's `dataset-fashion-mnist` files (idx format, gzipped)."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from fair.errors import FairError

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
CLASSES = ["T-shirt/top", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle boot"]
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def fashion_mnist_root(root: str | None = None) -> Path:
    """The folder holding the four idx files: `root`, $FASHION_MNIST_ROOT, or Debian's location."""
    return Path(root or os.environ.get("FASHION_MNIST_ROOT") or DEFAULT_ROOT)


def missing_files(root: str | None = None) -> list[str]:
    """Paths of the idx files that are not there (empty when the dataset is complete)."""
    r = fashion_mnist_root(root)
    return [str(r / f) for pair in _FILES.values() for f in pair if not (r / f).is_file()]


# How to get the files; shared by every message that finds them missing.
INSTALL_HINT = ("install Debian's dataset-fashion-mnist (`make fashion-mnist`, or `sudo apt-get install "
                "dataset-fashion-mnist`) or set FASHION_MNIST_ROOT to a folder holding its four idx .gz files")


def require_files(root: str | None = None) -> Path:
    """The dataset folder, or a one-line FairError naming the package to install when a file is missing."""
    missing = missing_files(root)
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise FairError(f"Fashion-MNIST is not installed: {missing[0]}{more} missing; {INSTALL_HINT}")
    return fashion_mnist_root(root)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def read_split(split: str, root: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8, [N, 28, 28]) and labels (int64, [N]) of the `train` or `test` split."""
    if split not in _FILES:
        raise ValueError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    r = require_files(root)
    img_f, lab_f = _FILES[split]
    return _read_idx(r / img_f), _read_idx(r / lab_f).astype(np.int64)

# Prompt templates for zero-shot / the class-name head (shared by the stand-in's pretraining and adaptation).
TEMPLATES = [
    "a photo of a {}.",
    "a photo of the {}, a type of clothing.",
    "a product photo of a {}.",
    "a low resolution photo of a {}.",
]
