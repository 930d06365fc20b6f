"""bench.search_concurrency: a study's trials handed out K at once, as the sampler sees them (no Ray)."""
from __future__ import annotations

from bench.scale import SWEEP, space_bounds
from bench.search_concurrency import gain, search
from tune.sweep_config import read_sweep


def test_k_at_once_decides_how_many_ended_trials_each_suggestion_sees():
    cfg = read_sweep(str(SWEEP), [])
    space, bounds = cfg.search_space("fair"), space_bounds(cfg)
    g1, seen1 = search(1, 0, "random", 6, space, bounds, 15)
    assert seen1 == [0, 1, 2, 3, 4, 5]                      # sequential: every earlier trial has ended
    g6, seen6 = search(6, 0, "random", 6, space, bounds, 15)
    assert seen6 == [0] * 6                                 # all at once: none has
    _, seen2 = search(2, 0, "random", 6, space, bounds, 15)
    assert seen2 == [0, 0, 1, 2, 3, 4]
    # the random sampler draws the same configurations whatever K is, so the study picks the same one
    assert g1 == g6 and gain(0.0) < g1 <= gain(1.0)
