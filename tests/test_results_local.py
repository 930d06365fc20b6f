"""collect / table / plot on a local store: layout, idempotence, selection on validation, formats, errors,
and the parquet read by pandas and DuckDB with no project code."""
from __future__ import annotations

import csv
import io
import json
import random
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from results.cli import main as results_main  # noqa: E402
from results.collect import collect  # noqa: E402
from results.errors import ResultsError  # noqa: E402
from results.importance import correlation_importance  # noqa: E402
from results.parquet import CorruptPartWarning, read_table  # noqa: E402
from results.store import LocalStore  # noqa: E402
from tests.test_results_records import REPO, epoch_rows, make_record, write_run, write_sweep  # noqa: E402

DATASETS = ("cifar10", "fashion_mnist")


def sweep_records(seed: int = 0) -> list[dict]:
    """Two sweeps x two datasets x (3 configs x 2 seeds + a 'trap' with the best test but a poor val)."""
    rng = random.Random(seed)
    out = []
    for sweep, method in (("grid_fair", "fair"), ("grid_st", "selftrain")):
        for d in DATASETS:
            for c, lr in enumerate((1e-4, 3e-4, 1e-3)):
                for s in (0, 1):
                    val = 60 + 5 * c + rng.random() * 2
                    out.append(make_record(dataset=d, method=method, seed=s, sweep=sweep, trial=f"c{c}-s{s}",
                                           hparams={"optim.lr": lr, "anchors.mode": "set"}, val=val,
                                           test=val + rng.uniform(-2, 2), zeroshot=50 + s * 0.3 + len(d),
                                           wca=52 + s * 0.1, created_at=f"2026-11-28T21:0{c}:0{s}Z",
                                           epochs=epoch_rows(2)))
            out.append(make_record(dataset=d, method=method, seed=0, sweep=sweep, trial="trap",
                                   hparams={"optim.lr": 1.0, "anchors.mode": "mean"}, val=10.0, test=99.0,
                                   zeroshot=50 + len(d), wca=52))
            out.append(make_record(dataset=d, method=method, seed=0, sweep=sweep, trial="zfailed", status="failed"))
    return out


def expected(records: list[dict], sweep: str, dataset: str, metric: str = "test_top1"):
    """Independent reference: best config by mean val over seeds, then mean / sample std of `metric`."""
    configs = defaultdict(list)
    for r in records:
        if (r["sweep"]["name"], r["dataset"], r["status"]) == (sweep, dataset, "completed"):
            configs[json.dumps({k: v for k, v in r["hparams"].items() if k != "seed"}, sort_keys=True)].append(r)
    best = max(configs.values(), key=lambda rs: statistics.mean(r["metrics"]["val_top1"] for r in rs))
    values = [r["metrics"][metric] for r in best]
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None), len(values)


def parse_csv(text: str) -> dict[str, dict[str, str]]:
    return {row["row"]: row for row in csv.DictReader(io.StringIO(text))}


@pytest.fixture
def storage(tmp_path) -> tuple[Path, list[dict]]:
    records = sweep_records()
    return write_sweep(tmp_path / "sweeps", records), records


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ collect

def test_collect_layout_rows_and_epochs(storage, tmp_path):
    root, records = storage
    summary = collect([str(root)], str(tmp_path / "out"))
    assert summary["records"] == len(records) and summary["partitions"] == 4
    layout = sorted(files(tmp_path / "out"))
    assert len(layout) == 8
    for name in layout:
        table, sweep, dataset, part = name.split("/")
        assert table in ("trials", "epochs") and sweep.startswith("sweep=grid_") and dataset[8:] in DATASETS
        assert part.startswith("part-") and part.endswith(".parquet")
    trials = read_table(LocalStore(tmp_path / "out"), "trials")
    assert trials.num_rows == len(records)
    assert sorted(trials.column("trial_id").to_pylist()) == sorted(r["sweep"]["trial_id"] for r in records)
    epochs = read_table(LocalStore(tmp_path / "out"), "epochs")
    assert epochs.num_rows == 2 * sum(1 for r in records if "epochs" in r)


def test_collect_twice_is_byte_identical_and_one_row_per_record(storage, tmp_path):
    root, records = storage
    collect([str(root)], str(tmp_path / "a"))
    first = files(tmp_path / "a")
    collect([str(root)], str(tmp_path / "a"))
    collect([str(root / "grid_fair")], str(tmp_path / "a"))  # a subset again: still one row per record
    assert files(tmp_path / "a") == first
    collect([str(root)], str(tmp_path / "b"))               # a fresh store from the same records
    assert files(tmp_path / "b") == first


