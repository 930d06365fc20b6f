"""`fair` command: a table of commands, each imported only when it runs.

So `fair adapt` works without Ray installed and `fair results table` without torch. Each command's own
CLI owns its flags; how a command runs (logging, one-line errors, exit codes) is fair.command_line's.
"""
from __future__ import annotations

import importlib
import sys

from fair.command_line import run_command

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

# command -> "module:function" taking the arguments after the command's name. `sweep` is cluster/'s: it is
# tune's sweep CLI plus --plan, the planner of cluster/ (tune/ never imports cluster/).
COMMANDS = {
    "adapt": "fair.commands:adapt_main",
    "data": "fair.commands:data_main",
    "demo": "fair.commands:demo_main",
    "descriptions": "fair.commands:descriptions_main",
    "sweep": "cluster.cli:sweep_main",
    "results": "results.cli:main",
    "cluster": "cluster.cli:main",
}


def _dispatch(command: str):
    """The function of `command`, its module imported now."""
    module, function = COMMANDS[command].split(":")
    return getattr(importlib.import_module(module), function)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"fair: unknown command {command!r}; run `fair --help` for the list", file=sys.stderr)
        return 2
    return run_command(command, lambda: _dispatch(command)(args))


if __name__ == "__main__":
    sys.exit(main())
