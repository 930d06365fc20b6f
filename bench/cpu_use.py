"""Where a benchmark's CPU goes: seconds by process group, and how busy the machine's cores were.

On a simulated cluster every logical node, the driver, Ray's own processes and the storage server share this
machine's few cores; a real cluster gives each node its own. Which of them used the CPU, and whether the cores
were saturated, says whether an overhead measured here is the orchestrator's or the machine's.

    use = CpuUse(every=2.0); use.start(); ...; totals = use.stop()
    pin(n)       # this process and all its descendants on the first n cores (new Ray workers inherit it)
    CpuUse(lower=({"trial processes"}, 10))   # ... and keep the trial processes at niceness 10 while sampling
"""
from __future__ import annotations

import os
import threading

from tune.ray_session import ray_psutil as _psutil

# a process's group, by what it runs: the first match (see group())
GROUPS = ("driver", "trial processes", "Ray system", "storage server")


def group(pid: int, name: str, cmdline: list[str]) -> str:
    """The group of one process of the benchmark's tree: this process is the driver; `weed` the storage
    server; a process titled ray::... a Ray worker (trial actors, Train workers, idle workers kept for them);
    everything else Ray's own (raylets, GCS, dashboard, agents, log monitors)."""
    if pid == os.getpid():
        return "driver"
    if "weed" in name:
        return "storage server"
    if cmdline and cmdline[0].startswith("ray::"):
        return "trial processes"
    return "Ray system"


def _machine() -> tuple[int, int, int]:
    """(all jiffies, idle jiffies, runnable threads now) from /proc/stat."""
    total = idle = running = 0
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu "):
                v = [int(x) for x in line.split()[1:]]
                total, idle = sum(v[:8]), v[3] + v[4]      # user..steal; idle and iowait
            elif line.startswith("procs_running"):
                running = int(line.split()[1])
    return total, idle, running


class CpuUse:
    """CPU seconds each group of this process's tree used between start() and stop(), sampled from a thread
    every `every` seconds (a process that ends between two samples loses at most `every` seconds of its use);
    the machine's busy fraction over the same time; the fraction of samples with more runnable threads than
    cores (the cores saturated). With `lower`, every sample also lowers the priority of those groups'
    processes (new trial processes start at their raylet's)."""

    def __init__(self, every: float = 2.0, lower: tuple[set[str], int] | None = None):
        self.every, self.lower = every, lower      # lower: (groups, niceness) to hold them at, every sample
        self.cores = len(os.sched_getaffinity(0))
        self._base: dict[tuple[int, float], float] = {}
        self._last: dict[tuple[int, float], tuple[str, float]] = {}
        self._runnable: list[int] = []
        self._rss_peak = 0         # this process's resident bytes, the most a sample saw
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> dict[tuple[int, float], tuple[str, float]]:
        psutil = _psutil()
        me = psutil.Process()
        seen = {}
        for p in [me, *me.children(recursive=True)]:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    if p is me:
                        self._rss_peak = max(self._rss_peak, p.memory_info().rss)
                    seen[(p.pid, p.create_time())] = (group(p.pid, p.name(), p.cmdline()), t.user + t.system)
            except psutil.Error:        # ended while we looked
                continue
        return seen

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            if self.lower:
                lower(*self.lower)
            self._last.update(self._sample())
            self._runnable.append(_machine()[2])

    def start(self) -> "CpuUse":
        if self.lower:
            lower(*self.lower)
        self._base = {k: s for k, (_, s) in self._sample().items()}
        self._last = {}
        self._machine0 = _machine()
        self._thread = threading.Thread(target=self._loop, name="cpu-use", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict:
        """{"groups": {group: CPU s}, "busy": fraction of the cores' time busy, "saturated": fraction of the
        samples with more runnable threads than cores, "cores": n, "rss_peak_mb": this process's resident
        memory, the most a sample saw (unlike ru_maxrss, this run's alone)}."""
        self._stop.set()
        self._thread.join()
        self._last.update(self._sample())
        total0, idle0, _ = self._machine0
        total, idle, _ = _machine()
        groups = dict.fromkeys(GROUPS, 0.0)
        for k, (g, s) in self._last.items():
            groups[g] += max(0.0, s - self._base.get(k, 0.0))
        # procs_running counts this sampling thread too
        saturated = sum(r - 1 > self.cores for r in self._runnable) / len(self._runnable) if self._runnable else 0.0
        return {"groups": groups, "busy": 1 - (idle - idle0) / max(1, total - total0), "saturated": saturated,
                "cores": self.cores, "rss_peak_mb": self._rss_peak / 2**20}


def _threads_of(groups: set[str] | None):
    """The threads of each process of this process's tree (of those in `groups` only, when given)."""
    psutil = _psutil()
    me = psutil.Process()
    for p in [me, *me.children(recursive=True)]:
        try:
            if groups is None or group(p.pid, p.name(), p.cmdline()) in groups:
                yield p.threads()
        except psutil.Error:    # ended while we looked
            continue


def lower(groups: set[str], niceness: int) -> int:
    """Every thread of the tree's processes in `groups` at `niceness` (at least: never raised back), so that
    the rest, the driver above all, gets the cores first (a real cluster runs trials on other machines than
    its driver); returns the threads changed. A niceness is a thread's, like an affinity."""
    changed = 0
    for threads in _threads_of(groups):
        for t in threads:
            try:
                if os.getpriority(os.PRIO_PROCESS, t.id) < niceness:
                    os.setpriority(os.PRIO_PROCESS, t.id, niceness)
                    changed += 1
            except OSError:     # ended while we looked
                continue
    return changed


def pin(n: int) -> list[int]:
    """Every thread of this process and of all its descendants on the first `n` cores it may use (a thread
    or process started later inherits its parent's: Ray's raylets start every new worker); the cores used."""
    cores = sorted(os.sched_getaffinity(0))[:n]
    for threads in _threads_of(None):
        for t in threads:       # an affinity is a thread's: setting the process's sets only its main thread
            try:
                os.sched_setaffinity(t.id, cores)
            except OSError:     # ended while we looked
                continue
    return cores
