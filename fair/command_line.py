"""How a command of the `fair` command line runs, whichever entry point starts it (`fair X`,
`python -m tune.cli`, `python -m cluster.cli`): logging set-up, one-line errors, exit codes.

Exit codes: the command's own, 2 for bad input (one line on stderr), 130 after Ctrl-C (with what to do next).
"""
from __future__ import annotations

import sys
from typing import Callable, Optional

from fair.errors import FairError
from fair.logs import setup_logging

# What to do after Ctrl-C, by command.
AFTER_INTERRUPT = {
    "adapt": "rerun the same command with --resume to continue from the last finished epoch",
    "demo": "`fair demo` starts over each time; rerun it",
    "sweep": "rerun the same command to resume the sweep",
    "data": "rerun the same command: downloads resume where they stopped",
    "descriptions": "rerun the same command: answers already received are cached",
}

# The extra of pyproject.toml that installs a missing third-party package.
EXTRA_OF = {"ray": "tune", "optuna": "tune", "pyarrow": "results", "boto3": "results"}


def run_command(command: str, call: Callable[[], Optional[int]]) -> int:
    """Run `call` (the body of `fair <command>`) and return its exit code; a user error of any package
    (FairError, or an exception class with `user_error = True`) prints as one line and returns 2."""
    setup_logging()   # our packages at INFO; third-party libraries (open_clip logs to the root) at WARNING
    try:
        return int(call() or 0)
    except Exception as e:  # noqa: BLE001 - user errors of every sub-package print as one line
        if isinstance(e, FairError) or getattr(e, "user_error", False):
            print(f"fair: error: {e}", file=sys.stderr)
            return 2
        if isinstance(e, ModuleNotFoundError):
            return _missing_module(command, e)
        raise
    except KeyboardInterrupt:
        print(f"fair: interrupted; {AFTER_INTERRUPT.get(command, 'nothing was lost that a rerun cannot redo')}",
              file=sys.stderr)
        return 130


def _missing_module(command: str, e: ModuleNotFoundError) -> int:
    extra = EXTRA_OF.get((e.name or "").split(".")[0])
    if not extra:
        raise e
    print(f"fair: error: `fair {command}` needs {e.name}: pip install 'fair-sweeps[{extra}]'", file=sys.stderr)
    return 2
