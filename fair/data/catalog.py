"""The datasets of this field: where their files are expected, their templates, and how they are read.

Layouts follow the CoOp convention (`<root>/<folder>/` with a `split_zhou_*.json` of
`[image path, label, class name]` triples) where one exists; class names come from the split files or the
dataset's own metadata, so no class list is copied here. `fair data check NAME --root DIR` says exactly
which of the expected files are missing.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from fair.data.images import ImageSet, list_images
from fair.errors import FairError


@dataclass
class RawSplits:
    """What a reader returns: class names, the unlabelled-train and test image sets, files hashed for provenance."""
    classnames: list[str]
    train: ImageSet
    test: ImageSet
    split_files: list[Path] = field(default_factory=list)


@dataclass
class DatasetSpec:
    name: str
    title: str
    folder: str                       # under the data root
    required: list[str]               # files/dirs (relative to <root>/<folder>) that must exist
    templates: list[str]
    reader: Callable[["DatasetSpec", Path], RawSplits]
    layout: str                       # one line for `fair data check` / docs
    descriptions: str | None = None   # a packaged CuPL file, if fair ships one
    pool_per_class: int | None = None  # the unlabelled pool's size per class, after validation is held out


# ------------------------------------------------------------------------------------------ readers


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FairError(f"split file {str(path)!r} is unreadable or not JSON ({type(e).__name__}); "
                        f"re-download it") from None


def read_zhou_split(spec: DatasetSpec, base: Path) -> RawSplits:
    """CoOp's `split_zhou_*.json`: {"train": [[impath, label, classname], ...], "val": [...], "test": [...]}.

    The unlabelled pool is CoOp's train+val (labels kept for diagnostics only); test is its test.
    """
    split_path = base / spec.required[1]
    img_dir = base / spec.required[0]
    data = _read_json(split_path)
    names: dict[int, str] = {}

    def to_set(items) -> ImageSet:
        refs, labels = [], []
        for impath, label, cname in items:
            refs.append(str(img_dir / impath))
            labels.append(int(label))
            names.setdefault(int(label), cname.replace("_", " "))
        return ImageSet(refs, np.array(labels, dtype=np.int64))

    try:
        train = to_set(data["train"] + data.get("val", []))
        test = to_set(data["test"])
    except (KeyError, TypeError, ValueError):
        raise FairError(f"split file {str(split_path)!r} is not in the split_zhou format "
                        f"{{'train': [[path, label, class], ...], 'test': [...]}}") from None
    classnames = [names[i] for i in range(len(names))]
    return RawSplits(classnames, train, test, [split_path])


def read_class_folders(spec: DatasetSpec, base: Path) -> RawSplits:
    """`<base>/train/<class>/*` and `<base>/test/<class>/*`, or `<base>/<class>/*` split 80/20 by a fixed seed."""
    if (base / "train").is_dir() and (base / "test").is_dir():
        classes = sorted(p.name for p in (base / "train").iterdir() if p.is_dir())
        sets = []
        for part in ("train", "test"):
            refs, labels = [], []
            for c, name in enumerate(classes):
                files = list_images(base / part / name)
                refs += [str(f) for f in files]
                labels += [c] * len(files)
            sets.append(ImageSet(refs, np.array(labels, dtype=np.int64)))
        train, test = sets
    else:
        classes = sorted(p.name for p in base.iterdir() if p.is_dir())
        refs, labels = [], []
        for c, name in enumerate(classes):
            files = list_images(base / name)
            refs += [str(f) for f in files]
            labels += [c] * len(files)
        labels = np.array(labels, dtype=np.int64)
        rng = np.random.default_rng(0)
        is_test = np.zeros(len(refs), dtype=bool)
        for c in range(len(classes)):
            idx = np.flatnonzero(labels == c)
            is_test[rng.permutation(idx)[: max(1, len(idx) // 5)]] = True
        all_set = ImageSet(refs, labels)
        train, test = all_set.subset(np.flatnonzero(~is_test)), all_set.subset(np.flatnonzero(is_test))
    if not classes or len(train) == 0 or len(test) == 0:
        raise FairError(f"no class folders with images under {str(base)!r}; expected <class>/<image> "
                        f"(optionally inside train/ and test/)")
    return RawSplits([c.replace("_", " ") for c in classes], train, test)


def read_cub(spec: DatasetSpec, base: Path) -> RawSplits:
    """CUB_200_2011: images.txt, image_class_labels.txt, train_test_split.txt, classes.txt."""
    def table(name):
        return [ln.split(maxsplit=1) for ln in (base / name).read_text().splitlines() if ln.strip()]
    classes = [n.split(".", 1)[-1].replace("_", " ") for _, n in table("classes.txt")]
    paths = {i: p for i, p in table("images.txt")}
    labels = {i: int(c) - 1 for i, c in table("image_class_labels.txt")}
    is_train = {i: t.strip() == "1" for i, t in table("train_test_split.txt")}
    parts = {True: ([], []), False: ([], [])}
    for i in sorted(paths, key=int):
        refs, labs = parts[is_train[i]]
        refs.append(str(base / "images" / paths[i]))
        labs.append(labels[i])
    mk = lambda r, l: ImageSet(r, np.array(l, dtype=np.int64))  # noqa: E731
    return RawSplits(classes, mk(*parts[True]), mk(*parts[False]),
                     [base / "train_test_split.txt", base / "image_class_labels.txt"])


def read_aircraft(spec: DatasetSpec, base: Path) -> RawSplits:
    """FGVC-Aircraft (variant level): images_variant_{train,val,test}.txt, variants.txt, images/."""
    classes = [ln.strip() for ln in (base / "variants.txt").read_text().splitlines() if ln.strip()]
    index = {c: i for i, c in enumerate(classes)}

    def read(names):
        refs, labels = [], []
        for n in names:
            for ln in (base / n).read_text().splitlines():
                if ln.strip():
                    img, var = ln.split(" ", 1)
                    refs.append(str(base / "images" / f"{img}.jpg"))
                    labels.append(index[var.strip()])
        return ImageSet(refs, np.array(labels, dtype=np.int64))
    files = ["images_variant_train.txt", "images_variant_val.txt", "images_variant_test.txt"]
    return RawSplits(classes, read(files[:2]), read(files[2:]), [base / f for f in files])


def read_imagenet(spec: DatasetSpec, base: Path) -> RawSplits:
    """ImageNet: images/train/<wnid>/ and images/val/<wnid>/, classnames.txt lines `<wnid> <name>` (CoOp).

    Every training image is listed; the spec's pool of 50 per class is drawn after the validation split is
    held out (`pool_per_class`, applied by fair.data.prepare_data), so validation does not shrink it.
    """
    lines = [ln.split(" ", 1) for ln in (base / "classnames.txt").read_text().splitlines() if ln.strip()]
    wnids, classes = [w for w, _ in lines], [n.strip() for _, n in lines]
    sets = []
    for part in ("train", "val"):
        refs, labels = [], []
        for c, w in enumerate(wnids):
            files = list_images(base / "images" / part / w)
            refs += [str(f) for f in files]
            labels += [c] * len(files)
        sets.append(ImageSet(refs, np.array(labels, dtype=np.int64)))
    return RawSplits(classes, sets[0], sets[1], [base / "classnames.txt"])


def read_birdsnap(spec: DatasetSpec, base: Path) -> RawSplits:
    """Birdsnap: species.txt (tab-separated, `common` column), test_images.txt, download/images/<species>/."""
    rows = [ln.split("\t") for ln in (base / "species.txt").read_text().splitlines()]
    header, rows = rows[0], rows[1:]
    col = header.index("common")
    dir_col = header.index("dir")
    classes = [r[col] for r in rows]
    test_names = {ln.strip() for ln in (base / "test_images.txt").read_text().splitlines()[1:] if ln.strip()}
    parts = {True: ([], []), False: ([], [])}
    for c, r in enumerate(rows):
        for f in list_images(base / "download" / "images" / r[dir_col]):
            rel = f"{r[dir_col]}/{f.name}"
            refs, labs = parts[rel in test_names]
            refs.append(str(f))
            labs.append(c)
    mk = lambda r, l: ImageSet(r, np.array(l, dtype=np.int64))  # noqa: E731
    return RawSplits(classes, mk(*parts[False]), mk(*parts[True]), [base / "test_images.txt"])


def read_fashion_mnist(spec: DatasetSpec, base: Path) -> RawSplits:
    """Fashion-MNIST from Debian's idx files (the clean source domain): train 60k, test 10k."""
    from fair.data import fashion_mnist
    xtr, ytr = fashion_mnist.read_split("train", str(base))
    xte, yte = fashion_mnist.read_split("test", str(base))
    return RawSplits(list(fashion_mnist.CLASSES), ImageSet(list(range(len(ytr))), ytr, xtr),
                     ImageSet(list(range(len(yte))), yte, xte), [base / f for f in fashion_mnist._FILES["test"]])


