"""Datasets: catalog, readers, the labelled validation split, views."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fair.config import DataConfig
from fair.data.catalog import check_dataset, get_spec, packaged_descriptions
from fair.data.images import ImageSet, cap_per_class, per_class_split
from fair.errors import FairError
from fair.io import sha256_file, sha256_json

log = logging.getLogger(__name__)
SPLIT_SEED = 0  # fixed: every trial of a sweep sees the same validation split
LOCAL_DESCRIPTIONS = "descriptions.json"  # in the dataset's folder: what `fair descriptions` import/generate write


@dataclass
class PreparedData:
    """A dataset ready for a run: classes, templates, descriptions file and the three splits."""
    name: str
    classnames: list[str]
    templates: list[str]
    descriptions_path: Path | None
    train: ImageSet    # the unlabelled pool (labels used for diagnostics only)
    val: ImageSet      # labelled, held out of train, for model selection only
    test: ImageSet
    split_sha256: str                                           # the split as used (refs + labels, caps applied)
    split_files: dict[str, str] = field(default_factory=dict)   # split/metadata file name -> its sha256


def prepare_data(cfg: DataConfig) -> PreparedData:
    """Read a dataset, hold out the validation split from its training pool, apply the caps."""
    spec = get_spec(cfg.dataset)
    base = check_dataset(cfg.dataset, cfg.root)
    raw = spec.reader(spec, base)
    C = len(raw.classnames)
    if cfg.val_per_class > 0:
        val_idx, rest = per_class_split(raw.train.labels, cfg.val_per_class, SPLIT_SEED)
        val, train = raw.train.subset(val_idx), raw.train.subset(rest)
    else:
        val, train = raw.train.subset([]), raw.train
    if spec.pool_per_class:      # e.g. ImageNet's 50 per class (spec), drawn after validation is held out
        train = train.subset(cap_per_class(train.labels, spec.pool_per_class, SPLIT_SEED))
    train = train.subset(cap_per_class(train.labels, cfg.train_per_class, SPLIT_SEED))
    test = raw.test.subset(cap_per_class(raw.test.labels, cfg.test_per_class, SPLIT_SEED))
    if len(train) == 0 or len(test) == 0:
        raise FairError(f"dataset {cfg.dataset} has an empty train or test split after the caps; "
                        f"raise data.train_per_class / data.test_per_class")
    desc = descriptions_path(cfg, spec, base)
    split_sha = sha256_json({s: [list(map(str, getattr(x, "refs"))), x.labels.tolist()]
                             for s, x in (("train", train), ("val", val), ("test", test))})
    log.info("%s: %d classes, %d train (unlabelled), %d val, %d test", cfg.dataset, C, len(train), len(val), len(test))
    split_files = {Path(f).name: sha256_file(f) for f in raw.split_files if Path(f).is_file()}
    return PreparedData(cfg.dataset, raw.classnames, list(cfg.templates or spec.templates), desc,
                        train, val, test, split_sha, split_files)


def descriptions_path(cfg: DataConfig, spec=None, base: Path | None = None) -> Path | None:
    """The descriptions file a run of `cfg` reads: data.descriptions, else the default (below)."""
    if cfg.descriptions:
        return Path(cfg.descriptions).expanduser()
    spec = spec or get_spec(cfg.dataset)
    return default_descriptions(spec, base if base is not None else check_dataset(cfg.dataset, cfg.root))


def default_descriptions(spec, base: Path) -> Path | None:
    """The descriptions file used when data.descriptions is unset: <base>/descriptions.json, else the packaged one."""
    local = Path(base) / LOCAL_DESCRIPTIONS
    return local if local.is_file() else packaged_descriptions(spec)


__all__ = ["PreparedData", "prepare_data", "descriptions_path", "default_descriptions", "ImageSet", "np"]
