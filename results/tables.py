"""`fair results table`: the paper-style table and the per-dataset detail view, as Markdown, LaTeX or CSV.

Selection never looks at test accuracy: within each (sweep, method, backbone, pretrained) group and dataset,
the configuration (hyperparameters without the seed) with the best validation objective (`val_top1`, mean
over its seeds) among the search trials (`stage` "search" or absent) is picked; ties go to the configuration
with the smallest trial id. The reported metric is then the mean ± sample std over the final-seed re-runs of
that configuration (`stage: final`), with a 95% interval for seeds and test-set sampling together
(results/intervals.py); without final re-runs, over the picked search trials (a note says so).

A cell is bold only when the paired-bootstrap difference to the next best row of its column excludes 0;
rows whose difference to the best does not are marked as tied (≈). The "vs best baseline" column is the
paired difference, mean over datasets, to the baseline method row with the best Mean.

Failed trials are never hidden: every dataset with a record gets a column, a group with no completed trial on
a dataset shows `failed` there (CSV: an empty value), its Mean is withheld, and each dataset with failed trials
gets a line under the table (`Table.failures`) with its counts and most common error.

Trials a scheduler stopped early (`status: stopped_early`, ASHA) never reached their final evaluation: they
are never picked, and they are counted apart from completed and failed ones (a note under the table; a cell
whose trials were all stopped says `stopped early`). A final re-run is stopped only once its study picked
another configuration (an early final superseded: tune.searcher); those are counted apart again.
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd

from results.errors import ResultsError
from results.intervals import (Interval, decode_outcomes, mean_paired_difference, seeds_interval,
                               seeds_interval_analytic, wilson, wilson_of_accuracy)
from results.parquet import read_table
from results.schema import config_hparams
from results.store import Store

SELECT_BY = "val_top1"                     # the validation objective; never a test metric
GROUP = ["sweep", "method", "backbone", "pretrained"]
METHOD_NAMES = {"zeroshot": "Zero-shot", "wca": "WCA", "tent": "TENT", "selftrain": "Self-training", "dpa": "DPA",
                "fair": "FAIR"}
METHOD_ORDER = {"zeroshot": 0, "wca": 1, "tent": 2, "selftrain": 3, "dpa": 4, "fair": 5}
# For each reportable metric, the same-run baselines that go with it.
BASELINES = {"test_top1": (("zeroshot_top1", "Zero-shot (same runs)"), ("wca_top1", "WCA (same runs)")),
             "test_mean_per_class": (("zeroshot_mean_per_class", "Zero-shot (same runs)"),
                                     ("wca_mean_per_class", "WCA (same runs)"))}
METRIC_WORDS = {"test_top1": "test top-1 accuracy (%)", "test_mean_per_class": "test mean per-class accuracy (%)",
                "gain_over_zeroshot": "gain of test top-1 over zero-shot (points)"}
STANDIN_NOTE = "stand-in model, not CLIP results"
FAILED = "failed"                          # the cell marker of a group whose trials on a dataset all failed
STOPPED = "stopped early"                  # ... whose trials on a dataset were all stopped early (none failed)
NO_ERROR = "(no error message)"
FAILURES_TITLE = "Incomplete: failed trials (per dataset: counts and the most common error)"
BASELINE_METHODS = ("zeroshot", "wca", "selftrain")   # what "vs best baseline" compares the other methods with
TIE = "≈"                                  # marks a cell tied for best: its difference to the best includes 0
VS_BASELINE = "vs best baseline"


@dataclass(frozen=True)
class Stat:
    """A mean over `n` seeds and its sample standard deviation (None with one seed), with a 95% interval
    [`low`, `high`] when one is known. Without a mean, `marker` says why (e.g. `failed`); empty means nothing
    to report, shown as "–". `outcomes` (one correctness vector per seed, on the test images `ids_sha`)
    make paired comparisons possible; `signed` shows a difference (+/-)."""

    mean: float | None
    std: float | None = None
    n: int = 0
    marker: str = ""
    low: float | None = None
    high: float | None = None
    outcomes: tuple = field(default=(), compare=False, repr=False)
    ids_sha: str | None = field(default=None, compare=False)
    signed: bool = False

    def text(self, digits: int = 1, pm: str = "±") -> str:
        if self.mean is None:
            return self.marker or "–"
        f = f"+.{digits}f" if self.signed else f".{digits}f"
        out = f"{self.mean:{f}}" if self.std is None or self.n < 2 else f"{self.mean:{f}} {pm} {self.std:.{digits}f}"
        return out + (f" [{self.low:{f}}, {self.high:{f}}]" if self.low is not None else "")


@dataclass
class Table:
    """A rendered-agnostic table: header labels, CSV names, cells (str or Stat), notes under it, `marks`
    (bold / tied cells), `failures` (one line per dataset with failed trials) and `warnings` (selection within
    noise); failures and warnings are under the table in md/latex and logged by the CLI."""

    labels: list[str]
    names: list[str]
    rows: list[list[Any]]
    notes: list[str] = field(default_factory=list)
    marks: dict[tuple[int, int], str] = field(default_factory=dict)   # (row, column) -> "best" | "tie"
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)                 # also logged by the CLI


# ------------------------------------------------------------------------------------------------ loading

def load_trials(store: Store, sweeps: list[str] | None = None) -> pd.DataFrame:
    """The `trials` table of `store` (optionally only `sweeps`) as a DataFrame; empty is a ResultsError."""
    df = read_table(store, "trials", sweeps).to_pandas()
    if df.empty:
        which = f" for sweep(s) {', '.join(sweeps)}" if sweeps else ""
        raise ResultsError(f"no trials in {store.describe('trials')}{which}; run `fair results collect` first")
    return df


def completed(df: pd.DataFrame) -> pd.DataFrame:
    """The completed trials that have a validation objective (the only ones a pick may choose)."""
    return df[(df["status"] == "completed") & df[SELECT_BY].notna()]


def failed(df: pd.DataFrame) -> pd.DataFrame:
    """The failed trials."""
    return df[df["status"] == "failed"]


def stopped(df: pd.DataFrame) -> pd.DataFrame:
    """The trials a scheduler stopped before their final evaluation (no metrics to pick from)."""
    return df[df["status"] == "stopped_early"]


def _column(df: pd.DataFrame, name: str) -> pd.Series:
    """Column `name`, or nulls for a store collected before it existed."""
    return df[name] if name in df.columns else pd.Series([None] * len(df), index=df.index, dtype=object)


def finals(df: pd.DataFrame) -> pd.DataFrame:
    """The final-seed re-runs of picked configurations (`stage: final`)."""
    return df[_column(df, "stage") == "final"]


def searched(df: pd.DataFrame) -> pd.DataFrame:
    """The search trials (`stage` "search" or absent: also single runs): the only ones a pick looks at."""
    return df[_column(df, "stage") != "final"]


def only_methods(df: pd.DataFrame, methods: list[str] | None) -> pd.DataFrame:
    """The rows of `methods` (all when None); a method with no runs in the store is a ResultsError."""
    if not methods:
        return df
    known = sorted(df["method"].dropna().unique())
    missing = [m for m in methods if m not in known]
    if missing:
        raise ResultsError(f"the store has no runs of method {missing[0]!r} (methods there: {', '.join(known)}); "
                           "collect its records or drop --method")
    return df[df["method"].isin(methods)]


def _counts(rows: pd.DataFrame) -> str:
    """'N completed, [M stopped early, ][S superseded finals stopped, ]K failed' of `rows` (stopped ones only
    when there are any)."""
    halted = stopped(rows)
    n_finals = len(finals(halted))
    n_stopped = len(halted) - n_finals
    return (f"{int((rows['status'] == 'completed').sum())} completed, "
            + (f"{n_stopped} stopped early, " if n_stopped else "")
            + (f"{n_finals} superseded finals stopped, " if n_finals else "") + f"{len(failed(rows))} failed")


def stopped_note(df: pd.DataFrame) -> list[str]:
    """A note with every dataset's trial counts when some trials were stopped early, else nothing."""
    if stopped(df).empty:
        return []
    per = "; ".join(f"{d}: {_counts(df[df['dataset'] == d])}" for d in sorted(df["dataset"].unique()))
    return [f"Trials stopped early by the scheduler (ASHA) never reached their final evaluation and are never "
            f"picked (superseded finals: early re-runs of a configuration a better trial replaced as its "
            f"study's pick); trials per dataset: {per}."]


