"""Entry points of `fair adapt`, `fair data check` and `fair demo` (long code lives here, not in the library)."""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from fair.errors import FairError
from fair.logs import quiet_logs

log = logging.getLogger("fair")
DEMO_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config (sections as in fair.config)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--show-test", action="store_true",
                   help="also print test accuracy in the summary line (it is always in record.json); off by "
                        "default so that what to try next is chosen on validation")


# What adapt() has written in a run folder before its first epoch ends (an empty checkpoints/ included).
SETUP_FILES = {"config.yaml", "checkpoints"}


def _setup_only(run_dir: Path) -> bool:
    """True for a folder that adapt() left after a set-up that failed before the first epoch: nothing in it
    is a result, so it may be reused."""
    entries = list(run_dir.iterdir())
    return all(e.name in SETUP_FILES for e in entries) and not any((run_dir / "checkpoints").glob("*"))


def prepare_run_dir(cfg) -> Path:
    """The run folder for `cfg`; refuses to touch an existing run unless told to resume or overwrite."""
    from fair.record import run_name
    run_dir = Path(cfg.run.out_dir).expanduser() / run_name(cfg)
    if run_dir.is_dir() and _setup_only(run_dir):    # an earlier set-up failed: nothing to keep
        shutil.rmtree(run_dir)
    exists = run_dir.exists()
    if exists and cfg.run.overwrite:
        shutil.rmtree(run_dir)
    elif exists and not cfg.run.resume:
        raise FairError(f"run folder {str(run_dir)!r} already exists; pass --resume to continue it, "
                        f"--overwrite to replace it, or --set run.name=NEW")
    return run_dir


def check_same_config(cfg, run_dir: Path) -> None:
    """Refuse, naming the keys, to resume a run folder (finished or not) with a config that changes its
    result; nothing in the folder is touched."""
    from fair.record import result_config
    from fair.config import changed_keys, read_yaml, to_dict
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved, new = read_yaml(saved_path), to_dict(cfg)
    if new["train"].get("fair_momentum") is None:    # auto: resolved from the same data when the run started
        new["train"]["fair_momentum"] = (saved.get("train") or {}).get("fair_momentum")
    changes = changed_keys(result_config(saved), result_config(new))
    if changes:
        more = f" and {len(changes) - 3} more" if len(changes) > 3 else ""
        raise FairError(f"run folder {str(run_dir)!r} was made with another config ({'; '.join(changes[:3])}{more}); "
                        f"resume it without those changes, or start a new run (--set run.name=NEW or --overwrite)")


def run_adapt(cfg) -> dict:
    """Run (or resume, or return the finished record of) one adaptation in its run folder."""
    from fair.adapt import adapt
    run_dir = prepare_run_dir(cfg)
    if cfg.run.resume:
        check_same_config(cfg, run_dir)
    record_path = run_dir / "record.json"
    if cfg.run.resume and record_path.is_file():
        log.info("run %s is already complete; its record: %s", run_dir, record_path)
        return json.loads(record_path.read_text())
    return adapt(cfg, run_dir)


