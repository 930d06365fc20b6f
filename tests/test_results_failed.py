"""Failed trials are never hidden: their datasets get a column, the cell says `failed`, the Mean is withheld,
and the counts and most common error appear under the table and on stderr. Also `s3:/x` is refused."""
from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import pytest

from results.cli import main as results_main
from results.collect import collect
from results.errors import ResultsError
from results.store import S3Store, open_store
from results.tables import FAILED, detail_table, load_trials, main_table
from tests.test_results_records import make_record, write_sweep

OOM = "CUDA out of memory. Tried to allocate 2.00 GiB"


def review_records() -> list[dict]:
    """The review's case, smaller: dtd and eurosat complete, food101 1 of 5 completed, ucf101 all failed."""
    recs = [make_record(dataset=d, seed=s, trial=f"{d}-s{s}", val=70 + s, test=71 + s)
            for d in ("dtd", "eurosat") for s in (0, 1)]
    recs.append(make_record(dataset="food101", trial="food-ok", val=60, test=61))
    for i in range(4):
        rec = make_record(dataset="food101", trial=f"food-f{i}", seed=i, status="failed")
        rec["error"] = f"{OOM}\nTraceback (most recent call last): ..."
        recs.append(rec)
    for i in range(3):
        rec = make_record(dataset="ucf101", trial=f"ucf-f{i}", seed=i, status="failed")
        rec["error"] = "FileNotFoundError: no split file" if i else "ValueError: bad root"
        recs.append(rec)
    return recs


def minimal_failed(dataset: str, trial: str, error: str) -> dict:
    """A failed record as the sweep driver writes it: no metrics, timings or provenance."""
    return {"schema_version": 1, "run_id": trial, "status": "failed", "error": error, "method": "fair",
            "dataset": dataset, "backbone": "ViT-B-32", "pretrained": "openai", "seed": 0,
            "sweep": {"name": "grid", "trial_id": trial, "study": dataset}, "hparams": {"optim.lr": 0.001}}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("failed")
    recs = review_records() + [minimal_failed("ucf101", "ucf-min", "FileNotFoundError: no split file")]
    collect([str(write_sweep(root / "sweeps", recs))], str(root / "out"))
    return str(root / "out")


