"""Sweeps on a real local Ray: records in storage (S3 when SeaweedFS is installed), a worker killed mid-trial
resumes from its checkpoint, a driver killed mid-sweep is resumed with every trial recorded exactly once.

One session-scoped Ray (4 logical CPUs on 2 cores) serves every test; each trial costs ~7-10 s of Ray
overhead, so the sweeps here are as small as what they prove allows.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.s3 import s3_server, weed_binary  # noqa: F401  (fixture)
from tune import storage as sweep_storage
from tune.sweep_config import load_sweep

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
BASE = {"method": "fair", "seed": 0,
        "model": {"name": "fair-tiny-vit", "pretrained": "", "device": "cpu"},
        "data": {"train_per_class": 4, "test_per_class": 3, "val_per_class": 2, "num_workers": 0},
        "train": {"batch_size": 8}, "local": {"num_crops": 2, "top_k": 2},
        "eval": {"local_views": 2, "batch_size": 64}}
SPACE = {"anchors.mode": {"choice": ["prototype", "set"]},
         "anchors.tau_anchor": {"loguniform": [1, 100], "when": {"anchors.mode": "set"}},
         "train.lr": {"loguniform": [1.0e-4, 1.0e-2]}}


def sweep_dict(name: str, storage: str, datasets=("fashion_mnist", "fashion_mnist_shifted"), trials=2,
               epochs=1, final_seeds=1, **over) -> dict:
    d = {"name": f"{name}-{uuid.uuid4().hex[:6]}", "datasets": list(datasets), "base": BASE, "space": SPACE,
         "budget": {"trials_per_dataset": trials, "epochs": epochs, "max_steps_per_epoch": 2,
                    "max_concurrent": 2, "final_seeds": final_seeds},
         "resources": {"num_workers": 1, "per_worker": {"CPU": 1}},
         "storage": storage,
         "ray": {"worker_start_timeout_s": 30, "controller_failure_limit": 0, "summary_every_s": 3600}}
    d.update(over)
    return d


@pytest.fixture(scope="session")
def use_s3(request):
    """SeaweedFS when installed (started BEFORE Ray, so Ray's workers inherit its AWS_* env), else None."""
    if weed_binary() is None:
        return None
    return request.getfixturevalue("s3_server")


@pytest.fixture(scope="session")
def ray_session(use_s3, tmp_path_factory):
    import tune.ray_session
    from tune.sweep_config import RayOptions
    import ray
    tune.ray_session.init(None, RayOptions(num_cpus=4, worker_start_timeout_s=30))
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _records(uri: str, name: str) -> list[dict]:
    """Every record a sweep wrote."""
    return [sweep_storage.read_json(uri, sweep_storage.record_key(name, d, tid))
            for d, ids in sweep_storage.list_records(uri, name).items() for tid in ids]


def test_two_datasets_two_trials_each_one_record_per_trial(ray_session, use_s3, tmp_path):
    from tune.sweep import preflight, run
    storage = f"s3://{use_s3.bucket}/t-{uuid.uuid4().hex[:6]}" if use_s3 else str(tmp_path / "sweeps")
    cfg = load_sweep(None, mapping=sweep_dict("two", storage))
    uri = preflight(cfg)
    t = time.monotonic()
    result = run(cfg, uri)
    assert not result.errored and result.trials == 4 + 2                  # 2 search + 1 final seed per study
    recs = sweep_storage.list_records(uri, cfg.name)
    assert {d: len(v) for d, v in recs.items()} == {"fashion_mnist": 3, "fashion_mnist_shifted": 3}
    for d, ids in recs.items():
        for tid in ids:
            rec = sweep_storage.read_json(uri, sweep_storage.record_key(cfg.name, d, tid))
            assert rec["run_id"] == tid and rec["status"] == "completed" and rec["dataset"] == d
            assert rec["sweep"] == {"name": cfg.name, "trial_id": tid, "study": f"fair/{d}"}
            assert rec["metrics"]["val_top1"] is not None and rec["metrics"]["test_top1"] is not None
            assert rec["config"]["train"]["epochs"] == 1
    assert set(result.best) == {"fair/fashion_mnist", "fair/fashion_mnist_shifted"}
    print(f"2x2 sweep on {'s3' if use_s3 else 'local'}: {time.monotonic() - t:.1f} s")


def test_a_trial_that_errors_leaves_a_failed_record_beside_the_completed_ones(ray_session, tmp_path):
    """A dataset whose trials all fail must show in the results as failed, not vanish."""
    from results.schema import record_to_rows
    from tune.sweep import preflight, run
    broken = {"fashion_mnist_shifted": {"data": {"descriptions": str(tmp_path / "missing.json")}}}
    d = sweep_dict("fail", str(tmp_path / "sweeps"), trials=1, per_dataset=broken,
                   resources={"num_workers": 1, "per_worker": {"CPU": 1}, "runner": "direct"},
                   ray={"summary_every_s": 3600, "trial_max_failures": 0, "worker_max_failures": 0})
    cfg = load_sweep(None, mapping=d)
    uri = preflight(cfg, data_check=False)          # the data check would have caught it before Ray
    result = run(cfg, uri)
    assert result.errored_by == {"fair/fashion_mnist_shifted": 1}
    recs = sweep_storage.list_records(uri, cfg.name)
    # fashion_mnist: its search trial and its final re-run; the failed study has nothing to re-run
    assert {k: len(v) for k, v in recs.items()} == {"fashion_mnist": 2, "fashion_mnist_shifted": 1}
    first = sweep_storage.record_key(cfg.name, "fashion_mnist", recs["fashion_mnist"][0])
    completed = sweep_storage.read_json(uri, first)
    assert completed["status"] == "completed"
    assert completed["provenance"]["gpu_memory_cap"] is None       # on the CPU: no cap (tune.gpu_share)
    (tid,) = recs["fashion_mnist_shifted"]
    rec = sweep_storage.read_json(uri, sweep_storage.record_key(cfg.name, "fashion_mnist_shifted", tid))
    assert rec["status"] == "failed" and rec["metrics"] is None and rec["run_id"] == tid
    assert "FairError" in rec["error"] and "missing.json" in rec["error"] and "not found" in rec["error"]
    assert rec["sweep"] == {"name": cfg.name, "trial_id": tid, "study": "fair/fashion_mnist_shifted"}
    assert rec["stage"] == "search" and rec["method"] == "fair" and rec["seed"] == 0
    rows = record_to_rows(rec, "test")                  # the results tables accept it
    assert rows.trial["status"] == "failed" and rows.dataset == "fashion_mnist_shifted"


def test_a_trial_whose_sampled_config_is_invalid_still_leaves_a_failed_record(tmp_path):
    """Searched values are checked one by one before the sweep; a combination can still fail FairConfig's
    cross-field checks in the trial. Its failed record must be written all the same (no Ray needed)."""
    from results.schema import record_to_rows
    from tune.failures import write_failed_record
    from tune.sweep import build_plan
    cfg = load_sweep(None, mapping=sweep_dict("badcombo", str(tmp_path / "sweeps")))
    plan = build_plan(cfg, cfg.storage)
    error = ("Failure # 1 (occurred at 2026-11-29_05-00-00)\nTraceback (most recent call last):\n"
             "fair.errors.FairError: config keys 'local.crop_min' <= 'local.crop_max' must lie in (0, 1]")
    write_failed_record(plan, "t_bad", {"study": "fair/fashion_mnist",
                                        "hparams": {"local.crop_min": 0.9, "local.crop_max": 0.5}}, error)
    rec = sweep_storage.read_json(cfg.storage, sweep_storage.record_key(cfg.name, "fashion_mnist", "t_bad"))
    assert rec["status"] == "failed" and "crop_min" in rec["error"] and rec["run_id"] == "t_bad"
    assert rec["config"]["local"]["crop_min"] == 0.9
    rows = record_to_rows(rec, "test")
    assert rows.trial["status"] == "failed"
    # declared types (docs/record.md) type the columns, even for a config FairConfig refused
    assert set(rec["hparam_types"]) == set(rec["hparams"]) and rec["hparam_types"]["local.crop_min"] == "float"
    assert str(rows.hp_types["hp.local.crop_min"]) == "double"


@pytest.mark.parametrize("runner", ["trainer", "direct"])
def test_killed_worker_resumes_from_its_checkpoint(ray_session, tmp_path, runner):
    """`trainer`: Train restarts the worker group; `direct`: Tune restarts the trial. Both from epoch 1."""
    from ray.tune import ExperimentAnalysis
    from tune.sweep import preflight, run
    d = sweep_dict("crash", str(tmp_path / "sweeps"), datasets=["fashion_mnist"], trials=1, epochs=3,
                   faults={"crash_worker_in_epoch": 2},
                   resources={"num_workers": 1, "per_worker": {"CPU": 1}, "runner": runner})
    cfg = load_sweep(None, mapping=d)
    uri = preflight(cfg)
    result = run(cfg, uri)
    assert not result.errored
    recs = {r["stage"]: r for r in _records(uri, cfg.name)}       # the search trial and its final re-run
    assert set(recs) == {"search", "final"}
    for rec in recs.values():
        assert [r["epoch"] for r in rec["epochs"]] == [1, 2, 3]      # no epoch lost or duplicated
    dfs = ExperimentAnalysis(sweep_storage.join(uri, cfg.name)).trial_dataframes
    df = dfs[next(k for k in dfs if recs["search"]["run_id"] in k)]  # the one that crashed (once per sweep)
    assert list(df["epoch"]) == [1, 2, 3]                            # epoch 2 reported once: after the crash
    assert list(df["resumed_from_epoch"]) == [0, 1, 1]               # ... by the attempt resumed after epoch 1
    assert df["final_test_top1"].iloc[-1] is not None


def _driver(sweep_file: Path, address: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "fair.cli", "sweep", "-c", str(sweep_file), "--address", address],
                            cwd=ROOT, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def kill_driver_after_first_record(d: dict, address: str, tmp_path: Path, timeout: float) -> tuple[Path, Path, dict]:
    """Start `fair sweep` on the sweep mapping `d` as its own process, SIGKILL it once the first record is
    stored (the kill lands mid-sweep); the sweep file and the driver's log, for the resume, and the records
    stored before the kill."""
    sweep_file, log = tmp_path / "sweep.yaml", tmp_path / "driver.log"
    sweep_file.write_text(yaml.safe_dump(d))
    proc = _driver(sweep_file, address, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not sum(map(len, sweep_storage.list_records(d["storage"], d["name"]).values())):
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.5)
    first = sweep_storage.list_records(d["storage"], d["name"])
    assert sum(map(len, first.values())) >= 1, log.read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return sweep_file, log, first


@pytest.mark.parametrize("runner", ["trainer", "direct"])
def test_killed_driver_resumes_with_every_trial_recorded_once(ray_session, tmp_path, runner):
    storage = str(tmp_path / "sweeps")
    # one trial at a time, one per dataset: the kill lands between studies (the second trial in flight or
    # not yet suggested), so the resume must restore both the trial and the searcher's budget. A direct
    # trial starts in a second or two, so it gets more epochs to still be running when the kill lands.
    d = sweep_dict("driver", storage, trials=1, epochs=1 if runner == "trainer" else 4,
                   resources={"num_workers": 1, "per_worker": {"CPU": 1}, "runner": runner})
    d["budget"]["max_concurrent"] = 1
    sweep_file, log, first = kill_driver_after_first_record(d, ray_session, tmp_path, timeout=150)
    time.sleep(2)                                                    # let Ray reap the dead job's actors
    n_before = sum(map(len, sweep_storage.list_records(storage, d["name"]).values()))
    assert n_before < 4, "the sweep finished before it could be killed; make it longer"

    proc = _driver(sweep_file, ray_session, log)                     # the same command resumes
    assert proc.wait(timeout=240) == 0, log.read_text()[-3000:]
    recs = sweep_storage.list_records(storage, d["name"])
    # per study: its search trial and the final re-run of it
    assert {k: len(v) for k, v in recs.items()} == {"fashion_mnist": 2, "fashion_mnist_shifted": 2}
    by_stage = {}
    for rec in _records(storage, d["name"]):
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
                   resources={"num_workers": 1, "per_worker": {"CPU": 1}, "runner": "direct"})
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(d))
    log = tmp_path / "driver.log"
    proc = _driver(sweep_file, ray_session, log)
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

    proc = _driver(sweep_file, ray_session, log)                     # the same command finishes it
    assert proc.wait(timeout=240) == 0, log.read_text()[-3000:]
    assert {k: len(v) for k, v in sweep_storage.list_records(storage, d["name"]).items()} == {"fashion_mnist": 2}


