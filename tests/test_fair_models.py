"""Users' own models: an architecture JSON of their own, preprocessing overrides and the defaults a checkpoint
implies (with a warning where they are ambiguous), hf-hub repositories from the local cache, bad input."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from fair.adapt import adapt, build_pipeline
from fair.config import ModelConfig, from_dict
from fair.data.images import ImageSet
from fair.errors import FairError
from fair.models import load_clip, register_builtin_configs, resolve_preprocess, weights_id
from tests.test_fair_adapt import _run_cli

TINY = json.loads((Path(__file__).parents[1] / "fair/model_configs/fair-tiny-vit.json").read_text())
CLIP_MEAN, CLIP_STD = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
HALF = [0.5, 0.5, 0.5]


def _arch(**vision) -> dict:
    """The tiny test architecture with a different image tower: a new architecture, not fair-tiny-vit."""
    return {**TINY, "embed_dim": 48, "vision_cfg": {**TINY["vision_cfg"], **vision}}


def _save(model_cfg: dict, path: Path, seed: int = 3) -> dict:
    """Random weights of `model_cfg` saved as a checkpoint (what a local fine-tune leaves); its state dict."""
    torch.manual_seed(seed)
    sd = open_clip.CLIP(**model_cfg).state_dict()
    torch.save(sd, path)
    return sd


def _assumed(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "assuming open_clip's default" in r.getMessage()]


def test_own_architecture_json_with_a_local_checkpoint_adapts_and_records_its_preprocessing(tiny_cfg, tmp_path,
                                                                                            caplog):
    arch = tmp_path / "fair-test-own-vit.json"
    arch.write_text(json.dumps(_arch(width=48, head_width=24)))
    sd = _save(_arch(width=48, head_width=24), tmp_path / "epoch_3.pt")
    d = {**tiny_cfg, "model": {**tiny_cfg["model"], "name": "fair-test-own-vit", "config": str(arch),
                               "pretrained": str(tmp_path / "epoch_3.pt"), "mean": HALF},
         "train": {**tiny_cfg["train"], "epochs": 1}}
    with caplog.at_level(logging.WARNING, logger="fair"):
        rec = adapt(from_dict(d), tmp_path / "run")
    assert rec["status"] == "completed" and rec["backbone"] == "fair-test-own-vit"
    assert rec["metrics"]["test_top1"] is not None and rec["metrics"]["zeroshot_top1"] is not None
    # The custom architecture has no pretrained config: what was not given is assumed, once, by name.
    (msg,) = _assumed(caplog)
    assert "epoch_3.pt" in msg and "fair-test-own-vit has no pretrained config" in msg
    assert "model.std" in msg and "model.resize_mode" in msg and "model.mean" not in msg
    pre = rec["provenance"]["preprocess"]
    assert list(pre["mean"]) == HALF and list(pre["std"]) == pytest.approx(CLIP_STD)
    assert pre["source"] == {"mean": "model.mean", "std": "open_clip default",
                             "interpolation": "open_clip default", "resize_mode": "open_clip default"}
    assert json.loads((tmp_path / "run" / "record.json").read_text())["provenance"]["preprocess"]["size"] == [32, 32]
    # ... and the weights are the checkpoint's.
    model, _, _ = load_clip(from_dict(d).model, torch.device("cpu"))
    assert torch.equal(model.state_dict()["visual.proj"], sd["visual.proj"])


def _uniform(value: int, side: int = 40) -> np.ndarray:
    return np.full((side, side, 3), value, np.uint8)


def _test_view(views, image: np.ndarray) -> torch.Tensor:
    """The test view [3, H, W] of one uint8 [h, w, 3] image, as build_pipeline's pipeline makes it (the
    device pipeline: through its decoded cache)."""
    if views.name == "pil":
        return views.views["test"](Image.fromarray(image))
    batch, bad = views.dataset(ImageSet([0], np.zeros(1, np.int64), image[None]), train=False)[np.arange(1)]
    assert not bad
    return views.test_batch(batch, torch.device("cpu"), None, 0, 0.4, 0.8)[0][0]


@pytest.mark.parametrize("pipeline", ["pil", "device"])
def test_mean_std_override_reaches_the_normalised_pixels(tiny_cfg, pipeline):
    base = {**tiny_cfg, "data": {**tiny_cfg["data"], "pipeline": pipeline}}

    def test_view(model: dict, value: int) -> torch.Tensor:
        cfg = from_dict({**base, "model": {**tiny_cfg["model"], **model}})
        _, _, pp = load_clip(cfg.model, torch.device("cpu"))
        return _test_view(build_pipeline(cfg, pp, progress=False), _uniform(value))   # what adapt() builds

    for value in (0, 51, 255):
        x = test_view({"mean": HALF, "std": [0.25, 0.5, 0.5], "interpolation": "bilinear"}, value)
        assert x.shape == (3, 32, 32)
        want = [(value / 255 - 0.5) / s for s in (0.25, 0.5, 0.5)]
        assert x.mean(dim=(1, 2)).tolist() == pytest.approx(want, abs=1e-4)
    default = test_view({}, 255)                                   # random weights: CLIP's mean/std
    want = [(1 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD)]
    assert default.mean(dim=(1, 2)).tolist() == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("pipeline", ["pil", "device"])
def test_resize_modes_square_a_wide_image_as_open_clip_does(tiny_cfg, pipeline):
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, :10] = 255                                              # a white left quarter
    for mode, white_cols in (("shortest", 0), ("squash", 8), ("longest", 8)):
        cfg = from_dict({**tiny_cfg, "data": {**tiny_cfg["data"], "pipeline": pipeline},
                         "model": {**tiny_cfg["model"], "resize_mode": mode, "mean": [0, 0, 0], "std": [1, 1, 1]}})
        _, _, pp = load_clip(cfg.model, torch.device("cpu"))
        x = _test_view(build_pipeline(cfg, pp, progress=False), wide)
        assert int((x[0].amax(0) > 0.9).sum()) == pytest.approx(white_cols, abs=1), mode
        if mode == "longest":                                       # padded with black above and below
            assert float(x[:, :7].abs().max()) == 0 and float(x[:, 25:].abs().max()) == 0


def test_a_checkpoint_takes_the_preprocessing_its_architectures_tags_agree_on_and_warns_where_they_do_not(caplog):
    ckpt = "/models/finetuned.pt"                                   # resolve_preprocess does not open it
    with caplog.at_level(logging.WARNING, logger="fair"):
        values, sources = resolve_preprocess(ModelConfig(name="ViT-B-16-SigLIP", pretrained=ckpt))
    assert values["mean"] == (0.5, 0.5, 0.5) and values["resize_mode"] == "squash"   # SigLIP's, not CLIP's
    assert sources["mean"].startswith("pretrained configs of ViT-B-16-SigLIP") and not _assumed(caplog)

    # ViT-L-14: laion2b_s32b_b82k was trained with mean/std 0.5, the other tags with CLIP's.
    values, sources = resolve_preprocess(ModelConfig(name="ViT-L-14", pretrained=ckpt))
    (msg,) = _assumed(caplog)
    assert ckpt in msg and "disagree" in msg and "laion2b_s32b_b82k" in msg
    assert "model.mean, model.std" in msg and "model.interpolation" not in msg and str(values["mean"]) in msg
    assert values["mean"] == pytest.approx(CLIP_MEAN) and sources["interpolation"].startswith("pretrained configs")

    caplog.clear()                                                   # said explicitly: nothing to warn about
    values, sources = resolve_preprocess(ModelConfig(name="ViT-L-14", pretrained=ckpt, mean=HALF, std=HALF))
    assert values["std"] == (0.5, 0.5, 0.5) and sources["std"] == "model.std" and not _assumed(caplog)
    values, _ = resolve_preprocess(ModelConfig(name="ViT-L-14", pretrained="laion2b_s32b_b82k"))   # a tag
    assert values["mean"] == (0.5, 0.5, 0.5) and not _assumed(caplog)
    register_builtin_configs()                                       # fair's own: trained with the defaults
    for name in ("fair-tiny-vit", "fair-standin-minilm-small", "fair-standin-minilm-scenes-small"):
        values, _ = resolve_preprocess(ModelConfig(name=name, pretrained=ckpt))
        assert values["mean"] == pytest.approx(CLIP_MEAN) and not _assumed(caplog)


def _hf_cache(root: Path, repo: str, preprocess: dict | None, revision: str = "1" * 40) -> dict:
    """A repository in huggingface_hub's cache layout (refs/main -> snapshots/<revision>/...), as
    `huggingface-cli download` leaves it; returns the saved state dict."""
    snap = root / f"models--{repo.replace('/', '--')}" / "snapshots" / revision
    snap.mkdir(parents=True)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text(revision)
    model_cfg = _arch()
    cfg = {"model_cfg": model_cfg, **({"preprocess_cfg": preprocess} if preprocess is not None else {})}
    (snap / "open_clip_config.json").write_text(json.dumps(cfg))
    return _save(model_cfg, snap / "open_clip_pytorch_model.bin", seed=5)


def test_hf_hub_name_loads_offline_from_the_local_cache(tiny_cfg, tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hf"
    sd = _hf_cache(cache, "fair-test/tiny-clip", {"mean": HALF, "std": HALF, "interpolation": "bilinear"})
    model_cfg = {"name": "hf-hub:fair-test/tiny-clip", "cache_dir": str(cache), "device": "cpu"}
    d = {**tiny_cfg, "method": "zeroshot", "model": model_cfg}
    cfg = from_dict(d)
    model, tokenizer, pp = load_clip(cfg.model, torch.device("cpu"))
    assert torch.equal(model.state_dict()["visual.proj"], sd["visual.proj"])
    assert tuple(pp["mean"]) == (0.5, 0.5, 0.5) and pp["interpolation"] == "bilinear"
    assert pp["source"]["mean"] == "open_clip_config.json of hf-hub:fair-test/tiny-clip"
    assert weights_id(cfg.model) == "hf-hub:fair-test/tiny-clip@" + "1" * 40   # the revision keys the text cache
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fair"):
        rec = adapt(cfg, tmp_path / "run")
    assert rec["status"] == "completed" and rec["provenance"]["preprocess"]["interpolation"] == "bilinear"
    (msg,) = _assumed(caplog)                                        # resize_mode was not in its config
    assert msg.startswith("hf-hub:fair-test/tiny-clip: its open_clip_config.json does not give model.resize_mode;")

    with pytest.raises(FairError, match="model.name hf-hub:fair-test/elsewhere: open_clip_config.json is not in"):
        load_clip(from_dict({**d, "model": {**model_cfg, "name": "hf-hub:fair-test/elsewhere"}}).model,
                  torch.device("cpu"))
    with pytest.raises(FairError, match="model.pretrained='/x.pt' does not apply to model.name=hf-hub:"):
        load_clip(from_dict({**d, "model": {**model_cfg, "pretrained": "/x.pt"}}).model, torch.device("cpu"))


_ARCH_OK = _arch()


@pytest.mark.parametrize("model, content, words", [
    ({"mean": [0.5, 0.5]}, None, "'model.mean' must be 3 numbers"),
    ({"std": [0.5, 0.0, 0.5]}, None, "'model.std' must lie in (0, 1] (it divides; no zeros)"),
    ({"mean": [123.7, 116.3, 103.5]}, None, "'model.mean' must lie in [0, 1], as fractions of 255"),
    ({"interpolation": "lanczos"}, None, "'model.interpolation' must be bicubic or bilinear, got 'lanczos'"),
    ({"resize_mode": "crop"}, None, "'model.resize_mode' must be shortest, longest or squash, got 'crop'"),
    ({"name": "ViT-B-32"}, _ARCH_OK, "'model.name' must be 'NAME', the architecture model.config FILE defines"),
    ({}, "{not json", "'model.config': FILE is not valid JSON"),
    ({}, {"embed_dim": 64, "vision_cfg": {}}, "'model.config': FILE is not an open_clip architecture (no text_cfg)"),
    ({}, {**_ARCH_OK, "vision_cfg": {**_ARCH_OK["vision_cfg"], "patch_sise": 8}},
     "'model.config': FILE: open_clip cannot build this architecture (TypeError"),
    ({}, {**_ARCH_OK, "text_cfg": "tiny"}, "'model.config': FILE: open_clip cannot build this architecture"),
    ({"name": "NAME", "config": "/nowhere/NAME.json"}, None, "'model.config': /nowhere/NAME.json does not exist"),
    ({"file": "ViT-B-32", "name": "ViT-B-32"}, _ARCH_OK, "FILE would replace open_clip's architecture 'ViT-B-32'"),
])
def test_bad_model_input_is_one_line_naming_the_key(tiny_cfg, tmp_path, capsys, model, content, words):
    """`content`: an architecture file written as <file or NAME>.json and given as model.config, where NAME
    is unique to the case (open_clip's registry lives as long as the process)."""
    name = "arch-" + tmp_path.name
    model = {k: v.replace("NAME", name) if isinstance(v, str) else v for k, v in model.items()}
    m = {**tiny_cfg["model"], **({"name": name} if content is not None else {}), **model}
    if content is not None:
        arch = tmp_path / f"{m.pop('file', name)}.json"
        arch.write_text(content if isinstance(content, str) else json.dumps(content))
        m["config"] = str(arch)
    err = _run_cli(tmp_path, {**tiny_cfg, "model": m}, capsys)
    assert words.replace("NAME", name).replace("FILE", m.get("config") or "") in err, err