def _first_line(error: Any) -> str:
    text = "" if error is None or pd.isna(error) else str(error).strip()
    line = text.splitlines()[0].strip() if text else NO_ERROR
    return line if len(line) <= 160 else line[:159] + "…"


def top_error(rows: pd.DataFrame) -> tuple[str, int]:
    """The most common first line of `error` among the failed `rows` and its count (ties: sorted first)."""
    counts = Counter(_first_line(e) for e in failed(rows)["error"])
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0])) if counts else (NO_ERROR, 0)


def failure_lines(df: pd.DataFrame) -> list[str]:
    """One line per dataset with failed trials: completed / failed counts and the most common error."""
    lines = []
    for d in sorted(failed(df)["dataset"].unique()):
        rows = df[df["dataset"] == d]
        n_failed = len(failed(rows))
        error, count = top_error(rows)
        lines.append(f"{d}: {_counts(rows)}; most common error ({count} of {n_failed}): {error}")
    return lines


def _or_marker(stat: Stat, rows: pd.DataFrame) -> Stat:
    """`stat`, or when it has no value and `rows` (the cell's trials) hold no completed one, the marker
    `failed` (some failed) or `stopped early` (all were stopped)."""
    if stat.mean is not None or rows.empty or (rows["status"] == "completed").any():
        return stat
    return Stat(None, marker=FAILED if not failed(rows).empty else STOPPED)


