"""Uncertainty of reported accuracies: 95% intervals for one run, for a mean over seeds, and for the paired
difference of two methods on the same test images.

Pure numpy (no torch, Ray or fair). Accuracies are in percent. The per-image outcomes come from a record's
`test_outcomes` (docs/record.md): `ids_sha` (which test images, in which order), `n` (how many) and
`correct` (base64 of the bits, image i is bit i, most significant bit of each byte first: numpy.packbits).

- `wilson`: the Wilson score interval of a binomial proportion (one run's accuracy on n test images).
- `seeds_interval`: the mean over seeds with an interval that covers both seed-to-seed variation and the
  sampling of the test images: a bootstrap that resamples test images (the same draw for every seed, as
  the seeds share the images) and then seeds. Without per-image outcomes, `seeds_interval_analytic`
  combines the two variances: s^2/k + p(1-p)/n (normal quantile; with 3 seeds it is approximate).
- `paired_difference`: method A minus method B on the same test images, each averaged over its seeds; a
  bootstrap that resamples images (paired: one draw for both), which removes the variance the two share.
"""
from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from results.errors import ResultsError

Z95 = 1.959963984540054          # the two-sided 95% normal quantile
N_BOOT = 2000                    # bootstrap resamples
BOOT_SEED = 0                    # fixed: the same records give the same table


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95% interval (percent or points)."""

    estimate: float
    low: float
    high: float

    def excludes(self, value: float = 0.0) -> bool:
        """Whether `value` lies outside the interval (e.g. a difference that clears zero)."""
        return value < self.low or value > self.high


def wilson(correct: int, n: int, z: float = Z95) -> Interval:
    """Wilson score interval of `correct` successes in `n` trials, in percent."""
    if n <= 0 or not 0 <= correct <= n:
        raise ResultsError(f"cannot make an interval of {correct} correct out of {n}; need 0 <= correct <= n, n > 0")
    p = correct / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(100 * p, 100 * max(0.0, center - half), 100 * min(1.0, center + half))


def wilson_of_accuracy(accuracy: float, n: int) -> Interval:
    """The Wilson interval of an accuracy (percent) measured on `n` images."""
    return wilson(round(accuracy / 100 * n), n)


def decode_outcomes(outcomes: dict) -> np.ndarray:
    """The per-image correctness (bool array) of a record's `test_outcomes`."""
    try:
        n = int(outcomes["n"])
        bits = np.unpackbits(np.frombuffer(base64.b64decode(outcomes["correct"]), dtype=np.uint8))
    except (KeyError, TypeError, ValueError) as e:
        raise ResultsError(f"test_outcomes is malformed ({type(e).__name__}: {e}); re-collect the records") from None
    if len(bits) < n:
        raise ResultsError(f"test_outcomes holds {len(bits)} bits for n={n} images; re-collect the records")
    return bits[:n].astype(bool)


def encode_outcomes(correct: Sequence[bool]) -> str:
    """The base64 text of `correct` as `test_outcomes.correct` holds it (for tests and tools)."""
    return base64.b64encode(np.packbits(np.asarray(correct, dtype=bool)).tobytes()).decode("ascii")


def _as_matrix(outcomes: Sequence[np.ndarray]) -> np.ndarray:
    """Seeds × images (float) of equal-length outcome vectors."""
    if not len(outcomes):
        raise ResultsError("no per-image outcomes to make an interval from")
    lengths = {len(o) for o in outcomes}
    if len(lengths) != 1:
        raise ResultsError(f"per-image outcomes of different lengths {sorted(lengths)}: the runs were not "
                           "evaluated on the same test images")
    return np.asarray(np.stack(outcomes), dtype=np.float64)


def _image_draws(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """n_boot × n counts: how often each image appears in each bootstrap resample of the images."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def _percentile(stats: np.ndarray, estimate: float) -> Interval:
    low, high = np.percentile(stats, [2.5, 97.5])
    return Interval(estimate, float(low), float(high))


def seeds_interval(outcomes: Sequence[np.ndarray], n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> Interval:
    """Mean accuracy (percent) over seeds with a 95% interval for seeds and test-set sampling together.

    `outcomes`: one correctness vector per seed, all over the same test images in the same order. Each
    resample draws the images (one draw for all seeds), then the seeds, and averages; percentile interval.
    """
    m = _as_matrix(outcomes)
    rng = np.random.default_rng(seed)
    k, n = m.shape
    per_seed = _image_draws(n, n_boot, rng) @ m.T / n                    # n_boot × k accuracies
    pick = rng.integers(0, k, size=(n_boot, k)) if k > 1 else np.zeros((n_boot, 1), dtype=int)
    stats = 100 * np.take_along_axis(per_seed, pick, axis=1).mean(axis=1)
    return _percentile(stats, 100 * float(m.mean()))


def seeds_interval_analytic(accuracies: Sequence[float], n_test: int) -> Interval:
    """Mean accuracy (percent) over seeds with a normal 95% interval whose variance adds the seeds' (s^2/k)
    and the test sampling's (p(1-p)/n): for runs that carry no per-image outcomes."""
    acc = np.asarray(accuracies, dtype=np.float64)
    if not len(acc) or n_test <= 0:
        raise ResultsError("an interval needs at least one accuracy and a test size above 0")
    mean = float(acc.mean())
    p = mean / 100
    var = (float(acc.var(ddof=1)) / len(acc) if len(acc) > 1 else 0.0) + 1e4 * p * (1 - p) / n_test
    half = Z95 * math.sqrt(var)
    return Interval(mean, mean - half, mean + half)


def paired_difference(a: Sequence[np.ndarray], b: Sequence[np.ndarray], n_boot: int = N_BOOT,
                      seed: int = BOOT_SEED) -> Interval:
    """Accuracy of A minus accuracy of B (points), each averaged over its seeds, with a paired bootstrap
    95% interval: images are resampled with one draw shared by A and B."""
    return mean_paired_difference([(a, b)], n_boot, seed)


def mean_paired_difference(pairs: Sequence[tuple[Sequence[np.ndarray], Sequence[np.ndarray]]],
                           n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> Interval:
    """The mean over datasets of A minus B (points), one (A outcomes, B outcomes) pair per dataset; each
    dataset's images are resampled on their own, with one draw shared by A and B (a paired bootstrap)."""
    if not pairs:
        raise ResultsError("no datasets to compare two methods on")
    rng = np.random.default_rng(seed)
    stats, estimate = np.zeros(n_boot), 0.0
    for a, b in pairs:
        ma, mb = _as_matrix(a), _as_matrix(b)
        if ma.shape[1] != mb.shape[1]:
            raise ResultsError(f"cannot pair {ma.shape[1]} and {mb.shape[1]} test images: the two methods were "
                               "not evaluated on the same test images")
        d = ma.mean(axis=0) - mb.mean(axis=0)                            # per image, seeds averaged
        stats += _image_draws(len(d), n_boot, rng) @ d / len(d)
        estimate += float(d.mean())
    k = len(pairs)
    return _percentile(100 * stats / k, 100 * estimate / k)
