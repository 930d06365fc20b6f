"""Decode once: a per-split cache of decoded images, uint8 [N, S, S, 3], memory-mapped from a .npy file.

Every image goes through the test view's geometry at side S (fair.data.views.resize_centre_crop: the
model's resize_mode and interpolation, by default the short side resized to S, bicubic, then the centre
square), so the whole split is one array that batches can be gathered from with a single fancy index.
The device pipeline (fair.data.device_views) keeps up to two per split:

* at S = the model's input size, decoded exactly as the pil pipeline decodes: this *is* the test view
  (and the weak view), so both pipelines feed the model the same pixels, resampled once;
* for training, the augmentation square at S = input size x 8/7 by default (224 -> 256), through the
  same geometry: the strong view's RandomResizedCrop and the K local crops are cut from more pixels than
  they end up with. JPEGs may decode in draft mode there (`draft`): much faster for large photos,
  slightly different pixels. When S equals the input size the first cache serves here too.

Trade-off for non-square images: the cache keeps the square the test view sees (resize_mode=shortest: the
centre square; longest: the whole image padded with black; squash: the whole image squashed). The
reference weak view (Resize + RandomCrop) jitters along the long side and RandomResizedCrop may reach
into the sides (and sees the original aspect ratio); from the cache both see that square. For square
images nothing is lost.

The file is written to a temporary name and renamed (a reader never sees half a cache), under a file
lock so concurrent trials on one node build it once; it is opened with np.load(mmap_mode='r'), so all
trials on a node share its pages through the OS page cache.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
import torchvision
from PIL import Image
from tqdm.auto import tqdm

from fair.data.images import ImageSet
from fair.data.views import resize_centre_crop
from fair.io import atomic_path, atomic_write_text, sha256_bytes, sha256_json

log = logging.getLogger(__name__)
# Bump whenever a change here changes the cached pixels: it is part of the key.
# 2: torchvision's Resize + CenterCrop geometry (was a PIL resize of the exact centre box), draft optional.
CACHE_VERSION = 2
CACHE_RATIO = 8 / 7   # default augmentation S = round(input size * 8/7): 224 -> 256


@dataclass
class DecodedImages:
    """A split's decoded images: `pixels[i]` is image i (zeros where `bad[i]`), labels as in the ImageSet."""
    pixels: np.ndarray     # uint8 [N, S, S, 3], memory-mapped read-only
    labels: np.ndarray     # int64 [N]
    bad: np.ndarray        # bool [N]: unreadable images, skipped and counted by the readers
    size: int              # S
    path: Path             # the .npy file
    built: bool            # True when this call decoded the images (False: an existing cache was opened)

    def __len__(self) -> int:
        return len(self.labels)


def default_cache_size(input_size: int, images: ImageSet | None = None) -> int:
    """The augmentation square's S for a model input size: round(size * 8/7), but never more than an
    in-memory dataset's native short side (upsampling adds no detail; at S == input size one cache, the
    test view's, serves every view)."""
    s = int(round(input_size * CACHE_RATIO))
    if images is not None and images.array is not None and images.array.ndim >= 3:
        s = min(s, int(min(images.array.shape[1:3])))
    return max(s, int(input_size))


def cache_key(images: ImageSet, size: int, draft: bool = False, interpolation: str = "bicubic",
              resize_mode: str = "shortest") -> str:
    """Everything that changes the cached pixels: version, S, draft decoding, the geometry (interpolation,
    resize_mode), the Pillow and torchvision versions (they resample), the refs (and their file size and
    mtime, or the referenced in-memory pixels) and the labels."""
    h = {"version": CACHE_VERSION, "size": int(size), "draft": bool(draft), "interpolation": interpolation,
         "resize_mode": resize_mode, "pillow": PIL.__version__,
         "torchvision": torchvision.__version__,
         "labels": sha256_bytes(np.ascontiguousarray(images.labels).tobytes())}
    if images.array is not None:
        idx = np.asarray(images.refs, dtype=np.int64)
        h["array"] = sha256_bytes(np.ascontiguousarray(images.array[idx]).tobytes()) if len(idx) else "empty"
    else:
        def stat(r):
            try:
                st = os.stat(r)
                return [str(r), st.st_size, st.st_mtime_ns]
            except OSError:
                return [str(r), None, None]
        h["refs"] = sha256_json([stat(r) for r in images.refs])
    return sha256_json(h)[:24]


