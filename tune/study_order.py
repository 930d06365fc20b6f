"""Which study (method x dataset) gets the next free trial slot: `search.order` of a sweep.

A study's final-seed re-runs repeat its best configuration, so they start only after its last search trial
has ended; whatever ends last ends the sweep. With trials of very different lengths (on paper13 a food101
trial lasts ~17x a dtd trial) the order decides the wall time:
- `round_robin` hands out search trials in turn over the studies that have budget left. All searches
  progress at the same count, so the longest studies end their search last, and the sweep ends with their
  last search trials and final re-runs on a few busy slots: on paper13 the simulated wall time is 1.5x
  work / slots (`fair cluster plan`; cluster.schedule).
- `critical_path` (the default) gives each study a share of the slots in proportion to the rate at which
  it must run its remaining search to end it in time: its remaining search work over the time left before
  its chain (a last search trial and a final re-run, each up to a full-length trial) must start, the time
  left being all remaining work / slots. Final re-runs go first, as they are what the sweep waits for. On
  paper13 the simulated wall time is 1.004x work / slots with ASHA (8.8 h against 13.2 h). The cost: a
  long study runs more of its trials at once (up to 27 of fair/food101's 40, against 10), so its Optuna
  sampler sees fewer results before each suggestion; over all studies, a search trial is handed out with
  1.03 trials of its study still running on average, against 0.56.
Trial durations are the studies' own, measured as their trials end (tune.searcher); `cluster plan`
simulates the same order with its cost model (cluster.schedule).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Optional

ORDERS = ("critical_path", "round_robin")
CHAIN_TRIALS = 2.0       # a study's last search trial and its final re-run: up to two full-length trials
MIN_WINDOW = 0.05        # of the time left: the floor of a study's window (a late study gets a big share)


@dataclass
class StudyProgress:
    """What the order needs of one study."""
    search_left: int                 # search trials not handed out yet
    running: int                     # its search trials in flight
    finals_left: int                 # final re-runs not handed out yet
    search_s: Optional[float] = None  # mean duration of its ended search trials (None: none ended yet)
    full_s: Optional[float] = None   # mean duration of its full-length trials (final report reached)


def priority(studies: list[StudyProgress], order: str, slots: int, running: int) -> list[int]:
    """Indices of `studies` in the order to offer them the next slot. The caller rotates `studies`
    round-robin; `round_robin` keeps that order, `critical_path` sorts by need and keeps it among ties.
    `slots`: trials the sweep runs at once; `running`: trials in flight now (finals included)."""
    if order == "round_robin":
        return list(range(len(studies)))
    if order != "critical_path":
        raise ValueError(f"search.order must be one of {', '.join(ORDERS)}, got {order!r}")
    search_s, full_s = _durations(studies)
    left = sum(p.search_left * s + p.finals_left * f for p, s, f in zip(studies, search_s, full_s))
    time_left = left / max(1, slots)
    rates = [p.search_left * s / max(MIN_WINDOW * time_left, time_left - CHAIN_TRIALS * f, 1e-9)
             if p.search_left else 0.0 for p, s, f in zip(studies, search_s, full_s)]
    total = sum(rates) or 1.0
    deficit = [r / total * (running + 1) - p.running for r, p in zip(rates, studies)]
    finals = sorted((i for i, p in enumerate(studies) if p.finals_left and not p.search_left),
                    key=lambda i: -full_s[i])
    rest = sorted((i for i, p in enumerate(studies) if p.search_left), key=lambda i: -deficit[i])
    return finals + rest + [i for i, p in enumerate(studies) if not p.search_left and not p.finals_left]


def _durations(studies: list[StudyProgress]) -> tuple[list[float], list[float]]:
    """Each study's search and full trial durations; a study with none measured yet gets the mean of the
    others (its full-length trials scaled from its search trials when only those are known)."""
    known_s = [p.search_s for p in studies if p.search_s]
    mean_s = statistics.fmean(known_s) if known_s else 1.0
    ratios = [p.full_s / p.search_s for p in studies if p.full_s and p.search_s]
    ratio = statistics.fmean(ratios) if ratios else 1.0
    search = [p.search_s or (p.full_s / ratio if p.full_s else mean_s) for p in studies]
    full = [p.full_s or s * ratio for p, s in zip(studies, search)]
    return search, full
