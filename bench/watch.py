"""What a long bench.scale run says while it runs, and where it stops when asked to.

A run on a lent machine has one call of at most ten minutes, and a table printed at the end comes back only if
the run ends in time: a sweep cut by the call's limit returns nothing but its log. So `Watch` logs, every
`every` seconds, how far the sweep got (trials traced, slot time busy with trial work so far and over the
last interval, the driver's CPU share and peak RSS), and with a `deadline` it interrupts the sweep there as
Ctrl-C does (`fair sweep` then stops its trials, saves its state and returns 130), so the benchmark goes on
to its table over the part that ran.
"""
from __future__ import annotations

import json
import logging
import os
import resource
import signal
import threading
import time
from pathlib import Path

log = logging.getLogger("bench.scale")


def read_trace(trace_dir: Path) -> tuple[dict[str, list[dict]], list[dict], dict[str, dict]]:
    """{trial: its finished phases of work (trials with one)}, every report, and {trial: its phase of work still
    running} (tune.simulate's trace, one jsonl file per trial: an open line as a phase starts, a line as it
    ends; a report is not work but the checkpoint upload and then the wait for the driver to take the result).
    Read while the sweep runs, a file may vanish or end in a line being written."""
    work, reports, running = {}, [], {}
    for f in trace_dir.glob("*.jsonl"):
        try:
            text = f.read_text()
        except FileNotFoundError:
            continue
        lines = []
        for line in text.splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:             # empty, or a line its trial is writing now
                continue
        done = [p for p in lines if p["phase"] != "report" and not p.get("open")]
        ended = {(p["phase"], p["t0"]) for p in done}
        opened = [p for p in lines if p.get("open") and (p["phase"], p["t0"]) not in ended]
        if done:
            work[f.stem] = done
        reports += [p for p in lines if p["phase"] == "report"]
        if opened:
            running[f.stem] = opened[-1]
    return work, reports, running


def work_between(work: dict[str, list[dict]], running: dict[str, dict], since: float, until: float) -> float:
    """Seconds of trial work done between two time.time()s: finished phases and those still running at
    `until`, each clipped to the interval."""
    spans = [(p["t0"], p["t1"]) for phases in work.values() for p in phases]
    spans += [(p["t0"], until) for p in running.values()]
    return sum(max(0.0, min(t1, until) - max(t0, since)) for t0, t1 in spans)


def traced_work(trace_dir: Path, since: float, now: float) -> tuple[int, float, float]:
    """(trials traced, seconds of trial work done by `now`, of which after `since`; time.time()s), counting the
    phases running at `now` up to it."""
    work, _, running = read_trace(trace_dir)
    return (len(work.keys() | running.keys()), work_between(work, running, 0.0, now),
            work_between(work, running, since, now))


class Watch:
    """A thread beside the sweep: a progress line every `every` s; at `deadline` s (if given) one SIGINT to
    this process, after which `fired` holds its time.time()."""

    def __init__(self, trace_dir: Path, slots: int, every: float = 60.0, deadline: float | None = None):
        self.trace_dir, self.slots, self.every, self.deadline = Path(trace_dir), slots, every, deadline
        self.fired: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-watch", daemon=True)

    def start(self) -> "Watch":
        self.t0 = time.time()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def line(self, now: float, last: float, cpu_last: float) -> str:
        """One progress line: the state at `now`, the interval from `last` (its driver CPU `cpu_last`)."""
        trials, work, recent = traced_work(self.trace_dir, since=last, now=now)
        elapsed, span = now - self.t0, max(now - last, 1e-9)
        return (f"{elapsed:.0f} s: {trials} trials traced; slot time busy {100 * work / (self.slots * elapsed):.0f}% "
                f"so far, {100 * recent / (self.slots * span):.0f}% in the last {span:.0f} s; driver CPU "
                f"{(_cpu() - cpu_last) / span:.2f} of a core, peak RSS {_peak_rss_mb():.0f} MB")

    def _run(self) -> None:
        last, cpu_last = self.t0, _cpu()
        while True:
            wake = min(last + self.every, self.t0 + self.deadline if self.deadline and not self.fired else 1e18)
            if self._stop.wait(max(0.0, wake - time.time())):
                return
            now = time.time()
            if self.deadline and not self.fired and now >= self.t0 + self.deadline:
                self.fired = now
                log.warning("deadline %.0f s: interrupting the sweep as Ctrl-C does; the table is of the part that "
                            "ran", self.deadline)
                os.kill(os.getpid(), signal.SIGINT)
            if now >= last + self.every:
                log.info(self.line(now, last, cpu_last))
                last, cpu_last = now, _cpu()


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
