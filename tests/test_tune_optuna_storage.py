"""The Optuna storage of a sweep's studies (tune.optuna_storage): checked offline and before Ray starts,
one study per method x dataset that `optuna.load_study` reads back with the records' trial states, and a
restored searcher that reconciles with the storage (no trial told twice, none lost) after its driver died.
"""
from __future__ import annotations

import pickle
import time
import uuid

import pytest
import yaml

from fair.errors import FairError
from tests.s3 import s3_server, weed_binary  # noqa: F401  (fixture)
from tests.sweeps import (SPACE, kill_driver_after_first_record, start_driver, sweep_dict, sweep_records,
                          sweep_studies)
from tune.sweep_config import load_sweep

STATE = {"completed": "COMPLETE", "stopped_early": "PRUNED", "failed": "FAIL"}   # record status -> Optuna


# --------------------------------------------------------------------------------------- no Ray

@pytest.mark.parametrize("value, words", [
    ("postgresql://fair:hunter22@db.example.com/optuna", "holds a password"),
    ("optuna-studies", "neither a database URL"),
    ("", "must be null"),
])
def test_a_bad_optuna_storage_value_is_one_line_without_the_password(tmp_path, value, words):
    with pytest.raises(FairError, match=words) as e:
        load_sweep(None, mapping=sweep_dict("bad", str(tmp_path), optuna={"storage": value}))
    assert "hunter22" not in str(e.value) and len(str(e.value).splitlines()) == 1


@pytest.mark.parametrize("value", [None, "sqlite:///x/optuna.db", "postgresql://fair@db/optuna",
                                   "mysql+pymysql://fair:${OPTUNA_DB_PASSWORD}@db/optuna", "/shared/optuna.log"])
def test_good_optuna_storage_values_load(tmp_path, value):
    assert load_sweep(None, mapping=sweep_dict("ok", str(tmp_path), optuna={"storage": value})).optuna.storage == value


