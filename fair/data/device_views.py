"""Views on the device (spec §7), in batches, from the decoded cache's uint8 images.

The `pil` pipeline (fair.data.views) decodes and augments one image at a time in DataLoader workers;
this one gathers a batch of cached uint8 images, moves it to the device once and makes every view there
with per-sample randomness drawn from one seeded torch.Generator. Each split has a cache at the input
size holding the test view's pixels (decoded and resampled once, exactly as the pil pipeline does, with
the model's interpolation and resize_mode); a training split also has the augmentation square
[B, S, S, 3], S = input size x 8/7 by default, unless S is the input size (see fair.data.cache):

* test / weak: the cached test-view pixels, converted to float and normalised: no resampling on the
  device, so equal to the pil pipeline's test view to within float rounding. On a square image the
  reference weak view (Resize + RandomCrop) *is* the test view; the cache keeps the test view's square of a
  non-square image, so the weak view's jitter along the long side is not replayed.
* strong (from the augmentation square): RandomResizedCrop as per-sample roi_align boxes (scale (0.3, 1),
  ratio (3/4, 4/3), the same 10-tries-then-whole-image rule as torchvision), then a batched RandAugment: 2
  ops per sample, magnitude 9 of 31, op and sign chosen per sample. The geometric ops of both slots are
  combined into one affine per sample and applied with a single grid_sample (bilinear, black fill) before
  the colour ops, which run vectorised in slot order (a deviation from torchvision's strict op order that
  only matters where a colour op would touch the black fill). Equalize is implemented (per-sample
  histograms).
* crops: the K local crops of the weak view (spec §3), cut by roi_align from the augmentation square
  (more pixels than the weak view has) and resized to the input size; at evaluation from the test view,
  as the pil pipeline's fair.local cuts them.

On a GPU nothing here synchronises with the host; on the CPU ops are computed only for the samples
that use them (there is no synchronisation to avoid there).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.ops import roi_align

from fair.data.cache import DecodedImages, decoded, default_cache_size
from fair.data.images import ImageSet

OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
       "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
_OP = {name: i for i, name in enumerate(OPS)}
NUM_MAGNITUDE_BINS = 31


def _rand(n, generator, *shape_tail) -> torch.Tensor:
    return torch.rand(n, *shape_tail, generator=generator, device=generator.device)


def to_float(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] (channels last, as cached) -> float [B, 3, H, W] in [0, 1]."""
    return pixels.permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def random_resized_boxes(n: int, height: int, width: int, scale, ratio, generator, tries: int = 10) -> torch.Tensor:
    """torchvision's RandomResizedCrop parameters for n samples at once, as roi_align boxes [n, 5].

    `tries` candidates per sample; the first that fits is taken, else the whole image (the fallback for a
    square image under the default ratio range).
    """
    area = height * width
    target = area * (scale[0] + (scale[1] - scale[0]) * _rand(n, generator, tries))
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * _rand(n, generator, tries)
    aspect = torch.exp(log_r)
    w = torch.sqrt(target * aspect)
    h = torch.sqrt(target / aspect)
    ok = (w <= width) & (h <= height)
    first = ok.int().argmax(dim=1, keepdim=True)        # index of the first candidate that fits
    any_ok = ok.any(dim=1)
    w = torch.where(any_ok, w.gather(1, first).squeeze(1), torch.full_like(any_ok, width, dtype=w.dtype))
    h = torch.where(any_ok, h.gather(1, first).squeeze(1), torch.full_like(any_ok, height, dtype=h.dtype))
    x0 = _rand(n, generator) * (width - w)
    y0 = _rand(n, generator) * (height - h)
    idx = torch.arange(n, device=w.device, dtype=w.dtype)
    return torch.stack([idx, x0, y0, x0 + w, y0 + h], dim=1)


def square_crop_boxes(n: int, k: int, height: int, width: int, crop_min: float, crop_max: float,
                      generator) -> torch.Tensor:
    """K random square boxes per image, side ~ U(crop_min, crop_max) * min(H, W) (spec §3): [n*K, 5]."""
    side = (crop_min + (crop_max - crop_min) * _rand(n, generator, k)) * min(height, width)
    x0 = _rand(n, generator, k) * (width - side)
    y0 = _rand(n, generator, k) * (height - side)
    idx = torch.arange(n, device=side.device, dtype=side.dtype).unsqueeze(1).expand(n, k)
    return torch.stack([idx, x0, y0, x0 + side, y0 + side], dim=-1).reshape(-1, 5)


