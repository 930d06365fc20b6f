"""Delete trials' old checkpoints beside the driver's loop, not in it.

Tune keeps `checkpoints_to_keep` checkpoints per trial, and the driver deletes the older ones in the loop that
handles every trial's results: `Trial.on_checkpoint` registers a trial's new checkpoint and
`ray.train._internal.checkpoint_manager` calls `_delete_fs_path` on the one it drops, through pyarrow, one
request after another (to S3: a HEAD and LIST to learn that it is a folder, a LIST, a DELETE per object and
folder marker). Until that returns no other trial's result is taken. bench.scale measured 12 ms a deletion
(19 ms p90) on loopback SeaweedFS at 16 slots, 11.7 s of the driver's loop per 117 trials; on AWS, at 20-50 ms
a request, that is 0.15-0.35 s per deletion, and a 1,040-trial sweep deletes about six per trial.

`install()` makes that call queue the deletion on a few threads of the driver's process and return at once.
To the S3 endpoint the sweep's store resolves, a folder is one LIST and one DeleteObjects
(`results.store.Store.delete_folder`); anywhere else Ray's own deletion runs on the thread. This is safe
because Tune forgets the checkpoint before it asks for the deletion (nothing in the driver names it
afterwards), and a deletion that comes later only keeps a dropped checkpoint in storage for longer. A failed
deletion is logged, as Tune logs it, and leaves that checkpoint behind. `drain()` waits for the queued
deletions (the sweep calls it after `tuner.fit()`; the threads also finish them before the process exits);
a driver killed with deletions queued leaves those checkpoints in storage, as one killed inside Tune's own
deletion would.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Callable, Optional

log = logging.getLogger("tune.checkpoint_deletion")
THREADS = 4
_pool: Optional[ThreadPoolExecutor] = None
_pending: set[Future] = set()
_lock = threading.Lock()
_ray_delete: Optional[Callable] = None
deleted = 0             # deletions done on the threads, and their seconds there (bench.scale prints them)
delete_s = 0.0


def delete(fs, fs_path: str) -> None:
    """Delete the checkpoint folder `fs_path` on the pyarrow file system `fs` now: through results.store to
    the S3 endpoint it resolves, else Ray's own deletion."""
    from tune.state_sync import s3_store
    store = s3_store(fs, fs_path)
    if store is not None:
        store.delete_folder("")
    else:
        _ray_delete(fs=fs, fs_path=fs_path)


def _run(fs, fs_path: str) -> None:
    global deleted, delete_s
    t = time.perf_counter()
    try:
        delete(fs, fs_path)
    except Exception as e:  # noqa: BLE001 - as Tune's own: a checkpoint left behind, the sweep goes on
        log.warning("could not delete the old checkpoint %s (%s: %s); it stays in storage", fs_path,
                    type(e).__name__, e)
    with _lock:
        deleted += 1
        delete_s += time.perf_counter() - t


def delete_later(fs, fs_path: str) -> None:
    """Queue the deletion of `fs_path` on `fs` (what `_delete_fs_path` does, on a thread of this process)."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(THREADS, thread_name_prefix="checkpoint-deletion")
        future = _pool.submit(_run, fs, fs_path)
        _pending.add(future)
    future.add_done_callback(_forget)


def _forget(future: Future) -> None:
    with _lock:
        _pending.discard(future)


def drain(timeout: Optional[float] = None) -> int:
    """Wait for the queued deletions (at most `timeout` s); the number still queued afterwards."""
    with _lock:
        pending = set(_pending)
    if pending:
        wait(pending, timeout=timeout)
    with _lock:
        return len(_pending)


def install() -> bool:
    """Make Tune's checkpoint deletions in this process queue here (idempotent). False, with a warning, when
    this Ray deletes checkpoints some other way (they then run in the driver's loop, as Tune does alone)."""
    global _ray_delete
    from ray.train._internal import checkpoint_manager
    current = getattr(checkpoint_manager, "_delete_fs_path", None)
    if current is None:
        log.warning("this Ray has no ray.train._internal.checkpoint_manager._delete_fs_path: old checkpoints "
                    "are deleted in the driver's loop")
        return False
    if current is not delete_later:
        _ray_delete = current
        checkpoint_manager._delete_fs_path = delete_later
    return True


def uninstall() -> None:
    """Give the deletions back to Tune's loop (after draining what is queued)."""
    from ray.train._internal import checkpoint_manager
    drain()
    if _ray_delete is not None and checkpoint_manager._delete_fs_path is delete_later:
        checkpoint_manager._delete_fs_path = _ray_delete