def adapt_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="fair adapt", description="Adapt a CLIP model to one dataset with FAIR.")
    _config_args(p)
    p.add_argument("--resume", action="store_true", help="continue the run folder from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    a = p.parse_args(argv)
    from fair.config import load_config
    extra = [f"run.resume={str(a.resume).lower()}"] if a.resume else []
    extra += ["run.overwrite=true"] if a.overwrite else []
    extra += ["run.progress=false"] if a.quiet else []
    cfg = load_config(a.config, a.overrides + extra)
    if a.quiet:
        quiet_logs()
    record = run_adapt(cfg)
    print(summary_line(record, a.show_test))
    return 0


def summary_line(record: dict, show_test: bool = False) -> str:
    """The line `fair adapt` prints: validation top-1 ± its standard error. Test numbers (and the zero-shot
    and WCA baselines, measured on test only) appear only with `show_test`; the record always has them."""
    m = record["metrics"]
    val, se = m.get("val_top1"), m.get("val_stderr")
    shown = "-" if val is None else f"{val:.2f}" + ("" if se is None else f" ± {se:.2f}")
    line = (f"{record['run_id']}: {record['method']} on {record['dataset']} ({record['backbone']}) "
            f"val top-1 {shown} [{m['predictor']}], n={m.get('val_size') or 0}")
    if show_test:
        wca = m.get("wca_top1")
        line += (f"; test top-1 {m['test_top1']:.2f}, mean/class {m['test_mean_per_class']:.2f}, "
                 f"zero-shot {m['zeroshot_top1']:.2f}, WCA {'-' if wca is None else f'{wca:.2f}'}, "
                 f"gain {m['gain_over_zeroshot']:+.2f}")
    return line + f" ({record['timings']['wall_s']:.0f} s)"


def data_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="fair data", description="Datasets: get them, check a root, list the catalog.")
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("prepare", help="download, extract and lay out datasets with their split files "
                       "(resumable, checksummed, idempotent); says what to fetch by hand where nothing can")
    g.add_argument("datasets", nargs="+", metavar="NAME", help="catalog names, or `all` for the 13 of the paper")
    g.add_argument("--root", help="data root (default $FAIR_DATA_ROOT or ~/data)")
    g.add_argument("--mirror", help="get every file from <MIRROR>/<dataset>/<file name> instead (default "
                   "$FAIR_DATA_MIRROR)")
    g.add_argument("--keep-archives", action="store_true", help="keep downloaded archives after extracting them")
    g.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    c = sub.add_parser("check", help="verify a dataset folder and say exactly what is missing")
    c.add_argument("dataset")
    c.add_argument("--root", help="data root (default $FAIR_DATA_ROOT or ~/data)")
    c.add_argument("--read", action="store_true", help="also read the split files and count images")
    sub.add_parser("list", help="the catalog of datasets and their expected layouts")
    a = p.parse_args(argv)
    if a.cmd == "prepare":
        from fair.data.prepare import prepare, summary_table
        if a.quiet:
            quiet_logs()
        if "all" in a.datasets and len(a.datasets) > 1:
            raise FairError("`fair data prepare all` takes no other names")
        outcomes = prepare(a.datasets, a.root, mirror=a.mirror, keep_archives=a.keep_archives, progress=not a.quiet)
        failed = [o for o in outcomes if not o.ok]
        if len(outcomes) == 1 and failed:
            raise FairError(failed[0].status)
        print(summary_table(outcomes))
        if failed:
            raise FairError(f"{len(failed)} of {len(outcomes)} datasets are not ready: "
                            + " | ".join(o.status for o in failed))
        return 0
    from fair.data.catalog import CATALOG, check_dataset, get_spec
    if a.cmd == "list":
        for name, spec in CATALOG.items():
            print(f"{name:24s} {spec.title:28s} {spec.layout}")
        return 0
    base = check_dataset(a.dataset, a.root)
    msg = f"{a.dataset}: ok ({base})"
    if a.read:
        spec = get_spec(a.dataset)
        raw = spec.reader(spec, base)
        missing = [r for r in list(raw.train.refs[:2000]) + list(raw.test.refs[:2000])
                   if isinstance(r, str) and not Path(r).is_file()]
        if missing:
            raise FairError(f"{a.dataset}: {len(missing)} image files named by the split are missing, e.g. "
                            f"{missing[0]}; re-extract the images into {base}")
        msg += f", {len(raw.classnames)} classes, {len(raw.train)} train, {len(raw.test)} test images"
    print(msg)
    return 0


def demo_main(argv: list[str]) -> int:
    """The main job on embedded defaults: FAIR and its baselines on the offline stand-in's target task."""
    p = argparse.ArgumentParser(prog="fair demo", description="Run the demo adaptation (offline, a few minutes).")
    _config_args(p)
    a = p.parse_args(argv)
    from fair.config import load_config, read_yaml
    base = read_yaml(DEMO_CONFIG)
    # its own run folder (`demo`), which it replaces each time: never a run of `fair adapt` beside it
    cfg = load_config(a.config, ["run.overwrite=true", "run.name=demo"] + a.overrides, base=base)
    record = run_adapt(cfg)
    print(summary_line(record, a.show_test))
    print(f"run folder: {Path(cfg.run.out_dir) / record['run_id']}", file=sys.stderr)
    return 0


