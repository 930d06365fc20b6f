"""Disk space, sizes and digests of what `fair data prepare` downloads and extracts."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from fair.errors import FairError

CHUNK = 1 << 20               # bytes read at a time when hashing
SPACE_MARGIN = 256 << 20      # bytes kept free beyond what a download or extraction needs


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KB'."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def free_bytes(path: Path) -> int:
    """Free bytes on the file system holding `path` (its nearest existing parent)."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def check_space(path: Path, need: int | None, what: str) -> None:
    """Raise a one-line error when `need` bytes (plus a margin) do not fit next to `path`."""
    if not need:
        return
    free = free_bytes(path)
    if free < need + SPACE_MARGIN:
        raise FairError(f"not enough disk space for {what}: it needs about {human_bytes(need + SPACE_MARGIN)} and "
                        f"{path} has {human_bytes(free)} free; free some space or pass another --root")


def disk_full(e: OSError, what: str, kept: Path | None = None) -> FairError:
    """The one-line error for a write that filled the disk (`kept`: the partial file the next run continues)."""
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


def replace_path(src: Path, dst: Path) -> None:
    """Move src to dst, replacing whatever a previous, unfinished run left there."""
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    elif dst.exists() or dst.is_symlink():
        dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(src), str(dst))

