"""Views (spec §7) and the torch datasets that serve them; unreadable images are skipped and counted."""
from __future__ import annotations

import logging

import torch
from torch.utils.data import Dataset, default_collate
from torchvision.transforms import v2 as T

from fair.data.images import ImageSet

log = logging.getLogger(__name__)


def _finish(mean, std):
    return [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)]


def _fit(size: int, mode: T.InterpolationMode, resize_mode: str):
    """The resize before the weak view's random crop and the test view's centre crop (open_clip's
    resize_mode): shortest side to `size` (crop the rest), longest side (pad the rest) or squash."""
    if resize_mode == "squash":
        return T.Resize((size, size), interpolation=mode)
    if resize_mode == "longest":
        return T.Resize(None, max_size=size, interpolation=mode)
    return T.Resize(size, interpolation=mode)


def resize_centre_crop(size: int, interpolation: str = "bicubic", resize_mode: str = "shortest") -> T.Compose:
    """The test view's geometry, PIL image -> PIL image: `resize_mode` (model.resize_mode) with
    `interpolation`, then the centre square (padded with black where resize_mode=longest left it smaller).

    The device pipeline's decoded cache (fair.data.cache) applies this very transform, so its test view
    has the same pixels as this pipeline's.
    """
    return T.Compose([_fit(size, T.InterpolationMode(interpolation), resize_mode), T.CenterCrop(size)])


def build_views(size: int, mean, std, strong_scale=(0.3, 1.0), randaug_magnitude: int = 9,
                randaug_ops: int = 2, interpolation: str = "bicubic", resize_mode: str = "shortest") -> dict:
    """weak / strong / test transforms for PIL images at the model's input size, with its preprocessing."""
    mode = T.InterpolationMode(interpolation)
    fit = _fit(size, mode, resize_mode)
    return {   # the crops pad (with 0, as open_clip does) only an image that resize_mode=longest left smaller
        "weak": T.Compose([fit, T.RandomCrop(size, pad_if_needed=True), *_finish(mean, std)]),
        "strong": T.Compose([T.RandomResizedCrop(size, scale=strong_scale, interpolation=mode),
                             *([T.RandAugment(num_ops=randaug_ops, magnitude=randaug_magnitude)] if randaug_ops else []),
                             *_finish(mean, std)]),
        "test": T.Compose([resize_centre_crop(size, interpolation, resize_mode), *_finish(mean, std)]),
    }


class ViewDataset(Dataset):
    """Items (views..., label, index) of an ImageSet; None for an unreadable image (dropped by `collate`)."""

    def __init__(self, images: ImageSet, transforms: list):
        self.images = images
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        try:
            img = self.images.load(i)
        except Exception as e:  # noqa: BLE001 - any decode failure is a bad image, counted by the caller
            log.debug("unreadable image %s: %s", self.images.refs[i], e)
            return ("bad", i)
        return (*[t(img) for t in self.transforms], int(self.images.labels[i]), i)


def collate(items):
    """Batch the readable items; the indices of unreadable ones travel in the last element."""
    good = [it for it in items if not (len(it) == 2 and it[0] == "bad")]
    bad = [it[1] for it in items if len(it) == 2 and it[0] == "bad"]
    if not good:
        return None, bad
    return default_collate(good), bad


def batch_indices(batch) -> torch.Tensor:
    """The ImageSet indices [B] of a loader batch's images: the last element in both pipelines' batches
    (fair.data.device_views.CachedBatches keeps this shape)."""
    return batch[-1]


class PilPipeline:
    """The reference data path: PIL decode and torchvision transforms per image, in DataLoader workers.

    The same interface as fair.data.device_views.DevicePipeline, so the training and evaluation loops
    do not care which one feeds them. Local crops are cut later on the device by fair.local.
    """
    name = "pil"

    def __init__(self, views: dict):
        self.views = views

    def loader_workers(self, num_workers: int) -> int:
        return num_workers

    def dataset(self, images: ImageSet, train: bool) -> ViewDataset:
        return ViewDataset(images, [self.views["weak"], self.views["strong"]] if train else [self.views["test"]])

    @staticmethod
    def generator(seed: int, device) -> torch.Generator:
        """The crops' generator (fair.local draws on the host)."""
        return torch.Generator().manual_seed(seed)

    def train_batch(self, batch, device, generator, num_crops: int, crop_min: float, crop_max: float):
        """(weak, strong, labels, None) on `device`: fair.local cuts the crops from the weak view."""
        weak, strong, labels, _ = batch
        return (weak.to(device, non_blocking=True), strong.to(device, non_blocking=True),
                labels.to(device, non_blocking=True),
                None)

    def test_batch(self, batch, device, generator, num_crops: int, crop_min: float, crop_max: float):
        x, labels, _ = batch
        return x.to(device, non_blocking=True), labels, None


def as_pipeline(views) -> "PilPipeline":
    """A pipeline object from either a pipeline or a build_views() dict (the older call style)."""
    return PilPipeline(views) if isinstance(views, dict) else views
