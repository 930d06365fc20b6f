"""A record for every trial that ends without its final evaluation, so a results table shows it instead of
a gap: `failed` for an error, `stopped_early` for a trial the scheduler (ASHA) stopped.

Completed trials write their record themselves (tune.trainable.adapt_trial). A trial that errors after all
its retries, or that ASHA stops, writes nothing, and a dataset whose trials all failed would silently vanish
from the results table. This driver-side callback writes such a record at the same key a completed record
would use (records are keyed by trial id); a resumed sweep resumes errored trials under the same id, and
when one completes, its completed record replaces the failed one.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from ray.tune import Callback

log = logging.getLogger("tune.failures")
_EXC_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Failure)\b:?.*)$")
MAX_ERROR_CHARS = 500


def error_line(text: str) -> str:
    """The most telling line of a trial's error text: the last `SomeError: message` line of its final
    failure's traceback, else its last non-empty line. That is the exception that ended the trial: the
    worker's own under Ray's wrapping, and with chaining (`raise X from e`) the outer one, which for our
    FairErrors is the one that says what to fix."""
    blocks = re.split(r"^Failure # \d+ \(occurred at [^)]*\)\s*$", text or "", flags=re.M)
    lines = [ln.rstrip() for ln in blocks[-1].splitlines() if ln.strip()]
    if not lines:
        return "unknown error (no error text saved by Ray)"
    hits = [m.group(1).strip() for ln in lines if (m := _EXC_LINE.match(ln))]
    line = hits[-1] if hits else lines[-1].strip()
    return line if len(line) <= MAX_ERROR_CHARS else line[:MAX_ERROR_CHARS - 3] + "..."


class FailedTrialRecords(Callback):
    """on_trial_error (the trial's last failure, retries spent): write its `failed` record to the storage;
    on_trial_complete without the final report (stopped by the scheduler): its `stopped_early` record.
    (The name predates stopped records; sweeps pickled it under this name.)"""

    def __init__(self, plan):
        self.plan = plan

    def on_trial_error(self, iteration, trials, trial, **info):
        self._write("failed", trial, lambda: write_failed_record(self.plan, trial.trial_id, trial.config,
                                                                 _error_text(trial)))

    def on_trial_complete(self, iteration, trials, trial, **info):
        from tune.progress import finished_result
        if not finished_result(trial.last_result):
            self._write("stopped_early", trial, lambda: write_stopped_record(
                self.plan, trial.trial_id, trial.config, trial.last_result or {}))

    @staticmethod
    def _write(kind: str, trial, write) -> None:
        # a failure is news; a trial the scheduler stopped is the search working (hundreds in a large sweep)
        level = logging.WARNING if kind == "failed" else logging.INFO
        try:
            log.log(level, "trial %s: %s record %s", trial.trial_id, kind, write())
        except Exception as e:  # noqa: BLE001 - never let bookkeeping take the sweep down
            log.warning("trial %s: could not write its %s record (%s: %s)", trial.trial_id, kind,
                        type(e).__name__, e)


def _error_text(trial) -> str:
    path = trial.error_file
    if path and Path(path).is_file():
        return Path(path).read_text(errors="replace")
    return trial.get_error() or ""


def write_failed_record(plan, trial_id: str, config: dict, error_text: str) -> str:
    """Build the failed record of one trial (its study's config with its sampled values) and store it."""
    from fair.record import failed_record
    return _write_unfinished(plan, trial_id, config, lambda cfg: failed_record(cfg, error_line(error_text)))


def write_stopped_record(plan, trial_id: str, config: dict, last_result: dict) -> str:
    """Store the `stopped_early` record of a trial the scheduler stopped; `last_result` is its last report
    (an epoch row, kept as the record's `last_epoch`)."""
    from fair.record import stopped_record
    from ray.tune.result import AUTO_RESULT_KEYS
    ray_keys = {*AUTO_RESULT_KEYS, "trial_id", "done", "experiment_tag", "should_checkpoint", "study"}
    last_epoch = {k: v for k, v in last_result.items()     # what the trial reported (tune.trainable)
                  if k not in ray_keys and "/" not in k and (v is None or isinstance(v, (int, float, str)))}
    return _write_unfinished(plan, trial_id, config, lambda cfg: stopped_record(cfg, last_epoch))


def _write_unfinished(plan, trial_id: str, config: dict, make) -> str:
    """Store `make(resolved config)`, the record of a trial without a final evaluation, at the trial's key,
    unless a completed record is there already (it ended after its record was written: the record stands)."""
    from fair.config import from_dict, set_by_path, to_dict
    from fair.errors import FairError
    from tune import storage
    from tune.trainable import record_key, stamp_record, trial_config
    key = record_key(plan, config["study"], trial_id)
    if _completed(plan.storage, key):
        return storage.join(plan.storage, key)
    cfg = trial_config(plan, config)
    set_by_path(cfg, "run.name", trial_id)             # as adapt_trial names a completed trial's run
    try:
        resolved = to_dict(from_dict(cfg))
    except FairError:      # the sampled combination itself is what failed (e.g. crop_min > crop_max)
        resolved = cfg
    return storage.write_json(plan.storage, key, stamp_record(make(resolved), plan, trial_id, config))


def _completed(uri: str, key: str) -> bool:
    from tune import storage
    try:
        return storage.read_json(uri, key).get("status") == "completed"
    except Exception:  # noqa: BLE001 - no record yet (or unreadable): write ours
        return False
