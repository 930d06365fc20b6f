"""cluster.schedule and tune.study_order: the sweep's trials list-scheduled in the searcher's order, which
`cluster plan` prices, and the order itself (offline, no Ray)."""
from __future__ import annotations

import pytest

from cluster import plan as planner
from cluster.plan import asha_epochs
from cluster.schedule import StudyLoad, rung_epochs, simulate
from tune.study_order import StudyProgress, priority
from tune.sweep_config import EarlyStopping, read_sweep

PAPER13 = "configs/sweeps/paper13-vitb32.yaml"


@pytest.mark.parametrize("epochs,grace,rf", [(15, 3, 3), (10, 1, 2), (20, 2, 4), (5, 5, 3)])
def test_rung_epochs_stop_trials_in_the_ideal_asha_proportions(epochs, grace, rf):
    got = rung_epochs(900, epochs, grace, rf)
    assert sum(got) / len(got) == pytest.approx(asha_epochs(epochs, EarlyStopping(grace, rf)), rel=0.01)
    assert rung_epochs(9, 15, 3, 3).count(3) == 6 and rung_epochs(9, 15, 3, 3).count(9) == 2   # 2/3, 2/9, 1/9
    assert rung_epochs(9, 15, 3, 3).count(15) == 1 and rung_epochs(4, 15, None, 3) == [15] * 4


def test_a_cap_gives_the_slot_to_another_study_but_never_idles_it():
    loads = [StudyLoad("long", [10.0] * 3, 10.0, 1), StudyLoad("short", [1.0] * 4, 1.0, 1)]
    # uncapped, long (the bigger rate) takes both slots at 0 and short searches from 10 to 14
    free = simulate(loads, slots=2)
    assert free.search_end_s == {"long": 20.0, "short": 14.0} and free.wall_s == 30.0
    # capped at 1, short takes the second slot at 0 (search over at 4, final at 5); then nothing else can
    # use the slot, so long takes it over its cap (5-15), its third trial 10-20, its final 20-30
    capped = simulate(loads, slots=2, cap=1)
    assert capped.search_end_s == {"short": 4.0, "long": 20.0} and capped.end_s["short"] == 5.0
    assert capped.peak_running["long"] == 2 and capped.wall_s == 30.0


def test_a_studys_final_re_runs_wait_for_its_last_search_trial():
    # one study on 3 slots: search 3 and 5 run together, the final (4) starts at 5 although a slot is free at 3
    s = simulate([StudyLoad("a", [3.0, 5.0], 4.0, 1)], slots=3)
    assert (s.wall_s, s.busy_s, s.search_end_s["a"], s.end_s["a"]) == (9.0, 12.0, 5.0, 9.0)
    # two studies on one slot: no slot ever waits, the wall is the work
    two = simulate([StudyLoad("a", [3.0, 5.0], 4.0, 1), StudyLoad("b", [1.0] * 3, 2.0, 2)], slots=1)
    assert two.wall_s == two.busy_s == two.spread_s == 19.0


@pytest.mark.parametrize("order", ["round_robin", "critical_path"])
def test_round_robin_hands_out_search_trials_in_turn(order):
    loads = [StudyLoad("a", [2.0] * 2), StudyLoad("b", [2.0] * 2)]      # equal studies: both orders alternate
    s = simulate(loads, slots=2, order=order)
    assert s.search_end_s == {"a": 4.0, "b": 4.0} and s.wall_s == 4.0


def test_critical_path_ends_paper13_near_work_over_slots_where_round_robin_leaves_a_tail():
    """paper13 (65 studies, a food101 trial ~17x a dtd trial) on its 64 slots, with the plan's cost model;
    search.max_running_share's default cap (16 of a study's 40 search trials) costs a 5% longer wall unless
    finals may start before their search ends (search.early_finals)."""
    walls, peaks = {}, {}
    for name, over in (("round_robin", ["search.order=round_robin"]), ("critical_path", []),
                       ("uncapped", ["search.max_running_share=1.0"]), ("late", ["search.early_finals=false"])):
        e = planner.estimate(read_sweep(PAPER13, over))
        sched = e.schedule(asha=True)
        walls[name], peaks[name] = sched.wall_s / sched.spread_s, sched.peak_running["fair/food101"]
        assert e.wall_hours(asha=True) * 3600 >= sched.wall_s >= sched.spread_s
    assert walls["round_robin"] > 1.3 and walls["critical_path"] < 1.01 and walls["uncapped"] < 1.01
    assert 1.03 < walls["late"] < 1.06
    assert peaks["critical_path"] == 16 < peaks["uncapped"] == 32        # fair/food101's


