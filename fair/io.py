"""Small file helpers: atomic writes (a reader never sees a half-written file), hashing, JSON lines.

`atomic_path` is fair's one atomic writer (every other write of fair's own files goes through it). The
storage layer of sweeps and tables has its own in `results.store`: `fair` never imports `results` and
`results` never imports `fair`, so each layer keeps exactly one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


# mkstemp creates files 0600; results are meant to be read by a team on shared storage, so the final file
# gets the mode an ordinary open() would give it (0666 less the umask, read once here).
_UMASK = os.umask(0o022)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


@contextlib.contextmanager
def atomic_path(path: str | Path, mode: int = FILE_MODE) -> Iterator[Path]:
    """A temp file beside `path` for the caller to fill (by name: numpy memmaps, safetensors); when the block
    ends it gets `mode` and is renamed onto `path` in one step; when the block raises it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with contextlib.suppress(OSError):     # some network/FUSE mounts refuse chmod: keep mkstemp's mode
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Write `data` to `path` via a temp file in the same folder and an atomic rename."""
    with atomic_path(path, mode) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_text(path: str | Path, text: str, mode: int = FILE_MODE) -> None:
    atomic_write_bytes(path, text.encode(), mode)


def atomic_torch_save(obj, path: str | Path) -> None:
    """torch.save, atomically (a crash mid-write never leaves a truncated checkpoint or cache entry)."""
    import io

    import torch
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def write_json(path: str | Path, obj) -> None:
    """Pretty JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_json(obj) -> str:
    """Hash of a JSON-serialisable object, independent of dict order."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=str).encode())