def crop_resize(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """roi_align crops resized to size x size; adaptive sampling (ceil(box/size) samples a bin) antialiases
    downscaled crops."""
    return roi_align(x, boxes.to(x.dtype), output_size=(size, size), spatial_scale=1.0, sampling_ratio=0,
                     aligned=True)


# ----------------------------------------------------------------------------------------- RandAugment


def _apply_where(x: torch.Tensor, mask: torch.Tensor, fn, *per_sample: torch.Tensor) -> torch.Tensor:
    """x with fn(x, *per_sample) where mask (per sample) is set: masks on a GPU, a gather on the CPU."""
    if x.device.type == "cpu":   # no sync to avoid: compute only the chosen samples
        idx = mask.nonzero().squeeze(1)
        if idx.numel() == 0:
            return x
        return x.index_copy(0, idx, fn(x[idx], *[p[idx] for p in per_sample]))
    return torch.where(mask.view(-1, 1, 1, 1), fn(x, *per_sample), x)


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * a + (1 - f) * b).clamp_(0, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _brightness(x, f):
    return _blend(x, torch.zeros_like(x), f)


def _color(x, f):
    return _blend(x, _gray(x), f)


def _contrast(x, f):
    return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), f)


def _sharpness(x, f):
    k = torch.ones(3, 1, 3, 3, dtype=x.dtype, device=x.device)   # built on the device: no host copy
    k[:, :, 1, 1] = 5
    blurred = F.conv2d(x, k / 13, groups=3)
    degenerate = x.clone()
    degenerate[..., 1:-1, 1:-1] = blurred     # borders stay as they are (PIL, torchvision)
    return _blend(x, degenerate, f)


def _posterize(x, bits: int):
    q = float(2 ** (8 - bits))
    return torch.floor(x * 255 / q) * q / 255


def _solarize(x, threshold: float):
    return torch.where(x >= threshold, 1 - x, x)


def _autocontrast(x):
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    ok = hi > lo
    return torch.where(ok, (x - lo) / torch.where(ok, hi - lo, torch.ones_like(hi)), x)


def _equalize(x):
    """PIL's equalize on the uint8-quantised image, per sample and channel, via batched histograms."""
    n, c, h, w = x.shape
    q = (x * 255).round_().clamp_(0, 255).long().view(n * c, h * w)
    hist = torch.zeros(n * c, 256, device=x.device, dtype=x.dtype).scatter_add_(1, q, torch.ones_like(q, dtype=x.dtype))
    last = hist.gather(1, q.amax(dim=1, keepdim=True))            # count of the last non-empty bin
    step = torch.div(h * w - last, 255, rounding_mode="floor")
    before = hist.cumsum(1) - hist                                  # pixels below each value
    lut = torch.div(before + torch.div(step, 2, rounding_mode="floor"), step.clamp(min=1), rounding_mode="floor")
    lut = torch.where(step > 0, lut.clamp_(0, 255), torch.arange(256, device=x.device, dtype=x.dtype))
    return (lut.gather(1, q) / 255).view(n, c, h, w)