def test_collect_merges_new_records_into_existing_partition(tmp_path):
    recs = [make_record(trial=f"t{i}", seed=i) for i in range(4)]
    write_sweep(tmp_path / "s1", recs[:2])
    write_sweep(tmp_path / "s2", recs[1:])
    collect([str(tmp_path / "s1")], str(tmp_path / "out"))
    collect([str(tmp_path / "s2")], str(tmp_path / "out"))
    assert len(list((tmp_path / "out/trials/sweep=grid/dataset=fashion_mnist").iterdir())) == 1  # compacted
    t = read_table(LocalStore(tmp_path / "out"), "trials")
    assert t.column("trial_id").to_pylist() == ["t0", "t1", "t2", "t3"]


def test_rewritten_record_replaces_the_older_version(tmp_path):
    write_sweep(tmp_path / "s", [make_record(trial="t", test=50.0, created_at="2026-01-01T00:00:00Z")])
    collect([str(tmp_path / "s")], str(tmp_path / "out"))
    write_sweep(tmp_path / "s", [make_record(trial="t", test=55.0, created_at="2026-01-02T00:00:00Z")])
    collect([str(tmp_path / "s")], str(tmp_path / "out"))
    t = read_table(LocalStore(tmp_path / "out"), "trials")
    assert t.column("test_top1").to_pylist() == [55.0]


def test_collect_plain_run_folders_and_globs(tmp_path):
    for i in range(2):
        write_run(tmp_path / "runs" / f"r{i}", make_record(sweep=None, seed=i, trial=f"r{i}"), epoch_rows(3))
    collect([str(tmp_path / "runs" / "r0"), str(tmp_path / "runs/*/record.json")], str(tmp_path / "out"),
            sweep="adhoc")
    t = read_table(LocalStore(tmp_path / "out"), "trials")
    assert t.num_rows == 2 and set(t.column("sweep").to_pylist()) == {"adhoc"}
    e = read_table(LocalStore(tmp_path / "out"), "epochs")
    assert e.num_rows == 6 and sorted(set(e.column("epoch").to_pylist())) == [1, 2, 3]


