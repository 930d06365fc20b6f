"""`fair sweep`: run, resume or smoke-test a hyperparameter sweep (Ray Tune + Optuna + Ray Train).

    fair sweep --config configs/sweeps/demo.yaml [--set budget.trials_per_dataset=2 ...]
    fair sweep --config SWEEP.yaml --smoke-test              # ~a minute: 1 trial/dataset, 1 epoch
    fair sweep --resume NAME [--storage DIR|s3://...]        # continue an interrupted sweep
    fair sweep --config SWEEP.yaml --address auto            # on an existing Ray cluster
    fair sweep --config SWEEP.yaml --dry-run                 # every check, no trial

Rerunning the same `--config` command also resumes. Exit codes: 0 all trials finished, 1 some errored,
2 bad input (one line on stderr), 130 interrupted (Ctrl-C) with trials unfinished.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Optional

log = logging.getLogger("tune")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fair sweep", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Sweep file format: docs/sweeps.md")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", "-c", help="sweep YAML (see configs/sweeps/)")
    src.add_argument("--resume", metavar="NAME", help="resume the sweep NAME stored under --storage")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a sweep-file value, e.g. --set budget.epochs=3 or --set base.train.lr=1e-4")
    p.add_argument("--storage", help="override the sweep's storage (local folder or s3://bucket/prefix)")
    p.add_argument("--smoke-test", action="store_true", help="shrink the sweep to about a minute")
    p.add_argument("--address", help="attach to a running Ray cluster (e.g. auto or 10.0.0.1:6379)")
    p.add_argument("--num-cpus", type=float, help="CPUs of the local Ray (logical; default all cores)")
    p.add_argument("--no-data-check", action="store_true",
                   help="skip `fair data check` and the descriptions check on this machine (data only on the "
                        "cluster's nodes)")
    p.add_argument("--dry-run", action="store_true", help="run every check (Ray, storage, data), start no trial")
    p.add_argument("--show-test", action="store_true",
                   help="progress lines and the final summary also show test accuracy (always in the records); "
                        "off by default so that what to try next is chosen on validation")
    return p


def sweep_overrides(a: argparse.Namespace) -> list[str]:
    """The sweep-file overrides of parsed `fair sweep` arguments: --set, then --storage and --num-cpus."""
    overrides = list(a.overrides) + ([f"storage={a.storage}"] if a.storage else [])
    return overrides + ([f"ray.num_cpus={a.num_cpus}"] if a.num_cpus else [])


def run_sweep(a: argparse.Namespace, prior: Optional[Callable[[object], Optional[dict]]] = None) -> int:
    """Run, resume or dry-run the sweep of parsed `fair sweep` arguments; returns the exit code. `prior`: the
    sweep config's expected trial durations per study (tune.sweep.run), from a cost model this package
    cannot import (`fair sweep` passes cluster.plan's)."""
    from tune.ray_session import set_env_defaults
    set_env_defaults(local=a.address is None)   # before Ray is imported anywhere

    from tune import storage as sweep_storage
    from tune.sweep import load_saved, preflight, run
    from tune.sweep_config import load_sweep, shrink_for_smoke_test, validate
    overrides = sweep_overrides(a)
    if a.config:
        cfg = load_sweep(a.config, overrides, smoke_test=a.smoke_test)
    else:
        # e.g. --set ray.num_cpus=8 on resume (the search itself must stay as stored: run() checks)
        cfg = load_saved(sweep_storage.resolve(a.storage or "./sweeps"), a.resume, overrides)
        if a.smoke_test:
            shrink_for_smoke_test(cfg)
        validate(cfg)
    uri = preflight(cfg, data_check=not a.no_data_check)

    from tune import ray_session
    started = ray_session.init(a.address, cfg.ray)
    try:
        if a.dry_run:
            from tune.nodes import check as check_nodes
            check_nodes(cfg, uri)
            n = ray_session.max_concurrent(cfg.resources.per_trial(), cfg.resources.check_cluster,
                                           cfg.budget.max_concurrent)
            print(f"sweep {cfg.name}: checks passed; {cfg.total_trials} trials, up to {n} at once, "
                  f"storage {sweep_storage.join(uri, cfg.name)}")
            return 0
        result = run(cfg, uri, resume=True if a.resume else None, show_test=a.show_test,
                     prior=prior(cfg) if prior else None)
    finally:
        if started:
            import ray
            ray.shutdown()
    print(result.table(cfg.objective.metric, a.show_test))
    if not result.complete:
        print(f"fair sweep: interrupted with {result.unfinished} of {cfg.total_trials} trials "
              f"unfinished; rerun the same command (or --resume {cfg.name}) to continue them", file=sys.stderr)
        return 130
    if result.errored:
        print(f"fair sweep: {len(result.errored)} trial(s) errored; rerun the same command to retry them",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    """`python -m tune.cli ...`: `fair sweep ...` without --plan (the planner is cluster/'s, which tune/
    never imports)."""
    if "--plan" in argv:
        from fair.errors import FairError
        raise FairError("python -m tune.cli runs sweeps; estimate one with `fair sweep --config FILE --plan`")
    return run_sweep(parser().parse_args(argv))


if __name__ == "__main__":
    from fair.command_line import run_command
    sys.exit(run_command("sweep", lambda: main(sys.argv[1:])))
