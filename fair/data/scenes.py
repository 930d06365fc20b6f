"""The `fashion_mnist_scenes` target: a small Fashion-MNIST item at a random place on a larger, cluttered canvas.

Where the stand-in of the scenes target was pretrained on whole items filling the frame (`frame_filling`),
the target shows the item at about a third of the canvas side among faint fragments of other items on a
smooth noise texture: the global feature sees mostly clutter, so localized features (crops, tokens) are
where an adaptation method can find the object, as with CLIP on photos whose subject is not framed.

Every scene is a pure function of (spec, stream, image index): `stream` separates the training pool from
the test split, so every split is reproducible image by image, whatever batch it is composed in.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

NATIVE = 28          # Fashion-MNIST's side
POOL_STREAM, TEST_STREAM = 0, 1


@dataclass(frozen=True)
class SceneSpec:
    """How a scene is composed. `clutter` is the one strength knob (calibrated on validation, not test).

    Clutter = `fragments` square pieces (side U(fragment_side)) of random source-range items, each blended
    in at opacity U(clutter / 2, clutter), on a smooth noise texture of amplitude `texture * clutter`.
    """
    canvas: int = 3 * NATIVE
    object_side: tuple = (24, 32)     # the item's side in px: about a third of the canvas
    fragments: int = 6
    fragment_side: tuple = (10, 18)
    clutter: float = 0.5
    texture: float = 0.4
    seed: int = 0

    @property
    def name(self) -> str:
        return (f"scenes{self.canvas}-obj{self.object_side[0]}-{self.object_side[1]}-frag{self.fragments}"
                f"x{self.fragment_side[0]}-{self.fragment_side[1]}-clutter{self.clutter:g}-tex{self.texture:g}"
                f"-seed{self.seed}")


SCENES = SceneSpec()


def _draws(spec: SceneSpec, stream: int, index: int, n_clutter: int) -> dict:
    """Every random choice of one scene, from its own generator (independent of batching)."""
    rng = np.random.default_rng([spec.seed, stream, int(index)])
    side = int(rng.integers(spec.object_side[0], spec.object_side[1] + 1))
    x0, y0 = (int(v) for v in rng.integers(0, spec.canvas - side + 1, size=2))
    frags = []
    for _ in range(spec.fragments):
        f = int(rng.integers(spec.fragment_side[0], spec.fragment_side[1] + 1))
        src = int(rng.integers(0, n_clutter))
        sx, sy = (int(v) for v in rng.integers(0, NATIVE - f + 1, size=2))
        px, py = (int(v) for v in rng.integers(0, spec.canvas - f + 1, size=2))
        frags.append((f, src, sx, sy, px, py, float(rng.uniform(spec.clutter / 2, spec.clutter))))
    noise = rng.random((7, 7), dtype=np.float32)
    return {"side": side, "x0": x0, "y0": y0, "frags": frags, "noise": noise}


def _resize(images: np.ndarray, side: int) -> np.ndarray:
    """uint8 [N, 28, 28] -> float32 [N, side, side] in [0, 255] (bilinear, antialiased when shrinking)."""
    x = torch.from_numpy(np.array(images, dtype=np.float32)).unsqueeze(1)
    if side != x.shape[-1]:
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    return x.squeeze(1).clamp(0, 255).numpy()


def compose_scenes(objects: np.ndarray, indices, clutter_source: np.ndarray, spec: SceneSpec = SCENES,
                   stream: int = POOL_STREAM) -> tuple[np.ndarray, np.ndarray]:
    """uint8 items [N, 28, 28] with their dataset indices -> (uint8 scenes [N, S, S], boxes [N, 3] = x0, y0, side).

    The item is pasted over the clutter (its silhouette occludes it); fragments come from `clutter_source`.
    """
    objects = np.asarray(objects)
    if objects.dtype != np.uint8 or objects.ndim != 3 or objects.shape[1:] != (NATIVE, NATIVE):
        raise ValueError(f"compose_scenes expects uint8 items [N, 28, 28], got {objects.dtype} {objects.shape}")
    S, n = spec.canvas, len(objects)
    draws = [_draws(spec, stream, i, len(clutter_source)) for i in indices]
    noise = torch.from_numpy(np.stack([d["noise"] for d in draws]) if n else np.zeros((0, 7, 7), np.float32))
    canvas = F.interpolate(noise.unsqueeze(1), size=(S, S), mode="bicubic", align_corners=False).squeeze(1)
    canvas = (canvas.clamp(0, 1) * 255 * spec.texture * spec.clutter).numpy()
    for c, d in zip(canvas, draws):
        for f, src, sx, sy, px, py, alpha in d["frags"]:
            piece = alpha * clutter_source[src, sy:sy + f, sx:sx + f].astype(np.float32)
            np.maximum(c[py:py + f, px:px + f], piece, out=c[py:py + f, px:px + f])
    sides = np.array([d["side"] for d in draws], dtype=np.int64)
    for side in np.unique(sides):
        rows = np.flatnonzero(sides == side)
        resized = _resize(objects[rows], int(side))
        for r, obj in zip(rows, resized):
            d = draws[r]
            win = canvas[r, d["y0"]:d["y0"] + side, d["x0"]:d["x0"] + side]
            win[...] = np.where(obj > 10, obj, np.maximum(win, obj))   # the item's silhouette occludes clutter
    boxes = np.array([[d["x0"], d["y0"], d["side"]] for d in draws], dtype=np.int64).reshape(n, 3)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), boxes


def frame_filling(images: torch.Tensor, size: int) -> torch.Tensor:
    """Whole items filling the frame at the canvas size: [B, 1, 28, 28] in [0, 1] -> [B, 1, size, size].

    What the scenes stand-in is pretrained on (and its source accuracy is measured on); bilinear upscaling.
    """
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def frame_filling_uint8(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, 28, 28] -> uint8 [N, size, size] through `frame_filling`, rounded like pretraining's input."""
    x = torch.from_numpy(np.array(images, dtype=np.float32) / 255).unsqueeze(1)
    return (frame_filling(x, size).squeeze(1) * 255).round().to(torch.uint8).numpy()


@lru_cache(maxsize=4)
def scene_splits(spec: SceneSpec = SCENES, root: str | None = None):
    """(pool scenes, pool labels, test scenes, test labels): the pool is the train images outside the stand-in's
    source range; fragments come from the source range. Cached per process (a few seconds to compose)."""
    from fair.data import fashion_mnist
    from fair.data.shift import SOURCE_TRAIN_RANGE, target_pool_indices
    xtr, ytr = fashion_mnist.read_split("train", root)
    xte, yte = fashion_mnist.read_split("test", root)
    clutter = xtr[SOURCE_TRAIN_RANGE[0]:SOURCE_TRAIN_RANGE[1]]
    pool = target_pool_indices(len(ytr))
    pool_x, _ = compose_scenes(xtr[pool], pool, clutter, spec, POOL_STREAM)
    test_x, _ = compose_scenes(xte, np.arange(len(yte)), clutter, spec, TEST_STREAM)
    for a in (pool_x, test_x):
        a.setflags(write=False)   # shared by every caller in the process
    return pool_x, ytr[pool], test_x, yte