def test_bad_record_is_a_one_line_error_naming_the_field_and_can_be_skipped(tmp_path):
    bad = make_record(trial="bad")
    del bad["metrics"]["val_top1"]
    write_sweep(tmp_path / "s", [make_record(trial="good"), bad])
    with pytest.raises(ResultsError, match=r"bad\.json: field 'metrics\.val_top1' is missing"):
        collect([str(tmp_path / "s")], str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # nothing half-collected
    summary = collect([str(tmp_path / "s")], str(tmp_path / "out"), skip_invalid=True)
    assert (summary["records"], summary["skipped"]) == (1, 1)


def test_missing_source_and_empty_source_are_errors(tmp_path):
    with pytest.raises(ResultsError, match="does not exist"):
        collect([str(tmp_path / "nope")], str(tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultsError, match="no records in"):
        collect([str(tmp_path / "empty")], str(tmp_path / "out"))


# ------------------------------------------------------------------------------------------------- tables

def test_table_picks_by_validation_and_reports_mean_std_over_seeds(storage, tmp_path, capsys):
    root, records = storage
    collect([str(root)], str(tmp_path / "out"))
    assert results_main(["table", "--store", str(tmp_path / "out"), "--format", "csv"]) == 0
    rows = parse_csv(capsys.readouterr().out)
    assert set(rows) == {"Zero-shot (same runs)", "WCA (same runs)", "Self-training (grid_st)", "FAIR (grid_fair)"}
    for label, sweep in (("FAIR (grid_fair)", "grid_fair"), ("Self-training (grid_st)", "grid_st")):
        means = []
        for d in DATASETS:
            mean, std, n = expected(records, sweep, d)
            assert float(rows[label][d]) == pytest.approx(mean, abs=1e-3)
            assert float(rows[label][f"{d}_std"]) == pytest.approx(std, abs=1e-3)
            assert int(rows[label][f"{d}_n"]) == n == 2
            assert float(rows[label][d]) < 90  # the trap (test 99, poor val) is never picked
            means.append(mean)
        assert float(rows[label]["mean"]) == pytest.approx(statistics.mean(means), abs=1e-3)
    for d in DATASETS:  # zero-shot: per seed, then over seeds
        per_seed = defaultdict(list)
        for r in records:
            if r["dataset"] == d and r["status"] == "completed":
                per_seed[r["seed"]].append(r["metrics"]["zeroshot_top1"])
        zs = [statistics.mean(v) for _, v in sorted(per_seed.items())]
        assert float(rows["Zero-shot (same runs)"][d]) == pytest.approx(statistics.mean(zs), abs=1e-3)


def test_table_ties_go_to_the_smallest_trial_id(tmp_path):
    recs = [make_record(trial="b", hparams={"x": 1}, val=70, test=10),
            make_record(trial="a", hparams={"x": 2}, val=70, test=20)]
    write_sweep(tmp_path / "s", recs)
    collect([str(tmp_path / "s")], str(tmp_path / "out"))
    out = tmp_path / "t.csv"
    results_main(["table", "--store", str(tmp_path / "out"), "--format", "csv", "--out", str(out)])
    assert float(parse_csv(out.read_text())["FAIR (grid)"]["fashion_mnist"]) == 20.0


def test_markdown_and_latex_tables(storage, tmp_path, capsys):
    root, _ = storage
    collect([str(root)], str(tmp_path / "out"))
    results_main(["table", "--store", str(tmp_path / "out")])
    md = capsys.readouterr().out
    header = md.splitlines()[0]
    assert header == "| Method | cifar10 | fashion_mnist | Mean |"
    assert "±" in md and "val_top1" in md and "stand-in" not in md
    results_main(["table", "--store", str(tmp_path / "out"), "--format", "latex", "--sweep", "grid_fair"])
    tex = capsys.readouterr().out
    assert "\\begin{tabular}{lrrr}" in tex and "$\\pm$" in tex and "fashion\\_mnist" in tex
    assert "grid\\_st" not in tex and "FAIR (grid\\_fair)" in tex


def test_standin_backbone_gets_the_caption(tmp_path, capsys):
    write_sweep(tmp_path / "s", [make_record(trial="t", backbone="fair-standin-tiny")])
    collect([str(tmp_path / "s")], str(tmp_path / "out"))
    results_main(["table", "--store", str(tmp_path / "out")])
    assert "stand-in model, not CLIP results" in capsys.readouterr().out


def test_detail_view_lists_configs_by_validation_with_hparams(storage, tmp_path, capsys):
    root, records = storage
    collect([str(root)], str(tmp_path / "out"))
    results_main(["table", "--store", str(tmp_path / "out"), "--dataset", "cifar10", "--detail", "--top", "2",
                  "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    fair = [r for r in rows if r["sweep"] == "grid_fair"]
    assert [r["rank"] for r in fair] == ["1 (picked)", "2"]
    assert float(fair[0]["test_top1"]) == pytest.approx(expected(records, "grid_fair", "cifar10")[0], abs=1e-3)
    assert float(fair[0]["val_top1"]) >= float(fair[1]["val_top1"])
    assert fair[0]["optim.lr"] == "0.001" and "anchors.mode" in fair[0] and "seed" not in fair[0]


# ----------------------------------------------------------------------------------------- bad table files

def test_unknown_table_schema_version_is_refused(tmp_path):
    part = tmp_path / "out/trials/sweep=s/dataset=d/part-0000000000000000.parquet"
    part.parent.mkdir(parents=True)
    pq.write_table(pa.table({"schema_version": pa.array([2], pa.int32()), "trial_id": ["t"]}), part)
    with pytest.raises(ResultsError, match="schema_version 2 is unknown"):
        read_table(LocalStore(tmp_path / "out"), "trials")


def test_corrupt_part_is_named_and_skipped_with_a_warning(storage, tmp_path):
    root, records = storage
    collect([str(root)], str(tmp_path / "out"))
    victim = next((tmp_path / "out/trials/sweep=grid_st/dataset=cifar10").iterdir())
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.warns(CorruptPartWarning, match=victim.name):
        t = read_table(LocalStore(tmp_path / "out"), "trials")
    assert t.num_rows == len(records) - len([r for r in records if r["sweep"]["name"] == "grid_st"
                                              and r["dataset"] == "cifar10"])


def test_table_on_a_missing_store_is_a_user_error(tmp_path):
    with pytest.raises(ResultsError, match="run `fair results collect"):
        results_main(["table", "--store", str(tmp_path / "nothing")])


def test_fair_cli_prints_one_line_and_exits_2(tmp_path):
    if not (REPO / "fair" / "cli.py").exists():
        pytest.skip("fair/cli.py not present")
    p = subprocess.run([sys.executable, "-m", "fair.cli", "results", "table", "--store", str(tmp_path / "x")],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("fair: error: store ")


# ------------------------------------------------------------------------------------ other readers, plots

def test_parquet_is_readable_by_pandas_and_duckdb_without_project_code(storage, tmp_path):
    root, records = storage
    collect([str(root)], str(tmp_path / "out"))
    code = f"""
import pandas as pd, sys
df = pd.read_parquet({str(tmp_path / 'out' / 'trials')!r})
assert len(df) == {len(records)}, len(df)
assert set(df['sweep'].astype(str)) == {{'grid_fair', 'grid_st'}}, set(df['sweep'])
assert 'hp.optim.lr' in df.columns and 'test_top1' in df.columns
try:
    import duckdb
except ImportError:
    print('no duckdb'); sys.exit(0)
n, = duckdb.sql("select count(*) from read_parquet('{tmp_path}/out/trials/**/*.parquet', "
                "hive_partitioning=true, union_by_name=true) where sweep = 'grid_fair'").fetchall()[0]
assert n == {sum(r['sweep']['name'] == 'grid_fair' for r in records)}, n
print('duckdb ok')
assert not [m for m in ('results', 'fair', 'torch') if m in sys.modules]
"""
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    if "no duckdb" in p.stdout:
        pytest.skip("duckdb not installed (pandas check passed)")


def test_plot_writes_three_pngs(storage, tmp_path, capsys):
    root, _ = storage
    collect([str(root)], str(tmp_path / "out"))
    assert results_main(["plot", "--store", str(tmp_path / "out"), "--out", str(tmp_path / "png"),
                         "--no-optuna"]) == 0
    for name in ("gain.png", "history.png", "importance.png"):
        data = (tmp_path / "png" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_history_plot_numbers_trials_with_integers(tmp_path, monkeypatch):
    """Four trials (the demo's sweep): the x-axis says 1, 2, 3, 4, not 1.0, 1.5, 2.0 ..."""
    from results import plots
    recs = [make_record(dataset="dtd", trial=f"t{i}", hparams={"optim.lr": 10.0 ** -i}, val=60 + i, test=59 + i,
                        created_at=f"2026-11-28T21:0{i}:00Z") for i in range(1, 5)]
    collect([str(write_sweep(tmp_path / "sweeps", recs))], str(tmp_path / "out"))
    seen = {}
    real_save = plots._save

    def keep(fig, path: Path) -> Path:      # tick labels exist once the figure is drawn (saved)
        out = real_save(fig, path)
        if path.name == "history.png":
            seen["ticks"] = [t.get_text() for t in fig.axes[0].get_xticklabels()]
        return out

    monkeypatch.setattr(plots, "_save", keep)
    assert results_main(["plot", "--store", str(tmp_path / "out"), "--out", str(tmp_path / "png"),
                         "--no-optuna"]) == 0
    ticks = [t.replace("\u2212", "-") for t in seen["ticks"] if t]
    assert ticks and all(t.lstrip("-").isdigit() for t in ticks), ticks
    assert {"1", "4"} <= set(ticks), ticks


def test_correlation_importance_ranks_the_parameter_that_matters():
    import pandas as pd

    rng = random.Random(1)
    lr = [rng.random() for _ in range(30)]
    noise = [rng.choice(["a", "b"]) for _ in range(30)]
    target = pd.Series([10 * x + rng.random() * 0.1 for x in lr])
    imp = correlation_importance(pd.DataFrame({"lr": lr, "mode": noise}), target)
    assert imp["lr"] > 0.7 > imp["mode"] and sum(imp.values()) == pytest.approx(1.0)


def test_optuna_importance_when_optuna_is_installed():
    pytest.importorskip("optuna")
    import pandas as pd

    from results.importance import param_importance

    rng = random.Random(2)
    rows = []
    for i in range(16):
        lr, mode = rng.choice([1e-4, 1e-3, 1e-2]), rng.choice(["set", "mean"])
        rows.append({"hparams_json": json.dumps({"optim.lr": lr, "anchors.mode": mode, "seed": i}),
                     "val_top1": 50 + 1000 * lr + rng.random() * 0.01})
    imp = param_importance(pd.DataFrame(rows), "val_top1", use_optuna=True)
    assert set(imp) == {"optim.lr", "anchors.mode"} and imp["optim.lr"] > imp["anchors.mode"]
    assert sum(imp.values()) == pytest.approx(1.0)


_THREADS_AFTER_READ = """
import os, sys
from results.parquet import read_table
from results.store import LocalStore
before = len(os.listdir("/proc/self/task"))
t = read_table(LocalStore(sys.argv[1]), "trials")
print(t.num_rows, before, len(os.listdir("/proc/self/task")))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
def test_reading_parts_starts_no_arrow_thread(storage, tmp_path):
    """An arrow thread that holds the last reference to a reader at interpreter exit aborts the process (it
    needs the GIL to drop the reader's Python bytes), so parts are read on the caller's thread only."""
    root, records = storage
    collect([str(root)], str(tmp_path / "out"))
    p = subprocess.run([sys.executable, "-c", _THREADS_AFTER_READ, str(tmp_path / "out")], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    rows, before, after = map(int, p.stdout.split())
    assert rows == len(records) and after == before
