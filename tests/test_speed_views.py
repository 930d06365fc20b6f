"""The decoded cache and the batched device views (issue 7): reuse, keys, mapping, shapes, seeding."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from fair.data.cache import cache_key, decoded, default_cache_size
from fair.data.device_views import (BatchRandAugment, CachedBatches, DeviceViews, _autocontrast, _equalize,
                                    _posterize, _solarize, random_resized_boxes)
from fair.data.images import ImageSet, list_images
from fair.data.views import build_views

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
SIZE = 32


@pytest.fixture
def train_set(imagefolder) -> ImageSet:
    files = list_images(imagefolder / "train")
    return ImageSet(files, np.array([i % 4 for i in range(len(files))], dtype=np.int64))


@pytest.fixture
def views() -> DeviceViews:
    return DeviceViews(SIZE, MEAN, STD)


def _pixels(images: ImageSet, tmp_path, n=8, size=37) -> torch.Tensor:
    return torch.from_numpy(np.array(decoded(images, size, tmp_path, progress=False).pixels[:n]))


def test_cache_is_built_once_then_reused_memory_mapped(train_set, tmp_path):
    first = decoded(train_set, 37, tmp_path, progress=False)
    mtime = os.stat(first.path).st_mtime_ns
    second = decoded(train_set, 37, tmp_path, progress=False)
    assert first.built and not second.built
    assert second.path == first.path and os.stat(second.path).st_mtime_ns == mtime
    assert isinstance(second.pixels, np.memmap) and second.pixels.dtype == np.uint8
    assert second.pixels.shape == (len(train_set), 37, 37, 3) and not second.bad.any()
    assert first.path.parent == tmp_path / "decoded"
    assert not list(first.path.parent.glob("*.tmp"))          # written atomically: no leftovers
    np.testing.assert_array_equal(first.pixels, second.pixels)


def test_cache_key_changes_with_the_size_and_the_split(train_set):
    k = cache_key(train_set, 37)
    assert k == cache_key(train_set, 37)
    assert k != cache_key(train_set, 40)
    assert k != cache_key(train_set.subset(range(len(train_set) - 1)), 37)
    relabelled = ImageSet(train_set.refs, (train_set.labels + 1) % 4)
    assert k != cache_key(relabelled, 37)


def test_default_cache_size():
    assert default_cache_size(224) == 256
    mnist_like = ImageSet([0, 1], np.zeros(2, np.int64), np.zeros((2, 28, 28), np.uint8))
    assert default_cache_size(28, mnist_like) == 28        # no upsampling of small in-memory images


def test_unreadable_images_are_marked_and_skipped(train_set, tmp_path):
    bad_file = tmp_path / "broken.png"
    bad_file.write_bytes(b"not a png")
    images = ImageSet([*train_set.refs[:5], bad_file], np.arange(6) % 4)
    cache = decoded(images, 37, tmp_path, progress=False)
    assert cache.bad.tolist() == [False] * 5 + [True]
    (pixels, labels, idx), bad = CachedBatches(images, cache)[[5, 3, 1]]
    assert bad == [5] and idx.tolist() == [3, 1] and labels.tolist() == [3, 1]
    np.testing.assert_array_equal(pixels.numpy(), cache.pixels[[3, 1]])


def test_views_have_the_right_shapes_dtypes_and_normalisation(views):
    g = torch.Generator().manual_seed(0)
    px = torch.full((4, 37, 37, 3), 200, dtype=torch.uint8)
    test, strong = views.test(px), views.strong(px, g)
    crops = views.crops(px, 3, 0.4, 0.8, g)
    assert test.shape == strong.shape == (4, 3, SIZE, SIZE) and crops.shape == (4, 3, 3, SIZE, SIZE)
    assert test.dtype == strong.dtype == crops.dtype == torch.float32
    want = (200 / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(test.mean(dim=(0, 2, 3)), want, atol=1e-4, rtol=0)
    torch.testing.assert_close(crops.mean(dim=(0, 1, 3, 4)), want, atol=1e-4, rtol=0)


def test_views_are_seeded_and_random_per_sample(train_set, tmp_path, views):
    px = _pixels(train_set, tmp_path)[:1].expand(16, -1, -1, -1).contiguous()   # one image, 16 times
    a = views.strong(px, torch.Generator().manual_seed(3))
    b = views.strong(px, torch.Generator().manual_seed(3))
    c = views.strong(px, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    per_sample = (a - a[:1]).abs().flatten(1).amax(1)
    assert (per_sample[1:] > 1e-3).float().mean() > 0.8                 # samples differ from each other
    crops = views.crops(px, 2, 0.4, 0.8, torch.Generator().manual_seed(0))
    assert not torch.allclose(crops[0], crops[1])


def test_cached_test_view_matches_the_pil_test_view(train_set, tmp_path, views):
    px = _pixels(train_set, tmp_path)
    ref = torch.stack([build_views(SIZE, MEAN, STD)["test"](train_set.load(i)) for i in range(len(px))])
    diff = (views.test(px) - ref).abs().mean().item()
    assert diff < 0.05, diff                                            # normalised units (~1/std per 1.0)


def test_random_resized_boxes_follow_scale_and_ratio():
    boxes = random_resized_boxes(2000, 256, 256, (0.3, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
    w, h = boxes[:, 3] - boxes[:, 1], boxes[:, 4] - boxes[:, 2]
    area = w * h / 256 ** 2
    assert area.min() >= 0.3 - 1e-4 and area.max() <= 1 + 1e-4
    assert (w / h).min() >= 3 / 4 - 1e-3 and (w / h).max() <= 4 / 3 + 1e-3
    assert boxes[:, 1].min() >= 0 and boxes[:, 3].max() <= 256 + 1e-3


def test_colour_ops_match_torchvision_on_uint8_images():
    from torchvision.transforms.v2 import functional as TF
    img = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 24, 24), dtype=np.uint8))
    x = img.float() / 255
    for ours, theirs in ((_equalize(x), TF.equalize(img)), (_autocontrast(x), TF.autocontrast(img)),
                         (_posterize(x, 7), TF.posterize(img, 7)), (_solarize(x, 0.7), TF.solarize(img, 178.5))):
        assert ((ours * 255).round() - theirs.float()).abs().max() <= 1


def test_randaugment_magnitude_nine_values():
    ra = BatchRandAugment(2, 9)
    assert ra.bits == 7 and ra.shear == pytest.approx(0.09) and ra.threshold == pytest.approx(0.7)
    assert ra.enhance == pytest.approx(0.27)


def test_cache_build_decodes_each_image_once(train_set, tmp_path, monkeypatch):
    import fair.data.cache as cache_mod
    calls = []
    real = cache_mod.decode_square
    monkeypatch.setattr(cache_mod, "decode_square", lambda *a: calls.append(a[1]) or real(*a))
    decoded(train_set, 36, tmp_path, progress=False)
    decoded(train_set, 36, tmp_path, progress=False)
    assert sorted(calls) == list(range(len(train_set)))
