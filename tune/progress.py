"""Readable progress on the driver: one log line per trial event, and a summary table every so often.

Ray's own console output is switched off (RunConfig(verbose=0), RAY_AIR_NEW_OUTPUT=0); this callback is
what a person watching `fair sweep` reads.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Optional

from ray.tune import Callback

from tune.studies import FINAL, stage_of

log = logging.getLogger("tune.progress")
# What a completed trial's line shows: validation only, so that what to try next is chosen on validation;
# test accuracy is in the record and the tables (`fair sweep --show-test` adds it here).
_SHOWN_FINAL = ("final_val_top1", "final_val_stderr", "final_head_agreement")
_SHOWN_TEST = ("final_test_top1", "final_gain_over_zeroshot")


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _hp(config: dict) -> str:
    hp = config.get("hparams") or {}
    return " ".join(f"{k}={_fmt(v)}" for k, v in hp.items())


STATE_FILE = "progress.json"   # beside the Tune experiment: which trials an interrupt cut off


def finished_result(result: Optional[dict]) -> bool:
    """Whether a trial's last result is its final report (adapt() ran to the end and evaluated)."""
    return any(k.startswith("final_") for k in (result or {}))


def reported(result: Optional[dict]) -> bool:
    """Whether a trial reported at all (an epoch, or its final report): Tune fills the result of a trial
    that never ran with its id and the host's metrics only."""
    return "epoch" in (result or {}) or finished_result(result)


