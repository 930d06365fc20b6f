"""Run (or resume) a sweep: checks first, then one Tuner over every dataset's study.

Rerunning the same sweep, or `fair sweep --resume NAME`, restores the Tuner from storage: finished trials
are kept, unfinished and errored ones continue (from their last Train checkpoint), and the Optuna studies
come back from the searcher state; each trial id keeps one record key, so nothing is lost or duplicated.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

from fair.errors import FairError
from tune import storage as st
from tune.sweep_config import SweepConfig, check_datasets, from_mapping

log = logging.getLogger("tune.sweep")
SWEEP_FILE = "sweep.json"   # the resolved sweep config, beside the Tune experiment (for --resume NAME)


@dataclass
class SweepResult:
    name: str
    storage: str
    trials: int
    errored: list = field(default_factory=list)
    best: dict = field(default_factory=dict)          # dataset -> {"trial_id", "objective", metrics...}
    records: dict = field(default_factory=dict)       # dataset -> [trial ids] (completed and failed records)
    errored_by: dict = field(default_factory=dict)    # dataset -> trials that ended in error
    unfinished: int = 0                               # trials cut off by an interrupt or never started

    @property
    def complete(self) -> bool:
        return self.unfinished == 0

    def table(self, objective: str) -> str:
        cut = f", {self.unfinished} unfinished (rerun to continue)" if self.unfinished else ""
        lines = [f"sweep {self.name}: {self.trials} trials, {len(self.errored)} errored{cut}; records in "
                 f"{st.join(self.storage, self.name, 'records')}",
                 f"{'dataset':24s} {'records':>7s} {'errored':>7s}  {'best trial':12s} {objective:>10s} "
                 f"{'test_top1':>9s}"]
        for d in sorted(set(self.best) | set(self.records) | set(self.errored_by)):
            b = self.best.get(d, {})
            obj, test = b.get("objective"), b.get("final_test_top1")
            lines.append(f"{d:24s} {len(self.records.get(d, [])):7d} {self.errored_by.get(d, 0):7d}  "
                         f"{b.get('trial_id', '-'):12s} "
                         f"{'-' if obj is None else f'{obj:.4g}':>10s} {'-' if test is None else f'{test:.2f}':>9s}")
        return "\n".join(lines)


def _snapshot(cfg: SweepConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d.pop("source", None)
    return d


def saved_config(storage: str, name: str) -> dict | None:
    from results.store import MissingKey
    try:
        return st.read_json(storage, f"{name}/{SWEEP_FILE}")
    except MissingKey:
        return None


def load_saved(storage: str, name: str, overrides: list[str] = ()) -> SweepConfig:
    """The sweep config a previous `fair sweep` stored (for --resume NAME without the sweep file), with
    `overrides` (--set) applied before it is validated: a stored sweep that today's checks refuse can be
    resumed with the missing key set (e.g. budget.max_concurrent)."""
    from fair.config import merge_overrides
    data = saved_config(storage, name)
    if data is None:
        raise FairError(f"no sweep named {name!r} in {storage} (looked for {name}/{SWEEP_FILE}); "
                        f"check --storage or start it with --config")
    return from_mapping(merge_overrides(data, list(overrides)) if overrides else data)


# sweep keys a resume may change: Ray and progress options, and how many trials run at once
RESUMABLE_CHANGES = ("ray.", "faults.", "budget.max_concurrent")


def _search_changes(a: dict, b: dict) -> list[str]:
    """How a stored sweep and this one differ as experiments (empty: the same; Ray/progress options and
    FAIR keys that change no result, such as data.num_workers, may change), one `key old -> new` each."""
    from fair.adapt import DIGEST_IGNORES
    from fair.config import changed_keys
    datasets = {*(a.get("per_dataset") or {}), *(b.get("per_dataset") or {})}
    fair_roots = ["base.", *(f"per_dataset.{d}." for d in datasets)]
    neutral = tuple(root + key for root in fair_roots for key in DIGEST_IGNORES)
    return changed_keys(a, b, RESUMABLE_CHANGES + neutral)


def preflight(cfg: SweepConfig, data_check: bool = True) -> str:
    """Checks that need the storage, the data and the trackers (after the offline ones of load_sweep): the
    resolved storage URI, probed with a marker write."""
    from tune import tracking
    uri = st.resolve(cfg.storage)
    st.probe(uri, cfg.name)
    tracking.check(cfg.tracking)
    if data_check:
        check_datasets(cfg)
    return uri


def build_plan(cfg: SweepConfig, uri: str):
    from tune.trainable import TrialPlan
    r = cfg.resources
    return TrialPlan(
        sweep=cfg.name, storage=uri, study_configs={d: cfg.study_config(d) for d in cfg.datasets},
        objective=cfg.objective.metric, num_workers=r.num_workers, per_worker=dict(r.per_worker),
        use_gpu=r.use_gpu, backend=r.backend, worker_max_failures=cfg.ray.worker_max_failures,
        controller_failure_limit=cfg.ray.controller_failure_limit,
        checkpoints_to_keep=cfg.ray.checkpoints_to_keep, crash_worker_in_epoch=cfg.faults.crash_worker_in_epoch,
        runner=r.runner)


_TUNE_RESOURCE = {"CPU": "cpu", "GPU": "gpu"}   # Train's bundle keys -> tune.with_resources keys


def trainable_for(cfg: SweepConfig, plan):
    """The Tune trainable of a sweep, with its per-trial resource request.

    `trainer`: the trial is a tiny driver that fits a TorchTrainer (whose workers hold the resources).
    `direct`: the trial runs adapt() itself, so it holds one worker's resources, and a failed trial is
    retried from its last checkpoint by Tune (trial_max_failures + worker_max_failures times, the same
    number of retries as the two levels of `trainer` together)."""
    from ray import tune
    from tune.trainable import run_trial, run_trial_direct
    if cfg.resources.runner == "direct":
        req = {_TUNE_RESOURCE.get(k, k): float(v) for k, v in cfg.resources.per_worker.items() if v}
        return tune.with_resources(tune.with_parameters(run_trial_direct, plan=plan), req)
    return tune.with_resources(tune.with_parameters(run_trial, plan=plan), {"cpu": cfg.resources.trial_driver_cpu})


def trial_max_failures(cfg: SweepConfig) -> int:
    """Tune-level retries: under `direct` they also stand in for Train's worker-level ones."""
    t, w = cfg.ray.trial_max_failures, cfg.ray.worker_max_failures
    if cfg.resources.runner != "direct":
        return t
    return -1 if -1 in (t, w) else t + w


