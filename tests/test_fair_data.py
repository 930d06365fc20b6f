"""Dataset readers on synthetic files in each layout, the validation split, the views."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fair.config import DataConfig
from fair.data import prepare_data
from fair.data.catalog import CATALOG, PAPER_DATASETS, check_dataset, get_spec
from fair.data.images import per_class_split
from fair.errors import FairError


def _img(path, value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 12, 3), value, np.uint8)).save(path)


def test_catalog_has_the_13_datasets_and_imagenet():
    assert len(PAPER_DATASETS) == 13 and all(d in CATALOG for d in PAPER_DATASETS + ["imagenet"])
    for name in PAPER_DATASETS:
        assert get_spec(name).templates and "{}" in get_spec(name).templates[0]
    with pytest.raises(FairError, match="did you mean 'dtd'"):
        get_spec("dtdd")


def test_zhou_split_reader(tmp_path):
    base = tmp_path / "oxford_pets"
    items = {"train": [], "val": [], "test": []}
    for part, n in (("train", 4), ("val", 1), ("test", 2)):
        for c, name in enumerate(["abyssinian", "great_pyrenees"]):
            for i in range(n):
                rel = f"{name}_{part}_{i}.jpg"
                _img(base / "images" / rel)
                items[part].append([rel, c, name])
    (base / "split_zhou_OxfordPets.json").write_text(json.dumps(items))
    data = prepare_data(DataConfig(dataset="oxford_pets", root=str(tmp_path), val_per_class=2))
    assert data.classnames == ["abyssinian", "great pyrenees"]
    assert len(data.val) == 4 and len(data.train) == 6 and len(data.test) == 4   # val held out of train+val
    assert not set(data.val.refs) & set(data.train.refs)
    assert data.templates == ["a photo of a {}, a type of pet."]
    assert data.val.load(0).size == (12, 12)
    from fair.io import sha256_file
    assert data.split_files == {"split_zhou_OxfordPets.json": sha256_file(base / "split_zhou_OxfordPets.json")}


def test_cub_reader(tmp_path):
    base = tmp_path / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    lines, labels, split = [], [], []
    for i in range(1, 9):
        c = (i - 1) % 2
        rel = f"{classes[c]}/img_{i}.jpg"
        _img(base / "images" / rel)
        lines.append(f"{i} {rel}")
        labels.append(f"{i} {c + 1}")
        split.append(f"{i} {1 if i <= 6 else 0}")
    (base / "images.txt").write_text("\n".join(lines))
    (base / "image_class_labels.txt").write_text("\n".join(labels))
    (base / "train_test_split.txt").write_text("\n".join(split))
    (base / "classes.txt").write_text("\n".join(f"{k + 1} {c}" for k, c in enumerate(classes)))
    assert check_dataset("cub200", str(tmp_path)) == base
    data = prepare_data(DataConfig(dataset="cub200", root=str(tmp_path), val_per_class=1))
    assert data.classnames == ["Black footed Albatross", "Laysan Albatross"]
    assert len(data.train) + len(data.val) == 6 and len(data.test) == 2


def test_aircraft_reader(tmp_path):
    base = tmp_path / "fgvc_aircraft"
    (base / "variants.txt").parent.mkdir(parents=True)
    (base / "variants.txt").write_text("707-320\nA320\n")
    for part, ids in (("train", ["001", "002"]), ("val", ["003", "004"]), ("test", ["005", "006"])):
        (base / f"images_variant_{part}.txt").write_text("".join(f"{i} {'707-320' if int(i) % 2 else 'A320'}\n" for i in ids))
        for i in ids:
            _img(base / "images" / f"{i}.jpg")
    data = prepare_data(DataConfig(dataset="fgvc_aircraft", root=str(tmp_path), val_per_class=1))
    assert data.classnames == ["707-320", "A320"] and len(data.test) == 2 and len(data.val) == 2


def test_imagefolder_without_split_folders_is_split_by_a_fixed_seed(tmp_path):
    for c in ("cat", "dog"):
        for i in range(10):
            _img(tmp_path / c / f"{i}.png", value=i * 20)
    a = prepare_data(DataConfig(dataset="imagefolder", root=str(tmp_path), val_per_class=2))
    b = prepare_data(DataConfig(dataset="imagefolder", root=str(tmp_path), val_per_class=2))
    assert a.split_sha256 == b.split_sha256 and len(a.test) == 4 and len(a.val) == 4 and len(a.train) == 12


def test_validation_split_is_per_class_and_disjoint():
    labels = np.repeat(np.arange(3), 10)
    held, rest = per_class_split(labels, 4, seed=0)
    assert np.bincount(labels[held]).tolist() == [4, 4, 4]
    assert not set(held) & set(rest) and len(held) + len(rest) == 30


def test_fashion_mnist_from_debian_files():
    from fair.data.fashion_mnist import missing_files
    if missing_files():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    data = prepare_data(DataConfig(dataset="fashion_mnist", val_per_class=5, train_per_class=20, test_per_class=10))
    assert len(data.classnames) == 10 and len(data.val) == 50 and len(data.train) == 200 and len(data.test) == 100
    assert data.train.load(0).size == (28, 28)


def test_missing_fashion_mnist_is_one_line_naming_the_package(tmp_path):
    """`make demo`'s first step on a machine without the files: no traceback, the package to install."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, FASHION_MNIST_ROOT=str(tmp_path / "none"))
    p = subprocess.run([sys.executable, "-m", "fair.standin", "--cache-root", str(tmp_path / "cache"),
                        "--size", "small"], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert lines[0].startswith("fair.standin: error: Fashion-MNIST is not installed") and \
        "apt-get install dataset-fashion-mnist" in lines[0]
    assert not (tmp_path / "cache").exists()
    with pytest.raises(FairError, match="dataset fashion_mnist is incomplete.*dataset-fashion-mnist"):
        check_dataset("fashion_mnist", str(tmp_path / "none"))


def test_imagenet_pool_is_50_per_class_after_validation_is_held_out(tmp_path):
    """Spec: "On ImageNet, the unlabelled training set is 50 images per class" - validation must not eat it."""
    base = tmp_path / "imagenet"
    wnids = ["n01", "n02", "n03"]
    for w in wnids:
        for part, n in (("train", 70), ("val", 4)):
            d = base / "images" / part / w
            d.mkdir(parents=True)
            for i in range(n):
                (d / f"{i:03d}.JPEG").touch()       # the reader only lists files
    (base / "classnames.txt").write_text("".join(f"{w} class {w}\n" for w in wnids))
    data = prepare_data(DataConfig(dataset="imagenet", root=str(tmp_path), val_per_class=10))
    assert len(data.val) == 30 and len(data.train) == 150 and len(data.test) == 12
    assert not set(data.val.refs) & set(data.train.refs)
    assert np.bincount(data.train.labels).tolist() == [50, 50, 50]
