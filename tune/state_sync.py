"""Upload only what changed of the driver's folder at each Tune snapshot, not the whole folder.

Tune keeps the experiment on the driver in a staging folder (`experiment_state-*.json`, the searcher's state,
our `optuna.db` copy, and every trial's `params.json`, `result.json`, `progress.csv` and TensorBoard events,
written there by the driver's logger callbacks) and at every experiment-state snapshot uploads the folder
*whole* to the sweep's storage (`ray.train._internal.storage._upload_to_fs_path`: one `pyarrow.fs.copy_files`,
serial for S3). With N trials that is 5N objects per snapshot, N times over a sweep: at 1,000 trials a
snapshot re-uploads ~5,000 objects of which a few hundred changed, and a forced snapshot (`checkpoints_to_keep`)
first waits for the previous upload, so the driver's loop stalls on it (bench.scale `--compare s3`: in
SeaweedFS three quarters of the driver's CPU went to these uploads at 117 trials).

`install()` replaces that function in this process with `upload_changed`: the files whose size or
modification time differ from what this process last uploaded from that folder to that destination, through
the same `copy_files`. What ends up in storage is what the whole upload would have put there: a file that
changed is uploaded again, and a file modified within `SETTLE_S` of an upload is uploaded again next time
too (a second write within the file system's timestamp tick would otherwise look unchanged). A new driver
(a resumed sweep) starts with nothing recorded, so its first snapshot uploads everything. To S3 each file is
one PUT, several at once (`upload_files`), not pyarrow's six requests per small file, one file at a time.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Optional

log = logging.getLogger("tune.state_sync")
SETTLE_S = 2.0
S3_THREADS = 8          # PUTs in flight per snapshot (boto3's client pools 10 connections)
_uploaded: dict[tuple[str, str], dict[str, tuple[int, int]]] = {}   # (folder, destination) -> {file: (size, mtime)}
_lock = threading.Lock()
_ray_upload: Optional[Callable] = None
uploaded_files = 0      # files this process has uploaded through upload_changed (bench.scale prints it)


def changed_files(folder: str, done: dict[str, tuple[int, int]], exclude: Optional[list] = None,
                  now: Optional[float] = None) -> tuple[list[str], dict[str, tuple[int, int]]]:
    """(files of `folder` to upload, relative and in posix form; what to record once they are uploaded): those
    not in `done` at their current (size, mtime), minus `exclude`'s patterns. Files modified within SETTLE_S
    of `now` are uploaded but not recorded."""
    import fnmatch
    now = time.time() if now is None else now
    todo, record = [], {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            rel = Path(path).relative_to(folder).as_posix()
            if exclude and any(fnmatch.fnmatch(rel, p) for p in exclude):
                continue
            try:
                st = os.stat(path)
            except FileNotFoundError:        # replaced between the listing and the stat: next time
                continue
            sig = (st.st_size, st.st_mtime_ns)
            if done.get(rel) != sig:
                todo.append(rel)
            if st.st_mtime < now - SETTLE_S:
                record[rel] = sig
    return todo, record


def upload_changed(local_path: str, fs, fs_path: str, exclude: Optional[list] = None) -> None:
    """What `_upload_to_fs_path` does (upload `local_path`, a file or a folder, to `fs_path` on `fs`), for a
    folder only the files that changed since this process last uploaded it there."""
    if os.path.isfile(local_path):
        return _ray_upload(local_path, fs, fs_path, exclude)
    key = (os.path.abspath(local_path), f"{fs.type_name}:{fs_path}")
    with _lock:
        done = dict(_uploaded.get(key, {}))
    todo, record = changed_files(local_path, done, exclude)
    if todo:
        upload_files(local_path, todo, fs, fs_path)
    global uploaded_files
    with _lock:     # only after the upload succeeded: a failed one leaves everything to upload next time
        _uploaded[key] = {**done, **record}
        uploaded_files += len(todo)
    log.debug("uploaded %d changed files of %s to %s", len(todo), local_path, fs_path)


def upload_files(local_path: str, files: list[str], fs, fs_path: str) -> None:
    """Upload `files` (relative to the folder `local_path`) to the folder `fs_path` on `fs`. To the S3 endpoint
    the sweep's store uses: one PUT per file through results.store, S3_THREADS at a time; pyarrow's copy
    (what Tune uses) makes a multipart upload of each file and a marker object for each folder, six requests
    per small file, one file at a time. Anywhere else: Ray's copy, of these files only."""
    store = s3_store(fs, fs_path)
    if store is not None:
        from concurrent.futures import ThreadPoolExecutor

        def put(rel: str) -> None:
            store.put(rel, Path(local_path, rel).read_bytes())
        with ThreadPoolExecutor(min(S3_THREADS, len(files))) as pool:
            list(pool.map(put, files))      # the first failure is raised, after the others ended
        return
    from ray.train._internal import storage as ray_storage
    keep = set(files) | {parent.as_posix() for rel in files for parent in Path(rel).parents}

    class Changed(ray_storage._ExcludingLocalFilesystem):
        """The folder as copy_files lists it: these files and the folders that hold them."""
        def _should_exclude(self, path: str) -> bool:
            return Path(path).relative_to(self._root_path).as_posix() not in keep

    import pyarrow.fs
    source = pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(Changed(root_path=local_path, exclude=[])))
    ray_storage._create_directory(fs=fs, fs_path=fs_path)
    ray_storage._pyarrow_fs_copy_files(local_path, fs_path, source_filesystem=source, destination_filesystem=fs)


def s3_store(fs, fs_path: str):
    """results.store's store for `fs_path` when `fs` is an S3 file system of the endpoint that store resolves
    (the same environment: AWS_ENDPOINT_URL, or AWS itself); None otherwise (another endpoint, not S3)."""
    if fs.type_name != "s3":
        return None
    from urllib.parse import urlsplit

    from results.store import S3Store
    bucket, _, prefix = fs_path.partition("/")
    store = S3Store(bucket, prefix)
    ours = store.options.resolved_endpoint()
    theirs = fs.__reduce__()[1][0].get("endpoint_override") or None   # pyarrow's S3FileSystem settings

    def host(endpoint: Optional[str]) -> Optional[str]:
        return None if not endpoint else (urlsplit(endpoint).netloc if "://" in endpoint else endpoint)
    return store if host(ours) == host(theirs) else None


def install() -> bool:
    """Make this process's Tune snapshots upload only what changed (idempotent). False, with a warning, when
    this Ray has no `_upload_to_fs_path` to replace (Tune then uploads the whole folder, as it does alone)."""
    global _ray_upload
    from ray.train._internal import storage as ray_storage
    current = getattr(ray_storage, "_upload_to_fs_path", None)
    needed = ("_ExcludingLocalFilesystem", "_create_directory", "_pyarrow_fs_copy_files")
    if current is None or not all(hasattr(ray_storage, n) for n in needed):
        log.warning("this Ray has no ray.train._internal.storage._upload_to_fs_path: every Tune snapshot "
                    "uploads the whole experiment folder (slow at many trials)")
        return False
    if current is not upload_changed:
        _ray_upload = current
        ray_storage._upload_to_fs_path = upload_changed
    return True