def test_critical_path_gives_the_study_that_must_hurry_the_slot_and_final_re_runs_first():
    slow = StudyProgress(search_left=9, running=0, finals_left=1, search_s=100.0, full_s=300.0)
    fast = StudyProgress(search_left=9, running=0, finals_left=1, search_s=10.0, full_s=30.0)
    assert priority([fast, slow], "critical_path", slots=4, running=0) == [1, 0]
    assert priority([fast, slow], "round_robin", slots=4, running=0) == [0, 1]
    # 40 search trials each: all remaining work / slots is (430 + 860) / 5 = 258 s. busy's trials are twice
    # fast's, so it needs the bigger rate (800 / (258 - 120) = 5.80 against 400 / (258 - 60) = 2.02): 5 x 5.80
    # / 7.82 = 3.71 of 5 slots, and with 4 running it has them; fast has 0 of its 1.29
    fast40 = StudyProgress(search_left=40, running=0, finals_left=1, search_s=10.0, full_s=30.0)
    busy = StudyProgress(search_left=40, running=4, finals_left=1, search_s=20.0, full_s=60.0)
    assert priority([fast40, busy], "critical_path", slots=5, running=4) == [0, 1]
    behind = StudyProgress(search_left=40, running=2, finals_left=1, search_s=20.0, full_s=60.0)
    assert priority([fast40, behind], "critical_path", slots=5, running=4) == [1, 0]   # 3.71 - 2 > 1.29
    # with 9 left each, busy's chain (two 60 s trials) outlasts all work / slots ((120 + 240) / 5 = 72 s): it
    # ends the sweep whatever else runs, so it takes the slot although it holds more than its share
    critical = StudyProgress(search_left=9, running=4, finals_left=1, search_s=20.0, full_s=60.0)
    assert priority([fast, critical], "critical_path", slots=5, running=4) == [1, 0]
    done = StudyProgress(search_left=0, running=0, finals_left=3, search_s=10.0, full_s=30.0)
    assert priority([fast, slow, done], "critical_path", slots=4, running=0)[0] == 2
    unknown = StudyProgress(search_left=9, running=0, finals_left=1)            # nothing measured: in turn
    assert priority([unknown, unknown], "critical_path", slots=4, running=0) == [0, 1]
    # a study with `cap` search trials in flight comes after every other (it takes a slot only if none can);
    # finals are not search trials
    assert priority([fast, slow, done], "critical_path", slots=4, running=0, cap=1) == [2, 1, 0]
    capped = StudyProgress(search_left=9, running=2, finals_left=1, search_s=100.0, full_s=300.0)
    assert priority([fast, capped, done], "critical_path", slots=4, running=2, cap=2) == [2, 0, 1]
    assert priority([capped, fast], "round_robin", slots=4, running=2, cap=2) == [1, 0]
    with pytest.raises(ValueError, match="search.order must be one of critical_path, round_robin"):
        priority([fast], "fastest", slots=1, running=0)


def test_the_plan_prints_the_tail_and_prices_the_scheduled_wall():
    text = planner.plan(read_sweep(PAPER13, ["search.order=round_robin"]))
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("with ASHA"))
    assert "work / slots" in line and "final re-runs' tail" in line


def test_a_prior_stands_in_for_durations_until_measured_then_is_scaled_and_blended():
    """tune.study_order.durations: a cost model's durations, in its own unit, before anything is measured;
    scaled to seconds by what the measured trials took against what it expected; a study's own mean weighs
    its count against PRIOR_TRIALS (2) trials of the scaled prior."""
    from tune.study_order import durations
    a = StudyProgress(search_left=9, running=0, finals_left=1, prior=(1.0, 3.0))
    b = StudyProgress(search_left=9, running=0, finals_left=1, prior=(10.0, 30.0))
    assert durations([a, b]) == ([1.0, 10.0], [3.0, 30.0])
    # a's 2 search trials took 4 s each where the prior expected 1: every prior is scaled x4
    a = StudyProgress(search_left=7, running=0, finals_left=1, search_s=4.0, measured=(2, 0), prior=(1.0, 3.0))
    search, full = durations([a, b])
    assert search == [pytest.approx((2 * 4.0 + 2 * 4.0) / 4), pytest.approx(40.0)] and full == [12.0, 120.0]
    # 6 trials of 1 s against a prior of 2 s (scaled by 6 / 12 = 0.5: 1 s): blended 1 s; b 5 s
    a = StudyProgress(search_left=3, running=0, finals_left=1, search_s=1.0, measured=(6, 0), prior=(2.0, 6.0))
    assert durations([a, b])[0] == [pytest.approx(1.0), pytest.approx(5.0)]
    # before anything is measured the long study takes the first slots; without a prior they take turns
    assert priority([a := StudyProgress(9, 0, 1, prior=(1.0, 3.0)), b], "critical_path", 4, 0) == [1, 0]
    assert priority([StudyProgress(9, 0, 1), StudyProgress(9, 0, 1)], "critical_path", 4, 0) == [0, 1]


