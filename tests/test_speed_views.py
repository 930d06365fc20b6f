"""The decoded cache and the batched device views (issue 7): reuse, keys, mapping, shapes, seeding; the
device pipeline's test and weak views equal the pil pipeline's (issue 16)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from fair.data.cache import cache_key, decoded, default_cache_size
from fair.data.device_views import (BatchRandAugment, CachedBatches, DevicePipeline, DeviceViews, _autocontrast,
                                    _equalize, _posterize, _solarize, random_resized_boxes)
from fair.data.images import ImageSet, list_images
from fair.data.views import PilPipeline, build_views, collate

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
SIZE = 32


@pytest.fixture
def train_set(imagefolder) -> ImageSet:
    files = list_images(imagefolder / "train")
    return ImageSet(files, np.array([i % 4 for i in range(len(files))], dtype=np.int64))


@pytest.fixture(scope="module")
def varied_set(tmp_path_factory) -> ImageSet:
    """Real image files of varied sizes, aspect ratios, modes and formats: square, landscape, portrait, odd
    sides, smaller than the input (upsampled), grey, RGBA, and JPEGs large enough for draft decoding."""
    from PIL import Image
    root = tmp_path_factory.mktemp("varied")
    rng = np.random.default_rng(1)
    shapes = [(40, 40, "RGB", "png"), (64, 48, "RGB", "png"), (33, 71, "RGB", "png"), (100, 21, "RGB", "png"),
              (21, 17, "RGB", "png"), (32, 32, "RGB", "png"), (45, 45, "L", "png"), (57, 39, "RGBA", "png"),
              (200, 150, "RGB", "jpg"), (150, 301, "RGB", "jpg")]
    refs = []
    for i, (w, h, mode, ext) in enumerate(shapes):
        low = Image.fromarray(rng.integers(0, 256, (5, 7, 4), dtype=np.uint8), "RGBA").resize((w, h), Image.BILINEAR)
        noisy = np.clip(np.asarray(low, np.int16) + rng.integers(-25, 25, (h, w, 4)), 0, 255).astype(np.uint8)
        p = root / f"{i:02d}.{ext}"
        Image.fromarray(noisy, "RGBA").convert(mode).save(p)
        refs.append(p)
    return ImageSet(refs, np.arange(len(refs), dtype=np.int64) % 3)


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


def test_cache_key_changes_with_the_size_the_decoding_the_geometry_and_the_split(train_set):
    k = cache_key(train_set, 37)
    assert k == cache_key(train_set, 37) == cache_key(train_set, 37, False, "bicubic", "shortest")
    assert k != cache_key(train_set, 40)
    assert k != cache_key(train_set, 37, draft=True)
    assert k != cache_key(train_set, 37, interpolation="bilinear")          # model.interpolation
    assert k != cache_key(train_set, 37, resize_mode="squash") != cache_key(train_set, 37, resize_mode="longest")
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
    test, strong = views.test(px[:, :SIZE, :SIZE]), views.strong(px, g)
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


def _fashion_mnist(n: int = 64) -> ImageSet:
    from fair.data import fashion_mnist
    if fashion_mnist.missing_files():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    x, y = fashion_mnist.read_split("test")
    return ImageSet(list(range(n)), y[:n], x[:n])


def _pil_batch(images: ImageSet, train: bool, **geometry):
    pil = PilPipeline(build_views(SIZE, MEAN, STD, **geometry))
    batch, bad = collate([pil.dataset(images, train)[i] for i in range(len(images))])
    assert not bad
    return batch


@pytest.mark.parametrize("source, geometry", [
    ("files", {}), ("fashion-mnist", {}),
    ("files", {"interpolation": "bilinear", "resize_mode": "longest"}), ("files", {"resize_mode": "squash"})])
def test_device_test_view_equals_the_pil_test_view_on_real_images(source, geometry, varied_set, tmp_path):
    """One resampling in both pipelines: the same pixels, so equal to within float rounding; with any
    model.interpolation and model.resize_mode."""
    images = varied_set if source == "files" else _fashion_mnist()
    device = DevicePipeline(SIZE, MEAN, STD, tmp_path, progress=False, **geometry)
    batch, bad = device.dataset(images, train=False)[np.arange(len(images))]
    assert not bad
    x, labels, _ = device.test_batch(batch, torch.device("cpu"), None, 0, 0.4, 0.8)
    ref, ref_labels, _ = _pil_batch(images, train=False, **geometry)
    assert x.shape == ref.shape == (len(images), 3, SIZE, SIZE)
    torch.testing.assert_close(x, ref, atol=1e-5, rtol=0)
    assert labels.tolist() == ref_labels.tolist()


def test_device_weak_view_is_the_pil_test_view_and_the_strong_view_has_its_square(varied_set, tmp_path):
    """Training reads two caches: the test view's pixels (weak) and the 8/7 square (strong, crops). The weak
    view equals the pil test view everywhere and the pil weak view on square images (no crop jitter there)."""
    device = DevicePipeline(SIZE, MEAN, STD, tmp_path, progress=False)
    train = device.dataset(varied_set, train=True)
    assert [c.size for c in train.caches] == [SIZE, 37]
    assert not train.caches[0].path.samefile(train.caches[1].path)
    batch, _ = train[np.arange(len(varied_set))]
    g = torch.Generator().manual_seed(0)
    weak, strong, _, crops = device.train_batch(batch, torch.device("cpu"), g, 3, 0.4, 0.8)
    assert strong.shape == weak.shape and crops.shape == (len(varied_set), 3, 3, SIZE, SIZE)
    test_ref, _, _ = _pil_batch(varied_set, train=False)
    torch.testing.assert_close(weak, test_ref, atol=1e-5, rtol=0)
    pil_weak = _pil_batch(varied_set, train=True)[0]
    square = [i for i in range(len(varied_set)) if varied_set.load(i).size[0] == varied_set.load(i).size[1]]
    torch.testing.assert_close(weak[square], pil_weak[square], atol=1e-5, rtol=0)


def test_one_cache_serves_every_view_when_the_square_is_the_input_size(tmp_path):
    """28 px in-memory images at input size 28: S = 28, so training reads the test view's cache only."""
    rng = np.random.default_rng(0)
    images = ImageSet(list(range(6)), np.arange(6) % 2, rng.integers(0, 256, (6, 28, 28), dtype=np.uint8))
    device = DevicePipeline(28, MEAN, STD, tmp_path, progress=False)
    train, test = device.dataset(images, train=True), device.dataset(images, train=False)
    assert len(train.caches) == 1 and train.caches[0].path == test.caches[0].path
    batch, _ = train[np.arange(6)]
    weak, strong, _, crops = device.train_batch(batch, torch.device("cpu"), torch.Generator().manual_seed(0),
                                                2, 0.4, 0.8)
    assert weak.shape == strong.shape == (6, 3, 28, 28) and crops.shape == (6, 2, 3, 28, 28)


def test_the_test_view_refuses_pixels_not_at_the_input_size(views):
    with pytest.raises(ValueError, match="input size 32"):
        views.test(torch.zeros(2, 37, 37, 3, dtype=torch.uint8))


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
