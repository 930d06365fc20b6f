"""Extracting downloaded archives (tar of any compression, zip, rar) without letting a member escape."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tarfile
import zipfile
import zlib
from pathlib import Path

from fair.data.disk import disk_full
from fair.errors import FairError


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
            raise disk_full(e, f"the files of {path.name}") from None
        raise


def find_member(staging: Path, src: str) -> Path | None:
    """`src` inside the extracted tree; `**/NAME` finds NAME at any depth (the shallowest)."""
    if src.startswith("**/"):
        hits = sorted(staging.rglob(src[3:]), key=lambda p: (len(p.parts), str(p)))
        return hits[0] if hits else None
    p = staging / src
    return p if p.exists() else None