def seed_stat(rows: pd.DataFrame, column: str) -> Stat:
    """Mean ± sample std over seeds of `column` (trials of the same seed are averaged first)."""
    values = rows[["seed", column]].dropna()
    if values.empty:
        return Stat(None)
    per_seed = values.groupby("seed")[column].mean().sort_index()
    n = len(per_seed)
    mean = float(per_seed.mean())
    std = float(per_seed.std(ddof=1)) if n > 1 else None
    return Stat(mean, std, n)


def rank_configs(trials: pd.DataFrame) -> list[tuple[str, pd.DataFrame, float]]:
    """The configurations of one group and dataset, best validation objective first (ties: smallest trial
    id), each as (config_key, its trials, mean validation objective over seeds)."""
    ranked = []
    for key, rows in trials.groupby("config_key", sort=True):
        val = seed_stat(rows, SELECT_BY).mean
        if val is not None:
            ranked.append((str(key), rows.sort_values("trial_id"), val))
    ranked.sort(key=lambda x: (-x[2], str(x[1]["trial_id"].min())))
    return ranked


def groups_of(done: pd.DataFrame) -> list[tuple]:
    """The (sweep, method, backbone, pretrained) groups present, in table order."""
    return sorted({tuple(g) for g in done[GROUP].itertuples(index=False)}, key=_group_sort_key)


def group_rows(done: pd.DataFrame, g: tuple) -> pd.DataFrame:
    """The trials of one group."""
    return done[(done[GROUP] == pd.Series(g, index=GROUP)).all(axis=1)]


@dataclass
class Pick:
    """One group's pick on one dataset: the picked configuration's search trials, the runs reported for it
    (its final-seed re-runs, else those search trials), its validation lead over the runner-up
    configuration and its validation standard error (mean `val_stderr` of its trials)."""

    search: pd.DataFrame
    reported: pd.DataFrame
    final: bool
    lead: float | None
    val_stderr: float | None


def picks(done: pd.DataFrame) -> dict[tuple, Pick]:
    """For each (group, dataset): the configuration picked by validation among the search trials of `done`
    (completed trials), and its final-seed re-runs: those whose `picked_from` is one of its trials, or of the
    same group with the same configuration."""
    search, reruns = searched(done), finals(done)
    out = {}
    for g in groups_of(search):
        sub = group_rows(search, g)
        for d in sorted(sub["dataset"].unique()):
            ranked = rank_configs(sub[sub["dataset"] == d])
            if not ranked:
                continue
            key, trials, val = ranked[0]
            mine = reruns[reruns["dataset"] == d]
            same = (mine[GROUP] == pd.Series(g, index=GROUP)).all(axis=1) & (mine["config_key"] == key)
            chosen = mine[same | _column(mine, "picked_from").isin(set(trials["trial_id"]))]
            se = trials["val_stderr"].dropna() if "val_stderr" in trials.columns else pd.Series(dtype=float)
            out[(g, d)] = Pick(trials, chosen.sort_values("trial_id") if not chosen.empty else trials,
                               not chosen.empty, val - ranked[1][2] if len(ranked) > 1 else None,
                               float(se.mean()) if not se.empty else None)
    return out


