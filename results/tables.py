"""`fair results table`: the paper-style table and the per-dataset detail view, as Markdown, LaTeX or CSV.

Selection never looks at test accuracy: within each (sweep, method, backbone, pretrained) group and dataset,
the configuration (hyperparameters without the seed) with the best validation objective (`val_top1`, mean
over its seeds) is picked; ties go to the configuration with the smallest trial id. The reported metric is
then the mean ± sample std over the seeds of that configuration.

Failed trials are never hidden: every dataset with a record gets a column, a group with no completed trial on
a dataset shows `failed` there (CSV: an empty value), its Mean is withheld, and each dataset with failed trials
gets a line under the table (`Table.failures`) with its counts and most common error.

Trials a scheduler stopped early (`status: stopped_early`, ASHA) never reached their final evaluation: they
are never picked, and they are counted apart from completed and failed ones (a note under the table; a cell
whose trials were all stopped says `stopped early`).
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from results.errors import ResultsError
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


@dataclass(frozen=True)
class Stat:
    """A mean over `n` seeds and its sample standard deviation (None with one seed). Without a mean, `marker`
    says why (e.g. `failed`); empty means nothing to report, shown as "–"."""

    mean: float | None
    std: float | None = None
    n: int = 0
    marker: str = ""

    def text(self, digits: int = 1) -> str:
        if self.mean is None:
            return self.marker or "–"
        if self.std is None or self.n < 2:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


@dataclass
class Table:
    """A rendered-agnostic table: header labels, CSV names, cells (str or Stat), notes under it and
    `failures`, one line per dataset with failed trials (under the table in md/latex; the CLI logs them)."""

    labels: list[str]
    names: list[str]
    rows: list[list[Any]]
    notes: list[str] = field(default_factory=list)
    bold_best: bool = False
    failures: list[str] = field(default_factory=list)


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


def _counts(rows: pd.DataFrame) -> str:
    """'N completed, [M stopped early, ]K failed' of `rows` (stopped only when there are any)."""
    n_stopped = len(stopped(rows))
    return (f"{int((rows['status'] == 'completed').sum())} completed, "
            + (f"{n_stopped} stopped early, " if n_stopped else "") + f"{len(failed(rows))} failed")


def stopped_note(df: pd.DataFrame) -> list[str]:
    """A note with every dataset's trial counts when some trials were stopped early, else nothing."""
    if stopped(df).empty:
        return []
    per = "; ".join(f"{d}: {_counts(df[df['dataset'] == d])}" for d in sorted(df["dataset"].unique()))
    return [f"Trials stopped early by the scheduler (ASHA) never reached their final evaluation and are never "
            f"picked; trials per dataset: {per}."]


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


def picked_trials(done: pd.DataFrame) -> dict[tuple, pd.DataFrame]:
    """For each (group, dataset): the trials (all seeds) of the configuration picked by validation."""
    out = {}
    for g in groups_of(done):
        sub = group_rows(done, g)
        for d in sorted(sub["dataset"].unique()):
            ranked = rank_configs(sub[sub["dataset"] == d])
            if ranked:
                out[(g, d)] = ranked[0][1]
    return out


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

def main_table(df: pd.DataFrame, metric: str = "test_top1") -> Table:
    """Methods (one row per sweep/method group) × datasets + Mean, plus the zero-shot and WCA rows.

    Every dataset with a record (completed or failed) gets a column; see the module docstring for failures."""
    if metric not in df.columns or metric.startswith("val"):
        raise ResultsError(f"cannot report metric {metric!r}: use a test metric such as test_top1 or "
                           "test_mean_per_class")
    done = completed(df)
    if done.empty:
        raise ResultsError(f"no completed trials with a validation objective (val_top1) to pick from"
                           f"{_failed_summary(df)}")
    datasets = sorted(df["dataset"].unique())
    backbones = sorted({(b, p) for b, p in zip(df["backbone"], df["pretrained"])})
    many_backbones = len(backbones) > 1
    rows: list[list[Any]] = []

    picked = picked_trials(done)
    for backbone, pretrained in backbones:
        suffix = f", {backbone}/{pretrained}" if many_backbones else ""
        mine = df[(df["backbone"] == backbone) & (df["pretrained"] == pretrained)]
        reported = {d: reported_runs(picked, backbone, pretrained, d, done.iloc[:0]) for d in datasets}
        for column, label in BASELINES.get(metric, ()):
            if any(column in r.columns and r[column].notna().any() for r in reported.values()):
                cells = [_or_marker(seed_stat(reported[d], column), mine[mine["dataset"] == d]) for d in datasets]
                rows.append([label + suffix, *cells, _mean_cell(cells)])

    for g in groups_of(df):
        mine = group_rows(df, g)
        cells = [_or_marker(seed_stat(picked[(g, d)], metric) if (g, d) in picked else Stat(None),
                            mine[mine["dataset"] == d]) for d in datasets]
        rows.append([method_label(g, many_backbones), *cells, _mean_cell(cells)])

    n_max = max((c.n for r in rows for c in r[1:-1] if isinstance(c, Stat)), default=1)
    notes = [f"{METRIC_WORDS.get(metric, metric)}; per dataset, the configuration with the best validation "
             f"top-1 (`{SELECT_BY}`) is picked, never by test accuracy"
             + ("; mean ± std over seeds where there are several." if n_max > 1 else ".")
             + f" Rows in parentheses name the sweep. Mean: over all {len(datasets)} datasets, withheld (–) "
               "for a row that lacks one."
             + (f" `{FAILED}`: every trial of the row on that dataset failed." if _has_marker(rows) else "")
             + (f" `{STOPPED}`: every trial of the row on that dataset was stopped early."
                if _has_marker(rows, STOPPED) else "")]
    if many_backbones:
        notes.append("Rows name backbone/pretrained weights.")
    notes += _standin_notes(done) + stopped_note(df)
    return Table(["Method", *datasets, "Mean"], ["row", *datasets, "mean"], rows, notes, bold_best=True,
                 failures=failure_lines(df))


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
    done = completed(mine)
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

