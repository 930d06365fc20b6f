"""Decode once: a per-split cache of decoded images, uint8 [N, S, S, 3], memory-mapped from a .npy file.

Every image is resized so that its short side is S (bicubic) and centre-cropped to S x S, so the whole
split is one array that batches can be gathered from with a single fancy index. S defaults to the model
input size x 8/7 (224 -> 256): large enough that the strong view's RandomResizedCrop and the K local
crops are cut from more pixels than they end up with, small enough to stay a few GB per 50k images.

Trade-off for non-square images: the cache keeps the centre square only. The reference weak view
(Resize + RandomCrop) jitters along the long side and RandomResizedCrop may reach into the sides; from
the cache both see the centre square (what the test view sees). For square images nothing is lost.

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
from PIL import Image
from tqdm.auto import tqdm

from fair.data.images import ImageSet
from fair.io import atomic_path, atomic_write_text, sha256_bytes, sha256_json

log = logging.getLogger(__name__)
# Bump whenever a change here changes the cached pixels: it is part of the key.
CACHE_VERSION = 1
CACHE_RATIO = 8 / 7   # default S = round(input size * 8/7): 224 -> 256


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
    """S for a model input size: round(size * 8/7), but never more than an in-memory dataset's native
    short side (upsampling adds no detail, and at S == input size the views need no resampling at all)."""
    s = int(round(input_size * CACHE_RATIO))
    if images is not None and images.array is not None and images.array.ndim >= 3:
        s = min(s, int(min(images.array.shape[1:3])))
    return max(s, int(input_size))


def cache_key(images: ImageSet, size: int) -> str:
    """Everything that changes the cached pixels: version, S, the refs (and their file size and mtime, or
    the referenced in-memory pixels) and the labels."""
    h = {"version": CACHE_VERSION, "size": int(size), "labels": sha256_bytes(np.ascontiguousarray(images.labels).tobytes())}
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


def decode_square(images: ImageSet, i: int, size: int) -> np.ndarray:
    """Image i as uint8 [S, S, 3]: short side resized to S (bicubic), centre square. Raises if unreadable."""
    ref = images.refs[i]
    if images.array is not None:
        img = Image.fromarray(images.array[ref]).convert("RGB")
    else:
        with Image.open(ref) as im:
            # JPEG draft mode decodes at a reduced scale that is still >= the target: much faster for
            # large photos, and the bicubic resize below does the rest.
            im.draft("RGB", (size, size))
            img = im.convert("RGB")
    w, h = img.size
    s = min(w, h)
    box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
    if s == size and w == h:
        out = img
    else:
        out = img.resize((size, size), Image.BICUBIC, box=box)
    return np.asarray(out, dtype=np.uint8)


def _build(images: ImageSet, size: int, npy: Path, meta: Path, workers: int, progress: bool, desc: str) -> None:
    n = len(images)
    bad = np.zeros(n, dtype=bool)
    # 0644 whatever the umask: other users' trials on the node read the cache too
    with atomic_path(npy, mode=0o644) as tmp:
        # open_memmap writes straight to disk: a large split never has to fit in memory.
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))

        def one(i, out=out):
            try:
                out[i] = decode_square(images, i, size)
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
    atomic_write_text(meta, json.dumps({"n": n, "size": size, "version": CACHE_VERSION,
                                        "bad": np.flatnonzero(bad).tolist()}), mode=0o644)


def decoded(images: ImageSet, size: int, cache_root: str | Path, progress: bool = True,
            workers: int | None = None, desc: str = "decode") -> DecodedImages:
    """The decoded cache of `images` at S = `size`, built on first use under `cache_root`/decoded."""
    if len(images) == 0:   # nothing to decode (e.g. no validation split); numpy cannot map an empty array
        return DecodedImages(np.zeros((0, size, size, 3), np.uint8), np.asarray(images.labels),
                             np.zeros(0, bool), size, Path(os.devnull), False)
    root = Path(cache_root).expanduser() / "decoded"
    root.mkdir(parents=True, exist_ok=True)
    key = cache_key(images, size)
    npy, meta = root / f"{key}-s{size}.npy", root / f"{key}-s{size}.json"
    built = False
    if not meta.is_file():
        with open(root / f".{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)   # a concurrent trial building the same cache: wait for it
            try:
                if not meta.is_file():
                    workers = workers or min(32, os.cpu_count() or 1)
                    log.info("decoding %d images at %dx%d into %s", len(images), size, size, npy)
                    _build(images, size, npy, meta, workers, progress, desc)
                    built = True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    info = json.loads(meta.read_text())
    bad = np.zeros(info["n"], dtype=bool)
    bad[info["bad"]] = True
    pixels = np.load(npy, mmap_mode="r")
    return DecodedImages(pixels, np.asarray(images.labels), bad, size, npy, built)