def picked_trials(done: pd.DataFrame) -> dict[tuple, pd.DataFrame]:
    """For each (group, dataset): the runs reported for the configuration picked by validation."""
    return {k: p.reported for k, p in picks(done).items()}


def one_per_seed(rows: pd.DataFrame) -> pd.DataFrame:
    """One run per seed (the smallest trial id), in seed order: the runs whose outcomes are bootstrapped."""
    return rows.sort_values(["seed", "trial_id"]).drop_duplicates("seed")


def _outcomes(runs: pd.DataFrame) -> tuple[list, str | None]:
    """The per-image outcomes of `runs` and their test images' hash, or ([], None) when some run lacks
    them or they were evaluated on different test images."""
    if "test_correct" not in runs.columns or runs["test_correct"].isna().any():
        return [], None
    shas = set(runs["test_ids_sha"])
    if len(shas) != 1:
        return [], None
    return [decode_outcomes({"n": n, "correct": c}) for n, c in zip(runs["test_n"], runs["test_correct"])], shas.pop()


def cell_stat(rows: pd.DataFrame, metric: str) -> Stat:
    """Mean ± std over seeds of `metric` and, for test_top1, its 95% interval: seeds and test sampling
    bootstrapped from per-image outcomes (one run: the Wilson interval), else the analytic combination
    when the test size is known (results/intervals.py)."""
    base = seed_stat(rows, metric)
    if base.mean is None or metric != "test_top1":
        return base
    runs = one_per_seed(rows.dropna(subset=[metric]))
    outs, sha = _outcomes(runs)
    iv: Interval | None = None
    if outs:
        iv = wilson(int(outs[0].sum()), len(outs[0])) if len(outs) == 1 else seeds_interval(outs)
    elif "test_n" in runs.columns and runs["test_n"].notna().all():
        n = int(runs["test_n"].min())
        iv = (wilson_of_accuracy(float(runs[metric].iloc[0]), n) if len(runs) == 1
              else seeds_interval_analytic(list(runs[metric]), n))
    if iv is None:
        return base
    return replace(base, low=iv.low, high=iv.high, outcomes=tuple(outs), ids_sha=sha)


def difference(a: list[Stat], b: list[Stat]) -> Stat:
    """A minus B (points), mean over the datasets where both are given, with a paired bootstrap interval;
    no value unless every dataset has per-image outcomes of both on the same test images."""
    if not a or any(x.mean is None or y.mean is None or not x.outcomes or not y.outcomes or x.ids_sha != y.ids_sha
                    for x, y in zip(a, b)):
        return Stat(None)
    iv = mean_paired_difference([(x.outcomes, y.outcomes) for x, y in zip(a, b)])
    return Stat(iv.estimate, n=1, low=iv.low, high=iv.high, signed=True)


def clearly_better(a: Stat, b: Stat) -> bool | None:
    """Whether `a` beats `b` beyond noise: the paired difference's interval excludes 0 (same test images,
    per-image outcomes), else their intervals do not overlap; None when neither way can tell."""
    paired = difference([a], [b])
    if paired.mean is not None:
        return paired.low > 0
    if a.low is not None and b.high is not None:
        return a.low > b.high
    return None


def method_label(g: tuple, many_backbones: bool = False) -> str:
    """A row label: the method's name, then its sweep (and backbone when several are shown)."""
    sweep, method, backbone, pretrained = g
    suffix = f", {backbone}/{pretrained}" if many_backbones else ""
    return f"{_method_label(method)} ({sweep}{suffix})"


def _method_label(method: str) -> str:
    return METHOD_NAMES.get(method, method)


def _group_sort_key(g: tuple) -> tuple:
    sweep, method, backbone, pretrained = g
    return (backbone, pretrained, METHOD_ORDER.get(method, 9), method, sweep)


def _mean_cell(cells: list[Stat]) -> Stat:
    """The mean over datasets; withheld (no value) when any dataset has none, never a mean over a subset."""
    if not cells or any(c.mean is None for c in cells):
        return Stat(None)
    return Stat(sum(c.mean for c in cells) / len(cells))


def _standin_notes(df: pd.DataFrame) -> list[str]:
    if df["backbone"].astype(str).str.startswith("fair-standin").any():
        return [f"Backbone `fair-standin*`: {STANDIN_NOTE}."]
    return []


