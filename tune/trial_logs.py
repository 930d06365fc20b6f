"""Tune's per-trial result logs (progress.csv, result.json) keep every row across a trial's retries.

Tune writes a trial's result rows on the driver, in its staging folder, and uploads that folder to the
sweep's storage now and then (an experiment-state snapshot). When a trial fails and Tune retries it from
its checkpoint, Tune's JSON logger first *downloads* the trial's result.json from storage over the local
one (`LoggerCallback._restore_from_remote`; the CSV logger does the same when it reopens its file). Rows
reported since the last upload are lost: after a node loss in epoch 2, the trial's results as
ExperimentAnalysis reads them (result.json first) held epoch 2 only (seen twice in CI). `KeepResultLogs`
uploads the trial's log files when Tune decides to retry it, before the retry starts, so the download gets
every row back.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ray.tune import Callback
from ray.tune.result import EXPR_PROGRESS_FILE, EXPR_RESULT_FILE

log = logging.getLogger("tune.trial_logs")
RESTORED_FILES = (EXPR_PROGRESS_FILE, EXPR_RESULT_FILE)   # the files Tune's loggers restore from storage


class KeepResultLogs(Callback):
    """on_trial_recover (Tune will retry the trial from its checkpoint): upload its result logs."""

    def on_trial_recover(self, iteration, trials, trial, **info):
        try:
            upload_result_logs(trial)
        except Exception as e:  # noqa: BLE001 - the rows are bookkeeping; never fail the sweep over them
            log.warning("trial %s: could not upload its result logs before its retry (%s: %s); Tune's "
                        "progress.csv may miss the rows since the last snapshot", trial.trial_id,
                        type(e).__name__, e)


def upload_result_logs(trial) -> list[str]:
    """Copy the trial's local result logs over their copies in the sweep's storage; returns what it copied."""
    import pyarrow.fs
    storage = trial.storage
    copied = []
    storage.storage_filesystem.create_dir(storage.trial_fs_path, recursive=True)
    for name in RESTORED_FILES:
        local = Path(trial.local_path, name)
        remote = Path(storage.trial_fs_path, name).as_posix()
        if not local.is_file() or local.resolve().as_posix() == remote:
            continue
        pyarrow.fs.copy_files(local.as_posix(), remote, source_filesystem=pyarrow.fs.LocalFileSystem(),
                              destination_filesystem=storage.storage_filesystem)
        copied.append(remote)
    return copied