def test_fair_sweeps_prior_is_the_plans_cost_model_per_study():
    """cluster.plan.trial_durations, which `fair sweep` gives the searcher: ASHA-expected search trials and
    full-length ones, per study, food101's longer than dtd's as the plan prices them."""
    cfg = read_sweep(PAPER13, [])
    prior = planner.trial_durations(cfg)
    est = planner.estimate(cfg)
    assert set(prior) == set(cfg.studies)
    food, dtd = prior["fair/food101"], prior["fair/dtd"]
    assert food[0] < food[1] and food[0] > 10 * dtd[0]
    assert {d.name: d.trial_gpu_s for d in est.datasets} == {k: v[1] for k, v in prior.items()}


def test_early_finals_start_once_the_study_has_a_pick():
    """One study on 2 slots, search trials of 2, 1 (stopped early) and 2 s (full length: 2 s), a 3 s final.
    Without early finals the final waits for the last search trial (ends at 3 s): wall 6 s. With them it
    starts at 2 s, when the first full-length trial ended (a pick) and a slot is free: wall 5 s; never at
    1 s, when only a stopped trial had ended (no pick)."""
    load = [StudyLoad("a", [2.0, 1.0, 2.0], final_s=3.0, finals=1)]
    assert simulate(load, slots=2).wall_s == 6.0
    early = simulate(load, slots=2, early_finals=True)
    assert early.wall_s == 5.0 and early.busy_s == 8.0 and early.search_end_s["a"] == 3.0


def test_speculative_finals_start_once_a_full_length_trial_passed_its_last_rung():
    """search.speculative_finals in the plan: search trials of 4, 1 (stopped early) and 4 s on 3 slots, a 3 s
    final, a full-length trial past its last rung at 2.5 s. The final starts on the slot freed at 1 s once
    the first full-length trial passed it (2.5 s): wall 5.5 s, against 7 s when it waits for a pick."""
    load = [StudyLoad("a", [4.0, 1.0, 4.0], final_s=3.0, finals=1, settled_s=2.5)]
    assert simulate(load, slots=3, early_finals=True).wall_s == 5.5
    assert simulate(load, slots=3, early_finals=True).busy_s == 12.0
    pick = [StudyLoad("a", [4.0, 1.0, 4.0], final_s=3.0, finals=1)]
    assert simulate(pick, slots=3, early_finals=True).wall_s == 7.0
    assert simulate(load, slots=3).wall_s == 7.0          # without early finals it waits for the search


def test_an_early_final_is_due_when_it_alone_outlasts_the_work_left():
    """tune.study_order.early_finals_due: a study with all search trials out, one running, whose 10 s final
    is longer than the work not handed out / slots (7.5 s on 2 slots) must start its final now; on 1 slot
    (15 s left) it waits; round_robin never hurries a final."""
    from tune.study_order import early_finals_due
    a = StudyProgress(search_left=0, running=1, finals_left=1, search_s=4.0, full_s=10.0)
    b = StudyProgress(search_left=4, running=1, finals_left=1, search_s=1.0, full_s=1.0)
    assert early_finals_due([a, b], "critical_path", 2) == [True, False]
    assert early_finals_due([a, b], "critical_path", 1) == [False, False]
    assert early_finals_due([a, b], "round_robin", 2) == [False, False]


def test_the_plan_prices_a_wrong_lead_whose_finals_stop_when_a_better_trial_ends():
    """Speculative finals in the plan, with trial 2 the best and trial 0 the second (`rank`): both pass their
    last rung at 2.5 s, neither has ended, so both are contenders. On 3 slots only trial 0's final finds a
    slot (at 2.5 s); trial 0 ends first (4 s) and trial 2's final takes its slot; trial 2 ends better and
    trial 0's final stops, 1.5 s of slot time superseded: wall 7 s. On 4 slots both finals start at 2.5 s
    and trial 2's holds: wall 5.5 s, the same 1.5 s superseded."""
    def load():
        return [StudyLoad("a", [4.0, 1.0, 4.0], final_s=3.0, finals=1, settled_s=2.5, rank=[1, 2, 0])]
    three = simulate(load(), slots=3, early_finals=True)
    assert (three.wall_s, three.superseded, three.superseded_s, three.busy_s) == (7.0, 1, 1.5, 13.5)
    four = simulate(load(), slots=4, early_finals=True)
    assert (four.wall_s, four.superseded, four.superseded_s, four.busy_s) == (5.5, 1, 1.5, 13.5)
    right = simulate([StudyLoad("a", [4.0, 1.0, 4.0], final_s=3.0, finals=1, settled_s=2.5, rank=[0, 2, 1])],
                     slots=3, early_finals=True)
    assert (right.wall_s, right.superseded) == (5.5, 0)     # the lead that held: nothing stopped