# ------------------------------------------------------------------------------------------- main table

def main_table(df: pd.DataFrame, metric: str = "test_top1", methods: list[str] | None = None) -> Table:
    """Methods (one row per sweep/method group, each with its own validation-picked configuration) ×
    datasets + Mean (+ "vs best baseline"), plus the zero-shot and WCA rows of the same runs.

    Every dataset with a record (completed or failed) gets a column; see the module docstring for failures."""
    if metric not in df.columns or metric.startswith("val"):
        raise ResultsError(f"cannot report metric {metric!r}: use a test metric such as test_top1 or "
                           "test_mean_per_class")
    df = only_methods(df, methods)
    done = completed(df)
    if searched(done).empty:
        raise ResultsError(f"no completed trials with a validation objective (val_top1) to pick from"
                           f"{_failed_summary(df)}")
    datasets = sorted(df["dataset"].unique())
    backbones = sorted({(b, p) for b, p in zip(df["backbone"], df["pretrained"])})
    many_backbones = len(backbones) > 1
    rows: list[list[Any]] = []

    chosen = picks(done)
    picked = {k: p.reported for k, p in chosen.items()}
    for backbone, pretrained in backbones:
        suffix = f", {backbone}/{pretrained}" if many_backbones else ""
        mine = df[(df["backbone"] == backbone) & (df["pretrained"] == pretrained)]
        reported = {d: reported_runs(picked, backbone, pretrained, d, done.iloc[:0]) for d in datasets}
        for column, label in BASELINES.get(metric, ()):
            if any(column in r.columns and r[column].notna().any() for r in reported.values()):
                cells = [_or_marker(seed_stat(reported[d], column), mine[mine["dataset"] == d]) for d in datasets]
                rows.append([label + suffix, *cells, _mean_cell(cells)])

    ranked_rows, groups = [], groups_of(df)
    for g in groups:
        mine = group_rows(df, g)
        cells = [_or_marker(cell_stat(picked[(g, d)], metric) if (g, d) in picked else Stat(None),
                            mine[mine["dataset"] == d]) for d in datasets]
        ranked_rows.append(len(rows))
        rows.append([method_label(g, many_backbones), *cells, _mean_cell(cells)])

    labels, names = ["Method", *datasets, "Mean"], ["row", *datasets, "mean"]
    vs_note = _add_vs_baseline(rows, ranked_rows, groups, len(datasets))
    if vs_note:
        labels.append(VS_BASELINE)
        names.append("vs_best_baseline")
    marks = column_marks(rows, ranked_rows, range(1, len(datasets) + 1))
    notes = [_main_note(metric, datasets, rows, marks, many_backbones)] + vs_note
    notes += _selection_notes(chosen, groups, many_backbones)
    notes += _standin_notes(done) + stopped_note(df)
    return Table(labels, names, rows, notes, marks, failure_lines(df), lead_warnings(chosen, many_backbones))


def _main_note(metric: str, datasets: list[str], rows: list[list[Any]], marks: dict, many_backbones: bool) -> str:
    n_max = max((c.n for r in rows for c in r[1:-1] if isinstance(c, Stat)), default=1)
    has_iv = any(isinstance(c, Stat) and c.low is not None and not c.signed for r in rows for c in r)
    text = (f"{METRIC_WORDS.get(metric, metric)}; per dataset and method, the configuration with the best "
            f"validation top-1 (`{SELECT_BY}`) among the search trials is picked, never by test accuracy"
            + ("; mean ± std over seeds where there are several" if n_max > 1 else "")
            + ("; [95% interval] over seeds and test-set sampling (bootstrap over test images and seeds; one "
               "run: Wilson binomial interval)" if has_iv else "")
            + f". Rows in parentheses name the sweep. Mean: over all {len(datasets)} datasets, withheld (–) "
              "for a row that lacks one.")
    if any(v == "best" for v in marks.values()) or any(v == "tie" for v in marks.values()):
        text += (f" Bold: the column's best, whose paired-bootstrap difference to the next best excludes 0; "
                 f"{TIE}: tied for best (the interval of its difference to the best includes 0).")
    elif metric == "test_top1":
        text += (" No cell is bold: a win needs two compared method rows with per-image test outcomes (the "
                 "\"same runs\" rows are by-products, not candidates)" if has_iv else
                 " No cell is bold: without 95% intervals (records without `test_outcomes`) no win can be told.")
    text += (f" `{FAILED}`: every trial of the row on that dataset failed." if _has_marker(rows) else "")
    text += (f" `{STOPPED}`: every trial of the row on that dataset was stopped early."
             if _has_marker(rows, STOPPED) else "")
    return text + (" Rows name backbone/pretrained weights." if many_backbones else "")


