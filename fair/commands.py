"""Entry points of `fair adapt`, `fair data check` and `fair demo` (long code lives here, not in the library)."""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from fair.errors import FairError

log = logging.getLogger("fair")
DEMO_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config (sections as in fair.config)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 (repeatable)")


def prepare_run_dir(cfg) -> Path:
    """The run folder for `cfg`; refuses to touch an existing run unless told to resume or overwrite."""
    from fair.adapt import run_name
    run_dir = Path(cfg.run.out_dir).expanduser() / run_name(cfg)
    exists = run_dir.exists() and any(run_dir.iterdir())
    if exists and cfg.run.overwrite:
        shutil.rmtree(run_dir)
    elif exists and not cfg.run.resume:
        raise FairError(f"run folder {str(run_dir)!r} already exists; pass --resume to continue it, "
                        f"--overwrite to replace it, or --set run.name=NEW")
    return run_dir


def run_adapt(cfg) -> dict:
    """Run (or resume, or return the finished record of) one adaptation in its run folder."""
    from fair.adapt import adapt
    run_dir = prepare_run_dir(cfg)
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
        logging.getLogger().setLevel(logging.WARNING)
    record = run_adapt(cfg)
    print(summary_line(record))
    return 0


def summary_line(record: dict) -> str:
    m = record["metrics"]
    wca = m.get("wca_top1")
    return (f"{record['run_id']}: {record['method']} on {record['dataset']} ({record['backbone']}) "
            f"test top-1 {m['test_top1']:.2f} [{m['predictor']}], mean/class {m['test_mean_per_class']:.2f}, "
            f"zero-shot {m['zeroshot_top1']:.2f}, WCA {'-' if wca is None else f'{wca:.2f}'}, "
            f"gain {m['gain_over_zeroshot']:+.2f}, val {m['val_top1'] if m['val_top1'] is None else round(m['val_top1'], 2)}"
            f" ({record['timings']['wall_s']:.0f} s)")


def data_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="fair data", description="Datasets: check a root, list the catalog.")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="verify a dataset folder and say exactly what is missing")
    c.add_argument("dataset")
    c.add_argument("--root", help="data root (default $FAIR_DATA_ROOT or ~/data)")
    c.add_argument("--read", action="store_true", help="also read the split files and count images")
    sub.add_parser("list", help="the catalog of datasets and their expected layouts")
    a = p.parse_args(argv)
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
    cfg = load_config(a.config, ["run.overwrite=true"] + a.overrides, base=base)
    record = run_adapt(cfg)
    print(summary_line(record))
    print(f"run folder: {Path(cfg.run.out_dir) / record['run_id']}", file=sys.stderr)
    return 0
