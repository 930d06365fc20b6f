"""Image sets: where a split's images come from (files or in-memory arrays) and their labels.

An `ImageSet` is a list of image references plus labels; `load(i)` returns a PIL RGB image or raises.
Unreadable images are skipped by the torch datasets in fair.data.views and counted.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}  # case-insensitive


@dataclass
class ImageSet:
    """A split: `refs[i]` is a file path or an index into `array`; `labels[i]` its class (-1: unknown)."""
    refs: list
    labels: np.ndarray
    array: np.ndarray | None = None          # uint8 [N, H, W] or [N, H, W, 3] for in-memory datasets

    def __len__(self) -> int:
        return len(self.refs)

    def load(self, i: int) -> Image.Image:
        ref = self.refs[i]
        if self.array is not None:
            img = self.array[ref]
            return Image.fromarray(img).convert("RGB")
        with Image.open(ref) as im:
            return im.convert("RGB")

    def subset(self, idx: Sequence[int]) -> "ImageSet":
        idx = list(idx)
        return ImageSet([self.refs[i] for i in idx], self.labels[idx], self.array)


def per_class_split(labels: np.ndarray, n_per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Hold out `n_per_class` indices of every class (fixed seed): (held_out, rest), both sorted.

    The seed is the dataset's split seed, not the run's, so every trial of a sweep sees the same split.
    """
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        held.extend(rng.permutation(idx)[:n_per_class].tolist())
    held = np.array(sorted(held), dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(labels)), held)
    return held, rest


def cap_per_class(labels: np.ndarray, cap: int | None, seed: int = 0) -> np.ndarray:
    """Indices keeping at most `cap` images per class (all when cap is None), sorted."""
    if cap is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed + 1)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep.extend(rng.permutation(idx)[:cap].tolist())
    return np.array(sorted(keep), dtype=np.int64)


def list_images(folder: Path) -> list[Path]:
    """Image files under `folder`, sorted (common extensions, case-insensitive)."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def is_image(p: Path) -> bool:
    """A visible file with an image extension (what a dataset's recipe counts as one of its images)."""
    return p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")