def column_marks(rows: list[list[Any]], ranked_rows: list[int], columns) -> dict[tuple[int, int], str]:
    """Per column, among the method rows: the best is bold ("best") when it clearly beats every other row,
    else it and the rows it does not clearly beat are "tie". Cells without an interval mark nothing."""
    marks: dict[tuple[int, int], str] = {}
    for j in columns:
        cells = [(i, rows[i][j]) for i in ranked_rows if isinstance(rows[i][j], Stat) and rows[i][j].mean is not None]
        if len(cells) < 2:
            continue
        best_i, best = max(cells, key=lambda ic: ic[1].mean)
        verdicts = {i: clearly_better(best, c) for i, c in cells if i != best_i}
        if any(v is None for v in verdicts.values()):
            continue                                    # no interval: no claim either way
        tied = [i for i, v in verdicts.items() if not v]
        marks[(best_i, j)] = "tie" if tied else "best"
        marks.update({(i, j): "tie" for i in tied})
    return marks


def _add_vs_baseline(rows: list[list[Any]], ranked_rows: list[int], groups: list[tuple], n_datasets: int) -> list[str]:
    """Append the "vs best baseline" cell to every row (in place) when the table has baseline method rows
    and others: a non-baseline row's paired difference to the baseline row of its backbone with the best
    Mean. Returns the column's note, or [] (and no column) when there is nothing to compare or no run has
    per-image outcomes."""
    is_base = {i: g[1] in BASELINE_METHODS for i, g in zip(ranked_rows, groups)}
    if not any(is_base.values()) or all(is_base.values()):
        return []
    best: dict[tuple, int] = {}
    for i, g in zip(ranked_rows, groups):
        mean = rows[i][n_datasets + 1].mean
        if is_base[i] and mean is not None and (g[2:] not in best or mean > rows[best[g[2:]]][n_datasets + 1].mean):
            best[g[2:]] = i
    by_row = dict(zip(ranked_rows, groups))
    for i, r in enumerate(rows):
        g = by_row.get(i)
        if g is None or is_base[i] or g[2:] not in best:
            r.append(Stat(None))
            continue
        b = best[g[2:]]
        r.append(difference(r[1:n_datasets + 1], rows[b][1:n_datasets + 1]))
    if all(r[-1].mean is None for r in rows):
        for r in rows:
            r.pop()
        return []
    names = sorted({rows[b][0] for b in best.values()})
    return [f"{VS_BASELINE}: the row's test top-1 minus that of the baseline row ({', '.join(names)}) with the "
            "best Mean, averaged over datasets, with a paired bootstrap 95% interval (the same test images "
            "resampled for both); – where a run lacks per-image outcomes."]


def _where(g: tuple, d: str, many_backbones: bool) -> str:
    return f"{method_label(g, many_backbones)} on {d}"


def _selection_notes(chosen: dict[tuple, Pick], groups: list[tuple], many_backbones: bool) -> list[str]:
    """Footnotes: the validation standard error of each pick, and which cells lack final-seed re-runs."""
    notes = []
    parts = []
    for g in groups:
        ses = [f"{d} {p.val_stderr:.1f}" for (gg, d), p in sorted(chosen.items()) if gg == g and p.val_stderr is not None]
        if ses:
            parts.append(f"{method_label(g, many_backbones)}: {', '.join(ses)}")
    if parts:
        notes.append("Validation standard error of each picked configuration (`val_stderr`, points; the noise of "
                     "the pick itself): " + "; ".join(parts) + ".")
    missing = [_where(g, d, many_backbones) for (g, d), p in sorted(chosen.items()) if not p.final]
    if missing:
        notes.append("Final seeds missing (no `stage: final` re-runs of the picked configuration) for "
                     + ", ".join(missing) + ": those cells report the picked search run(s); one run's interval "
                     "is its binomial (Wilson) interval on the test images.")
    return notes