class BatchRandAugment:
    """RandAugment (num_ops ops per sample, `magnitude` of 31 bins) for a float batch in [0, 1] on any device."""

    def __init__(self, num_ops: int = 2, magnitude: int = 9):
        self.num_ops = num_ops
        m = magnitude / (NUM_MAGNITUDE_BINS - 1)
        self.shear = 0.3 * m
        self.translate = 150.0 / 331.0 * m          # fraction of the side
        self.rotate = math.radians(30.0 * m)
        self.enhance = 0.9 * m
        self.bits = int(round(8 - magnitude / ((NUM_MAGNITUDE_BINS - 1) / 4)))
        self.threshold = 1.0 - m

    def _inverse_affine(self, op: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        """Per-sample inverse of one slot's geometric op in normalised coordinates: [n, 3, 3]."""
        n = op.shape[0]
        z = torch.zeros(n, device=op.device)
        a = torch.eye(3, device=op.device).repeat(n, 1, 1)
        a[:, 0, 1] = torch.where(op == _OP["shear_x"], -sign * self.shear, z)
        a[:, 1, 0] = torch.where(op == _OP["shear_y"], -sign * self.shear, z)
        a[:, 0, 2] = torch.where(op == _OP["translate_x"], -sign * 2 * self.translate, z)
        a[:, 1, 2] = torch.where(op == _OP["translate_y"], -sign * 2 * self.translate, z)
        theta = torch.where(op == _OP["rotate"], sign * self.rotate, z)
        cos, sin = torch.cos(theta), torch.sin(theta)
        rot = torch.eye(3, device=op.device).repeat(n, 1, 1)
        rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1] = cos, -sin, sin, cos
        return rot @ a     # only one of the two is not the identity

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        if self.num_ops == 0:
            return x
        ops = [torch.randint(len(OPS), (n,), generator=generator, device=generator.device) for _ in range(self.num_ops)]
        signs = [torch.where(_rand(n, generator) < 0.5, -1.0, 1.0) for _ in range(self.num_ops)]
        # Geometry: output -> input coordinates = inverse(slot 1) @ inverse(slot 2) @ ...; one resampling.
        inv = torch.eye(3, device=x.device).expand(n, 3, 3)
        for op, sign in zip(ops, signs):
            inv = inv @ self._inverse_affine(op, sign)
        geometric = torch.stack([(op >= _OP["shear_x"]) & (op <= _OP["rotate"]) for op in ops]).any(0)
        if x.device.type != "cpu" or bool(geometric.any()):
            grid = F.affine_grid(inv[:, :2, :], list(x.shape), align_corners=False)
            warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            x = torch.where(geometric.view(-1, 1, 1, 1), warped, x)   # untouched samples stay exact
        for op, sign in zip(ops, signs):
            factor = 1.0 + sign * self.enhance
            x = _apply_where(x, op == _OP["brightness"], _brightness, factor)
            x = _apply_where(x, op == _OP["color"], _color, factor)
            x = _apply_where(x, op == _OP["contrast"], _contrast, factor)
            x = _apply_where(x, op == _OP["sharpness"], _sharpness, factor)
            x = _apply_where(x, op == _OP["posterize"], lambda a: _posterize(a, self.bits))
            x = _apply_where(x, op == _OP["solarize"], lambda a: _solarize(a, self.threshold))
            x = _apply_where(x, op == _OP["autocontrast"], _autocontrast)
            x = _apply_where(x, op == _OP["equalize"], _equalize)
        return x


# ------------------------------------------------------------------------------------------- views