def descriptions_main(argv: list[str]) -> int:
    """`fair descriptions {import,generate,show}`: a dataset's class descriptions (library: fair.descriptions)."""
    p = argparse.ArgumentParser(prog="fair descriptions",
                                description="Class descriptions (CuPL JSON): import, generate with an LLM, show.")
    sub = p.add_subparsers(dest="cmd", required=True)

    def dataset_args(q, required=True):
        q.add_argument("--dataset", required=required, help="catalog name (fair data list)")
        q.add_argument("--root", help="data root (default $FAIR_DATA_ROOT or ~/data); class names come from it")
        q.add_argument("--classes", metavar="FILE", help="class names, one a line, when the dataset is not on disk")

    i = sub.add_parser("import", help="re-key a CuPL file (path or URL) to the catalog's class names")
    i.add_argument("src", help="CuPL JSON {class: [sentences]}: a path or an http(s) URL")
    dataset_args(i)
    i.add_argument("--out", help="default <dataset folder>/descriptions.json (used by runs when data.descriptions is unset)")
    i.add_argument("--cutoff", type=float, default=0.8, help="similarity for a close match (1: exact/normalised only)")
    i.add_argument("--force", action="store_true", help="replace an existing file with other descriptions")
    g = sub.add_parser("generate", help="ask an OpenAI-compatible chat endpoint CuPL-style questions per class")
    dataset_args(g)
    g.add_argument("--model", required=True, help="the model the endpoint serves, e.g. gpt-4o-mini")
    g.add_argument("--base-url", default=None, help="OpenAI-compatible API root (default https://api.openai.com/v1; "
                   "vLLM: http://localhost:8000/v1)")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY", help="env var holding the API key (not needed on loopback)")
    g.add_argument("--n-per-question", type=int, default=10, help="answers per question (CuPL: 10)")
    g.add_argument("--temperature", type=float, default=0.99)
    g.add_argument("--max-tokens", type=int, default=120)
    g.add_argument("--concurrency", type=int, default=1, help="classes asked at the same time")
    g.add_argument("--max-attempts", type=int, default=4, help="tries per question for answers that are not sentences")
    g.add_argument("--backoff", type=float, default=1.0, help="first retry wait in seconds (doubles each retry)")
    g.add_argument("--out", help="default <dataset folder>/descriptions.json; the cache is <out stem>.cache.jsonl")
    g.add_argument("--allow-partial", action="store_true", help="write the file even if some classes failed")
    g.add_argument("--force", action="store_true", help="replace an existing file with other descriptions")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    s = sub.add_parser("show", help="sentences per class; flags empty classes, repeats, shared and short sentences")
    s.add_argument("path", nargs="?", help="a descriptions file (default: the one a run of --dataset would use)")
    dataset_args(s, required=False)
    a = p.parse_args(argv)

    import os

    from fair import descriptions
    if a.cmd == "show":
        return _descriptions_show(a)
    if a.cmd == "generate":
        settings = descriptions.GenerateSettings(model=a.model, base_url=a.base_url or descriptions.DEFAULT_BASE_URL,
                                      api_key=os.environ.get(a.api_key_env) or None, n_per_question=a.n_per_question,
                                      temperature=a.temperature, max_tokens=a.max_tokens,
                                      max_attempts=a.max_attempts, backoff_s=a.backoff, concurrency=a.concurrency)
        if a.n_per_question < 1 or a.max_attempts < 1 or a.concurrency < 1:
            raise FairError("--n-per-question, --max-attempts and --concurrency must be at least 1")
        descriptions.check_endpoint(settings, a.api_key_env)
    classnames, base = descriptions.dataset_classnames(a.dataset, a.root, a.classes)
    out = Path(a.out).expanduser() if a.out else base / "descriptions.json"
    if a.cmd == "import":
        meta, report = descriptions.import_descriptions(a.src, classnames, out, a.dataset, a.cutoff, a.force)
        print(f"{a.dataset}: {meta['sentences']} descriptions for {len(classnames)} classes -> {out}")
        print("\n".join(descriptions.format_report(report, len(classnames))))
        print(f"  sha256 {meta['sha256']}; source and matching recorded in {descriptions.sidecar_path(out)}")
        return 0
    res = descriptions.generate_descriptions(classnames, a.dataset, out, settings, allow_partial=a.allow_partial,
                                  force=a.force, progress=not a.quiet)
    print(f"{a.dataset}: {res.meta['sentences']} descriptions for {len(classnames)} classes from {a.model} -> {out}")
    print(f"  {res.requests} requests, {res.cached} answers from the cache, {res.malformed} malformed answers "
          f"asked again, {len(res.failed)} classes failed")
    for c, why in res.failed.items():
        print(f"  failed: {c!r}: {why}")
    print(f"  sha256 {res.meta['sha256']}; model and questions recorded in {descriptions.sidecar_path(out)}")
    return 0


def _descriptions_show(a) -> int:
    from fair import descriptions
    classnames = None
    if a.path:
        path = Path(a.path).expanduser()
    elif a.dataset:
        path = descriptions.default_descriptions_path(a.dataset, a.root)
        if path is None:
            raise FairError(f"no descriptions file for {a.dataset}; make one with `fair descriptions import` "
                            f"or `fair descriptions generate`, or name a file")
    else:
        raise FairError("name a descriptions file, or --dataset NAME [--root DIR]")
    if a.classes:
        classnames = descriptions.read_classnames(a.classes)
    elif a.dataset:
        try:
            classnames, _ = descriptions.dataset_classnames(a.dataset, a.root)
        except FairError as e:
            log.info("checking the file alone, without the dataset's class names (%s)", e)
    lint = descriptions.lint_descriptions(descriptions.read_descriptions_file(path), classnames)
    print(f"{path}:")
    print("\n".join(descriptions.format_lint(lint, min(shutil.get_terminal_size().columns, 120))))
    return 0
