"""Methods as studies (no Ray): a sweep's methods, each with its own space, one Optuna study per method x
dataset with the same budget, and each study's best configuration re-run with `budget.final_seeds` seeds."""
from __future__ import annotations

import functools
import pickle

import optuna
import pytest
import yaml

from fair.cli import main as fair_main
from fair.errors import FairError
from tune.space import parse_space
from tune.sweep_config import load_sweep

optuna.logging.set_verbosity(optuna.logging.WARNING)

BASE = {"model": {"name": "fair-tiny-vit", "pretrained": "", "device": "cpu"},
        "data": {"val_per_class": 2, "num_workers": 0}}
FAIR_SPACE = {"anchors.mode": {"choice": ["prototype", "set"]}, "train.lr": {"loguniform": [1e-5, 1e-3]}}
SELFTRAIN_SPACE = {"pseudo.gamma_end": {"uniform": [0, 1]}, "train.lr": {"loguniform": [1e-5, 1e-3]}}


def _sweep(**over) -> dict:
    d = {"name": "m", "datasets": ["fashion_mnist", "fashion_mnist_shifted"], "base": BASE,
         "methods": {"fair": FAIR_SPACE, "selftrain": SELFTRAIN_SPACE},
         "budget": {"trials_per_dataset": 3, "epochs": 2, "final_seeds": 2}}
    d.update(over)
    return d


def test_every_method_x_dataset_is_a_study_with_its_method_and_the_same_budget():
    cfg = load_sweep(None, mapping=_sweep())
    assert cfg.studies == ["fair/fashion_mnist", "fair/fashion_mnist_shifted",
                           "selftrain/fashion_mnist", "selftrain/fashion_mnist_shifted"]
    assert cfg.total_trials == 4 * (3 + 2)
    st = cfg.fair_config("selftrain/fashion_mnist_shifted")
    assert st.method == "selftrain" and st.data.dataset == "fashion_mnist_shifted" and st.train.epochs == 2
    assert cfg.search_space("selftrain").names == ["pseudo.gamma_end", "train.lr"]
    assert cfg.final_seeds_of("fair/fashion_mnist") == [1, 2]          # new seeds, not the searched one (0)
    assert load_sweep(None, mapping=_sweep(base={**BASE, "seed": 7})).final_seeds_of("fair/fashion_mnist") == [8, 9]


def test_space_is_the_one_method_form_of_methods():
    """`space:` is `methods: {<base.method>: space}`; existing sweep files keep working."""
    cfg = load_sweep(None, mapping=_sweep(methods=None, space=FAIR_SPACE))
    assert cfg.method_names == ["fair"] and cfg.studies == ["fair/fashion_mnist", "fair/fashion_mnist_shifted"]
    one = load_sweep(None, mapping=_sweep(methods=None, space=SELFTRAIN_SPACE, base={**BASE, "method": "selftrain"}))
    assert one.studies[0] == "selftrain/fashion_mnist"


def test_default_space_of_a_method_is_the_spec_space_cut_to_its_keys():
    from tune.studies import belongs, default_space
    cfg = load_sweep(None, mapping=_sweep(methods={"fair": None, "selftrain": "default", "wca": "default"}))
    fair, st, wca = (cfg.search_space(m).names for m in ("fair", "selftrain", "wca"))
    assert "anchors.tau_anchor" in fair and "local.num_crops" in fair
    assert all(belongs("selftrain", k) for k in st) and "pseudo.gamma_end" in st and "local.beta" not in st
    assert "anchors.tau_text" in wca and "anchors.mode" not in wca
    assert "anchors.tau_anchor" not in default_space("wca")           # its condition's parent is not wca's