def run(cfg: SweepConfig, uri: str, resume: bool | None = None) -> SweepResult:
    """Run the sweep on the Ray this process is connected to. `resume=None`: restore when the storage
    already holds this sweep; True: must restore; False: refuse an existing sweep."""
    from ray import tune
    from tune.cluster import max_concurrent
    from tune.failures import FailedTrialRecords
    from tune.progress import ProgressLog
    from tune import tracking
    from tune.searcher import METRIC, PerStudyASHA, StudySearcher, SweepLimiter

    exp_path = st.join(uri, cfg.name)
    exists = tune.Tuner.can_restore(exp_path)
    stored = saved_config(uri, cfg.name)
    changes = _search_changes(stored, _snapshot(cfg)) if exists and stored is not None else []
    if changes:
        more = f" and {len(changes) - 3} more" if len(changes) > 3 else ""
        raise FairError(f"sweep {cfg.name!r} already exists in {uri} with a different configuration "
                        f"({'; '.join(changes[:3])}{more}); use another name (--set name=...) or resume it "
                        f"unchanged (--resume {cfg.name})")
    if resume and not exists:
        raise FairError(f"sweep {cfg.name!r} has no saved state in {uri} to resume; start it without --resume")
    if resume is False and exists:
        raise FairError(f"sweep {cfg.name!r} already exists in {uri}; rerun to resume it or pick another name")
    st.write_json(uri, f"{cfg.name}/{SWEEP_FILE}", _snapshot(cfg))

    conc = max_concurrent(cfg.resources.per_trial(), cfg.resources.check_cluster, cfg.budget.max_concurrent)
    SweepLimiter.set_limit(cfg.name, conc)         # before a restore unpickles the sweep's limiter
    plan = build_plan(cfg, uri)
    trainable = trainable_for(cfg, plan)
    mode = cfg.objective.mode
    if exists:
        log.info("resuming sweep %s from %s (%d trials in flight at most)", cfg.name, exp_path, conc)
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True, restart_errored=True)
    else:
        space = cfg.search_space()
        searcher = StudySearcher(space, cfg.datasets, cfg.budget.trials_per_dataset, mode, cfg.search.sampler,
                                 {d: cfg.search.seed_for(d) for d in cfg.datasets})
        es = cfg.budget.early_stopping
        scheduler = PerStudyASHA(cfg.budget.epochs, es.grace_period, es.reduction_factor) if es else None
        if scheduler is not None:
            scheduler.set_search_properties(METRIC, mode)
        log.info("sweep %s: %d datasets x %d trials, %d epochs, %d trials in flight at most (runner %s); "
                 "space: %s", cfg.name, len(cfg.datasets), cfg.budget.trials_per_dataset, cfg.budget.epochs, conc,
                 cfg.resources.runner, space.describe())
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=SweepLimiter(searcher, cfg.name, conc), scheduler=scheduler,
                                        num_samples=cfg.total_trials),
            run_config=tune.RunConfig(
                name=cfg.name, storage_path=uri, verbose=0,
                failure_config=tune.FailureConfig(max_failures=trial_max_failures(cfg)),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=cfg.ray.checkpoints_to_keep),
                callbacks=[ProgressLog(cfg.objective.metric, mode, cfg.total_trials, cfg.ray.summary_every_s,
                                       uri, cfg.name),
                           FailedTrialRecords(plan), *tracking.callbacks(cfg, uri)],
            ),
        )
    grid = tuner.fit()
    return _summarize(cfg, uri, grid, METRIC)


def _summarize(cfg: SweepConfig, uri: str, grid, metric: str) -> SweepResult:
    from tune.progress import STATE_FILE, finished_result
    res = SweepResult(cfg.name, uri, len(grid))
    sign = 1 if cfg.objective.mode == "max" else -1
    for r in grid:
        m = r.metrics or {}
        d = (r.config or {}).get("study", "?")
        if r.error is not None:
            res.errored.append(m.get("trial_id") or str(r.path))
            res.errored_by[d] = res.errored_by.get(d, 0) + 1
            continue
        obj = m.get(metric) if finished_result(m) else None    # an epoch report is not a trial's result
        if obj is not None and (d not in res.best or sign * obj > sign * res.best[d]["objective"]):
            res.best[d] = {"trial_id": m.get("trial_id"), "objective": obj,
                           **{k: v for k, v in m.items() if k.startswith("final_")},
                           "hparams": (r.config or {}).get("hparams")}
    res.records = st.list_records(uri, cfg.name)
    try:
        cut = len(st.read_json(uri, f"{cfg.name}/{STATE_FILE}").get("unfinished") or [])
    except Exception:  # noqa: BLE001 - no state written (the run ended before Tune started)
        cut = 0
    res.unfinished = cut + max(0, cfg.total_trials - len(grid))
    return res