def run_table(store: str, capsys, caplog, *args: str) -> tuple[str, list[str]]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="results"):
        assert results_main(["table", "--store", store, *args]) == 0  # still useful: exit 0
    return capsys.readouterr().out, [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def md_row(md: str, label: str) -> list[str]:
    line = next(x for x in md.splitlines() if x.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_markdown_shows_failed_datasets_withholds_the_mean_and_lists_failures(store, capsys, caplog):
    md, warnings = run_table(store, capsys, caplog)
    assert md.splitlines()[0] == "| Method | dtd | eurosat | food101 | ucf101 | Mean |"
    fair = md_row(md, "FAIR (grid)")
    assert [c.strip("*") for c in fair[1:3]] == ["71.5 ± 0.7", "71.5 ± 0.7"]
    assert fair[3] == "61.0" and fair[4] == FAILED and fair[5] == "–"   # no mean over a subset
    assert md_row(md, "Zero-shot (same runs)")[4] == FAILED
    assert "Mean: over all 4 datasets, withheld" in md
    assert f"- food101: 1 completed, 4 failed; most common error (4 of 4): {OOM}" in md
    assert "- ucf101: 0 completed, 4 failed; most common error (3 of 4): FileNotFoundError: no split file" in md
    assert "Traceback" not in md and "dtd: " not in md                 # first lines only; dtd had no failures
    assert any("food101: 1 completed, 4 failed" in w for w in warnings)
    assert any("ucf101: 0 completed, 4 failed" in w for w in warnings)


def test_csv_stays_machine_readable_and_failures_go_to_stderr(store, capsys, caplog):
    out, warnings = run_table(store, capsys, caplog, "--format", "csv")
    rows = {r["row"]: r for r in csv.DictReader(io.StringIO(out))}
    fair = rows["FAIR (grid)"]
    assert (fair["ucf101"], fair["ucf101_std"], fair["ucf101_n"]) == ("", "", "0")
    assert fair["mean"] == "" and float(fair["food101"]) == 61.0
    assert FAILED not in out and "completed" not in out
    assert sum("failed trials:" in w for w in warnings) == 2 and any("incomplete" in w for w in warnings)


def test_latex_marks_the_cell_and_puts_the_counts_in_the_caption(store, capsys, caplog):
    tex, _ = run_table(store, capsys, caplog, "--format", "latex")
    assert "\\begin{tabular}{lrrrrr}" in tex
    fair = next(x for x in tex.splitlines() if x.startswith("FAIR (grid)"))
    assert fair.endswith("& 61.0 & failed & -- \\\\")
    caption = next(x for x in tex.splitlines() if x.startswith("\\caption{"))
    assert "ucf101: 0 completed, 4 failed" in caption and "food101: 1 completed, 4 failed" in caption


def test_no_failures_means_no_failure_block_or_warning(tmp_path, capsys, caplog):
    write_sweep(tmp_path / "s", [make_record(dataset="dtd", trial="ok")])
    collect([str(tmp_path / "s")], str(tmp_path / "out"))
    md, warnings = run_table(str(tmp_path / "out"), capsys, caplog)
    assert "Incomplete" not in md and f"`{FAILED}`" not in md and not warnings


def test_a_dataset_a_group_never_ran_is_a_dash_not_failed(tmp_path):
    write_sweep(tmp_path / "s", [make_record(dataset="dtd", trial="a", sweep="one"),
                                 make_record(dataset="eurosat", trial="b", sweep="two")])
    collect([str(tmp_path / "s")], str(tmp_path / "out"))
    table = main_table(load_trials(open_store(tmp_path / "out")))
    one = next(r for r in table.rows if r[0] == "FAIR (one)")
    assert one[2].text() == "–" and one[3].text() == "–" and not table.failures


def test_detail_reports_the_failed_count(store):
    df = load_trials(open_store(store))
    table = detail_table(df, "food101")
    assert table.failures == [f"food101: 1 completed, 4 failed; most common error (4 of 4): {OOM}"]
    with pytest.raises(ResultsError, match=r"no completed trials for dataset 'ucf101'; 4 failed trials "
                                           r"\(most common error, 3 of 4: FileNotFoundError: no split file\)"):
        detail_table(df, "ucf101")


def test_all_failed_is_an_error_that_names_the_count_and_error(tmp_path):
    write_sweep(tmp_path / "s", [minimal_failed("dtd", f"t{i}", "RuntimeError: boom") for i in range(2)])
    collect([str(tmp_path / "s")], str(tmp_path / "out"))
    with pytest.raises(ResultsError, match=r"2 failed trials \(most common error, 2 of 2: RuntimeError: boom\)"):
        main_table(load_trials(open_store(tmp_path / "out")))


# ---------------------------------------------------------------------------------------------- s3: URIs

@pytest.mark.parametrize("uri", ["s3:/bucket/x", "S3:/bucket/x", "s3:bucket", "s3:"])
def test_s3_with_one_slash_is_a_one_line_error_not_a_folder(uri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_sweep(tmp_path / "s", [make_record(trial="t")])
    with pytest.raises(ResultsError, match=r"is not an S3 location: write s3://bucket/prefix") as e:
        collect([str(tmp_path / "s")], uri)
    assert "\n" not in str(e.value)
    with pytest.raises(ResultsError, match="write s3://bucket/prefix"):
        collect([uri], str(tmp_path / "out"))
    with pytest.raises(ResultsError, match="write s3://bucket/prefix"):
        results_main(["table", "--store", uri])
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["s"]  # nothing written under ./s3:


def test_s3_scheme_is_case_insensitive():
    store = open_store("S3://bucket/prefix")
    assert isinstance(store, S3Store) and store.uri == "s3://bucket/prefix"


def test_plot_keeps_failed_datasets_and_warns(store, tmp_path, caplog, monkeypatch):
    from results import plots
    seen = {}
    real_save = plots._save

    def keep(fig, path: Path) -> Path:      # read the gain figure's tick labels before it is saved
        if path.name == "gain.png":
            seen["ticks"] = [t.get_text() for t in fig.axes[0].get_xticklabels()]
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    with caplog.at_level(logging.WARNING, logger="results"):
        assert results_main(["plot", "--store", store, "--out", str(tmp_path / "p"), "--no-optuna"]) == 0
    assert f"ucf101\n({FAILED})" in seen["ticks"] and "dtd" in seen["ticks"]
    assert any("results are incomplete" in r.getMessage() for r in caplog.records)


def test_wca_row_reads_the_picked_runs_not_an_average_over_the_sweep(tmp_path, capsys, caplog):
    """WCA depends on a run's local settings; the row reports the runs whose FAIR cell the table shows."""
    recs = [make_record(dataset="dtd", trial="crops-best", hparams={"local.source": "crops"}, val=80, test=75,
                        wca=50.0),
            make_record(dataset="dtd", trial="tokens-worse", hparams={"local.source": "tokens"}, val=60, test=65,
                        wca=30.0)]
    collect([str(write_sweep(tmp_path / "sweeps", recs))], str(tmp_path / "out"))
    md, _ = run_table(str(tmp_path / "out"), capsys, caplog)
    assert md_row(md, "FAIR (grid)")[1] == "75.0"           # one method row: nothing to be bold against
    assert md_row(md, "WCA (same runs)")[1] == "50.0"          # not 40.0, the mean over both settings
    from results.plots import gain_series
    datasets, series = gain_series(load_trials(open_store(str(tmp_path / "out"))))
    (wca,) = [stats for label, stats in series if label == "WCA (same runs)"]
    zs = recs[0]["metrics"]["zeroshot_top1"]
    assert datasets == ["dtd"] and wca[0].mean == pytest.approx(50.0 - zs)   # gain.png agrees with the table


def test_a_setting_null_only_in_failed_records_keeps_its_numeric_column(tmp_path):
    """Failed records carry unresolved settings (train.fair_momentum: null, auto). A partition holding only
    those must not turn the column into strings for every dataset."""
    recs = [make_record(dataset="dtd", trial="ok", hparams={"train.fair_momentum": 0.9}),
            make_record(dataset="ucf101", trial="bad", hparams={"train.fair_momentum": None}, status="failed")]
    collect([str(write_sweep(tmp_path / "sweeps", recs))], str(tmp_path / "out"))
    df = load_trials(open_store(str(tmp_path / "out"))).set_index("dataset")
    assert str(df["hp.train.fair_momentum"].dtype) == "float64"
    assert df.loc["dtd", "hp.train.fair_momentum"] == 0.9


def stopped_record(dataset: str, trial: str, seed: int = 0) -> dict:
    """A `stopped_early` record as the sweep driver writes it for a trial ASHA stopped (fair.adapt)."""
    rec = make_record(dataset=dataset, trial=trial, seed=seed, status="stopped_early")
    rec.update(error=None, last_epoch={"epoch": 1, "val_top1": 99.0, "objective": 99.0})
    return rec


def test_stopped_trials_are_counted_apart_and_never_picked(tmp_path, capsys, caplog):
    """dtd: 2 completed + 2 stopped (one with a higher epoch objective, which must not count); eurosat: 1
    completed, 1 stopped, 1 failed; ucf101: stopped only."""
    recs = [make_record(dataset="dtd", trial=f"dtd-{s}", seed=s, val=70 + s, test=71 + s) for s in (0, 1)]
    recs += [stopped_record("dtd", "dtd-x0"), stopped_record("dtd", "dtd-x1", seed=1),
             make_record(dataset="eurosat", trial="eu-ok", val=60, test=61), stopped_record("eurosat", "eu-x"),
             make_record(dataset="eurosat", trial="eu-f", status="failed"), stopped_record("ucf101", "ucf-x")]
    collect([str(write_sweep(tmp_path / "sweeps", recs))], str(tmp_path / "out"))
    df = load_trials(open_store(str(tmp_path / "out")))
    assert sorted(df[df["status"] == "stopped_early"]["trial_id"]) == ["dtd-x0", "dtd-x1", "eu-x", "ucf-x"]
    table = main_table(df)
    fair = next(r for r in table.rows if r[0].startswith("FAIR"))
    assert fair[1].text() == "71.5 ± 0.7" and fair[2].text() == "61.0" and fair[3].text() == "stopped early"
    note = next(n for n in table.notes if "trials per dataset" in n)
    assert ("dtd: 2 completed, 2 stopped early, 0 failed; eurosat: 1 completed, 1 stopped early, 1 failed; "
            "ucf101: 0 completed, 1 stopped early, 0 failed") in note
    assert table.failures == ["eurosat: 1 completed, 1 stopped early, 1 failed; most common error (1 of 1): "
                              "CUDA out of memory"]
    out, warnings = run_table(str(tmp_path / "out"), capsys, caplog)
    assert "stopped early" in out and len(warnings) == 2                 # a stopped trial is not a failure


def test_a_stopped_superseded_final_is_counted_apart_from_trials_asha_stopped(tmp_path):
    """An early final of an earlier pick, stopped once a better search trial superseded it (tune.searcher):
    not a search trial ASHA stopped, and never one of the pick's finals."""
    recs = [make_record(dataset="dtd", trial="s0", val=70, test=71),
            make_record(dataset="dtd", trial="s1", val=80, test=81), stopped_record("dtd", "s2"),
            {**stopped_record("dtd", "f0", seed=1), "stage": "final", "picked_from": "s0"},
            {**make_record(dataset="dtd", trial="f1", seed=1, val=79, test=82), "stage": "final", "picked_from": "s1"}]
    collect([str(write_sweep(tmp_path / "sweeps", recs))], str(tmp_path / "out"))
    table = main_table(load_trials(open_store(str(tmp_path / "out"))))
    note = next(n for n in table.notes if "trials per dataset" in n)
    assert "dtd: 3 completed, 1 stopped early, 1 superseded finals stopped, 0 failed" in note
    fair = next(r for r in table.rows if r[0].startswith("FAIR"))
    assert fair[1].text() == "82.0"                                      # the pick's final, seed 1