def test_two_methods_search_then_rerun_each_studys_pick_with_final_seeds(ray_session, tmp_path):
    """fair and selftrain on one dataset, 2 search trials each, then the best of each re-run with 2 new
    seeds: records per method and stage, finals re-run their pick's configuration, studies hold search only."""
    from tune.sweep import preflight, run
    d = sweep_dict("methods", str(tmp_path / "sweeps"), datasets=["fashion_mnist"], trials=2, final_seeds=2,
                   resources={"num_workers": 1, "per_worker": {"CPU": 1}, "runner": "direct"})
    del d["space"]
    d["methods"] = {"fair": SPACE, "selftrain": {"train.lr": {"loguniform": [1.0e-4, 1.0e-2]},
                                                 "pseudo.gamma_end": {"uniform": [0.0, 1.0]}}}
    cfg = load_sweep(None, mapping=d)
    uri = preflight(cfg)
    result = run(cfg, uri)
    assert not result.errored and result.complete and result.trials == 2 * (2 + 2)
    recs = _records(uri, cfg.name)
    count = {}
    for r in recs:
        count[(r["method"], r["stage"])] = count.get((r["method"], r["stage"]), 0) + 1
        assert r["status"] == "completed" and r["dataset"] == "fashion_mnist" and r["sweep"]["name"] == cfg.name
        assert r["sweep"]["study"] == f"{r['method']}/fashion_mnist" and r["config"]["method"] == r["method"]
    assert count == {("fair", "search"): 2, ("fair", "final"): 2, ("selftrain", "search"): 2,
                     ("selftrain", "final"): 2}
    by_id = {r["run_id"]: r for r in recs}
    for method in ("fair", "selftrain"):
        search = [r for r in recs if r["method"] == method and r["stage"] == "search"]
        finals = [r for r in recs if r["method"] == method and r["stage"] == "final"]
        top = max(r["metrics"]["val_top1"] for r in search)      # tiny data: trials often tie (at chance)
        (pick,) = {r["picked_from"] for r in finals}
        assert by_id[pick]["metrics"]["val_top1"] == top and by_id[pick]["stage"] == "search"   # the pick
        assert result.best[f"{method}/fashion_mnist"]["objective"] == top
        assert sorted(r["seed"] for r in finals) == [1, 2] and {r["seed"] for r in search} == {0}
        for r in finals:                                                       # its configuration, new seed
            picked = by_id[r["picked_from"]]["hparams"]
            assert {k: v for k, v in r["hparams"].items() if k != "seed"} == \
                {k: v for k, v in picked.items() if k != "seed"}
        assert sorted(result.finals[f"{method}/fashion_mnist"]) == sorted(r["metrics"]["val_top1"] for r in finals)
    studies = _studies(uri, cfg.name)
    assert set(studies) == {"fair/fashion_mnist", "selftrain/fashion_mnist"}
    assert all(len(s.trials) == 2 for s in studies.values())                  # finals are no search trials
    assert set(studies["selftrain/fashion_mnist"].trials[0].params) == {"train.lr", "pseudo.gamma_end"}


