"""`fair data prepare`: download (resumable, checksummed), extract safely, lay out and split a dataset.

The engine is generic; what each dataset needs (URLs, checksums, the archive members to keep, how its
split file is made, what a user must fetch by hand) is in `fair.data.sources`. Per dataset folder a small
state file (`.fair_prepare.json`) records what was extracted from which archive (with its sha256), so a
second run downloads nothing. Nothing is deleted or overwritten that a later step still needs: a partial
download stays as `<name>.part` and resumes with an HTTP Range request, a file whose checksum does not
match is moved aside to `<name>.corrupt`, and archives are extracted into a staging folder first.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import struct
import tarfile
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from fair.data.catalog import PAPER_DATASETS, dataset_base, get_spec, read_zhou_split
from fair.errors import FairError
from fair.io import atomic_write_text

log = logging.getLogger(__name__)

STATE_FILE = ".fair_prepare.json"
DOWNLOAD_DIR = ".download"
CHUNK = 1 << 20
ATTEMPTS = 3                  # tries per URL for a dropped connection (each resumes where the last stopped)
TIMEOUT = (20, 120)           # (connect, read) seconds
SPACE_MARGIN = 256 << 20      # bytes kept free beyond what a download or extraction needs
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


# ------------------------------------------------------------------------------------------ descriptions


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


# ------------------------------------------------------------------------------------------ small helpers


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _free_bytes(path: Path) -> int:
    """Free bytes on the file system holding `path` (its nearest existing parent)."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def check_space(path: Path, need: int | None, what: str) -> None:
    """Raise a one-line error when `need` bytes (plus a margin) do not fit next to `path`."""
    if not need:
        return
    free = _free_bytes(path)
    if free < need + SPACE_MARGIN:
        raise FairError(f"not enough disk space for {what}: it needs about {_human(need + SPACE_MARGIN)} and "
                        f"{path} has {_human(free)} free; free some space or pass another --root")


def _disk_full(e: OSError, what: str, kept: Path | None = None) -> FairError:
    keep = f"; what was written so far is kept in {kept} and the next run continues it" if kept else ""
    return FairError(f"the disk filled up while writing {what} ({e.strerror}){keep}; free some space and rerun")


def file_digests(path: Path) -> dict[str, str]:
    """sha256 and md5 of a file, in one pass."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            sha.update(chunk)
            md5.update(chunk)
    return {"sha256": sha.hexdigest(), "md5": md5.hexdigest()}


def disk_use(path: Path) -> int:
    """Bytes used by the files under `path`."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


# ------------------------------------------------------------------------------------------ download


def mirror_url(mirror: str, dataset: str, name: str) -> str:
    """Where a --mirror keeps a dataset's file: <mirror>/<dataset>/<file name>."""
    return f"{mirror.rstrip('/')}/{dataset}/{name}"


def _content_total(resp, have: int) -> int | None:
    """The full size of the file a (possibly partial) response belongs to, if the server says."""
    rng = resp.headers.get("Content-Range", "")
    if "/" in rng and rng.rsplit("/", 1)[1].strip().isdigit():
        return int(rng.rsplit("/", 1)[1])
    length = resp.headers.get("Content-Length")
    return have + int(length) if length and length.isdigit() else None


def _looks_like_a_web_page(resp, name: str) -> bool:
    """A login, quota or error page served instead of the file (Google Drive, captive portals)."""
    ctype = resp.headers.get("Content-Type", "")
    return ctype.startswith("text/html") and not name.endswith((".html", ".htm"))


def _stream(session, url: str, part: Path, name: str, size_hint: int | None, progress: bool) -> None:
    """One GET of `url` into `part`, resuming from its current size with a Range request."""
    from tqdm import tqdm
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with session.get(url, headers=headers, stream=True, timeout=TIMEOUT) as resp:
        if resp.status_code == 416 and have:           # nothing left to send: the part may be complete
            total = _content_total(resp, 0)
            if total == have:
                return
            part.unlink()
            raise ConnectionError("the server refused to resume; starting over")
        resp.raise_for_status()
        if _looks_like_a_web_page(resp, name):
            raise _NotTheFile("the server answered with a web page instead of the file "
                              "(a sign-in, quota or error page)")
        if have and resp.status_code != 206:           # the server ignored Range: start over
            have = 0
        total = _content_total(resp, have)
        check_space(part.parent, (total - have) if total else size_hint, name)
        log.info("downloading %s from %s%s", name, url, f" (resuming at {_human(have)})" if have else "")
        try:
            with open(part, "ab" if have else "wb") as fh, tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                    leave=False, disable=None if progress else True) as bar:
                for chunk in resp.iter_content(CHUNK):
                    fh.write(chunk)
                    bar.update(len(chunk))
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise _disk_full(e, name, part) from None
            raise
    got = part.stat().st_size
    if total and got < total:
        raise ConnectionError(f"the connection closed after {_human(got)} of {_human(total)}")


class _NotTheFile(Exception):
    """The URL answered, but not with the file (try the next URL, never retry this one)."""


