"""The paper table with final seeds: each method's own validation pick, cells from its `stage: final`
re-runs with 95% intervals, the paired "vs best baseline" column, bold only beyond noise, the selection
footnotes and warnings, and the fallback to the picked search run when final seeds are missing."""
from __future__ import annotations

import hashlib
import statistics

import numpy as np
import pytest

from results.collect import collect
from results.errors import ResultsError
from results.intervals import encode_outcomes
from results.store import LocalStore
from results.tables import load_trials, main_table, render
from tests.test_results_local import parse_csv
from tests.test_results_records import make_record, write_sweep

N = 400                                        # test images per dataset
IDS_SHA = {d: hashlib.sha256(d.encode()).hexdigest() for d in ("dtd", "eurosat")}
# test images right per (method, dataset): fair clearly beats selftrain on dtd, ties on eurosat
RIGHT = {("fair", "dtd"): 320, ("selftrain", "dtd"): 280, ("fair", "eurosat"): 302, ("selftrain", "eurosat"): 300}


def outcomes(method: str, dataset: str, seed: int) -> np.ndarray:
    """On dtd, selftrain's right images are a subset of fair's (a clear paired win); on eurosat fair misses
    10 images selftrain gets and gets 12 it misses (a tie). Seeds move a few images."""
    right = RIGHT[(method, dataset)] + (seed - 1) * 3
    bits = np.zeros(N, dtype=bool)
    bits[:right] = True
    if (method, dataset) == ("fair", "eurosat"):
        bits[:10] = False
        bits[right:right + 10] = True
    return bits


def with_stage(rec: dict, stage: str | None, picked_from: str | None = None, bits: np.ndarray | None = None) -> dict:
    if stage:
        rec["stage"] = stage
    if picked_from:
        rec["picked_from"] = picked_from
    if bits is not None:
        rec["test_outcomes"] = {"ids_sha": IDS_SHA[rec["dataset"]], "n": len(bits), "correct": encode_outcomes(bits)}
        rec["metrics"]["test_top1"] = 100 * float(bits.mean())
    return rec


def records(finals: bool = True) -> list[dict]:
    out = []
    for method in ("fair", "selftrain"):
        for d in ("dtd", "eurosat"):
            lead = 1.0 if (method, d) == ("fair", "eurosat") else 8.0     # under one SE (2.0): a warning
            search = [("c0", 0.1, 60.0), ("c1", 0.2, 60.0 + lead), ("trap", 9.9, 10.0)]
            for name, lr, val in search:
                trial = f"{method}-{d}-{name}"
                bits = outcomes(method, d, 1) if name != "trap" else np.ones(N, dtype=bool)   # trap: 100% test
                out.append(with_stage(make_record(dataset=d, method=method, sweep="paper", trial=trial,
                                                  hparams={"optim.lr": lr}, val=val, val_stderr=2.0),
                                      "search", bits=bits))
            if finals:
                for seed in (0, 1, 2):
                    out.append(with_stage(make_record(dataset=d, method=method, sweep="paper", seed=seed,
                                                      trial=f"{method}-{d}-final-s{seed}", hparams={"optim.lr": 0.2},
                                                      val=60.0, val_stderr=2.0),
                                          "final", f"{method}-{d}-c1", outcomes(method, d, seed)))
    return out


@pytest.fixture
def store(tmp_path):
    def make(finals: bool = True):
        root = write_sweep(tmp_path / f"sweeps-{finals}", records(finals))
        collect([str(root)], str(tmp_path / f"out-{finals}"))
        return load_trials(LocalStore(tmp_path / f"out-{finals}"))
    return make


def test_cells_come_from_the_final_seeds_with_intervals(store):
    df = store()
    assert set(df["stage"]) == {"search", "final"}
    assert df.loc[df["stage"] == "final", "picked_from"].str.endswith("-c1").all()
    table = main_table(df)
    rows = parse_csv(render(table, "csv"))
    for method, label in (("fair", "FAIR (paper)"), ("selftrain", "Self-training (paper)")):
        for d in ("dtd", "eurosat"):
            accs = [100 * outcomes(method, d, s).mean() for s in (0, 1, 2)]
            cell = rows[label]
            assert float(cell[d]) == pytest.approx(statistics.mean(accs), abs=1e-3)      # the finals, not the trap
            assert float(cell[f"{d}_std"]) == pytest.approx(statistics.stdev(accs), abs=1e-3)
            assert int(cell[f"{d}_n"]) == 3
            low, high = float(cell[f"{d}_low"]), float(cell[f"{d}_high"])
            assert low < float(cell[d]) < high and 2 < high - low < 15   # seeds + 400 test images
    # bold only when the paired interval clears the next best; the eurosat near-tie is marked as a tie
    assert rows["FAIR (paper)"]["dtd_mark"] == "best" and rows["Self-training (paper)"]["dtd_mark"] == ""
    assert rows["FAIR (paper)"]["eurosat_mark"] == rows["Self-training (paper)"]["eurosat_mark"] == "tie"
    # vs best baseline: fair minus selftrain, mean over datasets, paired bootstrap
    diff = statistics.mean([(RIGHT[("fair", d)] - RIGHT[("selftrain", d)]) / N * 100 for d in ("dtd", "eurosat")])
    vs = rows["FAIR (paper)"]
    assert float(vs["vs_best_baseline"]) == pytest.approx(diff, abs=1e-6)
    assert 0 < float(vs["vs_best_baseline_low"]) < diff < float(vs["vs_best_baseline_high"])
    assert rows["Self-training (paper)"]["vs_best_baseline"] == ""
    assert {"Zero-shot (same runs)", "WCA (same runs)"} <= set(rows)


def test_markdown_shows_intervals_footnotes_and_the_lead_warning(store):
    table = main_table(store())
    md = render(table, "md")
    assert "**80.0 ± 0.8 [" in md and " ≈ |" in md and "vs best baseline" in md
    assert "Validation standard error of each picked configuration (`val_stderr`" in md and "dtd 2.0" in md
    assert "Final seeds missing" not in md
    assert table.warnings == ["FAIR (paper) on eurosat: the picked configuration leads the runner-up by 1.00 "
                              "points of validation top-1, under one standard error (2.00); the pick is within noise"]
    assert "**Selection within noise:**" in md
    tex = render(table, "latex")
    assert "$\\approx$" in tex and "\\textbf{80.0 $\\pm$ 0.8 [" in tex


def test_without_final_seeds_the_picked_run_has_its_binomial_interval(store):
    table = main_table(store(finals=False))
    rows = parse_csv(render(table, "csv"))
    fair = rows["FAIR (paper)"]
    assert float(fair["dtd"]) == pytest.approx(80.0) and int(fair["dtd_n"]) == 1     # the c1 search run
    assert float(fair["dtd_low"]) == pytest.approx(75.8, abs=0.1) and float(fair["dtd_high"]) == pytest.approx(
        83.6, abs=0.1)                                                              # Wilson, 320 of 400
    md = render(table, "md")
    assert "Final seeds missing" in md and "FAIR (paper) on dtd" in md


def test_a_method_the_store_has_no_runs_of_is_one_line(store):
    df = store()
    with pytest.raises(ResultsError, match="no runs of method 'wca'") as e:
        main_table(df, methods=["wca"])
    assert "\n" not in str(e.value)
    only = parse_csv(render(main_table(df, methods=["fair"]), "csv"))
    assert "FAIR (paper)" in only and "Self-training (paper)" not in only
