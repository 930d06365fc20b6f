"""Sweep files and search spaces without Ray: what reaches Optuna, and one-line errors for bad input."""
from __future__ import annotations

import optuna
import pytest
import yaml

from fair.cli import main as fair_main
from fair.errors import FairError
from tune.space import parse_space, validate_against
from tune.sweep_config import load_sweep

optuna.logging.set_verbosity(optuna.logging.WARNING)

BASE = {"model": {"name": "fair-tiny-vit", "pretrained": "", "device": "cpu"},
        "data": {"val_per_class": 2, "num_workers": 0}}
SPACE = {
    "anchors.mode": {"choice": ["prototype", "set"]},
    "anchors.tau_anchor": {"loguniform": [1, 100], "when": {"anchors.mode": "set"}},
    "local.num_crops": {"int": [2, 8], "step": 2},
    "train.lr": {"loguniform": ["1e-5", 1.0e-3]},
    "eval.predictor": "global",
}


def _sweep(**over) -> dict:
    d = {"name": "t", "datasets": ["fashion_mnist"], "base": BASE, "space": SPACE,
         "budget": {"trials_per_dataset": 2, "epochs": 1}}
    d.update(over)
    return d


def test_space_reaches_optuna_as_written_with_native_conditionals():
    from ray.tune.search.optuna import OptunaSearch
    space = parse_space(SPACE)
    search = OptunaSearch(space=space, metric="objective", mode="max",
                          sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {"prototype": 0, "set": 0}
    for i in range(16):
        cfg = search.suggest(f"t{i}")
        mode = cfg["anchors.mode"]
        seen[mode] += 1
        assert ("anchors.tau_anchor" in cfg) == (mode == "set")
        if mode == "set":
            assert 1 <= cfg["anchors.tau_anchor"] <= 100
        assert cfg["local.num_crops"] in (2, 4, 6, 8) and 1e-5 <= cfg["train.lr"] <= 1e-3
        assert cfg["eval.predictor"] == "global"                       # fixed: returned, not searched
        ot = search._ot_trials[f"t{i}"]
        dists = search._ot_study._storage.get_trial(ot._trial_id).distributions
        assert isinstance(dists["train.lr"], optuna.distributions.FloatDistribution) and dists["train.lr"].log
        assert isinstance(dists["local.num_crops"], optuna.distributions.IntDistribution)
        assert "eval.predictor" not in dists and ("anchors.tau_anchor" in dists) == (mode == "set")
        search.on_trial_complete(f"t{i}", {"objective": float(i)})
    assert seen["prototype"] and seen["set"]


def test_default_space_is_valid_for_the_fair_config():
    space = parse_space("default")
    assert {"weighting.mode", "anchors.tau_anchor", "local.num_crops", "train.lr", "anchors.lr_mult",
            "pseudo.gamma_schedule", "local.tau_local"} <= set(space.names)
    validate_against(space, BASE)
    # parents come before their conditional children
    names = space.names
    assert names.index("anchors.mode") < names.index("anchors.tau_anchor")


@pytest.mark.parametrize("method, space", [
    ("dpa", {"dpa.alpha": {"uniform": [0.0, 1.0]}, "dpa.reg": {"loguniform": [0.1, 10]},
             "dpa.align": {"loguniform": [0.01, 1]}, "dpa.align_scale": {"choice": [1, 100]},
             "dpa.init": {"choice": ["templates", "descriptions"]}, "dpa.da_len": {"int": [8, 64]},
             "train.lr": {"loguniform": [1e-6, 1e-4]}}),
    ("tent", {"tent.diversity": {"uniform": [0.0, 2.0]}, "tent.view": {"choice": ["weak", "strong"]}}),
])
def test_method_sections_are_searchable_like_train(method, space):
    """dpa.* / tent.* keys are FairConfig keys: a space over them validates, and a bad one is refused by name."""
    base = {**BASE, "method": method}
    validate_against(parse_space(space), base)
    key = next(iter(space))
    with pytest.raises(FairError, match=key.split(".")[0] + r"\."):
        validate_against(parse_space({key: {"uniform": [-1.0, -0.5]}}), base)
    with pytest.raises(FairError, match="did you mean"):
        validate_against(parse_space({f"{key}x": {"uniform": [0.1, 0.5]}}), base)


def test_the_teacher_of_s_fix_is_searchable():
    """pseudo.teacher (student | frozen) is a config key a sweep may search; a misspelt value is refused."""
    space = parse_space({"pseudo.teacher": {"choice": ["student", "frozen"]}})
    validate_against(space, BASE)
    assert space.params[0].candidates() == ["student", "frozen"]
    with pytest.raises(FairError, match="pseudo.teacher.*did you mean 'frozen'"):
        validate_against(parse_space({"pseudo.teacher": {"choice": ["student", "frozn"]}}), BASE)


def test_searcher_round_robins_and_respects_budget():
    from tune.searcher import StudySearcher
    s = StudySearcher(parse_space(SPACE), ["a", "b"], 2, "max", seeds={"a": 1, "b": 2})
    got = [s.suggest(f"t{i}") for i in range(5)]
    assert [g["study"] for g in got[:4]] == ["a", "b", "a", "b"] and got[4] == s.FINISHED
    s.on_trial_result("t0", {"objective": 1.0, "training_iteration": 1})
    s.on_trial_complete("t0", {"objective": 1.0, "final_val_top1": 1.0})
    s.on_trial_complete("t1", {"loss": 1.0, "final_loss": 1.0})   # no objective: not a crash
    import pickle
    import tempfile
    with tempfile.NamedTemporaryFile() as f:
        s.save(f.name)
        s2 = StudySearcher(parse_space(SPACE), ["a", "b"], 2, "max")
        s2.restore(f.name)
    assert s2.remaining() == {"a": 0, "b": 0} and s2.owner["t2"] == "a"
    assert len(s2.studies["a"]._ot_study.trials) == 2
    s2.on_trial_complete("t2", {"objective": 3.0, "final_val_top1": 3.0})   # in flight, completes after restore
    assert s2.studies["a"]._ot_study.best_value == 3.0
    assert pickle.loads(pickle.dumps(s2)).remaining() == {"a": 0, "b": 0}


def _final(objective: float) -> dict:
    """A trial's final report (tune.trainable): its objective and the record's metrics as final_*."""
    return {"objective": objective, "final_val_top1": objective, "epoch": 2, "training_iteration": 2}


def _limited_searcher():
    from tune.searcher import StudySearcher, SweepLimiter
    s = StudySearcher(parse_space(SPACE), ["a"], 3, "max", seeds={"a": 1})
    return SweepLimiter(s, "t-late", 2), s


def test_a_stopped_trial_is_pruned_and_never_the_best():
    """ASHA stops a trial on an epoch result (global head, one view): the study records PRUNED, never a
    COMPLETE whose value could beat a finished trial's final objective."""
    lim, s = _limited_searcher()
    lim.suggest("t0"), lim.suggest("t1")
    lim.on_trial_result("t1", {"objective": 90.0, "epoch": 1, "training_iteration": 1})
    study = s.studies["a"]._ot_study
    assert study.trials[1].intermediate_values == {}    # an epoch costs the study's storage no write
    lim.on_trial_complete("t0", _final(50.0))
    lim.on_trial_complete("t1", {"objective": 99.0, "epoch": 2, "training_iteration": 2})  # stopped: no final_*
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED"]
    # the epoch it stopped on (Tune sends the searcher no result for it): TPE ranks a pruned trial by its last
    # step's value alone, so this is all of the search's input that every epoch's report gave it
    assert study.trials[1].intermediate_values == {2: 99.0}
    assert study.best_value == 50.0 and study.best_trial.number == 0


def test_an_errored_trial_resumed_later_reaches_its_study_once_also_after_a_restore(tmp_path):
    """Tune's limiter drops completions of trials it no longer holds and Optuna cannot re-tell a FAIL: the
    late result of a trial resumed after its error (same id) is added as a COMPLETE copy, exactly once."""
    import pickle
    from tune.searcher import LATE_ATTR, outcome
    lim, s = _limited_searcher()
    lim.suggest("t0"), lim.suggest("t1")
    lim.on_trial_complete("t0", error=True)
    lim.on_trial_complete("t1", _final(40.0))
    assert "t0" not in lim.live_trials
    lim.searcher.save(str(tmp_path / "state.pkl"))                   # what Tune stores with the sweep
    _, s2 = _limited_searcher()
    lim2 = pickle.loads(pickle.dumps(lim))                           # Tuner.restore unpickles the limiter
    s2.restore(str(tmp_path / "state.pkl"))
    lim2.searcher = s2
    lim2.on_trial_result("t0", {"objective": 30.0, "epoch": 1, "training_iteration": 1})   # no warning, no tell
    lim2.on_trial_complete("t0", _final(70.0))
    lim2.on_trial_complete("t0", _final(70.0))                       # a repeated completion adds nothing
    study = s2.studies["a"]._ot_study
    failed, done, late = study.trials
    assert (failed.state.name, done.state.name, late.state.name) == ("FAIL", "COMPLETE", "COMPLETE")
    assert late.params == failed.params and late.distributions == failed.distributions
    assert late.user_attrs == {LATE_ATTR: "t0"} and study.best_value == 70.0
    s3 = pickle.loads(pickle.dumps(s2))                              # the added trial survives the state
    s3.on_trial_complete("t0", _final(70.0))
    assert len(s3.studies["a"]._ot_study.trials) == 3
    assert [outcome(None, True), outcome({"objective": 1.0}, False), outcome(_final(1.0), False),
            outcome({"final_val_top1": None}, False)] == ["FAIL", "PRUNED", "COMPLETE", "FAIL"]


@pytest.mark.parametrize("space, words", [
    ({"train.lrr": {"uniform": [0.1, 1]}}, ["train.lrr", "train.lr"]),
    ({"train.lr": {"uniform": [1, 0.1]}}, ["train.lr", "greater than"]),
    ({"train.lr": {"loguniform": [0, 1]}}, ["low > 0"]),
    ({"anchors.mode": {"choice": ["set", "protoype"]}}, ["anchors.mode", "prototype"]),
    ({"train.lr": {"normal": [0, 1]}}, ["uniform", "loguniform"]),
    ({"anchors.tau_anchor": {"uniform": [1, 2], "when": {"anchors.mode": "set"}}}, ["not in the space"]),
    ({"anchors.mode": {"choice": ["set"]},
      "anchors.tau_anchor": {"uniform": [1, 2], "when": {"anchors.mode": "sett"}}}, ["sett"]),
    ({"local.num_crops": {"int": [1.5, 4]}}, ["integers"]),
    ({"local.beta": {"uniform": [0, 2]}}, ["local.beta"]),                      # out of the config's range
    ({"train.epochs": {"int": [1, 3]}}, ["budget.epochs"]),
    ({"local.beta": {"uniform": [0, 1], "when": {"local.top_k": 1}},
      "local.top_k": {"int": [1, 2], "when": {"local.beta": 1}}}, ["cycle"]),
])
def test_bad_spaces_give_one_line_errors(space, words, tmp_path, capsys):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(_sweep(space=space)))
    assert fair_main(["sweep", "-c", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err


@pytest.mark.parametrize("over, words", [
    ({"datasets": ["fashion_mnst"]}, ["fashion_mnist"]),
    ({"budget": {"trials_per_dataset": 0}}, ["trials_per_dataset"]),
    ({"budget": {"epochs": 2, "early_stopping": {"grace_period": 3}}}, ["grace_period"]),
    ({"objective": {"metric": "test_top1"}}, ["never drives"]),
    ({"resources": {"per_worker": {"CPU": -1}}}, ["per_worker"]),
    ({"resoures": {}}, ["resources"]),
    ({"name": "a/b"}, ["path segment"]),
    ({"base": {**BASE, "data": {"val_per_class": 0}}}, ["head_agreement"]),
    ({"search": {"sampler": "cmaes"}}, ["tpe"]),
    ({"resources": {"runner": "ray"}}, ["trainer or direct"]),
    ({"resources": {"runner": "direct", "num_workers": 2}}, ["num_workers must be 1"]),
    ({"ray": {"reuse_actors": True}}, ["ray.reuse_actors", "runner direct"]),
    # typed by fair.config.build, as FairConfig is: types, allowed values, did-you-mean
    ({"budget": {"trials_per_dataset": 2, "epochs": "two"}}, ["budget.epochs", "integer"]),
    ({"resources": {"backend": "ncl"}}, ["resources.backend", "did you mean 'nccl'"]),
    ({"resources": {"per_worker": {"GPU": "a quarter"}}}, ["resources.per_worker.GPU", "number"]),
    ({"budget": {"trials_per_dataset": 2, "epochs": 1, "early_stoping": None}}, ["budget.early_stopping"]),
    ({"datasets": [["fashion_mnist"]]}, ["datasets[0]", "string"]),
    ({"per_dataset": {"fashion_mnist": 3}}, ["per_dataset.fashion_mnist", "mapping"]),
])
def test_bad_sweep_files_give_one_line_errors(over, words, tmp_path, capsys):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(_sweep(**over)))
    assert fair_main(["sweep", "-c", str(p), "--storage", str(tmp_path / "st")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err


def test_each_datasets_fair_config_is_the_study_config_typed_with_fairs_defaults():
    from fair.config import FairConfig
    cfg = load_sweep(None, mapping=_sweep(per_dataset={"fashion_mnist": {"data": {"val_per_class": 3}}},
                                          budget={"trials_per_dataset": 2, "epochs": 4}))
    fcfg = cfg.fair_config("fair/fashion_mnist")
    assert isinstance(fcfg, FairConfig) and fcfg.data.dataset == "fashion_mnist"
    assert fcfg.train.epochs == 4 and fcfg.data.val_per_class == 3 and fcfg.model.name == "fair-tiny-vit"
    assert fcfg.local.num_crops == FairConfig().local.num_crops            # unset: FAIR's default


def test_missing_dataset_fails_data_check_before_ray(tmp_path, capsys):
    p = tmp_path / "s.yaml"
    base = {**BASE, "data": {"val_per_class": 2, "root": str(tmp_path / "nowhere")}}
    p.write_text(yaml.safe_dump(_sweep(base=base)))
    assert fair_main(["sweep", "-c", str(p), "--storage", str(tmp_path / "st")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and len(err.strip().splitlines()) == 1


def test_shipped_sweeps_load_and_smoke_test_shrinks():
    demo = load_sweep("configs/sweeps/demo.yaml")
    assert demo.datasets == ["fashion_mnist", "fashion_mnist_shifted"] and demo.total_trials >= 4
    smoke = load_sweep("configs/sweeps/demo.yaml", smoke_test=True)
    assert smoke.total_trials == 4 and smoke.budget.epochs == 1       # 2 studies x (1 search + 1 final seed)
    from fair.data.catalog import PAPER_DATASETS
    paper = load_sweep("configs/sweeps/paper13-vitb32.yaml")
    assert paper.datasets == PAPER_DATASETS and paper.resources.per_worker["GPU"] == 0.25
    assert paper.storage.startswith("s3://") and paper.resources.use_gpu


def test_direct_runner_holds_one_workers_resources_and_both_retry_levels():
    from tune.sweep import trial_max_failures
    sweep = {**_sweep(), "resources": {"per_worker": {"CPU": 2, "GPU": 0.25}, "runner": "direct"},
             "ray": {"worker_max_failures": 2, "trial_max_failures": 1}}
    cfg = load_sweep(None, mapping=sweep)
    assert cfg.resources.per_trial() == {"CPU": 2.0, "GPU": 0.25}        # no driver beside the worker
    assert trial_max_failures(cfg) == 3
    cfg.resources.runner = "trainer"
    assert cfg.resources.per_trial() == {"CPU": 2.01, "GPU": 0.25} and trial_max_failures(cfg) == 1


def test_missing_descriptions_fail_before_ray(tmp_path, capsys):
    """FAIR needs descriptions: a dataset without a file is refused before any trial starts, unless the
    sweep asks for the template fallback."""
    from PIL import Image
    for part, n in (("train", 4), ("test", 2)):
        for c in ("cat", "dog"):
            for i in range(n):
                (tmp_path / "imgs" / part / c).mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / part / c / f"{i}.png")
    data = {"dataset": "imagefolder", "root": str(tmp_path / "imgs"), "val_per_class": 1}
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(_sweep(datasets=["imagefolder"], base={**BASE, "data": data})))
    assert fair_main(["sweep", "-c", str(p), "--storage", str(tmp_path / "st"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "descriptions.json not found" in err and "fair descriptions" in err
    p.write_text(yaml.safe_dump(_sweep(datasets=["imagefolder"],
                                       base={**BASE, "data": {**data, "description_fallback": True}})))
    assert fair_main(["sweep", "-c", str(p), "--storage", str(tmp_path / "st"), "--dry-run"]) == 0


def _imagefolder(root, classes=("cat", "dog")):
    from PIL import Image
    for part, n in (("train", 4), ("test", 2)):
        for c in classes:
            (root / part / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (8, 8)).save(root / part / c / f"{i}.png")
    return {"dataset": "imagefolder", "root": str(root), "val_per_class": 1}


@pytest.mark.parametrize("method", [{}, {"method": "dpa", "dpa": {"init": "descriptions"}}])
def test_descriptions_missing_a_class_fail_before_ray(tmp_path, capsys, method):
    """A descriptions file that leaves a class empty would fail every trial after the model is loaded (fair,
    and dpa when its text prototypes start from the descriptions)."""
    import json
    data = _imagefolder(tmp_path / "imgs")
    (tmp_path / "imgs" / "descriptions.json").write_text(json.dumps({"cat": ["a small feline"], "dog": []}))
    p = tmp_path / "s.yaml"
    space = {"dpa.alpha": {"uniform": [0.0, 1.0]}} if method else SPACE     # a space of the method's own keys
    p.write_text(yaml.safe_dump(_sweep(datasets=["imagefolder"], base={**BASE, **method, "data": data}, space=space)))
    assert fair_main(["sweep", "-c", str(p), "--storage", str(tmp_path / "st"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "imagefolder" in err and "'dog'" in err and "'cat'" not in err, err


def test_every_missing_dataset_is_named_at_once_with_the_prepare_command(tmp_path, capsys):
    p = tmp_path / "s.yaml"
    base = {**BASE, "data": {"val_per_class": 2, "root": str(tmp_path / "nowhere")}}
    p.write_text(yaml.safe_dump(_sweep(datasets=["dtd", "eurosat", "fashion_mnist"], base=base)))
    assert fair_main(["sweep", "-c", str(p), "--storage", str(tmp_path / "st"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "3 of 3 datasets are not ready" in err, err
    assert "fair data prepare dtd" in err and "fair data prepare eurosat" in err
    assert "fair data prepare fashion_mnist" not in err      # Debian's package, not a download


def test_unknown_dataset_and_one_slash_s3_are_refused_even_without_the_data_check(tmp_path, capsys):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(_sweep(datasets=["oxfordpets"])))
    assert fair_main(["sweep", "-c", str(p), "--no-data-check", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'oxfordpets'" in err and "did you mean 'oxford_pets'" in err, err
    from results.errors import ResultsError      # the storage layer's one-line error (user_error)
    with pytest.raises(ResultsError, match="s3://bucket/prefix"):
        load_sweep(None, mapping=_sweep(storage="s3:/bucket/x"))


def test_per_dataset_entries_of_datasets_left_out_are_ignored(caplog):
    sweep = load_sweep("configs/sweeps/paper13-vitb32.yaml", overrides=["datasets=[dtd,oxford_pets]"])
    assert sweep.datasets == ["dtd", "oxford_pets"] and sweep.per_dataset == {}
    assert "sun397" in caplog.text and "ignored" in caplog.text


def test_autoscaling_cluster_needs_max_concurrent_and_uses_it():
    """check_cluster false: the resources seen at start (a head with no GPU) say nothing of the cluster's
    full size, so the sweep must be told how many trials to keep in flight, and keeps that many."""
    from tune.ray_session import max_concurrent
    gpu = {"resources": {"per_worker": {"CPU": 2, "GPU": 0.25}, "check_cluster": False}}
    with pytest.raises(FairError, match="budget.max_concurrent"):
        load_sweep(None, mapping=_sweep(**gpu))
    cfg = load_sweep(None, mapping=_sweep(**gpu, budget={"trials_per_dataset": 40, "epochs": 1,
                                                         "max_concurrent": 64}))
    assert max_concurrent(cfg.resources.per_trial(), cfg.resources.check_cluster, cfg.budget.max_concurrent) == 64


def test_failed_trial_error_line_is_the_innermost_exception():
    from tune.failures import error_line
    text = ("Failure # 1 (occurred at 2026-11-29_02-00-00)\nray::run_trial()\nRuntimeError: first attempt\n"
            "Failure # 2 (occurred at 2026-11-29_02-05-00)\nray::run_trial() (pid=1, ip=10.0.0.1)\n"
            "  File \"fair/text.py\", line 45, in load_descriptions\n"
            "fair.errors.FairError: descriptions file '/x.json' not found; fix data.descriptions\n")
    assert error_line(text) == "fair.errors.FairError: descriptions file '/x.json' not found; fix data.descriptions"
    assert error_line("") .startswith("unknown error")
    assert len(error_line("ValueError: " + "x" * 2000)) == 500


def test_a_failed_record_is_a_warning_and_a_stopped_one_is_not(caplog):
    """A 1,000-trial sweep has hundreds of ASHA stops: each is logged, but only a failure as a warning; a
    record that cannot be written is one too."""
    import logging
    from types import SimpleNamespace

    from tune.failures import FailedTrialRecords
    trial = SimpleNamespace(trial_id="t1")
    with caplog.at_level(logging.INFO, logger="tune.failures"):
        FailedTrialRecords._write("stopped_early", trial, lambda: "s3://b/records/t1.json")
        FailedTrialRecords._write("failed", trial, lambda: "s3://b/records/t1.json")
        FailedTrialRecords._write("stopped_early", trial, lambda: 1 / 0)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "trial t1: stopped_early record s3://b/records/t1.json"),
        ("WARNING", "trial t1: failed record s3://b/records/t1.json"),
        ("WARNING", "trial t1: could not write its stopped_early record (ZeroDivisionError: division by zero)")]


def test_a_changed_sweep_names_its_keys_and_smoke_test_is_idempotent():
    from tune.sweep import _search_changes, _snapshot
    from tune.sweep_config import shrink_for_smoke_test
    a = _snapshot(load_sweep(None, mapping=_sweep()))
    b = _snapshot(load_sweep(None, mapping=_sweep(), overrides=["base.train.lr=0.0005", "ray.summary_every_s=5"]))
    assert _search_changes(a, b) == ["base.train.lr '(unset)' -> 0.0005"]
    # keys that change no result (fair.record.DIGEST_IGNORES) and the concurrency may change on resume
    c = _snapshot(load_sweep(None, mapping=_sweep(), overrides=["base.data.num_workers=7",
                                                                "budget.max_concurrent=3"]))
    assert _search_changes(a, c) == []
    cfg = load_sweep(None, mapping=_sweep(), smoke_test=True)
    shrink_for_smoke_test(cfg)                    # `--resume t-smoke --smoke-test`: still that sweep
    assert cfg.name == "t-smoke"


def test_progress_callback_pickled_by_an_older_version_still_resumes():
    """On resume Tune unpickles the callbacks of the sweep's first run, possibly from an older version."""
    import pickle
    from tune.progress import ProgressLog
    old = ProgressLog("val_top1", "max", 4)
    for attr in ("started", "ended", "storage", "sweep", "shown"):    # what an older ProgressLog did not have
        del old.__dict__[attr]
    back = pickle.loads(pickle.dumps(old))
    assert back.unfinished([]) == [] and back.storage is None and back.total == 4


def test_a_trial_an_interrupt_found_placed_but_not_started_is_unfinished():
    """Ctrl-C: Tune saves a trial whose actor was placed but not yet started as PENDING (a rerun starts it),
    then its cleanup marks it TERMINATED without a start, a result or on_trial_complete. It is unfinished,
    not done; finished trials restored from an earlier run (TERMINATED, with their results) are not."""
    from types import SimpleNamespace

    from tune.progress import ProgressLog

    def trial(tid, status, **result):
        return SimpleNamespace(trial_id=tid, status=status, config={},
                               run_metadata=SimpleNamespace(last_result=result))
    log = ProgressLog("val_top1", "max", 6)
    trials = [trial("placed", "TERMINATED", trial_id="placed", hostname="h"),   # Tune's fill for a trial never run
              trial("cut", "TERMINATED", epoch=1), trial("stopped", "TERMINATED", epoch=2),
              trial("done", "TERMINATED", epoch=3, final_val_top1=50.0), trial("waiting", "PENDING"),
              trial("restored_done", "TERMINATED", epoch=3, final_val_top1=51.0)]
    for t in ("cut", "stopped", "done"):
        log.on_trial_start(0, trials, next(x for x in trials if x.trial_id == t))
    log.ended |= {"stopped", "done"}
    assert log.unfinished(trials) == ["cut", "placed", "waiting"]


def test_a_restored_sweep_limiter_takes_the_concurrency_of_this_start():
    """Tune restores a ConcurrencyLimiter's saved state, limit included; the sweep's limiter takes the limit
    computed now, both when unpickled with the Tuner and when its saved state is applied."""
    import pickle
    from tune.searcher import StudySearcher, SweepLimiter
    from tune.space import parse_space
    from tune.sweep import _search_changes

    SweepLimiter.set_limit("s-limit", 1)
    studies = StudySearcher(parse_space("default"), ["dtd"], 4, "max", seeds={"dtd": 0})
    old = SweepLimiter(studies, "s-limit", 1)
    state, blob = old.get_state(), pickle.dumps(old)
    SweepLimiter.set_limit("s-limit", 64)                 # a resume on the grown cluster
    restored = pickle.loads(blob)
    assert restored.max_concurrent == 64
    restored.set_state(state)
    assert restored.max_concurrent == 64
    assert _search_changes({"budget": {"max_concurrent": None}}, {"budget": {"max_concurrent": 64}}) == []


def test_a_stored_sweep_that_todays_checks_refuse_resumes_with_the_missing_key_set(tmp_path):
    """An autoscaling sweep stored before budget.max_concurrent was required: --resume NAME says what to
    set, and --resume NAME --set budget.max_concurrent=64 loads it."""
    from tune import storage as sweep_storage
    from tune.sweep import SWEEP_FILE, _search_changes, _snapshot, load_saved
    from tune.sweep_config import validate
    stored = _snapshot(load_sweep(None, mapping=_sweep(name="old-auto")))
    stored["resources"]["check_cluster"], stored["budget"]["max_concurrent"] = False, None
    sweep_storage.write_json(str(tmp_path), f"old-auto/{SWEEP_FILE}", stored)
    with pytest.raises(FairError, match="budget.max_concurrent"):
        validate(load_saved(str(tmp_path), "old-auto"))          # as `fair sweep --resume old-auto` does
    cfg = load_saved(str(tmp_path), "old-auto", ["budget.max_concurrent=64"])
    validate(cfg)
    assert cfg.budget.max_concurrent == 64 and cfg.resources.check_cluster is False
    assert _search_changes(stored, _snapshot(cfg)) == []        # and run() takes it as the same sweep


def test_progress_lines_and_sweep_summary_show_validation_unless_show_test(caplog):
    """Exploration sees validation: a completed trial's line and the end-of-sweep table show val top-1 (± its
    standard error), test accuracy only with --show-test (it is always in the records)."""
    import logging
    from types import SimpleNamespace
    from tune.progress import ProgressLog
    from tune.sweep import SweepResult
    result = {"objective": 71.0, "epoch": 2, "final_val_top1": 71.0, "final_val_stderr": 1.9,
              "final_test_top1": 88.8, "final_gain_over_zeroshot": 7.7, "final_head_agreement": 0.9}
    trial = SimpleNamespace(trial_id="t1", config={"study": "dtd"}, last_result=result)
    for show_test in (False, True):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="tune.progress"):
            ProgressLog("val_top1", "max", 1, show_test=show_test).on_trial_complete(0, [trial], trial)
        line = caplog.records[-1].getMessage()
        assert "val_stderr=1.9" in line and ("88.8" in line) == show_test and ("gain" in line) == show_test
    res = SweepResult("s", "/tmp/x", 1, best={"dtd": {"trial_id": "t1", "objective": 71.0, **result}})
    assert "71.00 ± 1.90" in res.table("val_top1") and "88.8" not in res.table("val_top1")
    assert "88.80" in res.table("val_top1", show_test=True)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")    # TPE's group=True
def test_tpe_suggests_the_same_from_a_pruned_trials_last_epoch_as_from_all_of_them():
    """Why the searcher reports a stopped trial's epochs to its study only once, at its end (the last one):
    the sweep's sampler, given the same trials, suggests exactly the same next configurations either way."""
    from tune.searcher import make_sampler
    import random
    rng = random.Random(0)
    space = {"x": optuna.distributions.FloatDistribution(0, 1), "y": optuna.distributions.FloatDistribution(0, 1)}
    history = [({"x": rng.random(), "y": rng.random()}, [rng.random() for _ in range(rng.randint(1, 6))],
                i == 0) for i in range(40)]   # one completed: the pruned ones decide most of TPE's good group

    def next_params(all_epochs: bool) -> list[dict]:
        study = optuna.create_study(direction="maximize", sampler=make_sampler("tpe-multivariate", 7))
        for params, curve, complete in history:
            steps = dict(enumerate(curve, 1))
            study.add_trial(optuna.trial.create_trial(
                params=params, distributions=space, state=optuna.trial.TrialState.COMPLETE if complete else
                optuna.trial.TrialState.PRUNED, value=curve[-1] if complete else None,
                intermediate_values=None if complete else steps if all_epochs else dict([max(steps.items())])))
        return [study.ask(space).params for _ in range(5)]
    assert next_params(all_epochs=True) == next_params(all_epochs=False)
