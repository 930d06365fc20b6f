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


def resize_centre_crop(size: int) -> T.Compose:
    """The test view's geometry, PIL image -> PIL image: short side to `size` (bicubic), centre square.

    The device pipeline's decoded cache (fair.data.cache) applies this very transform, so its test view
    has the same pixels as this pipeline's.
    """
    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size)])


def build_views(size: int, mean, std, strong_scale=(0.3, 1.0), randaug_magnitude: int = 9,
                randaug_ops: int = 2) -> dict:
    """weak / strong / test transforms for PIL images at the model's input size, with its normalisation."""
    bicubic = T.InterpolationMode.BICUBIC
    return {
        "weak": T.Compose([T.Resize(size, interpolation=bicubic), T.RandomCrop(size), *_finish(mean, std)]),
        "strong": T.Compose([T.RandomResizedCrop(size, scale=strong_scale, interpolation=bicubic),
                             *([T.RandAugment(num_ops=randaug_ops, magnitude=randaug_magnitude)] if randaug_ops else []),
                             *_finish(mean, std)]),
        "test": T.Compose([resize_centre_crop(size), *_finish(mean, std)]),
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
