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


def build_views(size: int, mean, std, strong_scale=(0.3, 1.0), randaug_magnitude: int = 9) -> dict:
    """weak / strong / test transforms for PIL images at the model's input size, with its normalisation."""
    bicubic = T.InterpolationMode.BICUBIC
    return {
        "weak": T.Compose([T.Resize(size, interpolation=bicubic), T.RandomCrop(size), *_finish(mean, std)]),
        "strong": T.Compose([T.RandomResizedCrop(size, scale=strong_scale, interpolation=bicubic),
                             T.RandAugment(magnitude=randaug_magnitude), *_finish(mean, std)]),
        "test": T.Compose([T.Resize(size, interpolation=bicubic), T.CenterCrop(size), *_finish(mean, std)]),
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
