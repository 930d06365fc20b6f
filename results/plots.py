"""`fair results plot`: PNG figures from the `trials` table.

- `gain.png`: gain over zero-shot per dataset (picked configuration, mean over its final seeds), per method,
  with its 95% interval (seeds and test sampling; ± std where no interval is known); a dataset whose trials
  all failed keeps its place, labelled `(failed)`;
- `history.png`: the optimisation history per dataset — validation top-1 of each trial in order, the running
  best, the test top-1 of each trial faintly, and the zero-shot level;
- `importance.png`: hyperparameter importance for the validation objective, per dataset and sweep.
"""
from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

import pandas as pd  # noqa: E402

from results.importance import param_importance  # noqa: E402
from results.tables import (FAILED, SELECT_BY, STANDIN_NOTE, Stat, cell_stat, completed, group_rows,  # noqa: E402
                            groups_of, method_label, picked_trials, reported_runs, searched, seed_stat)

log = logging.getLogger(__name__)
_DPI = 120


def _grid(n: int) -> tuple[int, int]:
    cols = min(3, max(1, n))
    return math.ceil(n / cols), cols


def _standin(done: pd.DataFrame) -> str:
    return f"\n({STANDIN_NOTE})" if done["backbone"].astype(str).str.startswith("fair-standin").any() else ""


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=_DPI, metadata={"Software": None})
    log.info("wrote %s", path)
    return path


def gain_series(df: pd.DataFrame) -> tuple[list[str], list[tuple[str, list]]]:
    """What plot_gain draws: the datasets, and per bar series its label and one Stat (or None) per dataset:
    WCA of the runs the table reports, then each method's picked configuration."""
    done = completed(df).copy()
    done["gain"] = done["gain_over_zeroshot"].fillna(done["test_top1"] - done["zeroshot_top1"])
    done["wca_gain"] = done["wca_top1"] - done["zeroshot_top1"]
    datasets = sorted(df["dataset"].unique())          # a dataset whose trials all failed keeps its place
    picked = picked_trials(done)
    groups = groups_of(done)
    many = len({(g[2], g[3]) for g in groups}) > 1
    series = []
    for backbone, pretrained in sorted({(g[2], g[3]) for g in groups}):
        # the runs the table reports (each group's picked configuration), as its "WCA (same runs)" row reads
        runs = [reported_runs(picked, backbone, pretrained, d, done.iloc[:0]) for d in datasets]
        if any(r["wca_gain"].notna().any() for r in runs):
            label = "WCA (same runs)" + (f", {backbone}/{pretrained}" if many else "")
            series.append((label, [seed_stat(r, "wca_gain") for r in runs]))
    for g in groups:
        series.append((method_label(g, many), [gain_stat(picked[(g, d)]) if (g, d) in picked else None
                                               for d in datasets]))
    return datasets, series


def gain_stat(runs: pd.DataFrame) -> Stat:
    """Gain over zero-shot of `runs` (mean ± std over seeds) with the 95% interval of their test top-1
    shifted by the zero-shot accuracy (the same in every run, so it adds no noise of its own)."""
    gain, test = seed_stat(runs, "gain"), cell_stat(runs, "test_top1")
    zs = seed_stat(runs, "zeroshot_top1").mean
    if gain.mean is None or test.low is None or zs is None:
        return gain
    return replace(gain, low=test.low - zs, high=test.high - zs)


def _error_bars(stats: list) -> list[list[float]]:
    """Matplotlib's 2×N yerr: the 95% interval where known, else ± std, else none."""
    lows, highs = [], []
    for s in stats:
        if s is None or s.mean is None:
            lows.append(0.0)
            highs.append(0.0)
        elif s.low is not None:
            lows.append(max(0.0, s.mean - s.low))
            highs.append(max(0.0, s.high - s.mean))
        else:
            lows.append(s.std or 0.0)
            highs.append(s.std or 0.0)
    return [lows, highs]