def test_request_larger_than_the_cluster_is_refused(ray_session, tmp_path, capsys):
    from fair.cli import main as fair_main
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(sweep_dict("big", str(tmp_path / "st"),
                                           resources={"num_workers": 2, "per_worker": {"CPU": 3}})))
    assert fair_main(["sweep", "-c", str(p), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "6.01 CPU" in err and "cluster has 4" in err and len(err.splitlines()) == 1


def _studies(uri: str, name: str) -> dict:
    """Each study of the sweep as its Optuna storage holds it (tune.optuna_storage), with `tune_ids`: Tune
    trial id -> the study's trial number."""
    from tune.optuna_storage import load_studies
    from tune.searcher import TUNE_ATTR
    out = load_studies(uri, name)
    for study in out.values():
        study.tune_ids = {t.user_attrs[TUNE_ATTR]: t.number for t in study.trials if TUNE_ATTR in t.user_attrs}
    return out


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
                   resources={"num_workers": 1, "per_worker": {"CPU": 1}, "runner": runner},
                   ray={"worker_start_timeout_s": 30, "controller_failure_limit": 0, "summary_every_s": 3600,
                        "trial_max_failures": 0, "worker_max_failures": 0})
    cfg = load_sweep(None, mapping=d)
    uri = preflight(cfg)
    first = run(cfg, uri)
    assert len(first.errored) == 1
    (tid,) = sweep_storage.list_records(uri, cfg.name)["fashion_mnist"]
    assert sweep_storage.read_json(uri, sweep_storage.record_key(cfg.name, "fashion_mnist", tid))["status"] == "failed"
    assert [t.state.name for t in _studies(uri, cfg.name)["fair/fashion_mnist"].trials] == ["FAIL"]
    assert first.complete                                            # nothing to re-run: no final seeds yet

    second = run(cfg, uri)                                           # the rerun resumes the sweep
    assert not second.errored and second.trials == 2 and second.best["fair/fashion_mnist"]["trial_id"] == tid
    recs = {r["run_id"]: r for r in _records(uri, cfg.name)}         # one record each: the completed one ...
    assert set(recs) == {tid, *(t for t, r in recs.items() if r["stage"] == "final")} and len(recs) == 2
    (final,) = (r for r in recs.values() if r["stage"] == "final")   # ... and the final re-run of its pick
    assert final["picked_from"] == tid and final["config"]["seed"] == 1
    rec = recs[tid]
    assert rec["status"] == "completed" and [r["epoch"] for r in rec["epochs"]] == [1, 2]
    dfs = ExperimentAnalysis(sweep_storage.join(uri, cfg.name)).trial_dataframes
    df = dfs[next(k for k in dfs if tid in k)]
    assert list(df["resumed_from_epoch"])[-1] == 1                   # from its checkpoint, not from scratch
    study = _studies(uri, cfg.name)["fair/fashion_mnist"]
    failed, late = study.trials
    assert (failed.state.name, late.state.name) == ("FAIL", "COMPLETE")
    assert late.params == failed.params and late.user_attrs[LATE_ATTR] == tid
    assert late.value == rec["metrics"]["val_top1"] and study.best_trial.number == late.number


def test_early_stopped_trials_are_pruned_recorded_and_counted_apart(ray_session, tmp_path):
    """ASHA stops a trial after epoch 1: Optuna records it PRUNED (never the best), it leaves a
    `stopped_early` record, and `fair results table` counts it apart from completed and failed trials."""
    from results.collect import collect
    from results.tables import load_trials, main_table
    from results.store import open_store
    from tune.sweep import preflight, run
    d = sweep_dict("asha", str(tmp_path / "sweeps"), datasets=["fashion_mnist"], trials=4, epochs=2,
                   resources={"num_workers": 1, "per_worker": {"CPU": 1}, "runner": "direct"},
                   space={**SPACE, "train.lr": {"loguniform": [1.0e-5, 1.0]}})
    d["budget"].update(max_concurrent=1, early_stopping={"grace_period": 1, "reduction_factor": 2})
    cfg = load_sweep(None, mapping=d)
    uri = preflight(cfg)
    result = run(cfg, uri)
    assert not result.errored
    everything = {r["run_id"]: r for r in _records(uri, cfg.name)}
    recs = {t: r for t, r in everything.items() if r["stage"] == "search"}
    ids = list(recs)
    (final,) = (r for r in everything.values() if r["stage"] == "final")   # never stopped early
    assert final["status"] == "completed" and recs[final["picked_from"]]["status"] == "completed"
    stopped = {t for t, r in recs.items() if r["status"] == "stopped_early"}
    assert len(ids) == 4 and stopped and len(stopped) < 4, {t: r["status"] for t, r in recs.items()}
    assert result.stopped_by == {"fair/fashion_mnist": len(stopped)}
    for t in stopped:
        assert recs[t]["metrics"] is None and recs[t]["last_epoch"]["epoch"] == 1
    study = _studies(uri, cfg.name)["fair/fashion_mnist"]
    states = {t: study.trials[n].state.name for t, n in study.tune_ids.items()}
    assert states == {t: "PRUNED" if t in stopped else "COMPLETE" for t in ids}, states
    assert study.best_trial.state.name == "COMPLETE"
    collect([uri], str(tmp_path / "out"))
    table = main_table(load_trials(open_store(str(tmp_path / "out"))))
    assert any(f"{5 - len(stopped)} completed, {len(stopped)} stopped early, 0 failed" in n
               for n in table.notes), table.notes