def download(session, urls: list[str], dest: Path, size_hint: int | None, progress: bool) -> str:
    """Download the first of `urls` that works into `dest` (via `<dest>.part`); return the URL used.

    Dropped connections are retried with a Range request from where they stopped; a URL that refuses
    (HTTP error, a web page instead of the file) moves on to the next URL. Raises ConnectionError with
    what each URL answered when none worked.
    """
    import requests
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    errors = []
    for url in urls:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                _stream(session, url, part, dest.name, size_hint, progress)
                os.replace(part, dest)
                return url
            except (requests.HTTPError, _NotTheFile) as e:
                code = getattr(getattr(e, "response", None), "status_code", None)
                errors.append(f"{url}: {f'HTTP {code}' if code else e}")
                if code is not None and code >= 500 and attempt < ATTEMPTS:
                    time.sleep(0.5 * attempt)
                    continue
                break
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                    ConnectionError) as e:
                if attempt < ATTEMPTS:
                    log.info("%s: %s; retrying (%d/%d)", dest.name, type(e).__name__, attempt, ATTEMPTS - 1)
                    time.sleep(0.2 * attempt)
                    continue
                errors.append(f"{url}: {type(e).__name__}")
    raise ConnectionError("; ".join(errors) or "no URL to try")


# ------------------------------------------------------------------------------------------ extraction


def _safe_target(dest: Path, member: str) -> Path:
    """Where an archive member lands under `dest`; raise for absolute paths and `..` escapes."""
    target = (dest / member).resolve()
    root = dest.resolve()
    if member.startswith(("/", "\\")) or (target != root and root not in target.parents):
        raise FairError(f"archive member {member!r} would land outside {dest}; the archive is not safe to extract")
    return target


def _extract_tar(path: Path, dest: Path) -> None:
    with tarfile.open(path) as tar:
        members = []
        for m in tar.getmembers():
            _safe_target(dest, m.name)
            if m.issym() or m.islnk():
                if os.path.isabs(m.linkname) or ".." in Path(m.linkname).parts:
                    raise FairError(f"archive link {m.name!r} -> {m.linkname!r} points outside the archive; "
                                    f"not extracting {path.name}")
            elif not (m.isfile() or m.isdir()):
                continue                                   # devices, fifos: never
            members.append(m)
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
        else:  # pragma: no cover - Python < 3.11.4
            tar.extractall(dest, members=members)


def _extract_zip(path: Path, dest: Path) -> None:
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            _safe_target(dest, info.filename)
        zf.extractall(dest)


def _extract_rar(path: Path, dest: Path) -> None:
    """RAR (RESISC45's official archive) needs an external tool: unrar, 7z or bsdtar."""
    import subprocess
    for tool, args in (("unrar", ["x", "-o+", "-idq", str(path), str(dest) + os.sep]),
                       ("7z", ["x", "-y", f"-o{dest}", str(path)]), ("bsdtar", ["-xf", str(path), "-C", str(dest)])):
        exe = shutil.which(tool)
        if exe:
            res = subprocess.run([exe, *args], capture_output=True, text=True)
            if res.returncode != 0:
                raise FairError(f"{tool} could not extract {path.name} ({(res.stderr or res.stdout).strip()[-200:]})")
            return
    raise FairError(f"{path.name} is a RAR archive and no extractor is installed: install unrar, 7z (p7zip-full) "
                    f"or bsdtar (libarchive-tools), or extract it yourself next to it, then rerun")


