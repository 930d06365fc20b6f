"""The stand-in's two domains of Fashion-MNIST: the source train images it is pretrained on, and the
target shift (blur + fog) applied to every other image (the `fashion_mnist_shifted` dataset).

Data, not the model: the catalog reads the shifted dataset with it, and fair.standin pretrains on the rest.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SOURCE_TRAIN_RANGE = (0, 30000)   # Fashion-MNIST train indices of the source domain


def target_pool_indices(n_train: int = 60000) -> np.ndarray:
    """The train indices outside the source range: the targets' unlabelled pool (hidden labels used only to
    calibrate a target and for diagnostics; validation is held out of it)."""
    lo, hi = SOURCE_TRAIN_RANGE
    return np.setdiff1d(np.arange(n_train), np.arange(lo, hi))


@dataclass(frozen=True)
class ShiftSpec:
    """The target-domain shift: Gaussian blur, then a blend towards a grey fog, then rounding to uint8.

    Both parts are global, smooth changes of the input statistics, the kind that re-normalising the
    image tower (its LayerNorms) and moving the class anchors can partly undo; pretraining sees milder
    versions of both (`fair.standin.PretrainSettings.fog_*`, `blur_*`), so the target is an extrapolation of
    variation the model knows rather than a new world (inverted images collapsed to ~15%, lesson 3).
    """
    blur_sigma: float = 1.0
    fog: float = 0.65         # blend weight of the fog: x' = (1 - fog) * x + fog * fog_level
    fog_level: float = 0.55   # fog grey level in [0, 1]

    @property
    def name(self) -> str:
        return f"fog{self.fog:g}-level{self.fog_level:g}-blur{self.blur_sigma:g}"


SHIFT = ShiftSpec()


def _gaussian_kernel1d(sigma: float) -> np.ndarray:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _blur_np(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of float images [N, H, W] with edge replication (no scipy needed)."""
    if sigma <= 0:
        return x
    k = _gaussian_kernel1d(sigma)
    r = len(k) // 2
    xp = np.pad(x, ((0, 0), (r, r), (0, 0)), mode="edge")
    x = sum(k[i] * xp[:, i:i + x.shape[1], :] for i in range(len(k)))
    xp = np.pad(x, ((0, 0), (0, 0), (r, r)), mode="edge")
    return sum(k[i] * xp[:, :, i:i + x.shape[2]] for i in range(len(k)))


def apply_shift(images: np.ndarray, spec: ShiftSpec = SHIFT) -> np.ndarray:
    """The deterministic target-domain shift: uint8 [N, 28, 28] -> uint8 [N, 28, 28] (also [28, 28]).

    Pure function of the pixels (no randomness), so the target domain is identical everywhere.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"apply_shift expects uint8 images, got {images.dtype}")
    single = images.ndim == 2
    x = images[None] if single else images
    if x.ndim != 3:
        raise ValueError(f"apply_shift expects [N, H, W] or [H, W] images, got shape {images.shape}")
    x = x.astype(np.float64) / 255.0
    x = _blur_np(x, spec.blur_sigma)
    x = (1.0 - spec.fog) * x + spec.fog * spec.fog_level
    out = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    return out[0] if single else out
