"""`fair results {collect,table,plot}`: the command line of `results` (the `fair` dispatcher calls `main`)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from results.errors import ResultsError
from results.store import LocalStore, S3Options, open_store

log = logging.getLogger(__name__)
DEFAULT_STORE = "results_out"


def _s3_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("S3-compatible storage (credentials only from the standard AWS chain)")
    g.add_argument("--endpoint", help="S3 endpoint URL (default: AWS_ENDPOINT_URL, else AWS)")
    g.add_argument("--region", help="region (default: AWS_REGION / AWS_DEFAULT_REGION, else us-east-1)")
    g.add_argument("--path-style", action="store_true", help="path-style addressing (most non-AWS servers)")
    g.add_argument("--tries", type=int, default=5, help="tries per S3 call before failing (default 5)")


def _options(a: argparse.Namespace) -> S3Options:
    return S3Options(endpoint=a.endpoint, region=a.region, path_style=a.path_style, tries=max(1, a.tries))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `fair results`."""
    parser = argparse.ArgumentParser(prog="fair results", description="Parquet tables of run records, and the "
                                     "paper-style tables and plots made from them.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{collect,table,plot}")

    c = sub.add_parser("collect", help="gather run/trial records into the trials and epochs tables")
    c.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="sweep storage or sweep root (local or s3://bucket/prefix), run folder, record.json, glob")
    c.add_argument("--store", default=DEFAULT_STORE, help=f"table store: folder or s3://bucket/prefix "
                   f"(default {DEFAULT_STORE})")
    c.add_argument("--sweep", help="sweep name for records that carry none (default: 'runs')")
    c.add_argument("--skip-invalid", action="store_true", help="skip (with a warning) records with bad fields")
    _s3_args(c)

    t = sub.add_parser("table", help="the paper-style table (or --detail for one dataset)")
    t.add_argument("--store", default=DEFAULT_STORE)
    t.add_argument("--sweep", action="append", metavar="NAME", help="only these sweeps (repeatable)")
    t.add_argument("--format", choices=["md", "latex", "csv"], default="md")
    t.add_argument("--metric", default="test_top1", help="reported test metric (default test_top1); the "
                   "configuration is always picked by val_top1")
    t.add_argument("--method", action="append", metavar="NAME", help="only these methods (repeatable), e.g. "
                   "--method fair --method wca")
    t.add_argument("--dataset", help="with --detail: the dataset to detail")
    t.add_argument("--detail", action="store_true", help="per-dataset view: best configurations and hparams")
    t.add_argument("--top", type=int, default=5, help="with --detail: configurations per sweep (default 5)")
    t.add_argument("--out", help="write to this file instead of stdout")
    _s3_args(t)

    p = sub.add_parser("plot", help="PNG figures: gain over zero-shot, history, hyperparameter importance")
    p.add_argument("--store", default=DEFAULT_STORE)
    p.add_argument("--sweep", action="append", metavar="NAME", help="only these sweeps (repeatable)")
    p.add_argument("--out", default="results_plots", help="output folder (default results_plots)")
    p.add_argument("--no-optuna", action="store_true", help="correlation importance even if optuna is installed")
    _s3_args(p)
    return parser


def _open_existing(uri: str, options: S3Options):
    store = open_store(uri, options)
    if isinstance(store, LocalStore) and not store.root.is_dir():
        raise ResultsError(f"store {uri} does not exist; run `fair results collect SOURCES --store {uri}` first")
    return store


def _collect(a: argparse.Namespace) -> int:
    from results.collect import collect

    s = collect(a.sources, a.store, _options(a), sweep=a.sweep, skip_invalid=a.skip_invalid)
    print(f"collected {s['records']} records ({s['skipped']} skipped, {s['epochs']} epoch rows) into "
          f"{s['partitions']} partitions of {s['store']}")
    return 0


def _table(a: argparse.Namespace) -> int:
    from results.tables import detail_table, load_trials, main_table, only_methods, render

    if a.detail and not a.dataset:
        raise ResultsError("--detail needs --dataset NAME")
    df = only_methods(load_trials(_open_existing(a.store, _options(a)), a.sweep), a.method)
    table = detail_table(df, a.dataset, a.metric, a.top) if a.detail else main_table(df, a.metric)
    text = render(table, a.format)
    _warn_failures(table.failures)   # on stderr whatever the format: a CSV body carries no notes
    for line in table.warnings:
        log.warning("selection within noise: %s", line)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text, encoding="utf-8")
        print(f"wrote {a.out}")
    else:
        sys.stdout.write(text)
    return 0


def _warn_failures(lines: list[str]) -> None:
    """Each dataset's failed trials on stderr, then one line saying the results are incomplete."""
    for line in lines:
        log.warning("failed trials: %s", line)
    if lines:
        log.warning("results are incomplete: %d dataset(s) have failed trials; read the `error` of their "
                    "records, fix the cause and rerun those trials", len(lines))


def _plot(a: argparse.Namespace) -> int:
    from results.plots import plot_all
    from results.tables import failure_lines, load_trials

    df = load_trials(_open_existing(a.store, _options(a)), a.sweep)
    for path in plot_all(df, a.out, use_optuna=not a.no_optuna):
        print(f"wrote {path}")
    _warn_failures(failure_lines(df))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run `fair results ...` with `argv` (without the word "results"); return the exit code."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return {"collect": _collect, "table": _table, "plot": _plot}[args.command](args)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        sys.exit(main())
    except ResultsError as e:
        print(f"fair: error: {e}", file=sys.stderr)
        sys.exit(2)
