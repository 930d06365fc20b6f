"""Node-local scratch folders of trials: claimed by the process that runs a trial, removed once it is gone.

A trial's process keeps adapt()'s run folder and the checkpoint it resumes from in
`<tmp>/fair-sweeps/<sweep>/<trial id>/rank<r>`; the storage holds everything that matters. A trial that
finishes removes its folder, but most trials of a sweep never get there: ASHA stops them at a rung, and a
search trial's last report is answered with a stop too, while the trial waits inside that report. Tune then
ends the process, or with reused actors hands it the next trial, and none of the trial's own code runs
again. So each folder names its owner (pid and the process's start time, since pids are reused), and every
new claim on a node removes the folders whose owner is gone, as does the driver when a sweep ends: a node
keeps one folder per live trial process, not a checkpoint of every trial it ever ran.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

OWNER = "owner.json"
_claimed: Optional[Path] = None        # this process's folder (one trial at a time per process)


def root() -> Path:
    """Where the sweeps' scratch folders live on this node."""
    return Path(tempfile.gettempdir()) / "fair-sweeps"


def sweep_dir(sweep: str) -> Path:
    """A sweep's folder on this node: its trials' folders, and its fault-injection markers (tests)."""
    return root() / sweep


def claim(sweep: str, trial_id: str, rank: int) -> Path:
    """An empty folder for rank `rank` of trial `trial_id`, owned by this process. Gives up the folder this
    process held before (a reused actor's previous trial) and removes those of processes that are gone."""
    global _claimed
    release()
    folder = sweep_dir(sweep) / trial_id / f"rank{rank}"
    shutil.rmtree(folder, ignore_errors=True)      # an earlier attempt's, on this node
    for attempt in range(5):
        try:
            folder.mkdir(parents=True)
            break
        except FileNotFoundError:                  # a pruner removed a parent it had just made, still empty
            if attempt == 4:
                raise
    tmp = folder / f".{OWNER}.tmp"
    tmp.write_text(json.dumps({"pid": os.getpid(), "started": _started(os.getpid())}))
    os.replace(tmp, folder / OWNER)                # a pruner never reads half an owner
    _claimed = folder
    prune()
    return folder


def release() -> None:
    """Remove the folder this process claimed, if any (its trial has finished)."""
    global _claimed
    if _claimed is not None:
        _remove(_claimed)
        _claimed = None


def prune() -> int:
    """Remove this node's trial folders whose owner process is gone; returns how many. Other processes
    claim and remove folders meanwhile: whatever vanishes while it looks is skipped, never an error."""
    ranks = (r for sweep in _folders(root()) for trial in _folders(sweep) for r in _folders(trial)
             if r.name.startswith("rank"))
    gone = [r for r in ranks if not _alive(r / OWNER)]     # a folder without an owner yet is kept
    for folder in gone:
        _remove(folder)
    if gone:
        log.info("removed %d scratch folders of ended trial processes under %s", len(gone), root())
    return len(gone)


def _folders(parent: Path) -> list[Path]:
    """The folders in `parent`; none when it has gone."""
    try:
        return [p for p in parent.iterdir() if p.is_dir()]
    except OSError:
        return []


def _remove(folder: Path) -> None:
    """A rank's folder, then its trial's and sweep's folders when nothing else is left in them."""
    shutil.rmtree(folder, ignore_errors=True)
    for parent in (folder.parent, folder.parent.parent):
        try:
            parent.rmdir()
        except OSError:                            # not empty (another rank, a marker), or already gone
            return


def _alive(owner: Path) -> bool:
    """Whether the process named in `owner` still runs (the same process, not a later one with its pid)."""
    try:
        o = json.loads(owner.read_text())
        pid, started = int(o["pid"]), float(o["started"])
    except FileNotFoundError:
        return True                                # removed meanwhile: nothing to do
    except (ValueError, KeyError, TypeError):
        return False                               # written atomically, so never half: not ours to keep
    try:
        return abs(_started(pid) - started) < 0.05
    except ProcessLookupError:
        return False


def _started(pid: int) -> float:
    """When process `pid` started (seconds since the epoch); ProcessLookupError when there is none."""
    from tune.ray_session import ray_psutil
    psutil = ray_psutil()
    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        raise ProcessLookupError(pid) from None
