"""Sweeps on a real local Ray that are cut short and resumed: a worker killed mid-trial resumes from its
checkpoint, a driver killed mid-sweep is resumed with every trial recorded exactly once, Ctrl-C exits 130
and the same command finishes the sweep, an errored trial resumes under its id.

One Ray per module (4 logical CPUs on 2 cores, conftest.ray_session); each trial costs ~7-10 s of Ray
overhead, so the sweeps here are as small as what they prove allows.
"""
from __future__ import annotations

import os
import signal
import time

import pytest
import yaml

from tests.sweeps import kill_driver_after_first_record, start_driver, sweep_dict, sweep_records, sweep_studies
from tune import storage as sweep_storage
from tune.sweep_config import load_sweep

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.mark.parametrize("runner", ["trainer", "direct"])
def test_killed_worker_resumes_from_its_checkpoint(ray_session, tmp_path, runner):
    """`trainer`: Train restarts the worker group; `direct`: Tune restarts the trial. Both from epoch 1."""
    from ray.tune import ExperimentAnalysis
    from tune.sweep import preflight, run
    d = sweep_dict("crash", str(tmp_path / "sweeps"), datasets=["fashion_mnist"], trials=1, epochs=3,
                   faults={"crash_worker_in_epoch": 2},
                   runner=runner)
    cfg = load_sweep(None, mapping=d)
    uri = preflight(cfg)
    result = run(cfg, uri)
    assert not result.errored
    recs = {r["stage"]: r for r in sweep_records(uri, cfg.name)}       # the search trial and its final re-run
    assert set(recs) == {"search", "final"}
    for rec in recs.values():
        assert [r["epoch"] for r in rec["epochs"]] == [1, 2, 3]      # no epoch lost or duplicated
    dfs = ExperimentAnalysis(sweep_storage.join(uri, cfg.name)).trial_dataframes
    df = dfs[next(k for k in dfs if recs["search"]["run_id"] in k)]  # the one that crashed (once per sweep)
    assert list(df["epoch"]) == [1, 2, 3]                            # epoch 2 reported once: after the crash
    assert list(df["resumed_from_epoch"]) == [0, 1, 1]               # ... by the attempt resumed after epoch 1
    assert df["final_test_top1"].iloc[-1] is not None


def test_killed_driver_resumes_with_every_trial_recorded_once(ray_session, tmp_path):
    """What a killed driver loses is the driver's (Tune's experiment state, the searcher's budget, the
    studies), the same for both runners; the `trainer` runner's own resume (its Train run found again under
    the trial's name) is what the killed-worker and errored-trial tests check for it."""
    storage = str(tmp_path / "sweeps")
    # one trial at a time, one per dataset: the kill lands between studies (the second trial in flight or
    # not yet suggested), so the resume must restore both the trial and the searcher's budget. A direct
    # trial starts in a second or two, so it gets 4 epochs to still be running when the kill lands.
    d = sweep_dict("driver", storage, trials=1, epochs=4,
                   runner="direct")
    d["budget"]["max_concurrent"] = 1
    sweep_file, log, first = kill_driver_after_first_record(d, ray_session, tmp_path, timeout=150)
    time.sleep(2)                                                    # let Ray reap the dead job's actors
    n_before = sum(map(len, sweep_storage.list_records(storage, d["name"]).values()))
    assert n_before < 4, "the sweep finished before it could be killed; make it longer"

    proc = start_driver(sweep_file, ray_session, log)                     # the same command resumes
    assert proc.wait(timeout=240) == 0, log.read_text()[-3000:]
    recs = sweep_storage.list_records(storage, d["name"])
    # per study: its search trial and the final re-run of it
    assert {k: len(v) for k, v in recs.items()} == {"fashion_mnist": 2, "fashion_mnist_shifted": 2}
    by_stage = {}
    for rec in sweep_records(storage, d["name"]):
        by_stage.setdefault(rec["stage"], []).append(rec)
    assert {r["picked_from"] for r in by_stage["final"]} == {r["run_id"] for r in by_stage["search"]}
    for ds, ids in first.items():                                    # records of finished trials kept
        assert set(ids) <= set(recs[ds])
    text = log.read_text()
    assert "resuming sweep" in text
    from ray.tune import ExperimentAnalysis
    ea = ExperimentAnalysis(sweep_storage.join(storage, d["name"]))
    assert len(ea.trials) == 4 and all(t.status == "TERMINATED" for t in ea.trials)
    assert sorted(t.trial_id for t in ea.trials) == sorted(i for v in recs.values() for i in v)