def read_fashion_mnist_shifted(spec: DatasetSpec, base: Path) -> RawSplits:
    """The stand-in's target task: Fashion-MNIST images it never saw in pretraining, with the domain shift.

    Unlabelled pool: train indices outside the stand-in's source range; test: the 10k test images.
    """
    from fair.data import fashion_mnist, shift
    xtr, ytr = fashion_mnist.read_split("train", str(base))
    xte, yte = fashion_mnist.read_split("test", str(base))
    pool = shift.target_pool_indices(len(ytr))
    xtr = shift.apply_shift(xtr[pool])
    xte = shift.apply_shift(xte)
    return RawSplits(list(fashion_mnist.CLASSES), ImageSet(list(range(len(pool))), ytr[pool], xtr),
                     ImageSet(list(range(len(yte))), yte, xte), [base / f for f in fashion_mnist._FILES["test"]])


def read_fashion_mnist_scenes(spec: DatasetSpec, base: Path) -> RawSplits:
    """The scenes target (fair.data.scenes): each item at about a third of an 84-px canvas, at a random place,
    among faint fragments of source-range items. Pool and test images as for fashion_mnist_shifted."""
    from fair.data import fashion_mnist, scenes
    pool_x, pool_y, test_x, test_y = scenes.scene_splits(scenes.SCENES, str(base))
    return RawSplits(list(fashion_mnist.CLASSES), ImageSet(list(range(len(pool_y))), pool_y, pool_x),
                     ImageSet(list(range(len(test_y))), test_y, test_x),
                     [base / f for f in fashion_mnist._FILES["test"]])