def test_a_storage_optuna_cannot_open_is_one_line_before_ray_starts(tmp_path, monkeypatch, capsys):
    """`fair sweep` checks the named storage in its preflight, before Ray: one line, exit 2, and a password
    from the environment never shows."""
    from fair.cli import main as fair_main
    from tune.sweep import preflight
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cfg = load_sweep(None, mapping=sweep_dict("open", str(tmp_path / "s"),
                                              optuna={"storage": f"sqlite:///{blocker}/optuna.db"}))
    with pytest.raises(FairError, match="optuna.storage .* cannot be opened"):
        preflight(cfg, data_check=False)
    monkeypatch.setenv("OPTUNA_TEST_PW", "s3cretpassw0rd")
    d = sweep_dict("open", str(tmp_path / "s"),
                   optuna={"storage": "postgresql+psycopg2://fair:${OPTUNA_TEST_PW}@127.0.0.1:9/optuna"})
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(d))
    assert fair_main(["sweep", "-c", str(p), "--dry-run", "--no-data-check"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot be opened" in err and len(err.splitlines()) == 1, err
    assert "s3cretpassw0rd" not in err
    import ray
    assert not ray.is_initialized()


def test_a_restored_searcher_reconciles_with_the_storage_after_its_driver_died(tmp_path):
    """Tune's snapshot (tuner.pkl + searcher state) is taken after t0 ended; the driver then tells t1 and
    asks t2 and dies. The restored searcher must not tell t1 again when Tune re-delivers its end, and must
    hand t2's study trial (same parameters) to the next Tune trial instead of asking a new one."""
    from tune.optuna_storage import load_studies, prepare
    from tune.searcher import TUNE_ATTR, StudySearcher
    from tune.space import parse_space
    cfg = load_sweep(None, mapping=sweep_dict("recon", str(tmp_path), datasets=["fashion_mnist"], trials=3))
    uri = str(tmp_path)

    def searcher(resume: bool):
        StudySearcher.use_store(cfg.name, prepare(cfg, uri, resume=resume))
        return StudySearcher(parse_space(SPACE), cfg.studies, 3, "max", seeds={cfg.studies[0]: 0}, sweep=cfg.name)

    final = {"objective": 60.0, "final_val_top1": 60.0, "epoch": 1, "training_iteration": 1}
    s = searcher(resume=False)
    tuner_pkl = pickle.dumps(s)                             # Tuner(...) pickles its searcher at the start
    t0, t1 = s.suggest("t0"), s.suggest("t1")
    s.on_trial_complete("t0", {**final, "objective": 50.0})
    s.save(str(tmp_path / "searcher-state.pkl"))            # Tune's snapshot
    assert b"sqlite" not in tuner_pkl and b"sqlite" not in (tmp_path / "searcher-state.pkl").read_bytes()
    s.on_trial_complete("t1", final)                        # told after the snapshot ...
    t2 = s.suggest("t2")                                    # ... asked after it; then the driver dies

    StudySearcher.use_store(cfg.name, prepare(cfg, uri, resume=True))
    r = pickle.loads(tuner_pkl)                             # Tuner.restore: the searcher, then its state
    r.restore(str(tmp_path / "searcher-state.pkl"))
    r.on_trial_result("t1", {"objective": 55.0, "training_iteration": 1})   # Tune re-runs t1: ignored
    r.on_trial_complete("t1", {**final, "objective": 61.0})                 # not told again
    assert r.values["fair/fashion_mnist"] == {"t0": 50.0, "t1": 60.0}       # the storage's value wins
    t9 = r.suggest("t9")                                    # the next Tune trial takes t2's study trial
    assert t9["hparams"] == t2["hparams"] and r.remaining() == {"fair/fashion_mnist": 0}
    r.on_trial_complete("t9", {**final, "objective": 70.0})
    (study,) = load_studies(uri, cfg.name).values()
    assert [(t.number, t.user_attrs[TUNE_ATTR], t.state.name, t.value) for t in study.trials] == [
        (0, "t0", "COMPLETE", 50.0), (1, "t1", "COMPLETE", 60.0), (2, "t9", "COMPLETE", 70.0)]
    assert study.trials[1].params == t1["hparams"] and study.trials[0].params == t0["hparams"]
    assert r.picked("fair/fashion_mnist") == "t9"


def test_a_trial_asked_without_its_tune_id_is_handed_out_again_after_the_driver_died(tmp_path):
    """The driver died between Optuna's ask and the Tune id it sets on the trial (two storage writes): the
    restored searcher hands that RUNNING trial to the next Tune trial; none stays RUNNING forever."""
    from tune.optuna_storage import load_studies, prepare
    from tune.searcher import TUNE_ATTR, StudySearcher
    from tune.space import parse_space
    cfg = load_sweep(None, mapping=sweep_dict("noid", str(tmp_path), datasets=["fashion_mnist"], trials=2))
    uri, key = str(tmp_path), "fair/fashion_mnist"
    StudySearcher.use_store(cfg.name, prepare(cfg, uri, resume=False))
    s = StudySearcher(parse_space(SPACE), cfg.studies, 2, "max", sweep=cfg.name)
    tuner_pkl = pickle.dumps(s)
    s.suggest("t0")
    s.save(str(tmp_path / "searcher-state.pkl"))
    s.studies[key]._ot_study.ask()                          # the next ask; the driver dies before its Tune id

    StudySearcher.use_store(cfg.name, prepare(cfg, uri, resume=True))
    r = pickle.loads(tuner_pkl)
    r.restore(str(tmp_path / "searcher-state.pkl"))
    r.suggest("t1")
    assert r.remaining() == {key: 0}
    final = {"objective": 60.0, "final_val_top1": 60.0, "epoch": 1, "training_iteration": 1}
    r.on_trial_complete("t0", final)
    r.on_trial_complete("t1", final)
    (study,) = load_studies(uri, cfg.name).values()
    assert [(t.number, t.user_attrs.get(TUNE_ATTR), t.state.name) for t in study.trials] == [
        (0, "t0", "COMPLETE"), (1, "t1", "COMPLETE")]


def test_a_fresh_sweep_refuses_a_named_storage_that_holds_its_studies(tmp_path):
    from tune.optuna_storage import prepare
    from tune.searcher import StudySearcher
    from tune.space import parse_space
    d = sweep_dict("taken", str(tmp_path / "s"), datasets=["fashion_mnist"],
                   optuna={"storage": f"sqlite:///{tmp_path}/shared.db"})
    cfg = load_sweep(None, mapping=d)
    StudySearcher.use_store(cfg.name, prepare(cfg, cfg.storage, resume=False))
    StudySearcher(parse_space(SPACE), cfg.studies, 1, "max", sweep=cfg.name)
    with pytest.raises(FairError, match=f"already holds studies of a sweep named '{cfg.name}'"):
        prepare(cfg, cfg.storage, resume=False)
    other = load_sweep(None, mapping={**d, "name": d["name"] + "-b"})
    prepare(other, other.storage, resume=False)             # another sweep shares the database


# ------------------------------------------------------------------------------------- real Ray

def _check_studies_match_records(uri: str, name: str) -> dict:
    """Each study holds exactly one trial per search record of its study, in the record's state (a
    completed one with its objective); final re-runs are no study trials. Returns {study: [states]}."""
    studies = sweep_studies(uri, name)
    recs = [r for r in sweep_records(uri, name) if r["stage"] == "search"]
    by_study = {}
    for r in recs:
        by_study.setdefault(r["sweep"]["study"], {})[r["run_id"]] = r
    assert set(studies) == set(by_study)
    out = {}
    for key, study in studies.items():
        mine = by_study[key]
        assert sorted(study.tune_ids) == sorted(mine) and len(study.trials) == len(mine), (key, study.tune_ids)
        for tid, number in study.tune_ids.items():
            t, rec = study.trials[number], mine[tid]
            assert t.state.name == STATE[rec["status"]], (tid, t.state.name, rec["status"])
            if rec["status"] == "completed":
                assert t.value == rec["metrics"]["val_top1"]
        out[key] = sorted(t.state.name for t in study.trials)
    return out


@pytest.mark.ray
@pytest.mark.slow
def test_a_sweeps_studies_load_back_with_the_records_trial_states(ray_session, tmp_path):
    """Two studies, ASHA (some trial PRUNED) and a crash with no retries (one trial FAILs):
    `optuna.load_study` reads each study back from the default file beside the sweep."""
    import optuna
    from tune.sweep import preflight, run
    d = sweep_dict("ostore", str(tmp_path / "sweeps"), trials=3, epochs=2,
                   runner="direct",
                   space={**SPACE, "train.lr": {"loguniform": [1.0e-5, 1.0]}}, faults={"crash_worker_in_epoch": 2},
                   ray={"summary_every_s": 3600, "trial_max_failures": 0, "worker_max_failures": 0})
    d["budget"].update(max_concurrent=1, early_stopping={"grace_period": 1, "reduction_factor": 2})
    cfg = load_sweep(None, mapping=d)
    uri = preflight(cfg, data_check=False)
    result = run(cfg, uri)
    db = f"sqlite:///{uri}/{cfg.name}/optuna.db"
    names = sorted(optuna.study.get_all_study_names(storage=db))
    assert names == [f"{cfg.name}/fair/fashion_mnist", f"{cfg.name}/fair/fashion_mnist_shifted"]
    for n in names:
        assert len(optuna.load_study(study_name=n, storage=db).trials) == 3
    states = _check_studies_match_records(uri, cfg.name)
    every = [s for v in states.values() for s in v]
    assert every.count("FAIL") == 1 and "PRUNED" in every and "COMPLETE" in every, states
    assert len(result.errored) == 1 and sum(result.stopped_by.values()) == every.count("PRUNED")


@pytest.mark.ray
@pytest.mark.slow
def test_killed_driver_resumes_the_same_studies_one_trial_each(ray_session, tmp_path):
    """The driver is killed mid-sweep; the same command resumes: each study ends with exactly one Optuna
    trial per search trial (none told twice, none lost), all finished, matching the records."""
    storage = str(tmp_path / "sweeps")
    d = sweep_dict("okill", storage, trials=2, epochs=3,
                   runner="direct")
    d["budget"]["max_concurrent"] = 1
    sweep_file, log, _ = kill_driver_after_first_record(d, ray_session, tmp_path, timeout=180)
    time.sleep(2)                                                    # let Ray reap the dead job's actors
    before = sweep_studies(storage, d["name"])
    assert sum(len(s.trials) for s in before.values()) < 4, "the sweep finished before it was killed"

    proc = start_driver(sweep_file, ray_session, log)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert "resuming sweep" in log.read_text()
    states = _check_studies_match_records(storage, d["name"])
    assert states == {"fair/fashion_mnist": ["COMPLETE"] * 2, "fair/fashion_mnist_shifted": ["COMPLETE"] * 2}


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.s3
def test_an_s3_sweeps_studies_are_copied_into_its_storage_with_each_snapshot(ray_session, s3_server, tmp_path,
                                                                            monkeypatch):
    """An s3 sweep's studies live in a file on the driver; the copy Tune's snapshots upload beside the
    experiment holds them all when the sweep ends, and `load_studies` reads them from S3."""
    from tune import optuna_storage
    from tune.sweep import preflight, run
    monkeypatch.setattr(optuna_storage, "CACHE", tmp_path / "cache")
    d = sweep_dict("os3", f"s3://{s3_server.bucket}/o-{uuid.uuid4().hex[:6]}", datasets=["fashion_mnist"],
                   runner="direct")
    cfg = load_sweep(None, mapping=d)
    uri = preflight(cfg, data_check=False)
    assert not run(cfg, uri).errored
    assert _check_studies_match_records(uri, cfg.name) == {"fair/fashion_mnist": ["COMPLETE", "COMPLETE"]}
    (local,) = (tmp_path / "cache").glob(f"{cfg.name}-*/optuna.db")       # the driver's live file
    assert optuna_storage._trials_in(local) == 2
