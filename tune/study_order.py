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
  left being all remaining work / slots. Final re-runs go first, as they are what the sweep waits for; then
  a study whose chain alone outlasts the time left (it ends the sweep whatever else runs) takes every slot
  it can use. On paper13 the simulated wall time is 1.004x work / slots with ASHA (8.8 h against 13.2 h);
  on bench.scale's 64-slot shape, where food101's chain is longer than work / slots, 1.21x (1.65x without
  the critical rule, 1.91x round-robin). The cost: a long study runs more of its trials at once (up to 32
  of fair/food101's 40 on paper13, against 10), so its Optuna sampler sees fewer results before each
  suggestion; over all studies, a search trial is handed out with 1.23 trials of its study still running
  on average, against 0.56. Hence a cap on one study's search trials in flight, for both orders
  (`search.max_running_share`, default 0.4 of its search budget: bench.search_concurrency measured no
  loss of the picked configuration at 0.4, and random search's at 0.8); a study at its cap takes a slot
  only when no other can use it. With it, paper13 simulates 1.05x.
- Early finals (`search.early_finals`, tune.searcher): once a study's search trials are all handed out,
  its finals may re-run its current pick before its last search trials end; they go first when the final
  alone outlasts all other work not handed out / slots (`early_finals_due`), else they take slots no study
  can use. With them paper13 simulates 1.001x with the cap (9.0 h, against 9.4 h), bench.scale's shape
  1.32x (against 1.42x): its food101 picks a late trial.
- Speculative finals (`search.speculative_finals`, tune.searcher): with early stopping, early finals may
  also re-run, beside the pick's, a search trial still running once it has passed ASHA's last rung
  (`asha_rungs`: no rung stops it any more) ahead of the pick there; if it ends the best, a study's chain
  is its pick's run up to that rung, then its final, not its pick's whole run and then its final.
  bench.scale's shape simulates 1.09x (against 1.32x), paper13 on 128 slots 6.2 h (against 7.6 h).
Trial durations are the studies' own, measured as their trials end (tune.searcher), blended with a prior
until enough are: `fair sweep` gives the searcher the plan's cost model (cluster.plan.trial_durations), so
the first wave already favours the long studies. `cluster plan` simulates the same order with that cost
model (cluster.schedule).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional

ORDERS = ("critical_path", "round_robin")
CHAIN_TRIALS = 2.0       # a study's last search trial and its final re-run: up to two full-length trials
MIN_WINDOW = 0.05        # of the time left: the floor of a study's window (a late study gets a big share)
PRIOR_TRIALS = 2.0       # a prior duration weighs as much as this many measured trials


@dataclass
class StudyProgress:
    """What the order needs of one study."""
    search_left: int                 # search trials not handed out yet
    running: int                     # its search trials in flight
    finals_left: int                 # final re-runs not handed out yet
    search_s: Optional[float] = None  # mean duration of its ended search trials (None: none ended yet)
    full_s: Optional[float] = None   # mean duration of its full-length trials (final report reached)
    measured: tuple[int, int] = (0, 0)   # how many search / full-length trials those means are of
    prior: Optional[tuple[float, float]] = None   # (search, full) durations a cost model expects, any unit


def asha_rungs(epochs: int, grace_period: Optional[int], reduction_factor: float) -> list[int]:
    """The epochs at which ASHA may stop a search trial before its last (Ray's AsyncHyperBandScheduler with
    one bracket: milestones grace_period x reduction_factor^k, k < log(epochs / grace_period) /
    log(reduction_factor) + 1, judged at the first epoch >= each); none without early stopping. A trial past
    the last one runs to `epochs`."""
    if grace_period is None or reduction_factor <= 1 or grace_period >= epochs:
        return []
    grace = max(1, grace_period)
    n = int(math.log(epochs / grace) / math.log(reduction_factor) + 1)
    return [r for r in (math.ceil(grace * reduction_factor ** k) for k in range(n)) if r < epochs]


def priority(studies: list[StudyProgress], order: str, slots: int, running: int,
             cap: Optional[int] = None) -> list[int]:
    """Indices of `studies` in the order to offer them the next slot. The caller rotates `studies`
    round-robin; `round_robin` keeps that order, `critical_path` sorts by need and keeps it among ties.
    `slots`: trials the sweep runs at once; `running`: trials in flight now (finals included); `cap`: the
    most search trials of one study in flight (search.max_running_share): a study at its cap comes after
    every other, so it takes a slot only when no other study can use it (the cap never idles a slot)."""
    if order not in ORDERS:
        raise ValueError(f"search.order must be one of {', '.join(ORDERS)}, got {order!r}")
    ranked = list(range(len(studies))) if order == "round_robin" else _critical_path(studies, slots, running)
    if cap is None:
        return ranked
    return sorted(ranked, key=lambda i: bool(studies[i].search_left and studies[i].running >= cap))   # stable


def _time_left(studies: list[StudyProgress], search_s: list[float], full_s: list[float], slots: int) -> float:
    """All work not handed out yet / slots: how long the sweep lasts at least from now."""
    left = sum(p.search_left * s + p.finals_left * f for p, s, f in zip(studies, search_s, full_s))
    return left / max(1, slots)


def early_finals_due(studies: list[StudyProgress], order: str, slots: int) -> list[bool]:
    """Which studies' finals go first although their search has not ended (search.early_finals): under
    `critical_path`, a study whose search trials are all handed out and whose final alone outlasts all other
    work not handed out yet / slots ends the sweep later the longer its final waits, so its final runs
    the current pick now (a later pick supersedes it). Other early finals run on slots no study can use."""
    if order != "critical_path":
        return [False] * len(studies)
    search_s, full_s = durations(studies)
    time_left = _time_left(studies, search_s, full_s, slots)
    return [bool(p.finals_left and not p.search_left and p.running and f >= time_left)
            for p, f in zip(studies, full_s)]


def _critical_path(studies: list[StudyProgress], slots: int, running: int) -> list[int]:
    search_s, full_s = durations(studies)
    time_left = _time_left(studies, search_s, full_s, slots)
    window = [time_left - CHAIN_TRIALS * f for f in full_s]
    rates = [p.search_left * s / max(MIN_WINDOW * time_left, w, 1e-9) if p.search_left else 0.0
             for p, s, w in zip(studies, search_s, window)]
    total = sum(rates) or 1.0
    deficit = [r / total * (running + 1) - p.running for r, p in zip(rates, studies)]
    finals = sorted((i for i, p in enumerate(studies) if p.finals_left and not p.search_left),
                    key=lambda i: -full_s[i])
    # a study whose chain alone outlasts all remaining work / slots ends the sweep whatever else runs:
    # it takes every slot it can use, the longest chain first
    critical = sorted((i for i, p in enumerate(studies) if p.search_left and window[i] <= 0),
                      key=lambda i: -full_s[i])
    rest = sorted((i for i, p in enumerate(studies) if p.search_left and window[i] > 0), key=lambda i: -deficit[i])
    return finals + critical + rest + [i for i, p in enumerate(studies) if not p.search_left and not p.finals_left]


def durations(studies: list[StudyProgress]) -> tuple[list[float], list[float]]:
    """Each study's expected search and full-length trial durations.

    With a prior (a cost model's durations, in its own unit): the prior, scaled to the measured seconds by
    the ratio of all measured time to what the prior expected for those trials, and blended with the study's
    own measured mean, the prior weighing PRIOR_TRIALS trials (the first trials to end are the ones early
    stopping cut short: a mean of a few is biased low). Without one: the measured mean, else the mean of
    the other studies (full-length trials scaled from search trials when only those are known)."""
    scale = _prior_scale(studies)
    known_s = [p.search_s for p in studies if p.search_s]
    mean_s = statistics.fmean(known_s) if known_s else 1.0
    ratios = [p.full_s / p.search_s for p in studies if p.full_s and p.search_s]
    ratio = statistics.fmean(ratios) if ratios else 1.0
    search, full = [], []
    for p in studies:
        if p.prior:
            search.append(_blend(p.search_s, p.measured[0], p.prior[0] * scale))
            full.append(_blend(p.full_s, p.measured[1], p.prior[1] * scale))
            continue
        search.append(p.search_s or (p.full_s / ratio if p.full_s else mean_s))
        full.append(p.full_s or search[-1] * ratio)
    return search, full


def _prior_scale(studies: list[StudyProgress]) -> float:
    """Measured seconds per prior unit, over every measured trial of a study with a prior (1: none yet)."""
    measured = expected = 0.0
    for p in studies:
        if not p.prior:
            continue
        for mean, n, prior in ((p.search_s, p.measured[0], p.prior[0]), (p.full_s, p.measured[1], p.prior[1])):
            if mean and n:
                measured, expected = measured + mean * n, expected + prior * n
    return measured / expected if measured and expected else 1.0


def _blend(mean: Optional[float], n: int, prior: float) -> float:
    return (mean * n + prior * PRIOR_TRIALS) / (n + PRIOR_TRIALS) if mean and n else prior
