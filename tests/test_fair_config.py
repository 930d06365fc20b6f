"""Typed config: YAML + --set overrides, errors that name the key, the resolved config saved with a run."""
from __future__ import annotations

import pytest
import yaml

from fair.config import FairConfig, flatten, hparam_kinds, load_config, save_config, to_dict
from fair.errors import FairError


def test_yaml_then_overrides_win(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("method: wca\ntrain: {epochs: 3, lr: 1e-4}\nanchors: {mode: prototype}\n")
    cfg = load_config(p, ["train.epochs=5", "weighting.mode=margin", "data.templates=['a {}.', 'the {}.']"])
    assert isinstance(cfg, FairConfig)
    assert cfg.method == "wca" and cfg.train.epochs == 5 and cfg.train.lr == pytest.approx(1e-4)
    assert cfg.anchors.mode == "prototype" and cfg.weighting.mode == "margin"
    assert cfg.data.templates == ["a {}.", "the {}."]
    assert cfg.local.top_k == FairConfig().local.top_k          # untouched keys keep their defaults


@pytest.mark.parametrize("override, words", [
    ("train.lrr=0.1", ["train.lrr", "train.lr"]),
    ("trian.epochs=2", ["trian"]),
    ("train.epochs=three", ["train.epochs", "integer"]),
    ("weighting.mode=margins", ["weighting.mode", "margin"]),
    ("anchors.tau_text=true", ["anchors.tau_text", "number"]),
    ("local.crop_min=0.9", ["crop_min"]),
    ("train.epochs", ["section.key=value"]),
])
def test_bad_keys_and_values_name_the_key(override, words):
    with pytest.raises(FairError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(FairError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: [1,\n")
    with pytest.raises(FairError, match="not valid YAML"):
        load_config(bad)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.epochs=7", "anchors.mode=prototype", "data.val_per_class=4"])
    save_config(cfg, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved == to_dict(cfg)
    assert load_config(tmp_path / "config.yaml") == cfg


def test_every_scalar_key_declares_its_type_for_the_results_tables():
    """Records carry these as `hparam_types`: a column keeps its type where every value is null."""
    kinds = hparam_kinds()
    flat = flatten(to_dict(FairConfig()))
    lists = {"data.templates", "model.mean", "model.std"}           # never hyperparameter columns
    assert set(kinds) == set(flat) - lists
    assert (kinds["train.fair_momentum"], kinds["data.train_per_class"], kinds["anchors.mode"],
            kinds["train.compile"], kinds["seed"]) == ("float", "int", "str", "bool", "int")
    python = {"float": float, "int": int, "str": str, "bool": bool}
    assert all(type(flat[k]) is python[kind] for k, kind in kinds.items() if flat[k] is not None)


def test_the_library_never_imports_ray_and_the_cli_is_lazy():
    import subprocess
    import sys
    code = ("import sys, fair.adapt, fair.cli, fair.commands; "
            "bad = [m for m in ('ray', 'pyarrow', 'boto3', 'optuna') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# dpa-method.md's table of DPA's published settings: lr, epochs, alpha, reg, align, align_scale
DPA_PUBLISHED = {
    "dtd": (5e-5, 15, 0.2, 1, 1, 100), "caltech101": (1e-4, 15, 0.5, 1, 1, 100),
    "flowers102": (1e-4, 15, 0.5, 1, 1, 1), "eurosat": (3e-5, 10, 0.5, 1, 0.01, 1),
    "fgvc_aircraft": (3e-6, 10, 0.5, 1, 1, 100), "oxford_pets": (7e-5, 15, 0.01, 1, 1, 100),
    "stanford_cars": (5e-6, 15, 0.5, 1, 1, 100), "sun397": (1e-6, 15, 0.5, 0.2, 1, 100),
    "cifar10": (8e-5, 15, 0.1, 1, 0.1, 100), "cifar100": (1e-5, 15, 0.2, 1, 1, 100),
    "ucf101": (1e-5, 15, 0.5, 1, 1, 100), "food101": (1e-6, 15, 0.2, 1, 1, 100),
    "imagenet": (1e-6, 15, 0.5, 1, 1, 100),
}


def test_dpa_has_one_starting_config_per_dataset_with_its_published_setting():
    from pathlib import Path
    root = Path(__file__).parent.parent / "configs" / "methods" / "dpa"
    assert sorted(p.stem for p in root.glob("*.yaml")) == sorted(DPA_PUBLISHED)
    for ds, (lr, epochs, alpha, reg, align, scale) in DPA_PUBLISHED.items():
        cfg = load_config(root / f"{ds}.yaml")
        assert (cfg.method, cfg.data.dataset, cfg.model.name) == ("dpa", ds, "ViT-B-32")
        assert (cfg.train.lr, cfg.train.epochs, cfg.train.batch_size, cfg.train.grad_clip) == (lr, epochs, 64, 1.0)
        assert (cfg.train.weight_decay, cfg.train.lr_min, cfg.anchors.lr_mult) == (0.1, 2e-6, 1.0)
        assert (cfg.dpa.alpha, cfg.dpa.reg, cfg.dpa.align, cfg.dpa.align_scale) == (alpha, reg, align, scale)
        assert cfg.dpa.init == "templates" and cfg.dpa.da_len == 32


def test_dpa_and_tent_options_are_checked():
    for key, bad in (("dpa.alpha", 1.5), ("dpa.da_len", 0), ("dpa.align_scale", 0), ("dpa.reg", -1),
                     ("tent.diversity", -0.1)):
        with pytest.raises(FairError, match=key.replace(".", r"\.")):
            load_config(None, [f"{key}={bad}"])
    with pytest.raises(FairError, match="dpa.init"):
        load_config(None, ["dpa.init=llm"])
    cfg = load_config(None, ["method=tent", "tent.view=strong", "tent.diversity=0.5"])
    assert (cfg.tent.view, cfg.tent.diversity) == ("strong", 0.5)