def _best_per_column(table: Table) -> dict[int, float]:
    best = {}
    if not table.bold_best:
        return best
    for j in range(1, len(table.labels)):
        values = [r[j].mean for r in table.rows if isinstance(r[j], Stat) and r[j].mean is not None]
        if len(values) > 1:
            best[j] = round(max(values), 1)
    return best


def _is_best(cell: Any, j: int, best: dict[int, float]) -> bool:
    return isinstance(cell, Stat) and cell.mean is not None and j in best and round(cell.mean, 1) == best[j]


def to_markdown(table: Table) -> str:
    """GitHub-flavoured Markdown; the best value of each numeric column in bold, notes below."""
    best = _best_per_column(table)

    def cell(c: Any, j: int) -> str:
        text = c.text() if isinstance(c, Stat) else str(c)
        text = text.replace("|", "\\|")
        return f"**{text}**" if _is_best(c, j, best) else text

    numeric = [any(isinstance(r[j], Stat) for r in table.rows) for j in range(len(table.labels))]
    lines = ["| " + " | ".join(table.labels) + " |",
             "|" + "|".join("---:" if numeric[j] else ":---" for j in range(len(table.labels))) + "|"]
    lines += ["| " + " | ".join(cell(c, j) for j, c in enumerate(r)) + " |" for r in table.rows]
    if table.notes:
        lines.append("")
        lines += [f"*{n}*" if i == 0 else n for i, n in enumerate(table.notes)]
    if table.failures:
        lines += ["", f"**{FAILURES_TITLE}:**", ""]
        lines += [f"- {line}" for line in table.failures]
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """Escape LaTeX special characters."""
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def to_latex(table: Table) -> str:
    """A booktabs `table` environment with the notes as its caption."""
    best = _best_per_column(table)

    def cell(c: Any, j: int) -> str:
        if isinstance(c, Stat) and c.mean is None:
            text = latex_escape(c.marker) or "--"
        elif isinstance(c, Stat):
            text = f"{c.mean:.1f}" if c.std is None or c.n < 2 else f"{c.mean:.1f} $\\pm$ {c.std:.1f}"
        else:
            text = latex_escape(str(c)).replace("–", "--")
        return f"\\textbf{{{text}}}" if _is_best(c, j, best) else text

    numeric = [any(isinstance(r[j], Stat) for r in table.rows) for j in range(len(table.labels))]
    spec = "".join("r" if n else "l" for n in numeric)
    notes = table.notes + ([f"{FAILURES_TITLE}: " + ". ".join(f.rstrip(".") for f in table.failures) + "."]
                           if table.failures else [])
    text = " ".join(notes).replace("`", "").replace("–", "--").replace("…", "...")
    caption = latex_escape(text).replace("±", "$\\pm$")
    lines = ["\\begin{table}[t]", "\\centering", "\\small", f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
             " & ".join(latex_escape(x) for x in table.labels) + " \\\\", "\\midrule"]
    lines += [" & ".join(cell(c, j) for j, c in enumerate(r)) + " \\\\" for r in table.rows]
    lines += ["\\bottomrule", "\\end{tabular}", f"\\caption{{{caption}}}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def _csv_number(x: float | None) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def to_csv(table: Table) -> str:
    """CSV with numbers unformatted: a numeric column `c` becomes `c`, `c_std` and `c_n` (seeds). A cell
    without a value (failed, withheld) is empty with n 0; notes and failures are not in the CSV."""
    numeric = [any(isinstance(r[j], Stat) for r in table.rows) for j in range(len(table.names))]
    header = []
    for name, num in zip(table.names, numeric):
        header += [name, f"{name}_std", f"{name}_n"] if num else [name]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in table.rows:
        out = []
        for c, num in zip(r, numeric):
            if num:
                c = c if isinstance(c, Stat) else Stat(None)
                out += [_csv_number(c.mean), _csv_number(c.std), str(c.n)]
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
