"""A sweep's schedule, simulated: when each trial starts and ends on `slots` trial slots, in the order
tune.searcher hands trials out (`search.order`, tune.study_order), so a plan's wall time includes what
work / slots leaves out.

A study's final-seed re-runs start after its last search trial ended (they repeat its best
configuration), or with early finals once it has a pick or a lead past ASHA's last rung (`simulate`).
With a study whose trials are much longer than the others' (food101 next to dtd), its last search trials
and its finals can form a tail on a few busy slots: with `search.order: round_robin` that tail made a
simulated 64-slot sweep last 1.8x work / slots (bench.scale, docs/speed.md). This simulation is what
`cluster plan` prices.

Durations are per trial, in wall seconds on its slot; search trials under ASHA stop at the rungs in the
ideal proportions (1/reduction_factor of trials pass each rung, as cluster.plan.asha_epochs assumes),
spread evenly over each study's trials by their quality ranks; a study's pick is its best-ranked completed
full-length trial, and finals of the configurations that lose are stopped and counted (a plan that
assumed the first lead holds predicted bench.scale's 64-slot sweep 18-27 % short, this one 4-15 %).
"""
from __future__ import annotations

import heapq
import math
import statistics
from dataclasses import dataclass, field
from typing import Optional

from tune.study_order import StudyProgress, asha_rungs, early_finals_due, priority

GOLDEN = (math.sqrt(5) - 1) / 2      # a low-discrepancy sequence spreads the stopped trials over a study


@dataclass
class StudyLoad:
    """One study's trials as the schedule sees them: search trial durations in the order they are handed
    out, then `finals` re-runs of `final_s` each; `settled_s`: the seconds into a full-length search trial
    after which no ASHA rung stops it (speculative finals may re-run it from then; None: not before it ends)."""
    name: str
    search_s: list[float]
    final_s: float = 0.0
    finals: int = 0
    settled_s: Optional[float] = None
    rank: Optional[list[int]] = None   # each search trial's objective rank, 0 best (None: quality_ranks)


@dataclass
class Schedule:
    """What the simulation found: the wall time, and when each study's search and finals ended."""
    wall_s: float
    busy_s: float                  # sum of trial durations
    slots: int
    search_end_s: dict[str, float] = field(default_factory=dict)
    end_s: dict[str, float] = field(default_factory=dict)
    peak_running: dict[str, int] = field(default_factory=dict)   # most search trials of a study at once
    running_at_handout: float = 0.0    # mean, over search trials, of their study's trials already running
    superseded: int = 0                # early finals stopped because another configuration became the pick
    superseded_s: float = 0.0          # ... and the slot time they ran (in busy_s)

    @property
    def spread_s(self) -> float:
        """work / slots: the wall time if no slot ever waited (what the tail is measured against)."""
        return self.busy_s / max(1, self.slots)


def quality_ranks(n: int) -> list[int]:
    """Each of a study's `n` search trials' rank by its objective (0: best), in the order they are handed
    out: spread over the study by a low-discrepancy sequence, so any prefix holds good and bad trials in
    the study's proportions (the plan knows nothing of which configurations are good)."""
    order = sorted(range(n), key=lambda i: ((i + 0.5) * GOLDEN) % 1.0)
    rank = [0] * n
    for r, i in enumerate(order):
        rank[i] = r
    return rank


def rung_epochs(n: int, epochs: int, grace_period: Optional[int], reduction_factor: float) -> list[int]:
    """Epochs each of `n` search trials runs under ideal ASHA (rungs at grace x rf^k below `epochs`; 1/rf of
    the trials that reach a rung pass it, the best by `quality_ranks`); without early stopping (grace None)
    every trial runs `epochs`."""
    rungs = asha_rungs(epochs, grace_period, reduction_factor)
    if not rungs:
        return [epochs] * n
    rank = quality_ranks(n)
    out = []
    for i in range(n):
        u, reach = (rank[i] + 0.5) / n, 1.0              # its quantile: exact proportions for any n
        stop = epochs
        for rung in rungs:
            reach_next = reach / reduction_factor
            if u >= reach_next:                         # not in the top 1/rf of those that reached this rung
                stop = rung
                break
            reach = reach_next
        out.append(stop)
    return out


