"""bench.accuracy's protocol without running a model: equal budgets, keys each method reads, valid config
keys, the validation pick, and the table's intervals from per-image outcomes."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from bench import accuracy
from fair.config import TRAINING_METHODS, from_dict, set_by_path
from results.intervals import encode_outcomes
from tune.studies import belongs


def test_every_training_method_and_wca_get_the_same_number_of_candidates():
    sizes = {m: len(accuracy.CANDIDATES[m]) for m in (*TRAINING_METHODS, "wca")}
    assert len(set(sizes.values())) == 1, sizes
    assert accuracy.CANDIDATES["zeroshot"] == [{}]


@pytest.mark.parametrize("method", list(accuracy.CANDIDATES))
def test_candidates_name_only_keys_their_method_reads_and_build_valid_configs(method):
    base = accuracy.base_config(quick=True)
    cands = accuracy.CANDIDATES[method]
    assert len({tuple(sorted(c.items())) for c in cands}) == len(cands), "duplicate candidates waste budget"
    for cand in cands:
        assert all(belongs(method, k) for k in cand), cand
        d = copy.deepcopy(base)
        d["method"] = method
        for k, v in cand.items():
            set_by_path(d, k, v)
        from_dict(d)                                        # raises on an unknown key or a bad value


def _record(val: float, correct: list[bool]) -> dict:
    c = np.asarray(correct, dtype=bool)
    return {"metrics": {"val_top1": val, "val_stderr": 1.0, "test_top1": 100 * c.mean(),
                        "test_mean_per_class": 100 * c.mean()},
            "timings": {"wall_s": 1.0},
            "test_outcomes": {"ids_sha": "same", "n": len(c), "correct": encode_outcomes(c)}}


def test_the_pick_is_the_best_validation_candidate_and_the_earlier_on_a_tie():
    a, b, c = {"x": 1}, {"x": 2}, {"x": 3}
    recs = [(a, _record(50, [True])), (b, _record(60, [False])), (c, _record(60, [True]))]
    assert accuracy.pick(recs)[0] == b


def test_the_table_compares_each_method_with_the_best_validation_baseline():
    rng = np.random.default_rng(0)
    n = 200
    strong = [_record(70, list(rng.random(n) < 0.8)) for _ in range(3)]
    weak = [_record(60, list(rng.random(n) < 0.5)) for _ in range(3)]
    worse = [_record(50, list(rng.random(n) < 0.4)) for _ in range(3)]
    finals = {"zeroshot": worse, "selftrain": weak, "fair": strong}
    picks = {m: ({}, rs[0]) for m, rs in finals.items()}
    lines = accuracy.table(picks, finals)
    assert "vs selftrain" in lines[0]                       # the baseline with the best validation
    rows = {line.split(" | ")[0].strip("| "): line for line in lines[2:]}
    assert "reference" in rows["selftrain"]
    assert "**+" in rows["fair"] and "**-" in rows["zeroshot"]   # both differences clear zero at n=600


def test_runs_on_different_test_images_are_refused():
    recs = [_record(50, [True, False]), _record(50, [True, False])]
    recs[1]["test_outcomes"]["ids_sha"] = "other"
    with pytest.raises(SystemExit, match="different images"):
        accuracy.outcomes_of(recs)
