"""Logging set-up shared by the entry points: our packages at INFO, third-party libraries at WARNING.

open_clip logs through the root logger (`logging.info(...)`), so a root logger at INFO would print every model
it parses; the root stays at WARNING and only our own package loggers are raised.
"""
from __future__ import annotations

import contextlib
import logging

OUR_PACKAGES = ("fair", "tune", "results", "cluster", "bench", "__main__")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(datefmt: str | None = "%H:%M:%S") -> None:
    """Root handler at WARNING; our packages (and a `python -m` entry point's `__main__`) at INFO."""
    logging.basicConfig(level=logging.WARNING, format=FORMAT, datefmt=datefmt)
    for name in OUR_PACKAGES:
        logging.getLogger(name).setLevel(logging.INFO)


def quiet_logs() -> None:
    """--quiet: warnings only, from our own loggers too."""
    for name in ("",) + OUR_PACKAGES:
        logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def expected_messages(*fragments: str):
    """For the block: drop log records containing any of `fragments` (warnings that describe what we did on
    purpose), and transformers' weight-loading report and progress bar."""
    def keep(record: logging.LogRecord) -> bool:
        return not any(f in record.getMessage() for f in fragments)
    handlers = list(logging.getLogger().handlers)
    for h in handlers:
        h.addFilter(keep)
    tlog = old = bars = None
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as tlog
        old, bars = tlog.get_verbosity(), tlog.is_progress_bar_enabled()
        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(keep)
        if tlog is not None:
            tlog.set_verbosity(old)
            if bars:
                tlog.enable_progress_bar()
