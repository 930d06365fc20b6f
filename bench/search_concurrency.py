"""What running many trials of one study at once costs its search: the price of `search.order: critical_path`.

    python -m bench.search_concurrency            # the grid below: ~3 minutes on 2 cores
    python -m bench.search_concurrency --quick    # 2 seeds, 12 trials: a smoke test

critical_path gives a study whose chain is the sweep's critical path every slot it can use (bench.scale's
64-slot run: food101's 80 search trials started 64 at once), so its Optuna sampler suggests most of its
trials before any has ended. This benchmark measures what that costs on bench.scale's synthetic objective
(tune.simulate: a fixed, dataset-specific optimum of paper13's FAIR search space, 12 points between the
worst and the best configuration, noise 1 point), without Ray: tune.searcher.StudySearcher with the sweep's
sampler hands out the study's trials with K of them running at once; trials end in a random order
(exponential durations); each reports its final objective. Printed per K: the true quality of the trial the
study picks (its best noisy objective), as the expected objective gain over a middling configuration in
points, mean over seeds with a 95% bootstrap interval, and the paired difference to K = 1 (sequential).
No early stopping (ASHA would stop some trials; the comparison is of the sampler's information only).
"""
from __future__ import annotations

import argparse
import heapq
import math
import random
import sys
import warnings

import numpy as np

from bench.scale import SWEEP, space_bounds

# fixed before the first run (accuracy protocol): the grid, the seeds, the study
CONCURRENCY = (1, 8, 32, 40, 48, 64)   # 1: sequential; ~8: round_robin's share on bench.scale; 64: all slots
SEEDS = tuple(range(20))
TRIALS = 80                        # bench.scale's trials per study
DATASET = "food101"                # the study critical_path runs at once on bench.scale's shape
SAMPLERS = ("tpe-multivariate", "random")   # paper13's sampler, and the floor no information gives
NOISE = 1.0
N_BOOT, BOOT_SEED = 2000, 0


def gain(q: float) -> float:
    """The objective's gain (points) over a middling configuration (quality 0.5), after the full budget."""
    from tune.simulate import ACCURACY_GAIN
    return ACCURACY_GAIN * (q - 0.5) * 2 * (1.0 - math.exp(-3.0))


def search(k: int, seed: int, sampler: str, trials: int, space, bounds: dict, epochs: int) -> tuple[float, list[int]]:
    """One study searched with `k` trials running at once: the gain of the trial it picks (its best noisy
    objective), and how many trials had ended when each one was suggested."""
    from tune.searcher import METRIC, StudySearcher
    from tune.simulate import objective, quality
    key = f"fair/{DATASET}"
    s = StudySearcher({key: space}, [key], trials, "max", sampler, seeds={key: seed})
    rng, running, seen = random.Random(seed), [], []
    now, handed, best = 0.0, 0, (-math.inf, 0.0)
    while handed < trials or running:
        if handed < trials and len(running) < k:
            tid = f"t{seed}-{handed}"
            seen.append(handed - len(running))
            heapq.heappush(running, (now + rng.expovariate(1.0), tid, s.suggest(tid)["hparams"]))
            handed += 1
            continue
        now, tid, hp = heapq.heappop(running)
        val = objective(hp, bounds, DATASET, epochs, epochs, NOISE, tid)
        s.on_trial_complete(tid, {METRIC: val, "final_val_top1": val, "epoch": epochs, "training_iteration": epochs})
        best = max(best, (val, quality(hp, bounds, DATASET)))
    return gain(best[1]), seen


def mean_interval(values: np.ndarray) -> tuple[float, float, float]:
    """Mean over seeds and its 95% percentile-bootstrap interval (resampling seeds)."""
    rng = np.random.default_rng(BOOT_SEED)
    means = values[rng.integers(0, len(values), (N_BOOT, len(values)))].mean(axis=1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.search_concurrency", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 seeds, 12 trials (smoke test)")
    a = ap.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*experimental feature")    # optuna's `group` argument
    warnings.filterwarnings("ignore", message="Define-by-run function")    # a slow suggest on a busy machine
    seeds, trials = (SEEDS[:2], 12) if a.quick else (SEEDS, TRIALS)
    from tune.sweep_config import read_sweep
    cfg = read_sweep(str(SWEEP), [])
    space, bounds, epochs = cfg.search_space("fair"), space_bounds(cfg), cfg.budget.epochs
    print(f"bench.search_concurrency: fair/{DATASET}, {trials} trials, seeds {seeds[0]}-{seeds[-1]}, objective "
          f"noise {NOISE}; gain of the picked configuration (points, mean [95% interval])")
    print(f"{'sampler':<18}{'K at once':>10}{'picked gain':>26}{'minus K=1 (paired)':>28}{'ended at suggest':>18}")
    for sampler in SAMPLERS:
        base = None
        for k in (CONCURRENCY if sampler != "random" else (1,)):
            runs = [search(min(k, trials), s, sampler, trials, space, bounds, epochs) for s in seeds]
            g = np.array([r[0] for r in runs])
            m, lo, hi = mean_interval(g)
            base = g if base is None else base
            dm, dlo, dhi = mean_interval(g - base)
            seen = float(np.mean([np.mean(r[1]) for r in runs]))
            print(f"{sampler:<18}{k:>10}{m:>10.2f} [{lo:6.2f}, {hi:6.2f}]{dm:>12.2f} [{dlo:6.2f}, {dhi:6.2f}]"
                  f"{seen:>18.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