def decode_square(images: ImageSet, i: int, size: int, draft: bool = False, interpolation: str = "bicubic",
                  resize_mode: str = "shortest") -> np.ndarray:
    """Image i as uint8 [S, S, 3] through the test view's geometry at S (`interpolation`, `resize_mode`:
    the model's). Raises if unreadable.

    Without `draft` the image is read by ImageSet.load, as the pil pipeline reads it, so at the input size
    this is its test view's pixels. With `draft` a JPEG decodes at a reduced scale still >= S (much faster
    for large photos; the pixels differ slightly from a full decode).
    """
    if draft and images.array is None:
        with Image.open(images.refs[i]) as im:
            im.draft("RGB", (size, size))
            img = im.convert("RGB")
    else:
        img = images.load(i)
    return np.asarray(resize_centre_crop(size, interpolation, resize_mode)(img), dtype=np.uint8)


def _build(images: ImageSet, size: int, draft: bool, geometry: tuple[str, str], npy: Path, meta: Path,
           workers: int, progress: bool, desc: str) -> None:
    n = len(images)
    bad = np.zeros(n, dtype=bool)
    # 0644 whatever the umask: other users' trials on the node read the cache too
    with atomic_path(npy, mode=0o644) as tmp:
        # open_memmap writes straight to disk: a large split never has to fit in memory.
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))

        def one(i, out=out):
            try:
                out[i] = decode_square(images, i, size, draft, *geometry)
            except Exception as e:  # noqa: BLE001 - any decode failure is a bad image, counted by readers
                log.debug("unreadable image %s: %s", images.refs[i], e)
                bad[i] = True
        # Threads: PIL releases the GIL while decoding and resizing.
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in tqdm(pool.map(one, range(n), chunksize=16 if n > 1024 else 1), total=n, desc=desc,
                          disable=None if progress else True, leave=False):
                pass
        out.flush()
        del one, out           # the last references: the memmap is closed before the rename
    # The meta file is written last: its presence marks a complete cache.
    atomic_write_text(meta, json.dumps({"n": n, "size": size, "draft": draft, "interpolation": geometry[0],
                                        "resize_mode": geometry[1], "version": CACHE_VERSION,
                                        "bad": np.flatnonzero(bad).tolist()}), mode=0o644)


def decoded(images: ImageSet, size: int, cache_root: str | Path, progress: bool = True,
            workers: int | None = None, desc: str = "decode", draft: bool = False, interpolation: str = "bicubic",
            resize_mode: str = "shortest") -> DecodedImages:
    """The decoded cache of `images` at S = `size`, built on first use under `cache_root`/decoded.

    `draft`: JPEGs may decode at a reduced scale (see decode_square); off, the cache at the input size is
    the pil pipeline's test view with the same `interpolation` and `resize_mode` (model.interpolation,
    model.resize_mode).
    """
    if len(images) == 0:   # nothing to decode (e.g. no validation split); numpy cannot map an empty array
        return DecodedImages(np.zeros((0, size, size, 3), np.uint8), np.asarray(images.labels),
                             np.zeros(0, bool), size, Path(os.devnull), False)
    root = Path(cache_root).expanduser() / "decoded"
    root.mkdir(parents=True, exist_ok=True)
    key = cache_key(images, size, draft, interpolation, resize_mode)
    npy, meta = root / f"{key}-s{size}.npy", root / f"{key}-s{size}.json"
    built = False
    if not meta.is_file():
        with open(root / f".{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)   # a concurrent trial building the same cache: wait for it
            try:
                if not meta.is_file():
                    workers = workers or min(32, os.cpu_count() or 1)
                    log.info("decoding %d images at %dx%d into %s", len(images), size, size, npy)
                    _build(images, size, draft, (interpolation, resize_mode), npy, meta, workers, progress, desc)
                    built = True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    info = json.loads(meta.read_text())
    bad = np.zeros(info["n"], dtype=bool)
    bad[info["bad"]] = True
    pixels = np.load(npy, mmap_mode="r")
    return DecodedImages(pixels, np.asarray(images.labels), bad, size, npy, built)