# ------------------------------------------------------------------------------------------ catalog

_FASHION_TEMPLATES = None  # filled lazily from fair.data.fashion_mnist (shared with the stand-in)


def _zhou(name, title, folder, images, split, templates):
    return DatasetSpec(name, title, folder, [images, split], templates, read_zhou_split,
                       f"<root>/{folder}/{images}/ and <root>/{folder}/{split}")


def _fashion(name, title, reader):
    """A Fashion-MNIST variant: Debian's four idx files, the dataset's templates (filled in by get_spec)."""
    return DatasetSpec(name, title, ".", ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                          "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"], [], reader,
                       "<root>/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz (Debian: dataset-fashion-mnist)",
                       descriptions="fashion_mnist.json")


CATALOG: dict[str, DatasetSpec] = {s.name: s for s in [
    _zhou("caltech101", "Caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json",
          ["a photo of a {}.", "a blurry photo of a {}.", "a photo of the {}."]),
    _zhou("dtd", "DTD", "dtd", "images", "split_zhou_DescribableTextures.json",
          ["{} texture.", "a photo of a {} texture.", "a photo of a {} pattern."]),
    _zhou("eurosat", "EuroSAT", "eurosat", "2750", "split_zhou_EuroSAT.json",
          ["a centered satellite photo of {}.", "a satellite photo of {}.", "a centered satellite photo of the {}."]),
    _zhou("flowers102", "Flowers102", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json",
          ["a photo of a {}, a type of flower."]),
    _zhou("food101", "Food101", "food-101", "images", "split_zhou_Food101.json",
          ["a photo of {}, a type of food."]),
    _zhou("oxford_pets", "Oxford-IIIT Pets", "oxford_pets", "images", "split_zhou_OxfordPets.json",
          ["a photo of a {}, a type of pet."]),
    _zhou("stanford_cars", "Stanford Cars", "stanford_cars", ".", "split_zhou_StanfordCars.json",
          ["a photo of a {}.", "a photo of the {}, a type of car.", "a photo of my {}."]),
    _zhou("sun397", "SUN397", "sun397", "SUN397", "split_zhou_SUN397.json",
          ["a photo of a {}.", "a photo of the {}."]),
    _zhou("ucf101", "UCF101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json",
          ["a photo of a person doing {}.", "a video frame of a person doing {}."]),
    DatasetSpec("fgvc_aircraft", "FGVC-Aircraft", "fgvc_aircraft",
                ["images", "variants.txt", "images_variant_train.txt", "images_variant_val.txt",
                 "images_variant_test.txt"], ["a photo of a {}, a type of aircraft."], read_aircraft,
                "<root>/fgvc_aircraft/{images/, variants.txt, images_variant_{train,val,test}.txt}"),
    DatasetSpec("cub200", "CUB-200-2011", "CUB_200_2011",
                ["images", "images.txt", "classes.txt", "image_class_labels.txt", "train_test_split.txt"],
                ["a photo of a {}, a type of bird."], read_cub,
                "<root>/CUB_200_2011/{images/, images.txt, classes.txt, image_class_labels.txt, train_test_split.txt}"),
    DatasetSpec("birdsnap", "Birdsnap", "birdsnap", ["download/images", "species.txt", "test_images.txt"],
                ["a photo of a {}, a type of bird."], read_birdsnap,
                "<root>/birdsnap/{download/images/<species>/, species.txt, test_images.txt}"),
    DatasetSpec("resisc45", "RESISC45", "NWPU-RESISC45", ["."],
                ["satellite imagery of {}.", "aerial imagery of {}.", "a satellite photo of the {}."],
                read_class_folders, "<root>/NWPU-RESISC45/<class>/*.jpg"),
    DatasetSpec("imagenet", "ImageNet", "imagenet", ["images/train", "images/val", "classnames.txt"],
                ["a photo of a {}.", "a bad photo of a {}.", "a photo of the large {}.", "a photo of the small {}.",
                 "a origami {}.", "a {} in a video game.", "art of the {}."], read_imagenet,
                "<root>/imagenet/{images/train/<wnid>/, images/val/<wnid>/, classnames.txt}", pool_per_class=50),
    DatasetSpec("imagefolder", "Image folder", ".", ["."], ["a photo of a {}."], read_class_folders,
                "<root>/<class>/* or <root>/{train,test}/<class>/*"),
    _fashion("fashion_mnist", "Fashion-MNIST", read_fashion_mnist),
    _fashion("fashion_mnist_shifted", "Fashion-MNIST (shifted target of the stand-in)", read_fashion_mnist_shifted),
    _fashion("fashion_mnist_scenes", "Fashion-MNIST scenes (small items on cluttered 84-px canvases)",
             read_fashion_mnist_scenes),
]}