def simulate(studies: list[StudyLoad], slots: int, order: str = "critical_path",
             cap: Optional[int] = None, early_finals: bool = False) -> Schedule:
    """List-schedule the studies' trials on `slots` slots as tune.searcher.StudySearcher hands them out:
    each freed slot goes to the first study in `order` (tune.study_order) that has a search trial left,
    or whose search has ended and that has a final re-run left, a study at `cap` search trials in flight
    (search.max_running_share) only when no other can use it. A study's pick is its best completed
    full-length search trial by `StudyLoad.rank`. With `early_finals` (search.early_finals), a study whose
    search trials are all handed out runs finals before its search ends, first when they are due
    (tune.study_order.early_finals_due), else on a slot no study can use: of its current pick, and, with a
    study's `settled_s` (speculative finals), of its full-length trials still running past their last rung
    that rank ahead of the pick. A search trial that ends supersedes the finals of every configuration that
    is neither the pick nor still running: they stop then, and their slot time is counted apart.
    The order sees each study's mean durations (the searcher sees the plan's, then measured ones)."""
    slots = max(1, slots)
    n = len(studies)
    handed, ended, running = [0] * n, [0] * n, [0] * n
    mean_s = [statistics.fmean(s.search_s) if s.search_s else None for s in studies]
    full = [max(s.search_s, default=0.0) for s in studies]   # a full-length search trial's duration
    rank = [s.rank if s.rank is not None else quality_ranks(len(s.search_s)) for s in studies]
    pick: list[Optional[int]] = [None] * n            # the best completed full-length search trial
    contenders: list[set[int]] = [set() for _ in range(n)]   # running, past their last rung
    issued: list[dict[int, int]] = [{} for _ in range(n)]    # configuration -> its finals handed out
    finals_running: dict[int, tuple[int, int, float, float]] = {}   # seq -> (study, configuration, start, dur)
    out = Schedule(0.0, 0.0, slots)
    # (time, seq, study, search trial index, or -1: a final ends, -2: a full-length trial passed its last rung)
    events: list[tuple[float, int, int, int]] = []
    now, nxt, free, seq = 0.0, 0, slots, 0
    seen: list[int] = []

    def unissued(k: int) -> list[int]:
        """Configurations of study k with a final not handed out, one entry per missing final."""
        ahead = sorted((i for i in contenders[k] if pick[k] is None or rank[k][i] < rank[k][pick[k]]),
                       key=lambda i: rank[k][i])
        sources = ([pick[k]] if pick[k] is not None else []) + ahead
        return [i for i in sources for _ in range(studies[k].finals - issued[k].get(i, 0))]

    def finals_left(k: int) -> int:
        return (studies[k].finals if pick[k] is None else 0) + len(unissued(k))

    def hand_final(k: int) -> Optional[tuple[int, float, int]]:
        sources = unissued(k)
        if not sources:
            return None
        issued[k][sources[0]] = issued[k].get(sources[0], 0) + 1
        return k, studies[k].final_s, sources[0]

    def take() -> Optional[tuple[int, float, int, bool]]:
        nonlocal nxt
        rotated = [(nxt + i) % n for i in range(n)]
        progress = [StudyProgress(len(studies[k].search_s) - handed[k], running[k], finals_left(k),
                                  mean_s[k], studies[k].final_s or None) for k in rotated]
        due = early_finals_due(progress, order, slots) if early_finals else [False] * n
        ranked = priority(progress, order, slots, slots - free, cap)
        for j in ranked:
            k = rotated[j]
            s = studies[k]
            if handed[k] < len(s.search_s):
                handed[k] += 1
                seen.append(running[k])
                running[k] += 1
                out.peak_running[s.name] = max(out.peak_running.get(s.name, 0), running[k])
                nxt = (k + 1) % n
                return k, s.search_s[handed[k] - 1], handed[k] - 1, False
            if ended[k] == len(s.search_s) or due[j]:
                got = hand_final(k)
                if got is not None:
                    nxt = (k + 1) % n
                    return (*got, True)
        for k in [rotated[j] for j in ranked] if early_finals else ():
            got = hand_final(k) if handed[k] == len(studies[k].search_s) else None
            if got is not None:
                nxt = (k + 1) % n
                return (*got, True)
        return None

    def supersede(k: int) -> None:
        """Stop study k's running finals of a configuration that is neither its pick nor a contender."""
        nonlocal free
        keep = {pick[k], *contenders[k]}
        for q, (kk, source, start, dur) in list(finals_running.items()):
            if kk == k and source not in keep:
                del finals_running[q]
                out.busy_s -= start + dur - now
                out.superseded += 1
                out.superseded_s += now - start
                free += 1
        for source in [i for i in issued[k] if i not in keep]:
            del issued[k][source]

    while True:
        while free:
            t = take()
            if t is None:
                break
            k, dur, i, final = t
            out.busy_s += dur
            free, seq = free - 1, seq + 1
            if final:
                finals_running[seq] = (k, i, now, dur)
                heapq.heappush(events, (now + dur, seq, k, -1))
                continue
            heapq.heappush(events, (now + dur, seq, k, i))
            settled = studies[k].settled_s
            if settled is not None and dur == full[k] and settled < dur:
                seq += 1
                heapq.heappush(events, (now + settled, seq, k, -2 - i))
        if not events:
            break
        at, q, k, i = heapq.heappop(events)
        if i == -1 and finals_running.pop(q, None) is None:
            continue                                   # superseded: its slot was freed then
        now = at
        if i <= -2:
            contenders[k].add(-2 - i)
            continue
        free += 1
        name = studies[k].name
        out.end_s[name] = now
        if i >= 0:
            contenders[k].discard(i)
            if studies[k].search_s[i] == full[k] and (pick[k] is None or rank[k][i] < rank[k][pick[k]]):
                pick[k] = i
            ended[k] += 1
            running[k] -= 1
            supersede(k)
            if ended[k] == len(studies[k].search_s):
                out.search_end_s[name] = now
    out.wall_s = now
    out.running_at_handout = statistics.fmean(seen) if seen else 0.0
    return out