def test_interrupted_sweep_says_so_and_exits_130_then_the_same_command_finishes(ray_session, tmp_path):
    """Ctrl-C: Tune marks the cut-off trials TERMINATED like finished ones; the sweep must not report them
    as done or best, and must exit non-zero so `fair sweep ... && fair results collect` stops."""
    storage = str(tmp_path / "sweeps")
    d = sweep_dict("intr", storage, datasets=["fashion_mnist"], trials=1, epochs=8,
                   runner="direct")
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(d))
    log = tmp_path / "driver.log"
    proc = start_driver(sweep_file, ray_session, log)
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and "epoch 1 " not in log.read_text():
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGINT)                                 # what Ctrl-C sends the driver
    assert proc.wait(timeout=120) == 130, log.read_text()[-3000:]
    text = log.read_text()
    assert "interrupted with 1 of 2 trials unfinished" in text and "1 unfinished" in text
    # (the cut-off trial's actor may still finish and write its record before the dead job's actors are
    # reaped; rerunning resumes it from its checkpoint and writes the same record again)

    proc = start_driver(sweep_file, ray_session, log)                     # the same command finishes it
    assert proc.wait(timeout=240) == 0, log.read_text()[-3000:]
    assert {k: len(v) for k, v in sweep_storage.list_records(storage, d["name"]).items()} == {"fashion_mnist": 2}


@pytest.mark.parametrize("runner", ["trainer", "direct"])
def test_errored_trial_resumes_under_its_id_and_its_study_learns_the_late_result(ray_session, tmp_path, runner):
    """A trial that errors (no retries left) is resumed by the rerun: same trial id, from its epoch-1
    checkpoint; its completed record replaces the failed one; its study, which was told FAIL, holds the
    late result as COMPLETE (and as its best)."""
    from ray.tune import ExperimentAnalysis
    from tune.searcher import LATE_ATTR
    from tune.sweep import preflight, run
    d = sweep_dict("late", str(tmp_path / "sweeps"), datasets=["fashion_mnist"], trials=1, epochs=2,
                   faults={"crash_worker_in_epoch": 2},
                   runner=runner,
                   ray={"worker_start_timeout_s": 30, "controller_failure_limit": 0, "summary_every_s": 3600,
                        "trial_max_failures": 0, "worker_max_failures": 0})
    cfg = load_sweep(None, mapping=d)
    uri = preflight(cfg)
    first = run(cfg, uri)
    assert len(first.errored) == 1
    (tid,) = sweep_storage.list_records(uri, cfg.name)["fashion_mnist"]
    assert sweep_storage.read_json(uri, sweep_storage.record_key(cfg.name, "fashion_mnist", tid))["status"] == "failed"
    assert [t.state.name for t in sweep_studies(uri, cfg.name)["fair/fashion_mnist"].trials] == ["FAIL"]
    assert first.complete                                            # nothing to re-run: no final seeds yet

    second = run(cfg, uri)                                           # the rerun resumes the sweep
    assert not second.errored and second.trials == 2 and second.best["fair/fashion_mnist"]["trial_id"] == tid
    recs = {r["run_id"]: r for r in sweep_records(uri, cfg.name)}         # one record each: the completed one ...
    assert set(recs) == {tid, *(t for t, r in recs.items() if r["stage"] == "final")} and len(recs) == 2
    (final,) = (r for r in recs.values() if r["stage"] == "final")   # ... and the final re-run of its pick
    assert final["picked_from"] == tid and final["config"]["seed"] == 1
    rec = recs[tid]
    assert rec["status"] == "completed" and [r["epoch"] for r in rec["epochs"]] == [1, 2]
    dfs = ExperimentAnalysis(sweep_storage.join(uri, cfg.name)).trial_dataframes
    df = dfs[next(k for k in dfs if tid in k)]
    assert list(df["resumed_from_epoch"])[-1] == 1                   # from its checkpoint, not from scratch
    study = sweep_studies(uri, cfg.name)["fair/fashion_mnist"]
    failed, late = study.trials
    assert (failed.state.name, late.state.name) == ("FAIL", "COMPLETE")
    assert late.params == failed.params and late.user_attrs[LATE_ATTR] == tid
    assert late.value == rec["metrics"]["val_top1"] and study.best_trial.number == late.number


