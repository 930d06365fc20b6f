"""`fair` command: a thin dispatcher that imports a sub-package only when its command runs.

So `fair adapt` works without Ray installed and `fair results table` without torch.
"""
from __future__ import annotations

import sys

from fair.logs import setup_logging

USAGE = """usage: fair <command> [options]

commands:
  adapt     run one FAIR adaptation:        fair adapt --config FILE [--set k=v ...]
  data      check a dataset root:           fair data check DATASET [--root DIR]
            get datasets (or `all` 13):     fair data prepare NAME|all [--root DIR] [--mirror URL]
  descriptions  class descriptions (CuPL):  fair descriptions {import,generate,show} --dataset NAME ...
  demo      one FAIR run on embedded defaults (the single-run version of `make demo`'s sweep)
  sweep     a Ray Tune + Optuna sweep:      fair sweep --config SWEEP.yaml [--set k=v ...]
            what it will cost, first:       fair sweep --config SWEEP.yaml --plan [--records DIR]
  results   collect / table / plot:         fair results {collect,table,plot} ...
  cluster   a Ray cluster:                  fair cluster {submit,status,logs,stop,list,validate,plan} ...

`fair <command> --help` for a command's options.
"""


def _dispatch(command: str):
    if command in ("adapt", "data", "demo", "descriptions"):
        from fair import commands
        return getattr(commands, f"{command}_main")
    if command == "sweep":
        from tune.cli import main
        return main
    if command == "results":
        from results.cli import main
        return main
    if command == "cluster":
        from cluster.cli import main
        return main
    return None


def _missing_module(command: str, e: ModuleNotFoundError) -> int:
    extra = {"ray": "tune", "optuna": "tune", "pyarrow": "results", "boto3": "results"}.get(
        (e.name or "").split(".")[0])
    if not extra:
        raise e
    print(f"fair: error: `fair {command}` needs {e.name}: pip install 'fair-sweeps[{extra}]'", file=sys.stderr)
    return 2


# What to do after Ctrl-C, by command.
_AFTER_INTERRUPT = {
    "adapt": "rerun the same command with --resume to continue from the last finished epoch",
    "demo": "`fair demo` starts over each time; rerun it",
    "sweep": "rerun the same command to resume the sweep",
    "data": "rerun the same command: downloads resume where they stopped",
    "descriptions": "rerun the same command: answers already received are cached",
}

# `fair sweep` flags that mean nothing to an estimate of the full sweep (`fair cluster plan`).
_NOT_PLANNED = {"--dry-run", "--no-data-check", "--resume", "--address", "--num-cpus"}


def _plan_args(args: list[str]) -> list[str]:
    """`fair sweep ... --plan` arguments for `fair cluster plan`; a run-only flag is a one-line error."""
    from fair.errors import FairError
    for a in args:
        flag = a.split("=", 1)[0]
        if flag in _NOT_PLANNED:
            raise FairError(f"--plan estimates the sweep of --config and takes no {flag}; drop it (plan flags: "
                            f"--set, --smoke-test, --records, --gpu-fraction, --cluster-config)")
    return [a for a in args if a != "--plan"]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    setup_logging()   # our packages at INFO; third-party libraries (open_clip logs to the root) at WARNING
    from fair.errors import FairError
    try:
        if argv[0] == "sweep" and "--plan" in argv:
            # `fair sweep --plan` is the planner of cluster/ (tune/ never imports cluster/).
            argv = ["cluster", "plan"] + _plan_args(argv[1:])
        fn = _dispatch(argv[0])
        if fn is None:
            print(f"fair: unknown command {argv[0]!r}; run `fair --help` for the list", file=sys.stderr)
            return 2
        return int(fn(argv[1:]) or 0)
    except Exception as e:  # noqa: BLE001 - user errors of every sub-package print as one line
        if isinstance(e, FairError) or getattr(e, "user_error", False):
            print(f"fair: error: {e}", file=sys.stderr)
            return 2
        if isinstance(e, ModuleNotFoundError):
            return _missing_module(argv[0], e)
        raise
    except KeyboardInterrupt:
        print(f"fair: interrupted; {_AFTER_INTERRUPT.get(argv[0], 'nothing was lost that a rerun cannot redo')}",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