PAPER_DATASETS = ["caltech101", "dtd", "eurosat", "fgvc_aircraft", "flowers102", "food101", "oxford_pets",
                  "stanford_cars", "sun397", "ucf101", "cub200", "birdsnap", "resisc45"]


def get_spec(name: str) -> DatasetSpec:
    """The catalog entry for `name`, or a one-line error listing the known names."""
    if name not in CATALOG:
        import difflib
        close = difflib.get_close_matches(name, list(CATALOG), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise FairError(f"unknown dataset {name!r} (data.dataset); {hint}known: {', '.join(CATALOG)}")
    spec = CATALOG[name]
    if name.startswith("fashion_mnist") and not spec.templates:
        from fair.data.fashion_mnist import TEMPLATES
        spec.templates = list(TEMPLATES)
    return spec


def default_root(spec: DatasetSpec) -> Path:
    """Where a dataset is looked for when data.root is not set: $FAIR_DATA_ROOT, or Debian's Fashion-MNIST."""
    import os
    if spec.name.startswith("fashion_mnist"):
        from fair.data.fashion_mnist import fashion_mnist_root
        return fashion_mnist_root()
    return Path(os.environ.get("FAIR_DATA_ROOT", "~/data")).expanduser()


def dataset_base(spec: DatasetSpec, root: str | None) -> Path:
    """<root>/<folder> for a spec (the folder itself for imagefolder and Fashion-MNIST)."""
    r = Path(root).expanduser() if root else default_root(spec)
    return r if spec.folder == "." else r / spec.folder


def missing_paths(spec: DatasetSpec, root: str | None) -> list[str]:
    """Every expected file or folder that is not there (empty: the dataset root is complete)."""
    base = dataset_base(spec, root)
    if not base.is_dir():
        return [str(base)]
    return [str(base / r) for r in spec.required if not (base / r).exists()]


def check_dataset(name: str, root: str | None) -> Path:
    """Raise a one-line FairError naming what is missing; return the dataset's folder when complete."""
    spec = get_spec(name)
    missing = missing_paths(spec, root)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        from fair.data.fashion_mnist import INSTALL_HINT
        # `fair data prepare` has a recipe for every paper dataset (a test holds fair.data.sources to that)
        fix = (f"get it with `fair data prepare {name} --root DIR`, then point data.root or FAIR_DATA_ROOT at DIR"
               if name in PAPER_DATASETS else INSTALL_HINT if name.startswith("fashion_mnist") else "set data.root")
        raise FairError(f"dataset {name} is incomplete: missing {shown}; expected layout {spec.layout}; {fix}")
    return dataset_base(spec, root)


def packaged_descriptions(spec: DatasetSpec) -> Path | None:
    """The CuPL file fair ships for a dataset, if any."""
    if not spec.descriptions:
        return None
    p = Path(__file__).resolve().parent.parent / "assets" / "descriptions" / spec.descriptions
    return p if p.is_file() else None