def plot_gain(df: pd.DataFrame, path: Path) -> Path:
    """Grouped bars: per dataset, each method's gain over zero-shot (points), with WCA for reference."""
    done = completed(df)
    datasets, series = gain_series(df)
    fig = Figure(figsize=(max(6.0, 1.3 * len(datasets) * max(1, len(series)) ** 0.5 + 3), 4.5),
                 layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(series))
    for i, (label, stats) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(datasets))]
        means = [s.mean if s and s.mean is not None else float("nan") for s in stats]
        bars = ax.bar(xs, means, width, yerr=_error_bars(stats), capsize=3, label=label)
        ax.bar_label(bars, labels=["" if math.isnan(m) else f"{m:+.1f}" for m in means], fontsize=7, padding=2)
    ax.axhline(0, color="black", linewidth=0.8)
    ran = set(done["dataset"])
    ax.set_xticks(range(len(datasets)), [d if d in ran else f"{d}\n({FAILED})" for d in datasets],
                  rotation=20 if len(datasets) > 4 else 0)
    ax.set_ylabel("gain over zero-shot (test top-1, points)")
    ax.set_title("Gain over zero-shot, configuration picked on validation (bars: 95% interval)" + _standin(done),
                 fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_history(df: pd.DataFrame, path: Path) -> Path:
    """Per dataset: validation top-1 of every search trial in order, its running best and the zero-shot level."""
    done = searched(completed(df))
    datasets = sorted(done["dataset"].unique())
    rows_n, cols_n = _grid(len(datasets))
    fig = Figure(figsize=(4.6 * cols_n, 3.6 * rows_n), layout="constrained")
    groups = groups_of(done)
    colors = matplotlib.colormaps["tab10"]
    for k, d in enumerate(datasets):
        ax = fig.add_subplot(rows_n, cols_n, k + 1)
        sub = done[done["dataset"] == d]
        for i, g in enumerate(groups):
            trials = group_rows(sub, g).sort_values(["created_at", "trial_id"], na_position="last")
            if trials.empty:
                continue
            x = list(range(1, len(trials) + 1))
            c = colors(i % 10)
            ax.scatter(x, trials[SELECT_BY], s=14, color=c, label=f"{method_label(g)} val")
            ax.step(x, trials[SELECT_BY].cummax(), where="post", color=c, linewidth=1.2)
            ax.scatter(x, trials["test_top1"], s=14, facecolors="none", edgecolors=c, alpha=0.5,
                       label=f"{method_label(g)} test")
        zs = sub["zeroshot_top1"].dropna()
        if not zs.empty:
            ax.axhline(float(zs.mean()), color="grey", linestyle="--", linewidth=1, label="zero-shot")
        ax.set_title(d, fontsize=10)
        ax.set_xlabel("trial (in order)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trial numbers: never 1.5 with a few trials
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
    fig.suptitle("Optimisation history: validation top-1 (dots), running best (line), test (rings)"
                 + _standin(done), fontsize=10)
    return _save(fig, path)


def plot_importance(df: pd.DataFrame, path: Path, use_optuna: bool = True) -> Path:
    """Per dataset and sweep group: importance of each varying hyperparameter for validation top-1 (search
    trials only: a final re-run repeats a picked configuration)."""
    done = searched(completed(df))
    panels = [(d, g) for d in sorted(done["dataset"].unique()) for g in groups_of(done[done["dataset"] == d])]
    rows_n, cols_n = _grid(len(panels))
    fig = Figure(figsize=(4.6 * cols_n, 3.2 * rows_n), layout="constrained")
    for k, (d, g) in enumerate(panels):
        ax = fig.add_subplot(rows_n, cols_n, k + 1)
        trials = group_rows(done[done["dataset"] == d], g)
        imp = param_importance(trials, SELECT_BY, use_optuna=use_optuna)
        ax.set_title(f"{d}: {method_label(g)}", fontsize=9)
        if not imp:
            ax.text(0.5, 0.5, "not enough trials or\nno varying hyperparameters", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8)
            ax.set_axis_off()
            continue
        names = sorted(imp, key=lambda n: imp[n])
        ax.barh(names, [imp[n] for n in names], color="tab:blue")
        ax.set_xlim(0, 1)
        ax.set_xlabel("importance for val top-1 (normalised)")
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(f"Hyperparameter importance per dataset{_standin(done)}", fontsize=10)
    return _save(fig, path)


def plot_all(df: pd.DataFrame, out_dir: str | Path, use_optuna: bool = True) -> list[Path]:
    """Write gain.png, history.png and importance.png into `out_dir`; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [plot_gain(df, out / "gain.png"), plot_history(df, out / "history.png"),
            plot_importance(df, out / "importance.png", use_optuna=use_optuna)]


__all__ = ["plot_all", "plot_gain", "plot_history", "plot_importance"]
