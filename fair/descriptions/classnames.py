"""A dataset's class names, and how a descriptions file's keys are matched to them for a run."""
from __future__ import annotations

import json
from pathlib import Path

from fair.data import default_descriptions
from fair.data.catalog import check_dataset, dataset_base, get_spec
from fair.errors import FairError


def read_classnames(path: str | Path) -> list[str]:
    """A class list: a JSON list of names, or one name a line (blank lines and `#` comments skipped)."""
    p = Path(path).expanduser()
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise FairError(f"cannot read the class list {str(p)!r} ({type(e).__name__}); pass a text file with "
                        f"one class name a line") from None
    if text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except json.JSONDecodeError:
            raise FairError(f"class list {str(p)!r} starts like JSON but is not valid JSON") from None
        if not all(isinstance(n, str) for n in names):
            raise FairError(f"class list {str(p)!r} must be a JSON list of strings")
    else:
        names = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not names:
        raise FairError(f"class list {str(p)!r} is empty")
    return [n.strip() for n in names]


def dataset_classnames(dataset: str, root: str | None, classes_file: str | None = None) -> tuple[list[str], Path]:
    """The catalog's class names for `dataset` (from its files under `root`, or `classes_file`) and its folder."""
    spec = get_spec(dataset)
    if classes_file:
        return read_classnames(classes_file), dataset_base(spec, root)
    base = check_dataset(dataset, root)
    raw = spec.reader(spec, base)
    return list(raw.classnames), base


def default_descriptions_path(dataset: str, root: str | None) -> Path | None:
    """The file a run of `dataset` would use with data.descriptions unset (see fair.data)."""
    spec = get_spec(dataset)
    return default_descriptions(spec, dataset_base(spec, root))


def _loose(name: str) -> str:
    return name.lower().replace("_", " ").strip()


def match_classes(keys: list[str], classnames: list[str]) -> tuple[dict[str, str | None], dict[str, list[str]]]:
    """How a run finds each class in a descriptions file: its key, exactly, else ignoring case and underscores.

    Returns ({class: key or None}, {class: [keys]} for each class that several keys name, e.g. both
    "red square" and "Red_Square"; such a file is ambiguous and a run refuses it).
    """
    by_loose: dict[str, list[str]] = {}
    for k in keys:
        by_loose.setdefault(_loose(k), []).append(k)
    found, several = {}, {}
    for c in classnames:
        named = by_loose.get(_loose(c), [])
        found[c] = c if c in named else (named[-1] if named else None)
        if len(named) > 1:
            several[c] = named
    return found, several