def test_a_retried_trials_result_rows_survive_the_retry(ray_session, tmp_path):
    """Tune's JSON logger downloads a retried trial's result.json (what ExperimentAnalysis reads first) from
    storage over the local one; rows reported since the last snapshot upload were lost (CI saw a node-loss
    trial's rows as [2]). tune.trial_logs uploads the logs when Tune decides on the retry. This replays
    Tune's callback calls on a real Trial, with the storage holding the stale copy that a snapshot taken
    before epoch 1 leaves there."""
    import json
    from pathlib import Path

    import pyarrow.fs
    from ray.train import Checkpoint
    from ray.train._internal.session import _TrainingResult
    from ray.train._internal.storage import StorageContext
    from ray.tune.experiment import Trial
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from tune.trial_logs import KeepResultLogs

    def replay(keep: bool) -> tuple[list[int], list[int]]:
        trial = Trial("__fake", stub=True, trial_id=f"t{int(keep)}",
                      storage=StorageContext(storage_path=str(tmp_path / f"store-{keep}"),
                                             experiment_dir_name="sweep"))
        storage = trial.storage
        loggers = [CSVLoggerCallback(), JsonLoggerCallback()]
        callbacks = loggers + ([KeepResultLogs()] if keep else [])
        trial.init_local_path()
        for cb in loggers:
            cb.on_trial_start(0, [trial], trial)
        Path(storage.trial_fs_path).mkdir(parents=True)
        pyarrow.fs.copy_files(trial.local_path, storage.trial_fs_path)        # a snapshot before epoch 1
        for cb in loggers:
            cb.on_trial_result(1, [trial], trial, {"epoch": 1, "objective": 0.5, "training_iteration": 1})
        ckpt = tmp_path / f"ckpt-{keep}"
        ckpt.mkdir()
        trial.on_checkpoint(_TrainingResult(checkpoint=Checkpoint(str(ckpt)), metrics={"epoch": 1}))
        for cb in callbacks:                                                   # the node is lost: retry
            cb.on_trial_recover(2, [trial], trial)
        for cb in loggers:                                                     # the retry starts
            cb.on_trial_start(3, [trial], trial)
            cb.on_trial_result(4, [trial], trial, {"epoch": 2, "objective": 0.6, "training_iteration": 2})
            cb.on_trial_complete(5, [trial], trial)
        csv_rows = (Path(trial.local_path) / "progress.csv").read_text().splitlines()[1:]
        json_rows = (Path(trial.local_path) / "result.json").read_text().splitlines()
        return [int(r.split(",")[0]) for r in csv_rows], [json.loads(r)["epoch"] for r in json_rows]

    assert replay(keep=False) == ([1, 2], [2])           # Tune alone: epoch 1's JSON row is gone
    assert replay(keep=True) == ([1, 2], [1, 2])
