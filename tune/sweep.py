"""Run (or resume) a sweep: checks first, then one Tuner over every study (method x dataset).

Rerunning the same sweep, or `fair sweep --resume NAME`, restores the Tuner from storage: finished trials
are kept, unfinished and errored ones continue (from their last Train checkpoint), and the Optuna studies
come back from their Optuna storage (tune.optuna_storage); each trial id keeps one record key, so nothing is
lost or duplicated.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass, field
from typing import Optional

from fair.errors import FairError
from tune import checkpoint_deletion, scratch, state_sync
from tune import storage as sweep_storage
from tune.study_order import asha_rungs
from tune.sweep_config import SweepConfig, check_datasets, from_mapping

log = logging.getLogger("tune.sweep")
SWEEP_FILE = "sweep.json"   # the resolved sweep config, beside the Tune experiment (for --resume NAME)


@dataclass
class SweepResult:
    name: str
    storage: str
    trials: int
    errored: list = field(default_factory=list)
    best: dict = field(default_factory=dict)          # study -> {"trial_id", "objective", metrics...} (search)
    records: dict = field(default_factory=dict)       # dataset -> [trial ids] (completed and failed records)
    errored_by: dict = field(default_factory=dict)    # study -> trials that ended in error
    stopped_by: dict = field(default_factory=dict)    # study -> trials the scheduler stopped early
    finals: dict = field(default_factory=dict)        # study -> final-seed objectives (completed re-runs)
    superseded: int = 0                               # early finals of a configuration not picked in the end
    unfinished: int = 0                               # trials cut off by an interrupt or never started

    @property
    def complete(self) -> bool:
        return self.unfinished == 0

    def table(self, objective: str, show_test: bool = False) -> str:
        """The end-of-sweep summary: per dataset, the best trial by `objective` with its validation top-1 ±
        standard error; test top-1 only with `show_test` (exploration chooses on validation)."""
        cut = f", {self.unfinished} unfinished (rerun to continue)" if self.unfinished else ""
        stopped = sum(self.stopped_by.values())
        n_records = sum(map(len, self.records.values()))
        extra = f", {self.superseded} early finals superseded" if self.superseded else ""
        lines = [f"sweep {self.name}: {self.trials} trials, {len(self.errored)} errored, {stopped} stopped early"
                 f"{extra}{cut}; {n_records} records in {sweep_storage.join(self.storage, self.name, 'records')}",
                 f"{'study':32s} {'errored':>7s} {'stopped':>7s}  {'best trial':12s} {objective:>10s} "
                 f"{'val_top1 ± se':>15s}" + (f" {'test_top1':>9s}" if show_test else "")
                 + f"  final seeds ({objective})"]
        for k in sorted(set(self.best) | set(self.errored_by) | set(self.stopped_by) | set(self.finals)):
            b = self.best.get(k, {})
            obj, test = b.get("objective"), b.get("final_test_top1")
            val, se = b.get("final_val_top1"), b.get("final_val_stderr")
            val_text = "-" if val is None else f"{val:.2f}" + ("" if se is None else f" ± {se:.2f}")
            finals = " ".join(f"{v:.4g}" for v in self.finals.get(k, [])) or "-"
            lines.append(f"{k:32s} {self.errored_by.get(k, 0):7d} {self.stopped_by.get(k, 0):7d}  "
                         f"{b.get('trial_id', '-'):12s} "
                         f"{'-' if obj is None else f'{obj:.4g}':>10s} {val_text:>15s}"
                         + (f" {'-' if test is None else f'{test:.2f}':>9s}" if show_test else "")
                         + f"  {finals}")
        return "\n".join(lines)


def _snapshot(cfg: SweepConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d.pop("source", None)
    return d


def saved_config(storage: str, name: str) -> dict | None:
    from results.store import MissingKey
    try:
        return sweep_storage.read_json(storage, f"{name}/{SWEEP_FILE}")
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
RESUMABLE_CHANGES = ("ray.", "faults.", "budget.max_concurrent", "search.order", "search.max_running_share",
                     "search.early_finals", "search.speculative_finals")


def _search_changes(a: dict, b: dict) -> list[str]:
    """How a stored sweep and this one differ as experiments (empty: the same; Ray/progress options and
    FAIR keys that change no result, such as data.num_workers, may change), one `key old -> new` each."""
    from fair.record import DIGEST_IGNORES
    from fair.config import changed_keys
    datasets = {*(a.get("per_dataset") or {}), *(b.get("per_dataset") or {})}
    fair_roots = ["base.", *(f"per_dataset.{d}." for d in datasets)]
    neutral = tuple(root + key for root in fair_roots for key in DIGEST_IGNORES)
    return changed_keys(a, b, RESUMABLE_CHANGES + neutral)


def preflight(cfg: SweepConfig, data_check: bool = True) -> str:
    """Checks that need the storage, the data and the trackers (after the offline ones of load_sweep): the
    resolved storage URI, probed with a marker write, and a named Optuna storage, opened."""
    from tune import optuna_storage, tracking
    uri = sweep_storage.resolve(cfg.storage)
    sweep_storage.probe(uri, cfg.name)
    optuna_storage.check(cfg, uri)                 # a named Optuna storage it cannot open: one line
    tracking.check(cfg.tracking)
    if data_check:
        check_datasets(cfg)
    return uri


def build_plan(cfg: SweepConfig, uri: str):
    from tune.trainable import TrialPlan
    r = cfg.resources
    return TrialPlan(
        sweep=cfg.name, storage=uri, study_configs={k: cfg.study_config(k) for k in cfg.studies},
        objective=cfg.objective.metric, num_workers=r.num_workers, per_worker=dict(r.per_worker),
        use_gpu=r.use_gpu, backend=r.backend, worker_max_failures=cfg.ray.worker_max_failures,
        controller_failure_limit=cfg.ray.controller_failure_limit,
        checkpoints_to_keep=cfg.ray.checkpoints_to_keep, crash_worker_in_epoch=cfg.faults.crash_worker_in_epoch,
        runner=r.runner, hold_in_epoch=cfg.faults.hold_in_epoch, hold_s=cfg.faults.hold_s,
        simulate=cfg.simulate)


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


def run(cfg: SweepConfig, uri: str, resume: bool | None = None, show_test: bool = False,
        prior: Optional[dict] = None) -> SweepResult:
    """Run the sweep on the Ray this process is connected to. `resume=None`: restore when the storage
    already holds this sweep; True: must restore; False: refuse an existing sweep. `show_test`: progress
    lines show test accuracy too (else validation only). `prior`: {study: (search, full)} trial durations a
    cost model expects (cluster.plan.trial_durations), so that search.order favours long studies before it
    has measured them."""
    from ray import tune
    from tune.ray_session import max_concurrent
    from tune.failures import FailedTrialRecords
    from tune.trial_logs import KeepResultLogs
    from tune.progress import ProgressLog
    from tune import tracking
    from tune.searcher import METRIC, FinalsScheduler, HandOut, PerStudyASHA, StudySearcher, SweepLimiter, SweepSearch
    from tune.studies import split_study
    from tune.optuna_storage import prepare

    exp_path = sweep_storage.join(uri, cfg.name)
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
    from tune.nodes import check as check_nodes
    check_nodes(cfg, uri)                          # a trial no node holds, a local storage on many nodes
    sweep_storage.write_json(uri, f"{cfg.name}/{SWEEP_FILE}", _snapshot(cfg))

    conc = max_concurrent(cfg.resources.per_trial(), cfg.resources.check_cluster, cfg.budget.max_concurrent)
    SweepLimiter.set_limit(cfg.name, conc)         # before a restore unpickles the sweep's limiter
    store = prepare(cfg, uri, resume=exists)       # the Optuna storage of its studies (tune.optuna_storage)
    StudySearcher.use_store(cfg.name, store)       # ... which a restored searcher re-reads
    hand_out = HandOut(cfg.search.order, cfg.search.max_running(cfg.budget.trials_per_dataset),
                       cfg.search.early_finals, dict(prior or {}), settled_epoch(cfg))
    StudySearcher.set_hand_out(cfg.name, hand_out)  # ... and a restored one hands trials out as this run says
    log.info("Optuna studies of sweep %s: %s", cfg.name, store.dashboard())
    plan = build_plan(cfg, uri)
    trainable = trainable_for(cfg, plan)
    mode = cfg.objective.mode
    state_sync.install()         # snapshots upload what changed, not every trial's files again
    checkpoint_deletion.install()  # trials' old checkpoints are deleted beside the driver's loop
    if exists:
        log.info("resuming sweep %s from %s (%d trials in flight at most)", cfg.name, exp_path, conc)
        # errored trials resume (same trial id, last checkpoint), not restart: a restart makes a new trial
        # id, so the failed record and the study's FAIL would stay beside the completed twin
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        spaces = {m: cfg.search_space(m) for m in cfg.method_names}
        searcher = StudySearcher({k: spaces[split_study(k)[0]] for k in cfg.studies}, cfg.studies,
                                 cfg.budget.trials_per_dataset, mode, cfg.search.sampler,
                                 {k: cfg.search.seed_for(k) for k in cfg.studies},
                                 {k: cfg.final_seeds_of(k) for k in cfg.studies}, sweep=cfg.name,
                                 hand_out=hand_out)
        es = cfg.budget.early_stopping
        scheduler = (PerStudyASHA(cfg.budget.epochs, es.grace_period, es.reduction_factor, cfg.name) if es
                     else FinalsScheduler(cfg.name))
        scheduler.set_search_properties(METRIC, mode)
        log.info("sweep %s: %d methods x %d datasets x (%d search + %d final-seed trials), %d epochs, %d trials "
                 "in flight at most (runner %s); spaces: %s", cfg.name, len(spaces), len(cfg.datasets),
                 cfg.budget.trials_per_dataset, cfg.budget.final_seeds, cfg.budget.epochs, conc,
                 cfg.resources.runner, "; ".join(f"{m}: {sp.describe()}" for m, sp in spaces.items()))
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=SweepSearch(SweepLimiter(searcher, cfg.name, conc)),
                                        scheduler=scheduler, num_samples=most_trials(cfg),
                                        reuse_actors=cfg.ray.reuse_actors),
            run_config=tune.RunConfig(
                name=cfg.name, storage_path=uri, verbose=0,
                failure_config=tune.FailureConfig(max_failures=trial_max_failures(cfg)),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=cfg.ray.checkpoints_to_keep),
                callbacks=[ProgressLog(cfg.objective.metric, mode, cfg.total_trials, cfg.ray.summary_every_s,
                                       uri, cfg.name, show_test,
                                       functools.partial(StudySearcher.is_superseded, cfg.name)),
                           FailedTrialRecords(plan), KeepResultLogs(), *tracking.callbacks(cfg, uri)],
            ),
        )
    grid = tuner.fit()
    checkpoint_deletion.drain()  # the old checkpoints Tune dropped last are gone before the sweep returns
    scratch.prune()              # this node's folders of the trials Tune stopped (tune.scratch)
    return _summarize(cfg, uri, grid, METRIC)


def settled_epoch(cfg: SweepConfig) -> Optional[int]:
    """The epoch past which ASHA stops no search trial (its last rung), when speculative finals may re-run a
    trial from there (search.speculative_finals; tune.searcher.StudySearcher.contenders); else None."""
    es = cfg.budget.early_stopping
    rungs = asha_rungs(cfg.budget.epochs, es.grace_period, es.reduction_factor) if es else []
    return rungs[-1] if rungs and cfg.search.speculative_finals else None


def most_trials(cfg: SweepConfig) -> int:
    """Tune's num_samples: the searcher ends the sweep (FINISHED); this bound only has to hold every trial.
    Besides each study's search trials and finals, early finals re-run other configurations than the final
    pick (tune.searcher: a pick later superseded, a contender run speculatively), each search trial's at
    most once per seed: its finals are kept until it is decided, and a superseded one is never picked."""
    return cfg.total_trials + len(cfg.studies) * cfg.budget.final_seeds * cfg.budget.trials_per_dataset


def _summarize(cfg: SweepConfig, uri: str, grid, metric: str) -> SweepResult:
    from tune.progress import STATE_FILE, finished_result, reported
    from tune.studies import FINAL, stage_of
    res = SweepResult(cfg.name, uri, len(grid))
    try:
        cut_ids = set(sweep_storage.read_json(uri, f"{cfg.name}/{STATE_FILE}").get("unfinished") or [])
    except Exception:  # noqa: BLE001 - no state written (the run ended before Tune started)
        cut_ids = set()
    sign = 1 if cfg.objective.mode == "max" else -1
    picked = set()                              # studies with a completed search trial (finals to come)
    finals = []                                 # (study, picked_from, result's metrics) of the final re-runs
    for r in grid:
        m, config = r.metrics or {}, r.config or {}
        k = config.get("study", "?")
        if r.error is not None:
            res.errored.append(m.get("trial_id") or str(r.path))
            res.errored_by[k] = res.errored_by.get(k, 0) + 1
            continue
        if not reported(m):                # cut off before its first report: counted as unfinished below
            continue
        if stage_of(config) == FINAL:
            finals.append((k, config.get("picked_from"), m))
            continue
        if not finished_result(m):         # stopped by the scheduler (or cut off: counted as unfinished below)
            if m.get("trial_id") not in cut_ids:
                res.stopped_by[k] = res.stopped_by.get(k, 0) + 1
            continue
        obj = m.get(metric)
        if obj is not None:
            picked.add(k)
        if obj is not None and (k not in res.best or sign * obj > sign * res.best[k]["objective"]):
            res.best[k] = {"trial_id": m.get("trial_id"), "objective": obj,
                           **{x: v for x, v in m.items() if x.startswith("final_")},
                           "hparams": config.get("hparams")}
    for k, picked_from, m in finals:
        if k in res.best and picked_from != res.best[k]["trial_id"]:
            res.superseded += 1        # an early final of an earlier pick (tune.searcher): not this study's
        elif finished_result(m) and m.get(metric) is not None:
            res.finals.setdefault(k, []).append(m[metric])
        elif not finished_result(m) and m.get("trial_id") not in cut_ids:
            res.stopped_by[k] = res.stopped_by.get(k, 0) + 1
    res.records = sweep_storage.list_records(uri, cfg.name)
    # trials still to come: search trials never started, and final re-runs of every study that has a pick
    # (a study whose search trials all failed or were stopped has none to re-run)
    expected = cfg.budget.trials_per_dataset * len(cfg.studies) + cfg.budget.final_seeds * len(picked)
    res.unfinished = len(cut_ids) + max(0, expected - (len(grid) - res.superseded))
    return res