@pytest.mark.parametrize("methods, words", [
    ({"fair": FAIR_SPACE, "fairr": {}}, ["'fairr' does not exist", "did you mean 'fair'"]),
    ({"dpaa": None}, ["'dpaa' does not exist"]),
    ({"selftrain": {"local.num_crops": {"int": [2, 4]}}}, ["selftrain", "local.num_crops", "fair"]),
    ({"wca": {"anchors.mode": {"choice": ["set"]}}}, ["wca", "anchors.mode", "it is fair's"]),
    ({"fair": {"dpa.lr": {"uniform": [0, 1]}}}, ["fair", "dpa.lr", "it is dpa's"]),
    ({"fair": {"seed": {"int": [0, 3]}}}, ["seed", "final_seeds"]),
    ({}, ["at least one method"]),
])
def test_bad_methods_give_one_line_errors_before_anything_starts(methods, words, tmp_path, capsys):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(_sweep(methods=methods)))
    assert fair_main(["sweep", "-c", str(p), "--storage", str(tmp_path / "st")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err


@pytest.mark.parametrize("over, words", [
    ({"budget": {"trials_per_dataset": 2, "final_seeds": 0}}, ["budget.final_seeds", ">= 1"]),
    ({"space": FAIR_SPACE}, ["exclusive"]),
])
def test_bad_budget_and_both_space_forms_are_refused(over, words):
    with pytest.raises(FairError) as e:
        load_sweep(None, mapping=_sweep(**over))
    assert all(w in str(e.value) for w in words), e.value


def _final(objective: float) -> dict:
    """A trial's final report (tune.trainable): its objective and the record's metrics as final_*."""
    return {"objective": objective, "final_val_top1": objective, "epoch": 2, "training_iteration": 2}


def _searcher(budget=2, finals=2, early_finals=False, settled_epoch=None):
    from tune.searcher import HandOut, StudySearcher
    keys = ["fair/a", "selftrain/a"]
    spaces = {"fair/a": parse_space(FAIR_SPACE), "selftrain/a": parse_space(SELFTRAIN_SPACE)}
    return StudySearcher(spaces, keys, budget, "max", seeds={k: i for i, k in enumerate(keys)},
                         final_seeds={k: list(range(1, finals + 1)) for k in keys},
                         hand_out=HandOut(early_finals=early_finals, settled_epoch=settled_epoch))


def test_searcher_budgets_per_study_then_final_seeds_of_the_best_once_its_search_has_ended(tmp_path):
    s = _searcher()
    got = {f"t{i}": s.suggest(f"t{i}") for i in range(4)}
    assert [c["study"] for c in got.values()] == ["fair/a", "selftrain/a", "fair/a", "selftrain/a"]
    assert {c["stage"] for c in got.values()} == {"search"} and s.remaining() == {"fair/a": 0, "selftrain/a": 0}
    assert set(got["t1"]["hparams"]) == {"pseudo.gamma_end", "train.lr"}        # its method's space
    assert s.suggest("w0") is None                       # search trials in flight: wait, not FINISHED
    s.on_trial_complete("t0", _final(10.0))
    s.on_trial_complete("t1", error=True)
    s.on_trial_complete("t3", {"objective": 99.0, "epoch": 1, "training_iteration": 1})   # stopped: PRUNED
    assert s.suggest("w1") is None                       # fair/a still has t2 running
    s.on_trial_complete("t2", _final(30.0))              # fair/a's search is over: t2 is its best
    f1, f2 = s.suggest("f1"), s.suggest("f2")
    assert [f1["stage"], f1["study"], f1["picked_from"], f1["seed"]] == ["final", "fair/a", "t2", 1]
    assert f2["seed"] == 2 and f1["hparams"] == f2["hparams"] == got["t2"]["hparams"]
    assert s.suggest("f1") == f1                         # asked again for a trial it has: the same config
    # selftrain/a: one failed, one stopped (PRUNED, never picked): nothing to re-run, the search is done
    assert s.picked("selftrain/a") is None and s.suggest("w2") == s.FINISHED
    # final trials are no search: not told to the study, never its best
    s.on_trial_result("f1", {"objective": 50.0, "epoch": 1, "training_iteration": 1})
    s.on_trial_complete("f1", _final(50.0))
    study = s.studies["fair/a"]._ot_study
    assert len(study.trials) == 2 and study.best_value == 30.0
    assert [t.state.name for t in s.studies["selftrain/a"]._ot_study.trials] == ["FAIL", "PRUNED"]

    s.save(str(tmp_path / "state.pkl"))                  # what Tune stores with the sweep; restored on resume
    s2 = _searcher()
    s2.restore(str(tmp_path / "state.pkl"))
    assert s2.suggest("f2") == f2 and s2.finals == {"fair/a": ["f1", "f2"], "selftrain/a": []}
    assert pickle.loads(pickle.dumps(s2)).picked("fair/a") == "t2"
    # the rerun resumes errored t1 (same id): selftrain/a's search waits for it, and its result is the pick
    assert s2.suggest("w3") is None
    s2.on_trial_complete("t1", _final(5.0))
    f3 = s2.suggest("f3")
    assert (f3["study"], f3["picked_from"], f3["hparams"]) == ("selftrain/a", "t1", got["t1"]["hparams"])
    s2.suggest("f4")
    assert s2.suggest("w4") == s2.FINISHED


def test_a_resumed_trial_whose_late_result_is_best_is_the_pick_when_finals_have_not_started():
    """An errored search trial resumed by a rerun completes after all: its study learns the late result, and
    if it is the best before the finals are emitted, the finals re-run it."""
    s = _searcher(budget=2, finals=1)
    for i in range(4):
        s.suggest(f"t{i}")
    s.on_trial_complete("t0", _final(10.0))
    s.on_trial_complete("t2", error=True)
    s.on_trial_complete("t2", _final(80.0))              # resumed under its id: COMPLETE after all
    s.on_trial_complete("t1", _final(1.0))
    s.on_trial_complete("t3", _final(2.0))
    by_study = {c["study"]: c for c in (s.suggest("f0"), s.suggest("f1"))}
    assert by_study["fair/a"]["picked_from"] == "t2" and by_study["selftrain/a"]["picked_from"] == "t3"
    assert s.suggest("f2") == s.FINISHED                 # every trial handed out (Tune waits for those running)


def test_an_idle_slot_runs_an_early_final_of_the_pick_and_a_later_pick_supersedes_it(tmp_path):
    """search.early_finals: once a study's search trials are all handed out, a slot no study can use runs a
    final of its current pick; a search trial that ends better supersedes it (the scheduler stops it at its
    next result, its seed goes to the new pick); when the pick holds, the early finals are its finals."""
    from ray.tune.schedulers import TrialScheduler
    from tune.searcher import FinalsScheduler, PerStudyASHA, StudySearcher

    class Trial:
        def __init__(self, tid, config):
            self.trial_id, self.config = tid, config

    s = _searcher(budget=3, finals=2, early_finals=True)
    got = {f"t{i}": s.suggest(f"t{i}") for i in range(6)}
    assert [c["study"] for c in got.values()] == ["fair/a", "selftrain/a"] * 3
    assert s.suggest("w0") is None                       # no search trial has ended: no pick to re-run
    s.on_trial_complete("t0", _final(10.0))              # fair/a picks t0 for now; t2 and t4 still run
    e1, e2 = s.suggest("e1"), s.suggest("e2")
    assert [(e["stage"], e["study"], e["picked_from"], e["seed"]) for e in (e1, e2)] == \
        [("final", "fair/a", "t0", 1), ("final", "fair/a", "t0", 2)]
    assert e1["hparams"] == got["t0"]["hparams"]
    s.on_trial_complete("t1", error=True)
    s.on_trial_complete("t3", error=True)
    s.on_trial_complete("t5", error=True)               # selftrain/a has nothing to re-run
    assert s.suggest("w1") is None                       # all seeds out, but fair/a's pick may change: wait
    sched, asha = FinalsScheduler(""), PerStudyASHA(max_t=2, grace_period=1, reduction_factor=2, sweep="")
    assert sched.on_trial_result(None, Trial("e1", e1), {"epoch": 1}) == TrialScheduler.CONTINUE

    s.on_trial_complete("t2", _final(30.0))              # a better pick: t0's finals no longer count
    assert s.superseded == {"e1", "e2"} and StudySearcher.is_superseded("", "e1")
    from types import SimpleNamespace
    from tune.progress import ProgressLog
    ended = [SimpleNamespace(trial_id=t, config=s.configs[t], status="TERMINATED", last_result={"epoch": 1},
                             run_metadata=SimpleNamespace(last_result={"epoch": 1})) for t in ("t0", "e1", "e2")]
    log = ProgressLog("objective", "max", 16, superseded=functools.partial(StudySearcher.is_superseded, ""))
    assert "1/16 trials done (and 2 early finals superseded)" in pickle.loads(pickle.dumps(log)).summary(ended)
    for scheduler in (sched, asha):
        assert scheduler.on_trial_result(None, Trial("e1", e1), {"epoch": 1}) == TrialScheduler.STOP
    assert asha.on_trial_result(None, Trial("t4", got["t4"]), {"objective": 1.0, "epoch": 1}) == \
        TrialScheduler.CONTINUE                          # search trials: ASHA's as before
    e3 = s.suggest("e3")
    assert (e3["picked_from"], e3["seed"]) == ("t2", 1)
    s.on_trial_complete("e1", {"objective": 10.0, "epoch": 1, "training_iteration": 1})   # stopped
    assert "e1" not in s.running and s.studies["fair/a"]._ot_study.best_value == 30.0   # finals: no search

    s.save(str(tmp_path / "state.pkl"))                  # a rerun keeps what was superseded
    s2 = _searcher(budget=3, finals=2, early_finals=True)
    s2.restore(str(tmp_path / "state.pkl"))
    assert s2.superseded == {"e1", "e2"} and StudySearcher.is_superseded("", "e2")
    s2.on_trial_complete("t4", _final(20.0))             # fair/a's search is over; t2 holds
    f4 = s2.suggest("f4")
    assert (f4["study"], f4["picked_from"], f4["seed"]) == ("fair/a", "t2", 2)
    assert s2.finals["fair/a"] == ["e3", "f4"] and s2.superseded == {"e1", "e2"}
    for t, v in (("t1", 1.0), ("t3", 3.0), ("t5", 2.0)):   # resumed by the rerun: they complete
        s2.on_trial_complete(t, _final(v))
    assert {s2.suggest(f"g{i}")["picked_from"] for i in range(2)} == {"t3"}
    assert s2.suggest("w2") == s2.FINISHED


def test_speculative_finals_run_beside_the_pick_until_their_trial_is_decided(tmp_path):
    """search.speculative_finals: a search trial past ASHA's last rung (HandOut.settled_epoch) runs to its
    end, so it may yet be the pick; if it is ahead of the pick there (or the study has none), an idle slot
    may run a final of it beside the pick's. Its finals are kept until it ends: superseded when it ends not
    the best or fails, kept when it becomes the pick (then the old pick's are superseded)."""
    s = _searcher(budget=3, finals=1, early_finals=True, settled_epoch=2)
    got = {f"t{i}": s.suggest(f"t{i}") for i in range(6)}
    assert [c["study"] for c in got.values()] == ["fair/a", "selftrain/a"] * 3

    def report(searcher, t, epoch, value):
        searcher.on_trial_result(t, {"objective": value, "epoch": epoch, "training_iteration": epoch})

    report(s, "t0", 1, 50.0)
    assert s.suggest("w0") is None                       # before the last rung: ASHA may still stop it
    report(s, "t0", 2, 10.0)
    e1 = s.suggest("e1")
    assert (e1["study"], e1["picked_from"], e1["seed"], e1["hparams"]) == ("fair/a", "t0", 1, got["t0"]["hparams"])
    report(s, "t2", 2, 20.0)                             # a second contender: its final runs beside t0's
    e2 = s.suggest("e2")
    assert (e2["picked_from"], e2["seed"]) == ("t2", 1) and not s.superseded
    s.on_trial_complete("t0", _final(15.0))              # the pick; t2, still running, was ahead of it there
    assert s.picked("fair/a") == "t0" and s.contenders("fair/a") == ["t2"] and not s.superseded
    assert s.suggest("w1") is None                       # each configuration has its seed
    s.save(str(tmp_path / "state.pkl"))
    s2 = _searcher(budget=3, finals=1, early_finals=True, settled_epoch=2)
    s2.restore(str(tmp_path / "state.pkl"))
    assert s2.settled["fair/a"] == {"t0": 10.0, "t2": 20.0} and s2.finals["fair/a"] == ["e1", "e2"]
    report(s2, "t4", 2, 5.0)                             # behind the pick at the rung: no final of it
    assert s2.contenders("fair/a") == ["t2", "t4"] and s2.suggest("w2") is None
    s2.on_trial_complete("t4", error=True)
    s2.on_trial_complete("t2", _final(40.0))             # the contender ends the best: its final is the pick's
    assert s2.picked("fair/a") == "t2" and s2.superseded == {"e1"} and s2.finals["fair/a"] == ["e2"]
    assert s2.suggest("w3") is None                      # fair/a needs nothing more; selftrain/a still runs
    report(s2, "t1", 2, 7.0)
    e3 = s2.suggest("e3")
    assert (e3["study"], e3["picked_from"]) == ("selftrain/a", "t1")
    s2.on_trial_complete("t1", error=True)               # a contender that fails: its finals are superseded
    assert s2.superseded == {"e1", "e3"}
    s2.on_trial_complete("t3", _final(3.0))
    assert s2.suggest("e4")["picked_from"] == "t3"


def test_without_speculative_finals_a_running_trial_is_never_rerun():
    s = _searcher(budget=2, finals=1, early_finals=True)  # settled_epoch None: search.speculative_finals off
    for i in range(4):
        s.suggest(f"t{i}")
    s.on_trial_result("t0", {"objective": 10.0, "epoch": 2, "training_iteration": 2})
    assert s.contenders("fair/a") == [] and s.suggest("w0") is None


def test_the_sweep_passes_asha_last_rung_to_the_searcher():
    from tune.sweep import most_trials, settled_epoch
    cfg = load_sweep("configs/sweeps/paper13-vitb32.yaml")
    assert settled_epoch(cfg) == 9                        # rungs at 3 and 9 of 15 epochs (grace 3, factor 3)
    off = load_sweep("configs/sweeps/paper13-vitb32.yaml", ["search.speculative_finals=false"])
    no_asha = load_sweep("configs/sweeps/paper13-vitb32.yaml", ["budget.early_stopping=null"])
    assert settled_epoch(off) is None and settled_epoch(no_asha) is None
    per_seed = len(cfg.studies) * cfg.budget.final_seeds * cfg.budget.trials_per_dataset
    assert most_trials(cfg) - cfg.total_trials == per_seed and most_trials(off) - off.total_trials == per_seed


def test_without_early_finals_an_idle_slot_waits_for_the_search_to_end():
    s = _searcher(budget=2, finals=1, early_finals=False)
    for i in range(4):
        s.suggest(f"t{i}")
    s.on_trial_complete("t0", _final(10.0))
    assert s.suggest("w0") is None and s.finals["fair/a"] == []


def test_a_restored_search_generator_asks_its_searcher_again():
    """Tune saves the generator's `finished`; a rerun may have finals to create after all."""
    from tune.searcher import SweepSearch
    gen = SweepSearch(_searcher())
    state = {**gen.get_state(), "finished": True, "counter": 4, "total_samples": 8}
    gen.set_state(state)
    assert not gen.is_finished()


def test_final_trials_are_never_stopped_early():
    from ray.tune.schedulers import TrialScheduler
    from tune.searcher import PerStudyASHA

    class Trial:
        def __init__(self, tid, config):
            self.trial_id, self.config = tid, config

    asha = PerStudyASHA(max_t=4, grace_period=1, reduction_factor=2)
    search = [Trial(f"s{i}", {"study": "fair/a", "stage": "search"}) for i in range(4)]
    final = Trial("f", {"study": "fair/a", "stage": "final"})
    for t in [*search, final]:
        asha.on_trial_add(None, t)
    for t, v in zip(search, (90.0, 80.0, 70.0)):
        asha.on_trial_result(None, t, {"objective": v, "epoch": 1})
    assert asha.on_trial_result(None, search[3], {"objective": 1.0, "epoch": 1}) == TrialScheduler.STOP
    assert asha.on_trial_result(None, final, {"objective": 1.0, "epoch": 1}) == TrialScheduler.CONTINUE


def test_records_carry_stage_and_picked_from():
    """The contract with the results tables: method, dataset, sweep, seed, stage; picked_from on finals."""
    from fair.config import from_dict
    from fair.record import failed_record
    from tune.sweep import build_plan
    from tune.trainable import record_key, stamp_record, trial_config
    cfg = load_sweep(None, mapping=_sweep())
    plan = build_plan(cfg, "/tmp/nowhere")
    search = {"study": "selftrain/fashion_mnist", "stage": "search", "hparams": {"train.lr": 1e-4}}
    final = {"study": "selftrain/fashion_mnist", "stage": "final", "seed": 2, "picked_from": "t7",
             "hparams": {"train.lr": 1e-4}}
    for config, seed in ((search, 0), (final, 2)):
        fcfg = from_dict(trial_config(plan, config))
        rec = stamp_record(failed_record(fcfg, "x"), plan, "t9", config)
        assert (rec["method"], rec["dataset"], rec["seed"], rec["stage"]) == \
            ("selftrain", "fashion_mnist", seed, config["stage"])
        assert rec["sweep"] == {"name": "m", "trial_id": "t9", "study": "selftrain/fashion_mnist"}
        assert rec.get("picked_from") == config.get("picked_from")
        assert rec["config"]["train"]["lr"] == 1e-4
    assert record_key(plan, "selftrain/fashion_mnist", "t9") == "m/records/dataset=fashion_mnist/t9.json"


@pytest.mark.parametrize("order", ["critical_path", "round_robin"])
def test_the_search_order_gives_the_study_with_longer_trials_more_slots_once_measured(order, monkeypatch):
    """tune.study_order in the searcher: durations are measured from the trials' time_total_s as they end;
    with critical_path the study whose trials take 10x longer gets the next slots, round_robin alternates.
    The order survives the searcher's save/restore, and a rerun may change it (set_hand_out)."""
    from tune.searcher import HandOut, StudySearcher
    monkeypatch.setattr(StudySearcher, "hand_outs", {})
    keys = ["fair/a", "fair/b"]
    s = StudySearcher(parse_space(FAIR_SPACE), keys, 10, "max", seeds={k: 0 for k in keys}, hand_out=HandOut(order))
    first = [s.suggest(t)["study"] for t in ("t0", "t1")]
    assert first == keys                                       # nothing measured: in turn
    s.on_trial_complete("t0", {**_final(10.0), "time_total_s": 100.0})
    s.on_trial_complete("t1", {**_final(10.0), "time_total_s": 10.0})
    assert s.durations == {"fair/a": {"search": [100.0, 1], "full": [100.0, 1]},
                           "fair/b": {"search": [10.0, 1], "full": [10.0, 1]}} and s.running == set()
    nxt = [s.suggest(f"n{i}")["study"] for i in range(4)]
    if order == "round_robin":
        assert nxt == ["fair/a", "fair/b", "fair/a", "fair/b"]
    else:
        assert nxt.count("fair/a") >= 3
    assert s.running == {f"n{i}" for i in range(4)}
    restored = StudySearcher(parse_space(FAIR_SPACE), keys, 10, "max", hand_out=HandOut("round_robin"))
    restored.set_state(s.get_state())
    assert restored.durations == s.durations and restored.running == s.running
    again = pickle.loads(pickle.dumps(s))
    assert again.hand_out.order == order
    StudySearcher.set_hand_out("", HandOut("round_robin" if order == "critical_path" else "critical_path"))
    assert again.hand_out.order != order                               # the rerun's search.order wins


def test_a_prior_gives_the_long_study_the_first_slots_and_a_rerun_gives_it_again(monkeypatch):
    """`fair sweep` gives the searcher the plan's expected durations (cluster.plan.trial_durations): before
    any trial ended, critical_path hands the study with 10x longer trials most of the first slots; a
    restored searcher takes the prior of the process that restores it (set_hand_out)."""
    from tune.searcher import HandOut, StudySearcher
    monkeypatch.setattr(StudySearcher, "hand_outs", {})
    keys = ["fair/a", "fair/b"]
    prior = {"fair/a": (10.0, 30.0), "fair/b": (100.0, 300.0)}
    s = StudySearcher(parse_space(FAIR_SPACE), keys, 10, "max", seeds={k: 0 for k in keys},
                      hand_out=HandOut(prior=prior))
    first = [s.suggest(f"t{i}")["study"] for i in range(4)]
    assert first.count("fair/b") >= 3
    plain = StudySearcher(parse_space(FAIR_SPACE), keys, 10, "max", seeds={k: 0 for k in keys})
    assert [plain.suggest(f"t{i}")["study"] for i in range(4)] == keys * 2      # no prior: in turn
    again = pickle.loads(pickle.dumps(plain))
    StudySearcher.set_hand_out("", HandOut(prior=prior))
    assert again.hand_out.prior == prior


def test_a_study_at_its_cap_of_trials_in_flight_waits_and_the_cap_may_change_on_resume(monkeypatch):
    """search.max_running_share: a study at its cap of search trials in flight gets the next slot only if no
    other study can use it; a rerun's cap wins."""
    from tune.searcher import HandOut, StudySearcher
    monkeypatch.setattr(StudySearcher, "hand_outs", {})
    keys = ["fair/a", "fair/b"]
    prior = {"fair/a": (1.0, 3.0), "fair/b": (100.0, 300.0)}
    s = StudySearcher(parse_space(FAIR_SPACE), keys, 10, "max", seeds={k: 0 for k in keys},
                      hand_out=HandOut(prior=prior, max_running=2))
    got = [s.suggest(f"t{i}")["study"] for i in range(5)]
    assert got == ["fair/b", "fair/b", "fair/a", "fair/a", "fair/b"]    # both at 2: b, first in need
    s.on_trial_complete("t0", {**_final(10.0), "time_total_s": 100.0})
    s.on_trial_complete("t4", {**_final(10.0), "time_total_s": 100.0})
    assert s.suggest("t5")["study"] == "fair/b"                             # b has 1 of its 2 again
    assert s.suggest("t6")["study"] == "fair/b"                             # both at 2 again: b
    again = pickle.loads(pickle.dumps(s))
    assert again.hand_out.max_running == 2
    StudySearcher.set_hand_out("", HandOut(max_running=3, prior=prior))
    assert again.hand_out.max_running == 3 and again.suggest("t7")["study"] == "fair/a"   # b holds 3 of its 3


def test_the_cap_share_is_checked_and_counts_trials_of_the_study_budget():
    from tune.sweep_config import Search
    assert Search().max_running(40) == 16 and Search().max_running(80) == 32 and Search().max_running(2) == 1
    assert Search(max_running_share=1.0).max_running(40) == 40
    with pytest.raises(FairError, match="search.max_running_share' must be in \\(0, 1\\]"):
        load_sweep(None, mapping=_sweep(search={"max_running_share": 0}))


def test_the_sweep_summary_counts_superseded_early_finals_apart(tmp_path):
    """tune.sweep._summarize: a final of an earlier pick (stopped, or completed before the pick changed) is
    neither the study's final nor a trial stopped early, and not missing: the summary counts it apart."""
    from types import SimpleNamespace
    from tune.sweep import _summarize
    cfg = load_sweep(None, mapping=_sweep(methods={"fair": FAIR_SPACE}, datasets=["fashion_mnist"],
                                          budget={"trials_per_dataset": 2, "epochs": 2, "final_seeds": 1}))
    k = "fair/fashion_mnist"

    def row(tid, metrics, **config):
        return SimpleNamespace(metrics={"trial_id": tid, **metrics}, config={"study": k, **config}, error=None,
                               path=tid)
    grid = [row("t0", _final(10.0)), row("t1", _final(30.0)),
            row("e0", {"objective": 5.0, "epoch": 1}, stage="final", picked_from="t0"),    # stopped
            row("e1", _final(11.0), stage="final", picked_from="t0"),                       # completed, old pick
            row("f0", _final(31.0), stage="final", picked_from="t1")]
    res = _summarize(cfg, str(tmp_path), grid, "objective")
    assert res.best[k]["trial_id"] == "t1" and res.finals == {k: [31.0]} and res.superseded == 2
    assert res.stopped_by == {} and res.complete and "2 early finals superseded" in res.table("objective")
    res = _summarize(cfg, str(tmp_path), grid[:4], "objective")
    assert res.unfinished == 1                           # the pick's final is still to come
