"""One Optuna study per dataset inside a single Tuner, so every dataset's trials share the cluster.

`StudySearcher` holds one `OptunaSearch` (own study, own seed, define-by-run space) per dataset and hands
out suggestions round-robin among the datasets that still have budget; results and completions are routed
back to the owning study by trial id. Its whole state (the studies included) is pickled with the Tune
experiment, so `fair sweep --resume` continues every study where it stopped.

`PerStudyASHA` does the same for early stopping: accuracies of different datasets are not comparable, so
each dataset gets its own ASHA rungs.

How a trial ended reaches its study as one Optuna state (`outcome`): COMPLETE only with the trial's final
report (its real objective), PRUNED when it ended without one (stopped by the scheduler: its last result
is an epoch's global-head accuracy, not comparable with a final objective, so it must never be a study's
best), FAIL on error. A trial that errored and was resumed by a later `fair sweep` (same trial id) comes
back with its late result: Optuna cannot tell a finished trial again, so the study gets a copy of it (same
parameters and distributions) in the late state, once (`StudySearcher._tell_late`).
"""
from __future__ import annotations

import logging
import pickle
from typing import Dict, Optional

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

log = logging.getLogger("tune.searcher")
METRIC = "objective"   # what every report carries: the sweep's objective (val_top1 or head_agreement)
LATE_ATTR = "resumed_trial_id"   # user attr of a study trial added for a trial that errored, then resumed


def outcome(result: Optional[Dict], error: bool) -> str:
    """The Optuna state of a trial that ended with `result` (its last one): FAIL on error or when its final
    report has no objective, PRUNED when it ended without its final report (a scheduler stopped it), else
    COMPLETE. The final report is the one place a finished trial's objective is (tune.trainable)."""
    from tune.progress import finished_result
    if error:
        return "FAIL"
    if not finished_result(result):
        return "PRUNED"
    return "COMPLETE" if result.get(METRIC) is not None else "FAIL"


def make_sampler(kind: str, seed: int):
    import optuna
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # multivariate TPE with group=True models conditional subspaces jointly; plain TPE is the default
    if kind == "tpe-multivariate":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
    return optuna.samplers.TPESampler(seed=seed)


class StudySearcher(Searcher):
    """Round-robin over per-dataset Optuna studies with a trial budget each."""

    def __init__(self, space, datasets: list[str], trials_per_dataset: int, mode: str,
                 sampler: str = "tpe", seeds: Optional[Dict[str, int]] = None):
        super().__init__(metric=METRIC, mode=mode)
        import optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        seeds = seeds or {}
        self.datasets = list(datasets)
        self.budget = {d: trials_per_dataset for d in self.datasets}
        self.suggested = {d: 0 for d in self.datasets}
        self.studies = {d: OptunaSearch(space=space, metric=METRIC, mode=mode, study_name=f"fair-{d}",
                                        sampler=make_sampler(sampler, seeds.get(d, 0)))
                        for d in self.datasets}
        self.owner: Dict[str, str] = {}     # trial_id -> dataset
        self._next = 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True   # metric and mode are fixed by the sweep file; the space lives in the studies

    def suggest(self, trial_id: str) -> Optional[Dict]:
        if trial_id in self.owner:       # Tune may ask again for a trial it already has a config for
            d = self.owner[trial_id]
            return {"study": d, "hparams": self.studies[d].suggest(trial_id)}
        n = len(self.datasets)
        for i in range(n):
            d = self.datasets[(self._next + i) % n]
            if self.suggested[d] < self.budget[d]:
                self._next = (self._next + i + 1) % n
                self.suggested[d] += 1
                self.owner[trial_id] = d
                return {"study": d, "hparams": self.studies[d].suggest(trial_id)}
        return Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: Dict) -> None:
        d = self.owner.get(trial_id)
        # a resumed trial whose study already holds its failure: nothing to report to (Ray would warn)
        if d is not None and result.get(METRIC) is not None and trial_id not in self.studies[d]._completed_trials:
            self.studies[d].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: Optional[Dict] = None, error: bool = False) -> None:
        d = self.owner.get(trial_id)
        if d is None:
            return
        state, study = outcome(result, error), self.studies[d]
        if trial_id not in study._completed_trials:
            if state == "PRUNED" and (result or {}).get(METRIC) is not None and "training_iteration" in result:
                study.on_trial_result(trial_id, result)   # the epoch it was stopped on (Tune sent it no result)
            # OptunaSearch tells COMPLETE with the result's objective, else PRUNED, or FAIL when error=True
            study.on_trial_complete(trial_id, result=result if state == "COMPLETE" else None,
                                    error=state == "FAIL")
        elif state != "FAIL":
            self._tell_late(d, trial_id, result, state)

    def _frozen(self, d: str, trial_id: str):
        """The study's own (frozen) trial of Tune trial `trial_id`."""
        number = self.studies[d]._ot_trials[trial_id].number
        return self.studies[d]._ot_study.get_trials(deepcopy=False)[number]

    def _tell_late(self, d: str, trial_id: str, result: Dict, state: str) -> None:
        """A trial the study recorded as FAIL ended after all (resumed by a later run, same trial id): add a
        trial with its parameters and distributions in `state`, once (a second completion adds nothing)."""
        import optuna
        study = self.studies[d]._ot_study
        old = self._frozen(d, trial_id)
        if old.state != optuna.trial.TrialState.FAIL:
            return                     # told COMPLETE or PRUNED already: a repeated completion
        if any(t.user_attrs.get(LATE_ATTR) == trial_id for t in study.get_trials(deepcopy=False)):
            return
        value = result.get(METRIC)
        step = result.get("training_iteration") or result.get("epoch") or 0
        study.add_trial(optuna.trial.create_trial(
            params=old.params, distributions=old.distributions, user_attrs={LATE_ATTR: trial_id},
            state=getattr(optuna.trial.TrialState, state), value=value if state == "COMPLETE" else None,
            intermediate_values={int(step): value} if state == "PRUNED" and value is not None else None))
        log.info("trial %s [%s] ended after a resume: its study records it %s", trial_id, d, state)

    def remaining(self) -> Dict[str, int]:
        return {d: self.budget[d] - self.suggested[d] for d in self.datasets}

    # Tune saves this with the experiment state and restores it on Tuner.restore
    def get_state(self) -> Dict:
        return {"budget": self.budget, "suggested": self.suggested, "owner": self.owner, "next": self._next,
                "datasets": self.datasets, "studies": {d: s.__dict__.copy() for d, s in self.studies.items()}}

    def set_state(self, state: Dict) -> None:
        self.budget, self.suggested, self.owner = state["budget"], state["suggested"], state["owner"]
        self._next, self.datasets = state["next"], state["datasets"]
        for d, st in state["studies"].items():
            self.studies[d].__dict__.update(st)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self.get_state(), fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as fh:
            self.set_state(pickle.load(fh))


