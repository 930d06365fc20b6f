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
    """paper13 (65 studies, a food101 trial ~17x a dtd trial) on its 64 slots, with the plan's cost model."""
    walls = {}
    for order in ("round_robin", "critical_path"):
        e = planner.estimate(read_sweep(PAPER13, [f"search.order={order}"]))
        sched = e.schedule(asha=True)
        walls[order] = sched.wall_s / sched.spread_s
        assert e.wall_hours(asha=True) * 3600 >= sched.wall_s >= sched.spread_s
    assert walls["round_robin"] > 1.3 and walls["critical_path"] < 1.05


def test_critical_path_gives_the_study_that_must_hurry_the_slot_and_final_re_runs_first():
    slow = StudyProgress(search_left=9, running=0, finals_left=1, search_s=100.0, full_s=300.0)
    fast = StudyProgress(search_left=9, running=0, finals_left=1, search_s=10.0, full_s=30.0)
    assert priority([fast, slow], "critical_path", slots=4, running=0) == [1, 0]
    assert priority([fast, slow], "round_robin", slots=4, running=0) == [0, 1]
    # twice fast's trial length, so it needs the bigger rate (50 against 7.5 a second): 5 x 50 / 57.5 = 4.3
    # slots of 5, and with 4 running it has them; fast has 0 of its 0.65
    busy = StudyProgress(search_left=9, running=4, finals_left=1, search_s=20.0, full_s=60.0)
    assert priority([fast, busy], "critical_path", slots=5, running=4) == [0, 1]
    behind = StudyProgress(search_left=9, running=3, finals_left=1, search_s=20.0, full_s=60.0)
    assert priority([fast, behind], "critical_path", slots=5, running=4) == [1, 0]   # 4.3 - 3 > 0.65
    done = StudyProgress(search_left=0, running=0, finals_left=3, search_s=10.0, full_s=30.0)
    assert priority([fast, slow, done], "critical_path", slots=4, running=0)[0] == 2
    unknown = StudyProgress(search_left=9, running=0, finals_left=1)            # nothing measured: in turn
    assert priority([unknown, unknown], "critical_path", slots=4, running=0) == [0, 1]
    with pytest.raises(ValueError, match="search.order must be one of critical_path, round_robin"):
        priority([fast], "fastest", slots=1, running=0)


def test_the_plan_prints_the_tail_and_prices_the_scheduled_wall():
    text = planner.plan(read_sweep(PAPER13, ["search.order=round_robin"]))
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("with ASHA"))
    assert "work / slots" in line and "final re-runs' tail" in line