def lead_warnings(chosen: dict[tuple, Pick], many_backbones: bool = False) -> list[str]:
    """One line per pick whose validation lead over the runner-up configuration is under one standard
    error: the pick is within noise."""
    return [f"{_where(g, d, many_backbones)}: the picked configuration leads the runner-up by {p.lead:.2f} "
            f"points of validation top-1, under one standard error ({p.val_stderr:.2f}); the pick is within noise"
            for (g, d), p in sorted(chosen.items())
            if p.lead is not None and p.val_stderr is not None and p.lead < p.val_stderr]


def reported_runs(picked: dict[tuple, pd.DataFrame], backbone: str, pretrained: str, dataset: str,
                   empty: pd.DataFrame) -> pd.DataFrame:
    """The trials behind the table's method cells of one backbone and dataset (every group's picked
    configuration): the "same runs" of the zero-shot and WCA rows. WCA depends on a run's local settings
    (crops or tokens, K, top_k), so it is read from the runs the table reports, not averaged over a sweep."""
    parts = [t for (g, d), t in picked.items() if d == dataset and (g[2], g[3]) == (backbone, pretrained)]
    return pd.concat(parts) if parts else empty


def _has_marker(rows: list[list[Any]], marker: str = FAILED) -> bool:
    return any(isinstance(c, Stat) and c.marker == marker for r in rows for c in r)


def _failed_summary(df: pd.DataFrame) -> str:
    """'; N failed trials (most common error: ...)' for an error message, or '' when none failed."""
    n_failed = len(failed(df))
    if not n_failed:
        return ""
    error, count = top_error(df)
    return f"; {n_failed} failed trials (most common error, {count} of {n_failed}: {error})"


# ------------------------------------------------------------------------------------------ detail view

def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, bool):
        return "true" if v else "false"
    return "" if v is None else str(v)


def detail_table(df: pd.DataFrame, dataset: str, metric: str = "test_top1", top: int = 5) -> Table:
    """For one dataset: per group, the `top` configurations by validation objective with their
    hyperparameters (those that vary within the group), seeds and trials."""
    mine = df[df["dataset"] == dataset]
    done = searched(completed(mine))
    if done.empty:
        known = ", ".join(sorted(df["dataset"].unique()))
        raise ResultsError(f"no completed trials for dataset {dataset!r}{_failed_summary(mine)}; datasets in "
                           f"the store: {known}")
    if metric not in df.columns:
        raise ResultsError(f"unknown metric {metric!r}; use e.g. test_top1 or test_mean_per_class")
    shown = []
    varying: set[str] = set()
    for g in groups_of(done):
        sub = group_rows(done, g)
        hps = {k: config_hparams(json.loads(s)) for k, s in zip(sub["config_key"], sub["hparams_json"])}
        names = sorted({n for h in hps.values() for n in h})
        varying |= {n for n in names if len({json.dumps(h.get(n), sort_keys=True) for h in hps.values()}) > 1}
        for rank, (key, rows, _) in enumerate(rank_configs(sub)[:top], 1):
            shown.append((g, rank, rows, hps[key]))
    hp_names = sorted(varying)
    table_rows = []
    for (sweep, method, backbone, _), rank, rows, hp in shown:
        ids = list(rows["trial_id"])
        trials = ", ".join(ids[:3]) + (f" (+{len(ids) - 3})" if len(ids) > 3 else "")
        table_rows.append([f"{rank}" + (" (picked)" if rank == 1 else ""), sweep, _method_label(method), trials,
                           str(rows["seed"].nunique()), seed_stat(rows, SELECT_BY), seed_stat(rows, metric),
                           seed_stat(rows, "gain_over_zeroshot"), *[_fmt_value(hp.get(n)) for n in hp_names]])
    notes = [f"Dataset {dataset}: configurations ranked by validation top-1 (`{SELECT_BY}`, mean over seeds); "
             f"rank 1 is the one the main table reports. Hyperparameters shown are those that vary."]
    notes += _standin_notes(done)
    labels = ["Rank", "Sweep", "Method", "Trials", "Seeds", "Val top-1", metric, "Gain vs ZS", *hp_names]
    names = ["rank", "sweep", "method", "trials", "seeds", "val_top1", metric, "gain_over_zeroshot", *hp_names]
    return Table(labels, names, table_rows, notes, failures=failure_lines(mine))


# ---------------------------------------------------------------------------------------------- render

def _marked(text: str, mark: str | None, bold: str, tie: str) -> str:
    return bold.format(text) if mark == "best" else f"{text} {tie}" if mark == "tie" else text