def extract_archive(path: Path, dest: Path) -> None:
    """Extract a tar (any compression), zip or rar into `dest`, refusing members that escape it."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if path.suffix.lower() == ".rar":
            _extract_rar(path, dest)
        elif zipfile.is_zipfile(path):
            _extract_zip(path, dest)
        elif tarfile.is_tarfile(path):
            _extract_tar(path, dest)
        else:
            raise FairError(f"{path.name} is neither a tar nor a zip archive")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise FairError(f"{path.name} is a damaged archive ({type(e).__name__}: {e})") from None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise _disk_full(e, f"the files of {path.name}") from None
        raise


def _find(staging: Path, src: str) -> Path | None:
    """`src` inside the extracted tree; `**/NAME` finds NAME at any depth (the shallowest)."""
    if src.startswith("**/"):
        hits = sorted(staging.rglob(src[3:]), key=lambda p: (len(p.parts), str(p)))
        return hits[0] if hits else None
    p = staging / src
    return p if p.exists() else None


def _replace(src: Path, dst: Path) -> None:
    """Move src to dst, replacing whatever a previous, unfinished run left there."""
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    elif dst.exists() or dst.is_symlink():
        dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(src), str(dst))


# ------------------------------------------------------------------------------------------ MAT files


_MI = {1: "i1", 2: "u1", 3: "<i2", 4: "<u2", 5: "<i4", 6: "<u4", 7: "<f4", 9: "<f8", 12: "<i8", 13: "<u8"}


def _mat_elements(buf: bytes):
    """(type, payload) of the data elements of a little-endian MAT v5 stream."""
    pos = 0
    while pos + 8 <= len(buf):
        mtype, nbytes = struct.unpack_from("<II", buf, pos)
        if mtype >> 16:                                    # small element: 4 bytes of data in the tag
            yield mtype & 0xFFFF, buf[pos + 4: pos + 4 + (mtype >> 16)]
            pos += 8
            continue
        yield mtype, buf[pos + 8: pos + 8 + nbytes]
        pos += 8 + nbytes + (-nbytes % 8 if mtype != 15 else 0)


def read_mat_array(path: Path, var: str) -> np.ndarray:
    """A numeric variable of a MATLAB v5 file (as the Flowers labels are), without scipy; flattened."""
    buf = path.read_bytes()
    if len(buf) < 128 or buf[126:128] != b"IM":
        raise FairError(f"{path.name} is not a little-endian MATLAB v5 file; re-download it")
    todo = list(_mat_elements(buf[128:]))
    while todo:
        mtype, data = todo.pop(0)
        if mtype == 15:                                    # miCOMPRESSED: one more element inside
            todo[:0] = list(_mat_elements(zlib.decompress(data)))
            continue
        if mtype != 14:                                    # only miMATRIX elements hold variables
            continue
        sub = list(_mat_elements(data))
        if len(sub) < 4:
            continue
        name = sub[2][1].decode("latin-1")
        if name == var and sub[3][0] in _MI:
            return np.frombuffer(sub[3][1], dtype=_MI[sub[3][0]]).astype(np.float64)
    raise FairError(f"{path.name} has no numeric variable {var!r}; is it the right file?")


# ------------------------------------------------------------------------------------------ split files


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


def split_counts(data: dict) -> tuple[int, int, int, int]:
    """(classes, train, val, test) of a split_zhou dict."""
    labels = {int(i[1]) for part in ("train", "val", "test") for i in data.get(part, [])}
    return len(labels), len(data.get("train", [])), len(data.get("val", [])), len(data["test"])


# ------------------------------------------------------------------------------------------ one dataset


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
                raise _disk_full(e, str(self.state_path)) from None
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
                inner_path = _find(staging, inner)
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
        found = {src: _find(tree, src) for src in moves}
        for src, p in found.items():
            if p is None:
                self._not_in_archive(archive, tree, src)
        outputs = []
        for src, dst in moves.items():
            if dst == ".":
                for child in sorted(found[src].iterdir()):
                    _replace(child, self.base / child.name)
                    outputs.append(child.name)
            else:
                _replace(found[src], self.base / dst)
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
                _replace(path, target)
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
        _replace(path, target)
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
                raise _disk_full(e, name) from None
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


# ------------------------------------------------------------------------------------------ verification


def verify_dataset(name: str, root: Path) -> Outcome:
    """The catalog's check plus reading the split: every named image must exist. Counts for the summary."""
    from fair.data.catalog import check_dataset
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


def resolve_mirror(mirror: str | None) -> str | None:
    """--mirror, else $FAIR_DATA_MIRROR, else None."""
    return mirror or os.environ.get("FAIR_DATA_MIRROR") or None


def _session():
    import requests
    s = requests.Session()
    s.headers["User-Agent"] = "fair-data-prepare/1 (+python-requests)"
    return s


def prepare_one(name: str, root: Path, mirror: str | None = None, keep_archives: bool = False,
                progress: bool = True, session=None) -> Outcome:
    """Prepare one dataset (idempotent); raise FairError with one line when it cannot be completed."""
    from fair.data.sources import SOURCES
    if name not in SOURCES:
        get_spec(name)                                   # unknown names get the catalog's did-you-mean
        raise FairError(f"`fair data prepare` does not know how to get {name!r}; it prepares "
                        f"{', '.join(PAPER_DATASETS)} (or `all`)")
    job = Job(SOURCES[name], root, mirror, session or _session(), keep_archives, progress)
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
    from fair.data.catalog import default_root
    if names == ["all"]:
        names = list(PAPER_DATASETS)
    top = Path(root).expanduser() if root else default_root(get_spec(names[0]))
    mirror = resolve_mirror(mirror)
    session = _session()
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
    from fair.data import default_descriptions
    rows = [("dataset", "status", "classes", "train", "val", "test", "disk", "descriptions", "folder")]
    missing = []
    for o in outcomes:
        status = o.status if o.ok else "NOT READY"
        desc = default_descriptions(get_spec(o.name), o.base) if o.ok else None
        if o.ok and desc is None:
            missing.append(o.name)
        rows.append((o.name, status, n(o.classes), n(o.train), n(o.val), n(o.test),
                     "-" if o.disk_bytes is None else _human(o.disk_bytes),
                     "-" if not o.ok else (desc.name if desc else "none yet"), str(o.base)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
    if missing:   # FAIR and WCA need them (a sweep refuses to start without): say how to get them
        table += (f"\nno descriptions yet for {', '.join(missing)}: `fair descriptions import CUPL.json --dataset "
                  f"NAME` or `fair descriptions generate --dataset NAME --model M` (docs/descriptions.md)")
    return table


def is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")


__all__ = ["Remote", "Source", "Job", "Outcome", "prepare", "prepare_one", "summary_table", "verify_dataset",
           "extract_archive", "download", "read_mat_array", "check_split", "is_image"]
