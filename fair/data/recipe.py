"""What a dataset's recipe in `fair.data.sources` works with: its files (`Remote`), its `Source`, and the `Job`.

A `Job` prepares one dataset folder: it fetches a file (placed by hand, else downloaded and checked
against the published checksum), extracts archives through a staging folder, writes the split file
and its sidecar, and keeps a small state file (`.fair_prepare.json`) recording what was extracted from
which archive (with its sha256), so a second run downloads nothing. Nothing a later step still needs
is deleted or overwritten: a file whose checksum does not match is moved aside to `<name>.corrupt`.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from fair.data.archives import extract_archive, find_member
from fair.data.catalog import dataset_base, get_spec
from fair.data.disk import check_space, disk_full, file_digests, replace_path
from fair.data.download import download, mirror_url
from fair.errors import FairError
from fair.io import atomic_write_text

log = logging.getLogger(__name__)

STATE_FILE = ".fair_prepare.json"
DOWNLOAD_DIR = ".download"


@dataclass
class Remote:
    """One file a dataset needs: where to get it and how to recognise it."""
    name: str                                  # local file name (and its name on a --mirror)
    urls: list[str] = field(default_factory=list)  # tried in order; empty: only a user can obtain it
    checksum: str | None = None                # "sha256:<hex>" or "md5:<hex>" as published; None: unknown
    size: int | None = None                    # approximate bytes, for the free-space check only
    how: str = ""                              # where a user gets it by hand when no URL works
    optional: bool = False                     # not needed when the recipe has another way (e.g. a split file)
    provides: list[str] = field(default_factory=list)  # what it extracts to, under the dataset folder: a user
    #                                            who placed those (already extracted) needs no archive


@dataclass
class Source:
    """Everything `prepare` knows about one dataset."""
    name: str                                  # catalog name
    homepage: str
    remotes: list[Remote]
    recipe: Callable[["Job"], None]            # fetches, extracts, lays out and writes the split
    split: str                                 # how the split is made (docs and the split's sidecar)
    manual: str = ""                           # what a user must place by hand ("" = nothing)

    def remote(self, name: str) -> Remote:
        for r in self.remotes:
            if r.name == name:
                return r
        raise KeyError(f"{self.name}: no remote file {name!r}")


def check_split(path: Path) -> dict:
    """Load a split_zhou file and check its form: {"train"|"val"|"test": [[path, label, class], ...]}."""
    try:
        data = json.loads(path.read_text())
        assert isinstance(data, dict) and data.get("train") and data.get("test")
        for part in ("train", "val", "test"):
            for item in data.get(part, []):
                assert len(item) == 3 and isinstance(item[0], str) and int(item[1]) >= 0
    except (OSError, ValueError, AssertionError, TypeError):
        raise FairError(f"{path} is not a split_zhou file ({{'train': [[path, label, class], ...], ...}})") from None
    return data





class Job:
    """Preparing one dataset: its folder, its state file, the HTTP session; the recipe's toolbox."""

    def __init__(self, source: Source, root: Path, mirror: str | None, session, keep_archives: bool,
                 progress: bool):
        self.source, self.spec = source, get_spec(source.name)
        self.root, self.base = root, dataset_base(self.spec, str(root))
        self.mirror, self.session = mirror, session
        self.keep_archives, self.progress = keep_archives, progress
        self.state_path = self.base / STATE_FILE
        self.state = self._load_state()
        self.downloads = 0

    # ---- state

    def _load_state(self) -> dict:
        try:
            state = json.loads(self.state_path.read_text())
            if isinstance(state, dict) and state.get("dataset") == self.source.name:
                state.setdefault("files", {})
                return state
        except (OSError, ValueError):
            pass
        return {"dataset": self.source.name, "files": {}, "complete": False}

    def save_state(self) -> None:
        try:
            atomic_write_text(self.state_path, json.dumps(self.state, indent=1, sort_keys=True))
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise disk_full(e, str(self.state_path)) from None
            raise

    def done(self, name: str) -> bool:
        """Whether `name` was already extracted or placed and everything it produced is still there."""
        outputs = (self.state["files"].get(name) or {}).get("outputs")
        return bool(outputs) and all((self.base / o).exists() for o in outputs)

    # ---- files

    def urls(self, remote: Remote) -> list[str]:
        """A remote's URLs; with a mirror, only its copy on the mirror (never for files without a source)."""
        if not remote.urls:
            return []
        if self.mirror:
            return [mirror_url(self.mirror, self.source.name, remote.name)]
        return list(remote.urls)

    def placed(self, remote: Remote) -> Path | None:
        """A copy of the file already here: downloaded earlier, or put by the user in the dataset or data root."""
        for p in (self.base / DOWNLOAD_DIR / remote.name, self.base / remote.name, self.root / remote.name):
            if p.is_file():
                return p
        return None

    def hand_instructions(self, remote: Remote) -> str:
        how = remote.how or (f"download it from {remote.urls[0]}" if remote.urls else "obtain it")
        return f"{remote.name} ({how})"

    def verify(self, path: Path, remote: Remote) -> dict[str, str]:
        """Digests of `path`; a mismatch with the published checksum moves it aside and raises."""
        digests = file_digests(path)
        if remote.checksum:
            algo, want = remote.checksum.split(":", 1)
            if digests[algo] != want.lower():
                corrupt = path.with_name(path.name + ".corrupt")
                os.replace(path, corrupt)
                raise FairError(f"{self.source.name}: {remote.name} does not match its checksum ({algo} "
                                f"{digests[algo][:12]}... instead of {want[:12]}...); it was moved aside to "
                                f"{corrupt} and not used; rerun to download it again")
        else:
            log.info("%s: %s has no published checksum; recorded sha256 %s", self.source.name, remote.name,
                     digests["sha256"])
        return digests

    def fetch(self, name: str) -> Path | None:
        """A verified local copy of remote `name`, downloaded if needed.

        Returns None for an optional file no URL could deliver; for a needed one raises a one-line error
        that says which URL failed and where to put the file by hand.
        """
        remote = self.source.remote(name)
        path = self.placed(remote)
        url = "placed by hand"
        if path is None:
            urls = self.urls(remote)
            if not urls:
                if remote.optional:
                    return None
                raise FairError(f"{self.source.name}: {remote.name} cannot be downloaded: get "
                                f"{self.hand_instructions(remote)} and put it in {self.base}/; then rerun")
            dest = self.base / DOWNLOAD_DIR / remote.name
            check_space(dest.parent, remote.size, remote.name)
            try:
                url = download(self.session, urls, dest, remote.size, self.progress)
            except ConnectionError as e:
                if remote.optional:
                    log.info("%s: %s not available (%s)", self.source.name, remote.name, e)
                    return None
                raise FairError(f"{self.source.name}: could not download {remote.name} ({e}); check the network "
                                f"or a proxy (--mirror / FAIR_DATA_MIRROR), or get {self.hand_instructions(remote)} "
                                f"and put it in {self.base}/, then rerun") from None
            self.downloads += 1
            path = dest
        digests = self.verify(path, remote)
        self.state["files"][name] = {"sha256": digests["sha256"], "source": url, "outputs": []}
        return path

    def _discard(self, path: Path) -> None:
        """Delete a downloaded archive once extracted (files the user placed are left alone)."""
        if not self.keep_archives and path.parent.name == DOWNLOAD_DIR:
            path.unlink(missing_ok=True)

    def unpack(self, name: str, moves: dict[str, str], inner: str | None = None) -> None:
        """Extract archive `name` and move its members into the dataset folder.

        `moves` maps a path inside the archive (`**/NAME`: at any depth) to a path under the dataset
        folder; `.` as target moves the member's contents into the folder itself. `inner` names an archive
        inside the archive whose contents the moves apply to (Caltech101's tar.gz inside a zip).
        Skipped when done before; accepted as is when every target already exists (placed by hand).
        """
        targets = [d for d in moves.values() if d != "."]
        if self.done(name):
            return
        if targets and len(targets) == len(moves) and all((self.base / d).exists() for d in targets) \
                and name not in self.state["files"] and self.placed(self.source.remote(name)) is None:
            self.state["files"][name] = {"source": "extracted by hand", "outputs": targets}
            self.save_state()
            return
        path = self.fetch(name)
        if path is None:
            raise FairError(f"{self.source.name}: {name} is needed and could not be obtained")
        staging = self.base / f".staging-{name}"
        shutil.rmtree(staging, ignore_errors=True)
        check_space(self.base, path.stat().st_size, f"extracting {name}")
        log.info("%s: extracting %s", self.source.name, name)
        try:
            extract_archive(path, staging)
            tree = staging
            if inner:
                inner_path = find_member(staging, inner)
                if inner_path is None:
                    self._not_in_archive(path, staging, inner)
                tree = staging / ".inner"
                extract_archive(inner_path, tree)
            outputs = self._move(path, tree, staging, moves)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.state["files"][name]["outputs"] = outputs
        self.save_state()
        self._discard(path)

    def _move(self, archive: Path, tree: Path, staging: Path, moves: dict[str, str]) -> list[str]:
        found = {src: find_member(tree, src) for src in moves}
        for src, p in found.items():
            if p is None:
                self._not_in_archive(archive, tree, src)
        outputs = []
        for src, dst in moves.items():
            if dst == ".":
                for child in sorted(found[src].iterdir()):
                    replace_path(child, self.base / child.name)
                    outputs.append(child.name)
            else:
                replace_path(found[src], self.base / dst)
                outputs.append(dst)
        return outputs

    def _not_in_archive(self, archive: Path, tree: Path, src: str) -> None:
        top = sorted(p.name for p in tree.iterdir())[:6] if tree.is_dir() else []
        corrupt = archive.with_name(archive.name + ".corrupt")
        os.replace(archive, corrupt)
        self.state["files"].pop(archive.name, None)
        raise FairError(f"{self.source.name}: archive {archive.name} does not contain {src!r}, which the catalog "
                        f"layout needs (its top level: {', '.join(top) or 'nothing'}); it was moved aside to "
                        f"{corrupt}; check the source or the mirror and rerun")

    def place(self, name: str, dst: str | None = None) -> Path:
        """Put plain file `name` (not an archive) at `<base>/<dst>`; skipped when done before."""
        dst = dst or name
        if self.done(name):
            return self.base / dst
        path = self.fetch(name)
        if path is None:
            raise FairError(f"{self.source.name}: {name} is needed and could not be obtained")
        target = self.base / dst
        if path.resolve() != target.resolve():
            if path.parent.name == DOWNLOAD_DIR:
                replace_path(path, target)
            else:
                shutil.copy2(path, target)
        self.state["files"][name]["outputs"] = [dst]
        self.save_state()
        return target

    # ---- the split

    @property
    def split_name(self) -> str:
        """The catalog's split file name (split_zhou_*.json) of this dataset."""
        return self.spec.required[1]

    def fetch_split(self) -> bool:
        """The split file from its source (CoOp's, on Google Drive) or as placed by hand; False if neither."""
        name, target = self.split_name, self.base / self.split_name
        if self.done(name):
            return True
        if target.is_file():
            check_split(target)
            self._split_meta({"made": "placed by hand"}, name)
            return True
        remote = self.source.remote(name)
        path = self.fetch(name)
        if path is None:
            return False
        try:
            check_split(path)
        except FairError as e:
            log.warning("%s: the downloaded %s is not usable (%s); making the split instead", self.source.name,
                        name, e)
            path.unlink(missing_ok=True)
            self.state["files"].pop(name, None)
            return False
        replace_path(path, target)
        self._split_meta({"made": "downloaded", "source": self.state["files"][name]["source"],
                          "sha256": self.state["files"][name]["sha256"], "published_checksum": remote.checksum},
                         name)
        return True

    def write_split(self, split: dict, seed: int | None) -> None:
        """Write a generated split file (atomically) and its sidecar saying by which rule it was made."""
        name = self.split_name
        try:
            atomic_write_text(self.base / name, json.dumps(split))
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise disk_full(e, name) from None
            raise
        digest = file_digests(self.base / name)["sha256"]
        self.state["files"][name] = {"sha256": digest, "source": "generated", "outputs": [name]}
        self._split_meta({"made": "generated", "rule": self.source.split, "seed": seed, "sha256": digest,
                          "note": "made by the rule of CoOp's split from the official metadata; CoOp's own file "
                                  "(when it can be downloaded) assigns other images to train/val/test"}, name)

    def _split_meta(self, meta: dict, name: str) -> None:
        meta = {"dataset": self.source.name, "file": name, **meta,
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        atomic_write_text(self.base / f"{name}.meta.json", json.dumps(meta, indent=1))
        self.state["split"] = meta
        entry = self.state["files"].setdefault(name, {"source": meta["made"]})
        entry["outputs"] = [name]
        self.save_state()

    def split_or(self, make: Callable[[], dict], seed: int | None = None) -> None:
        """The published split when it can be had, else `make()` (the dataset's rule) written out."""
        if not self.fetch_split():
            log.info("%s: making %s (%s)", self.source.name, self.split_name, self.source.split)
            self.write_split(make(), seed)

    # ---- manual files

    def require_by_hand(self) -> None:
        """One error listing every file only a user can fetch that is not here yet (before any download)."""
        missing = []
        for r in self.source.remotes:
            if r.urls or r.optional or self.done(r.name) or self.placed(r) is not None:
                continue
            if r.provides and all((self.base / p).exists() for p in r.provides):
                continue
            missing.append(r)
        if missing:
            names = ", ".join(r.name for r in missing)
            hows = "; ".join(self.hand_instructions(r) for r in missing)
            raise FairError(f"{self.source.name} needs files that cannot be downloaded automatically: put "
                            f"{names} in {self.base}/ (get {hows}); then rerun `fair data prepare "
                            f"{self.source.name}`")