WARNINGS_TITLE = "Selection within noise"


def to_markdown(table: Table) -> str:
    """GitHub-flavoured Markdown; marked cells bold (best) or ≈ (tied), notes and warnings below."""
    def cell(c: Any, i: int, j: int) -> str:
        text = c.text() if isinstance(c, Stat) else str(c)
        return _marked(text.replace("|", "\\|"), table.marks.get((i, j)), "**{}**", TIE)

    numeric = [any(isinstance(r[j], Stat) for r in table.rows) for j in range(len(table.labels))]
    lines = ["| " + " | ".join(table.labels) + " |",
             "|" + "|".join("---:" if numeric[j] else ":---" for j in range(len(table.labels))) + "|"]
    lines += ["| " + " | ".join(cell(c, i, j) for j, c in enumerate(r)) + " |" for i, r in enumerate(table.rows)]
    if table.notes:
        lines.append("")
        lines += [f"*{n}*" if i == 0 else n for i, n in enumerate(table.notes)]
    for title, items in ((WARNINGS_TITLE, table.warnings), (FAILURES_TITLE, table.failures)):
        if items:
            lines += ["", f"**{title}:**", ""]
            lines += [f"- {line}" for line in items]
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """Escape LaTeX special characters."""
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def to_latex(table: Table) -> str:
    """A booktabs `table` environment with the notes as its caption."""
    def cell(c: Any, i: int, j: int) -> str:
        if isinstance(c, Stat) and c.mean is None:
            text = latex_escape(c.marker) or "--"
        elif isinstance(c, Stat):
            text = c.text(pm="$\\pm$")
        else:
            text = latex_escape(str(c)).replace("–", "--")
        return _marked(text, table.marks.get((i, j)), "\\textbf{{{}}}", "$\\approx$")

    numeric = [any(isinstance(r[j], Stat) for r in table.rows) for j in range(len(table.labels))]
    spec = "".join("r" if n else "l" for n in numeric)
    notes = table.notes + [f"{title}: " + ". ".join(f.rstrip(".") for f in items) + "."
                           for title, items in ((WARNINGS_TITLE, table.warnings), (FAILURES_TITLE, table.failures))
                           if items]
    text = " ".join(notes).replace("`", "").replace("–", "--").replace("…", "...")
    caption = latex_escape(text).replace("±", "$\\pm$").replace(TIE, "$\\approx$")
    lines = ["\\begin{table}[t]", "\\centering", "\\small", f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
             " & ".join(latex_escape(x) for x in table.labels) + " \\\\", "\\midrule"]
    lines += [" & ".join(cell(c, i, j) for j, c in enumerate(r)) + " \\\\" for i, r in enumerate(table.rows)]
    lines += ["\\bottomrule", "\\end{tabular}", f"\\caption{{{caption}}}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def _csv_number(x: float | None) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def to_csv(table: Table) -> str:
    """CSV with numbers unformatted: a numeric column `c` becomes `c`, `c_std`, `c_n` (seeds), `c_low` and
    `c_high` (95% interval) and `c_mark` (best / tie / empty). A cell without a value (failed, withheld) is
    empty with n 0; notes, warnings and failures are not in the CSV."""
    numeric = [any(isinstance(r[j], Stat) for r in table.rows) for j in range(len(table.names))]
    header = []
    for name, num in zip(table.names, numeric):
        header += [name, f"{name}_std", f"{name}_n", f"{name}_low", f"{name}_high", f"{name}_mark"] if num else [name]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for i, r in enumerate(table.rows):
        out = []
        for j, (c, num) in enumerate(zip(r, numeric)):
            if num:
                c = c if isinstance(c, Stat) else Stat(None)
                out += [_csv_number(c.mean), _csv_number(c.std), str(c.n), _csv_number(c.low), _csv_number(c.high),
                        table.marks.get((i, j), "")]
            else:
                out.append(str(c))
        w.writerow(out)
    return buf.getvalue()


RENDERERS = {"md": to_markdown, "latex": to_latex, "csv": to_csv}


def render(table: Table, fmt: str) -> str:
    """Render `table` as md, latex or csv."""
    if fmt not in RENDERERS:
        raise ResultsError(f"unknown format {fmt!r}; use one of {', '.join(RENDERERS)}")
    return RENDERERS[fmt](table)
