"""Sweeps on a real local Ray: records in storage (S3 when SeaweedFS is installed), failed records beside
completed ones, two methods with final seeds, requests the cluster cannot hold, early stopping. Sweeps cut
short and resumed are in test_tune_resume.py.

One Ray per module (4 logical CPUs on 2 cores, conftest.ray_session); each trial costs ~7-10 s of Ray
overhead, so the sweeps here are as small as what they prove allows.
"""
from __future__ import annotations

import time
import uuid

import pytest
import yaml

from tests.sweeps import SPACE, sweep_dict, sweep_records, sweep_studies
from tune import storage as sweep_storage
from tune.sweep_config import load_sweep

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_two_datasets_two_trials_each_one_record_per_trial(ray_session, use_s3, tmp_path):
    from tune.sweep import preflight, run
    storage = f"s3://{use_s3.bucket}/t-{uuid.uuid4().hex[:6]}" if use_s3 else str(tmp_path / "sweeps")
    # runner direct: the trainer runner's sweeps (S3, a lost node, resumes, autoscaling) are in
    # test_tune_multinode, test_tune_resume and test_tune_autoscaling; here 6 trials x ~10 s of Train start-up
    cfg = load_sweep(None, mapping=sweep_dict("two", storage, runner="direct"))
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
                   runner="direct",
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


def test_two_methods_search_then_rerun_each_studys_pick_with_final_seeds(ray_session, tmp_path):
    """fair and selftrain on one dataset, 2 search trials each, then the best of each re-run with 2 new
    seeds: records per method and stage, finals re-run their pick's configuration, studies hold search only."""
    from tune.sweep import preflight, run
    d = sweep_dict("methods", str(tmp_path / "sweeps"), datasets=["fashion_mnist"], trials=2, final_seeds=2,
                   runner="direct")
    del d["space"]
    d["methods"] = {"fair": SPACE, "selftrain": {"train.lr": {"loguniform": [1.0e-4, 1.0e-2]},
                                                 "pseudo.gamma_end": {"uniform": [0.0, 1.0]}}}
    cfg = load_sweep(None, mapping=d)
    uri = preflight(cfg)
    result = run(cfg, uri)
    assert not result.errored and result.complete and result.trials == 2 * (2 + 2)
    recs = sweep_records(uri, cfg.name)
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
    studies = sweep_studies(uri, cfg.name)
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


def test_early_stopped_trials_are_pruned_recorded_and_counted_apart(ray_session, tmp_path):
    """ASHA stops a trial after epoch 1: Optuna records it PRUNED (never the best), it leaves a
    `stopped_early` record, and `fair results table` counts it apart from completed and failed trials."""
    from results.collect import collect
    from results.tables import load_trials, main_table
    from results.store import open_store
    from tune.sweep import preflight, run
    d = sweep_dict("asha", str(tmp_path / "sweeps"), datasets=["fashion_mnist"], trials=4, epochs=2,
                   runner="direct",
                   space={**SPACE, "train.lr": {"loguniform": [1.0e-5, 1.0]}})
    d["budget"].update(max_concurrent=1, early_stopping={"grace_period": 1, "reduction_factor": 2})
    cfg = load_sweep(None, mapping=d)
    uri = preflight(cfg)
    result = run(cfg, uri)
    assert not result.errored
    everything = {r["run_id"]: r for r in sweep_records(uri, cfg.name)}
    recs = {t: r for t, r in everything.items() if r["stage"] == "search"}
    ids = list(recs)
    (final,) = (r for r in everything.values() if r["stage"] == "final")   # never stopped early
    assert final["status"] == "completed" and recs[final["picked_from"]]["status"] == "completed"
    stopped = {t for t, r in recs.items() if r["status"] == "stopped_early"}
    assert len(ids) == 4 and stopped and len(stopped) < 4, {t: r["status"] for t, r in recs.items()}
    assert result.stopped_by == {"fair/fashion_mnist": len(stopped)}
    for t in stopped:
        assert recs[t]["metrics"] is None and recs[t]["last_epoch"]["epoch"] == 1
    study = sweep_studies(uri, cfg.name)["fair/fashion_mnist"]
    states = {t: study.trials[n].state.name for t, n in study.tune_ids.items()}
    assert states == {t: "PRUNED" if t in stopped else "COMPLETE" for t in ids}, states
    assert study.best_trial.state.name == "COMPLETE"
    collect([uri], str(tmp_path / "out"))
    table = main_table(load_trials(open_store(str(tmp_path / "out"))))
    assert any(f"{5 - len(stopped)} completed, {len(stopped)} stopped early, 0 failed" in n
               for n in table.notes), table.notes
    # no trial's node-local folder outlives its process, stopped ones included (tune.scratch); Ray ends the
    # trials' processes shortly after the sweep, so give it a little time
    from tune import scratch
    deadline = time.monotonic() + 60
    while any(scratch.sweep_dir(cfg.name).glob("*/rank*")) and time.monotonic() < deadline:
        time.sleep(1)
        scratch.prune()
    assert not any(scratch.sweep_dir(cfg.name).glob("*/rank*")), list(scratch.sweep_dir(cfg.name).rglob("*"))
