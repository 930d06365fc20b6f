"""The `device` data pipeline end to end through fair.adapt.adapt: record, caches, exact resume."""
from __future__ import annotations

import shutil

import pytest

from fair.record import config_digest
from fair.commands import run_adapt
from fair.config import from_dict
from tests.test_fair_adapt import test_resume_gives_the_same_weights_as_an_uninterrupted_run as _resume_check


def _device(d: dict, **local) -> dict:
    return {**d, "data": {**d["data"], "pipeline": "device"}, "local": {**d["local"], **local}}


def test_device_pipeline_runs_end_to_end(tiny_cfg, tmp_path):
    d = _device(tiny_cfg)
    d["train"] = {**d["train"], "epochs": 1}
    d["eval"] = {**d["eval"], "batch_size": 8}                # several evaluation batches
    rec = run_adapt(from_dict(d))
    m = rec["metrics"]
    for k in ("test_top1", "zeroshot_top1", "wca_top1", "test_top1_las", "val_top1", "pseudo_label_acc"):
        assert m[k] is not None, k
    assert rec["config"]["data"]["pipeline"] == "device"
    caches = sorted(p.name.split("-")[-1] for p in (tmp_path / "cache" / "decoded").glob("*.npy"))
    # train, val, test at the input size (their test views), decoded once each; train's 8/7 square
    assert caches == ["s32.npy"] * 3 + ["s37.npy"]


@pytest.mark.parametrize("source", ["crops", "tokens"])
def test_device_pipeline_resume_gives_the_same_weights(tiny_cfg, tmp_path, source):
    _resume_check(_device(tiny_cfg, source=source), tmp_path, "fair")


def test_device_pipeline_counts_unreadable_images(tiny_cfg, imagefolder, tmp_path):
    root = tmp_path / "folder"
    shutil.copytree(imagefolder, root)
    (root / "test/red_square/000.png").write_bytes(b"not a png")
    d = _device({**tiny_cfg, "data": {**tiny_cfg["data"], "root": str(root), "max_bad_images": 0.1}})
    d["method"] = "zeroshot"
    rec = run_adapt(from_dict(d))
    assert rec["metrics"]["test_top1"] is not None


def test_new_keys_at_their_defaults_keep_old_config_digests(tiny_cfg):
    """Checkpoints written before data.pipeline / data.cache_size / train.compile / model.config, the
    preprocessing keys, pseudo.teacher and the dpa / tent sections existed still resume."""
    from fair.config import PREPROCESS_KEYS, to_dict
    from fair.io import sha256_json
    cfg = from_dict(tiny_cfg)
    old = to_dict(cfg)
    old.pop("run")
    old["eval"].pop("val_every_epoch")
    old["data"].pop("num_workers")
    for sec, key in (("data", "pipeline"), ("data", "cache_size"), ("train", "compile"), ("model", "config"),
                     *(("model", k) for k in PREPROCESS_KEYS)):
        old[sec].pop(key)
    old["pseudo"].pop("teacher")                                  # pseudo.teacher at its default (student)
    for method_section in ("dpa", "tent"):                        # other methods' options
        old.pop(method_section)
    assert config_digest(cfg) == sha256_json(old)
    bilinear = from_dict({**tiny_cfg, "model": {**tiny_cfg["model"], "interpolation": "bilinear"}})
    assert config_digest(bilinear) != config_digest(cfg)          # set, they change the result
    compiled = from_dict({**tiny_cfg, "train": {**tiny_cfg["train"], "compile": True}})
    assert config_digest(compiled) == config_digest(cfg)
    assert config_digest(from_dict(_device(tiny_cfg))) != config_digest(cfg)