class DeviceViews:
    """weak / strong / test views and K local crops for a batch of cached uint8 images, on their device."""

    def __init__(self, size: int, mean, std, strong_scale=(0.3, 1.0), strong_ratio=(3 / 4, 4 / 3),
                 randaug_magnitude: int = 9, randaug_ops: int = 2):
        self.size = int(size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.strong_scale, self.strong_ratio = tuple(strong_scale), tuple(strong_ratio)
        self.randaug = BatchRandAugment(randaug_ops, randaug_magnitude)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """The model's normalisation (model.mean / model.std, or its weights') of a float batch in [0, 1]."""
        if self.mean.device != x.device:   # moved once: a host copy per batch would synchronise
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        return (x - self.mean) / self.std

    def test(self, pixels: torch.Tensor) -> torch.Tensor:
        """Resize + centre crop: the cache at the input size already holds its pixels."""
        if tuple(pixels.shape[1:3]) != (self.size, self.size):
            raise ValueError(f"the test view takes the cache at the input size {self.size}, got images of "
                             f"{tuple(pixels.shape[1:3])}; decode the split at the input size (fair.data.cache)")
        return self.normalize(to_float(pixels))

    weak = test   # Resize + RandomCrop of a square is Resize + CenterCrop (see the module docstring)

    def strong(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """RandomResizedCrop (per-sample boxes) + batched RandAugment."""
        x = to_float(pixels)
        n, _, h, w = x.shape
        boxes = random_resized_boxes(n, h, w, self.strong_scale, self.strong_ratio, generator)
        x = crop_resize(x, boxes, self.size).clamp_(0, 1)
        return self.normalize(self.randaug(x, generator))

    def crops(self, pixels: torch.Tensor, k: int, crop_min: float, crop_max: float,
              generator: torch.Generator) -> torch.Tensor:
        """K square crops per image of the weak view's region: [B, K, 3, size, size], normalised."""
        x = to_float(pixels)
        n, _, h, w = x.shape
        boxes = square_crop_boxes(n, k, h, w, crop_min, crop_max, generator)
        return self.normalize(crop_resize(x, boxes, self.size).clamp_(0, 1)).view(n, k, 3, self.size, self.size)


# ---------------------------------------------------------------------------------------- pipeline


def _as_is(batch):
    return batch


class CachedBatches(Dataset):
    """A split's decoded caches indexed by a whole batch of indices at once (one gather from each memmap).

    Items: ((uint8 pixels [B, S, S, 3] of each cache..., labels [B], indices [B]) or None, [unreadable
    indices]) - the shape fair.data.views.collate gives the pil pipeline, so the loops and the bad-image
    counts are shared. An image unreadable in any cache is unreadable.
    """
    batched = True
    collate = staticmethod(_as_is)   # the item already is the batch

    def __init__(self, images: ImageSet, *caches: DecodedImages):
        self.images = images
        self.caches = caches
        self.bad = np.logical_or.reduce([c.bad for c in caches])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx):
        idx = np.asarray(idx, dtype=np.int64)
        bad = self.bad[idx]
        good = idx[~bad]
        if len(good) == 0:
            return None, idx[bad].tolist()
        order = np.argsort(good, kind="stable")       # sorted reads from the memmap, original order back
        pixels = []
        for cache in self.caches:
            px = np.empty((len(good),) + cache.pixels.shape[1:], np.uint8)
            px[order] = cache.pixels[good[order]]
            pixels.append(torch.from_numpy(px))
        labels = torch.from_numpy(np.asarray(self.images.labels[good], dtype=np.int64))
        return (*pixels, labels, torch.from_numpy(good)), idx[bad].tolist()


class DevicePipeline:
    """The `device` data path: decoded caches + batched views and crops on the training device."""
    name = "device"

    def __init__(self, size: int, mean, std, cache_root: str | Path, cache_size: int | None = None,
                 progress: bool = True, strong_scale=(0.3, 1.0), randaug_magnitude: int = 9, randaug_ops: int = 2,
                 interpolation: str = "bicubic", resize_mode: str = "shortest"):
        self.views = DeviceViews(size, mean, std, strong_scale, randaug_magnitude=randaug_magnitude,
                                 randaug_ops=randaug_ops)
        self.cache_root, self.cache_size, self.progress = cache_root, cache_size, progress
        # the caches' geometry (model.interpolation, model.resize_mode): the pil pipeline's test view
        self.geometry = {"interpolation": interpolation, "resize_mode": resize_mode}
        self._sets: dict[tuple, CachedBatches] = {}

    def loader_workers(self, num_workers: int) -> int:
        """Batches are one memcpy from the page cache: worker processes would cost more than they save."""
        return 0

    def square_size(self, images: ImageSet) -> int:
        """S of the augmentation square the strong view and the training crops are cut from."""
        return self.cache_size or default_cache_size(self.views.size, images)

    def dataset(self, images: ImageSet, train: bool) -> CachedBatches:
        """The cached split (built on first use, then reused for every epoch and evaluation): the test view's
        pixels, and for training the augmentation square after them unless it is the same cache."""
        key = (id(images), train)
        if key not in self._sets:
            test = decoded(images, self.views.size, self.cache_root, progress=self.progress, **self.geometry)
            caches = [test]
            s = self.square_size(images) if train else self.views.size
            if s != self.views.size:
                caches.append(decoded(images, s, self.cache_root, progress=self.progress, draft=True,
                                      **self.geometry))
            self._sets[key] = CachedBatches(images, *caches)
        return self._sets[key]

    @staticmethod
    def generator(seed: int, device: torch.device) -> torch.Generator:
        """Randomness on the device, so views need no host round trip; seeded per epoch (exact resume)."""
        return torch.Generator(device=device).manual_seed(seed)

    def train_batch(self, batch, device, generator, num_crops: int, crop_min: float, crop_max: float):
        """(weak, strong, labels, crops [B, K, 3, H, W] or None) on `device`."""
        *pixels, labels, _ = batch
        pixels = [p.to(device, non_blocking=True) for p in pixels]
        test, square = pixels[0], pixels[-1]     # one tensor when S is the input size
        crops = self.views.crops(square, num_crops, crop_min, crop_max, generator) if num_crops else None
        return (self.views.weak(test), self.views.strong(square, generator), labels.to(device, non_blocking=True),
                crops)

    def test_batch(self, batch, device, generator, num_crops: int, crop_min: float, crop_max: float):
        """(test view, labels on the host, crops of the test view or None)."""
        pixels, labels, _ = batch
        pixels = pixels.to(device, non_blocking=True)
        crops = self.views.crops(pixels, num_crops, crop_min, crop_max, generator) if num_crops else None
        return self.views.test(pixels), labels, crops