class SweepLimiter(ConcurrencyLimiter):
    """Tune's ConcurrencyLimiter, but the limit is the one this process set for the sweep (`set_limit`),
    also after a restore.

    Tune restores a limiter's saved state, limit included, so a resumed sweep would keep the concurrency it
    started with: after the cluster grew, after `--set budget.max_concurrent=...`, or, on an autoscaling
    cluster, the 1 that a head with no GPU node yet allows.
    """
    limits: Dict[str, int] = {}

    def __init__(self, searcher: Searcher, sweep: str, max_concurrent: int):
        super().__init__(searcher, max_concurrent=max_concurrent)
        self.sweep = sweep

    @classmethod
    def set_limit(cls, sweep: str, max_concurrent: int) -> None:
        """The concurrency of `sweep` in this process; limiters restored afterwards take it."""
        cls.limits[sweep] = max_concurrent

    def set_state(self, state: Dict) -> None:
        super().set_state(state)
        self.max_concurrent = self.limits.get(self.sweep, self.max_concurrent)

    def __setstate__(self, state: Dict) -> None:   # unpickled with the Tuner on restore
        self.__dict__.update(state)
        self.max_concurrent = self.limits.get(self.sweep, self.max_concurrent)

    def on_trial_complete(self, trial_id: str, result: Optional[Dict] = None, error: bool = False) -> None:
        """Tune's limiter drops completions of trials it does not hold; a trial resumed after it errored
        (same id, `Tuner.restore(resume_errored=True)`) left `live_trials` when it failed, and its late
        result must still reach its study (StudySearcher ignores repeated completions)."""
        if trial_id in self.live_trials:
            super().on_trial_complete(trial_id, result=result, error=error)
        else:
            self.searcher.on_trial_complete(trial_id, result=result, error=error)


class PerStudyASHA(FIFOScheduler):
    """ASHA with separate rungs per dataset (`trial.config["study"]`), stopping on the epoch counter.

    The epoch (not training_iteration) is the time axis: a worker restarted from a checkpoint reports some
    epochs twice, which would push training_iteration past max_t and cut the trial before its final report.
    """

    def __init__(self, max_t: int, grace_period: int, reduction_factor: float):
        super().__init__()
        self.kw = dict(time_attr="epoch", max_t=max_t, grace_period=grace_period,
                       reduction_factor=reduction_factor)
        self.by_study: Dict[str, AsyncHyperBandScheduler] = {}
        self._metric, self._mode = METRIC, "max"

    def set_search_properties(self, metric, mode, **spec) -> bool:
        self._metric, self._mode = metric or self._metric, mode or self._mode
        return True

    def _asha(self, trial) -> AsyncHyperBandScheduler:
        d = trial.config.get("study", "?")
        if d not in self.by_study:
            self.by_study[d] = AsyncHyperBandScheduler(metric=self._metric, mode=self._mode, **self.kw)
        return self.by_study[d]

    def on_trial_add(self, tune_controller, trial) -> None:
        self._asha(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: Dict) -> str:
        if trial.trial_id not in self._asha(trial)._trial_info:   # e.g. after a restore
            self._asha(trial).on_trial_add(tune_controller, trial)
        return self._asha(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: Dict) -> None:
        if trial.trial_id in self._asha(trial)._trial_info:
            self._asha(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._asha(trial)._trial_info.pop(trial.trial_id, None)

    def on_trial_error(self, tune_controller, trial) -> None:
        self.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "; ".join(f"{d}: {s.debug_string()}" for d, s in self.by_study.items()) or "PerStudyASHA"


__all__ = ["StudySearcher", "PerStudyASHA", "METRIC", "TrialScheduler", "outcome"]