class ProgressLog(Callback):
    """Trial started / epoch N objective / completed / errored, plus a per-dataset summary table.

    It also keeps which trials of this run ended (completed, stopped early, errored). An interrupt (Ctrl-C)
    ends the run with the cut-off trials marked TERMINATED like finished ones, and without their
    on_trial_complete; the trials that started here but never ended are written to `STATE_FILE` in the
    sweep's storage at the end, so the driver can say the sweep is unfinished (also after a resume, where
    Tune restores this callback from its own state).
    """

    def __init__(self, objective: str, mode: str, total: int, summary_every_s: float = 60.0,
                 storage: Optional[str] = None, sweep: Optional[str] = None, show_test: bool = False,
                 superseded: Optional[Callable[[str], bool]] = None):
        """`superseded`: whether a trial id is an early final its study superseded (counted apart; the
        sweep passes tune.searcher.StudySearcher.is_superseded bound to its name)."""
        self.objective, self.mode, self.total = objective, mode, total
        self.superseded = superseded
        self.shown = _SHOWN_FINAL + (_SHOWN_TEST if show_test else ())
        self.every = summary_every_s
        self.storage, self.sweep = storage, sweep
        self._last_summary = time.monotonic()
        self.best: dict[str, tuple[float, str]] = {}     # dataset -> (objective, trial id)
        self.started: set[str] = set()
        self.ended: set[str] = set()

    def __setstate__(self, state: dict) -> None:
        """Tune restores this callback from the sweep's saved state on resume: a sweep started by an older
        version lacks the newer attributes, which start empty (nothing was tracked then)."""
        self.__dict__.update({"storage": None, "sweep": None, "started": set(), "ended": set(),
                              "shown": _SHOWN_FINAL, "superseded": None, **state})

    def unfinished(self, trials) -> list[str]:
        """Ids of trials cut off in this run, or still waiting: they resume when the sweep is rerun. Among
        them, trials whose actor an interrupt found placed but not started: Tune saves them PENDING (a rerun
        starts them), then its cleanup marks them TERMINATED with neither a start nor a result."""
        return sorted(t.trial_id for t in trials
                      if (t.trial_id in self.started and t.trial_id not in self.ended)
                      or t.status in ("PENDING", "PAUSED", "RUNNING")
                      or (t.status == "TERMINATED" and t.trial_id not in self.ended
                          and not reported(t.run_metadata.last_result)))

    @staticmethod
    def _name(trial) -> str:
        c = trial.config
        final = f" final seed {c.get('seed')} of {c.get('picked_from')}" if stage_of(c) == FINAL else ""
        return f"{trial.trial_id} [{c.get('study', '?')}{final}]"

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started.add(trial.trial_id)
        log.info("trial %s started: %s", self._name(trial), _hp(trial.config))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if finished_result(result):
            return   # the final report; on_trial_complete says it
        resumed = result.get("resumed_from_epoch") or 0
        log.info("trial %s epoch %s %s=%s loss=%s%s", self._name(trial), result.get("epoch"), self.objective,
                 _fmt(result.get("objective")), _fmt(result.get("loss")),
                 f" (resumed after epoch {resumed})" if resumed else "")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ended.add(trial.trial_id)
        r = trial.last_result or {}
        obj = r.get("objective")
        d = trial.config.get("study", "?")
        search = stage_of(trial.config) != FINAL   # a re-run of the pick is no new best
        if obj is not None and finished_result(r) and search:   # a stopped trial's epoch objective is no result
            better = d not in self.best or (obj > self.best[d][0] if self.mode == "max" else obj < self.best[d][0])
            if better:
                self.best[d] = (obj, trial.trial_id)
        extras = " ".join(f"{k[6:]}={_fmt(r.get(k))}" for k in self.shown
                          if k in r and k != f"final_{self.objective}")
        if not finished_result(r):
            log.info("trial %s stopped early after epoch %s: %s=%s", self._name(trial), r.get("epoch"),
                     self.objective, _fmt(obj))
            return
        log.info("trial %s completed: %s=%s %s", self._name(trial), self.objective, _fmt(obj), extras)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.ended.add(trial.trial_id)
        err = (trial.error_file or "").strip()
        log.warning("trial %s errored%s", self._name(trial), f"; see {err}" if err else "")

    def on_trial_recover(self, iteration, trials, trial, **info):
        log.warning("trial %s failed and is retried", self._name(trial))

    def on_step_end(self, iteration, trials, **info):
        if time.monotonic() - self._last_summary >= self.every:
            self._last_summary = time.monotonic()
            log.info("\n%s", self.summary(trials))

    def on_experiment_end(self, trials, **info):
        log.info("\n%s", self.summary(trials))
        if self.storage and self.sweep:
            from tune import storage as sweep_storage
            try:
                sweep_storage.write_json(self.storage, f"{self.sweep}/{STATE_FILE}",
                                         {"unfinished": self.unfinished(trials), "trials": len(trials)})
            except Exception as e:  # noqa: BLE001 - the sweep's results do not depend on it
                log.warning("could not write %s (%s: %s)", STATE_FILE, type(e).__name__, e)

    def summary(self, trials) -> str:
        """A plain-text table: per study, trials by state (final re-runs included) and the best search
        objective so far."""
        rows: dict[str, dict] = {}
        cut = set(self.unfinished(trials))
        superseded = 0
        for t in trials:
            if self.superseded and self.superseded(t.trial_id):   # an early final of an old pick
                superseded += 1
                continue
            d = t.config.get("study", "?")
            row = rows.setdefault(d, {"RUNNING": 0, "PENDING": 0, "TERMINATED": 0, "ERROR": 0, "PAUSED": 0})
            status = "PAUSED" if t.trial_id in cut and t.status == "TERMINATED" else t.status   # resumes later
            row[status] = row.get(status, 0) + 1
            final = status == "TERMINATED" and finished_result(t.last_result) and stage_of(t.config) != FINAL
            obj = (t.last_result or {}).get("objective") if final else None
            if obj is not None:
                cur: Optional[tuple] = row.get("best")
                if cur is None or (obj > cur[0] if self.mode == "max" else obj < cur[0]):
                    row["best"] = (obj, t.trial_id)
        head = f"{'study':32s} {'done':>5s} {'run':>4s} {'wait':>5s} {'err':>4s}  best {self.objective}"
        extra = f" (and {superseded} early finals superseded)" if superseded else ""
        lines = [f"sweep progress: {sum(r['TERMINATED'] for r in rows.values())}/{self.total} trials done{extra}",
                 head]
        for d, r in sorted(rows.items()):
            best = r.get("best")
            lines.append(f"{d:32s} {r['TERMINATED']:5d} {r['RUNNING']:4d} {r['PENDING'] + r['PAUSED']:5d} "
                         f"{r['ERROR']:4d}  {_fmt(best[0]) + ' (' + best[1] + ')' if best else '-'}")
        return "\n".join(lines)
