"""`fair data prepare`: download, extract, lay out and split datasets, then check and summarise them.

What each dataset needs (URLs, checksums, the archive members to keep, how its split file is made,
what a user must fetch by hand) is in `fair.data.sources`; the toolbox its recipe uses (`Job`) is in
`fair.data.recipe`, downloads in `fair.data.download`, extraction in `fair.data.archives`.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from fair.data import default_descriptions
from fair.data.catalog import PAPER_DATASETS, check_dataset, dataset_base, default_root, get_spec, read_zhou_split
from fair.data.disk import disk_use, human_bytes
from fair.data.download import http_session, resolve_mirror
from fair.data.recipe import Job
from fair.data.sources import SOURCES
from fair.errors import FairError

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """One dataset's result, for the summary table."""
    name: str
    status: str                                # "ok", "already prepared", or the one-line error
    base: Path
    classes: int | None = None
    train: int | None = None
    val: int | None = None
    test: int | None = None
    disk_bytes: int | None = None
    downloads: int = 0

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "already prepared")


# ------------------------------------------------------------------------------------------ verification


def verify_dataset(name: str, root: Path) -> Outcome:
    """The catalog's check plus reading the split: every named image must exist. Counts for the summary."""
    spec = get_spec(name)
    base = check_dataset(name, str(root))
    raw = spec.reader(spec, base)
    refs = [r for r in list(raw.train.refs) + list(raw.test.refs) if isinstance(r, str)]
    missing = [r for r in refs if not os.path.isfile(r)]
    if missing:
        raise FairError(f"{name}: {len(missing)} of {len(refs)} images named by the split are missing, e.g. "
                        f"{missing[0]}; rerun `fair data prepare {name}` or re-extract the images into {base}")
    if len(raw.train) == 0 or len(raw.test) == 0:
        raise FairError(f"{name}: the train or test split is empty; check {base}")
    val = None
    train = len(raw.train)
    if spec.reader is read_zhou_split:
        data = json.loads((base / spec.required[1]).read_text())
        val = len(data.get("val", []))
        train -= val
    elif name == "fgvc_aircraft":
        val = sum(1 for ln in (base / "images_variant_val.txt").read_text().splitlines() if ln.strip())
        train -= val
    return Outcome(name, "ok", base, len(raw.classnames), train, val, len(raw.test), disk_use(base))


# ------------------------------------------------------------------------------------------ entry point


def prepare_one(name: str, root: Path, mirror: str | None = None, keep_archives: bool = False,
                progress: bool = True, session=None) -> Outcome:
    """Prepare one dataset (idempotent); raise FairError with one line when it cannot be completed."""
    if name not in SOURCES:
        get_spec(name)                                   # unknown names get the catalog's did-you-mean
        raise FairError(f"`fair data prepare` does not know how to get {name!r}; it prepares "
                        f"{', '.join(PAPER_DATASETS)} (or `all`)")
    job = Job(SOURCES[name], root, mirror, session or http_session(), keep_archives, progress)
    if job.state.get("complete"):
        try:
            out = verify_dataset(name, root)
            out.status = "already prepared"
            return out
        except FairError as e:
            log.info("%s: the prepared folder changed (%s); preparing it again", name, e)
            job.state["complete"] = False
    job.base.mkdir(parents=True, exist_ok=True)
    job.require_by_hand()
    job.source.recipe(job)
    out = verify_dataset(name, root)
    job.state["complete"] = True
    job.state["summary"] = {"classes": out.classes, "train": out.train, "val": out.val, "test": out.test}
    job.save_state()
    out.downloads = job.downloads
    return out


def prepare(names: list[str], root: str | None, mirror: str | None = None, keep_archives: bool = False,
            progress: bool = True) -> list[Outcome]:
    """Prepare each dataset in turn; a failure is recorded in its Outcome and the others still run."""
    if names == ["all"]:
        names = list(PAPER_DATASETS)
    top = Path(root).expanduser() if root else default_root(get_spec(names[0]))
    mirror = resolve_mirror(mirror)
    session = http_session()
    outcomes = []
    for name in names:
        base = dataset_base(get_spec(name), str(top))
        try:
            outcomes.append(prepare_one(name, top, mirror, keep_archives, progress, session))
        except FairError as e:
            outcomes.append(Outcome(name, str(e), base))
        log.info("%s: %s", name, outcomes[-1].status if outcomes[-1].ok else "not ready")
    return outcomes


def summary_table(outcomes: list[Outcome]) -> str:
    """The per-dataset table `fair data prepare` prints: status, classes, images per split, disk use."""
    def n(x):
        return "-" if x is None else str(x)
    rows = [("dataset", "status", "classes", "train", "val", "test", "disk", "descriptions", "folder")]
    missing = []
    for o in outcomes:
        status = o.status if o.ok else "NOT READY"
        desc = default_descriptions(get_spec(o.name), o.base) if o.ok else None
        if o.ok and desc is None:
            missing.append(o.name)
        rows.append((o.name, status, n(o.classes), n(o.train), n(o.val), n(o.test),
                     "-" if o.disk_bytes is None else human_bytes(o.disk_bytes),
                     "-" if not o.ok else (desc.name if desc else "none yet"), str(o.base)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
    if missing:   # FAIR and WCA need them (a sweep refuses to start without): say how to get them
        table += (f"\nno descriptions yet for {', '.join(missing)}: `fair descriptions import CUPL.json --dataset "
                  f"NAME` or `fair descriptions generate --dataset NAME --model M` (docs/descriptions.md)")
    return table


