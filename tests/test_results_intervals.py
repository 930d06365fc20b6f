"""results/intervals.py on cases whose answers are known: a binomial proportion, a constructed paired case."""
import math

import numpy as np
import pytest

from results.errors import ResultsError
from results.intervals import (decode_outcomes, encode_outcomes, paired_difference, seeds_interval,
                               seeds_interval_analytic, wilson)


def test_wilson_matches_the_textbook_values():
    iv = wilson(50, 100)                       # p = 0.5, n = 100: 0.4038 .. 0.5962 (Wilson 1927)
    assert iv.estimate == 50
    assert iv.low == pytest.approx(40.38, abs=0.01) and iv.high == pytest.approx(59.62, abs=0.01)
    zero = wilson(0, 10)                       # no successes: the interval starts at 0 and is not empty
    assert zero.low == 0 and zero.high == pytest.approx(27.75, abs=0.01)
    with pytest.raises(ResultsError, match="0 <= correct <= n"):
        wilson(11, 10)


def test_bootstrap_of_one_seed_is_the_binomial_interval():
    n, p = 1000, 0.8
    correct = np.zeros(n, dtype=bool)
    correct[: int(p * n)] = True
    iv = seeds_interval([correct])
    w = wilson(800, n)
    assert iv.estimate == pytest.approx(80.0)
    assert iv.low == pytest.approx(w.low, abs=0.3) and iv.high == pytest.approx(w.high, abs=0.3)
    assert iv.high - iv.low == pytest.approx(2 * 1.96 * math.sqrt(0.16 / n) * 100, rel=0.1)


def test_seed_spread_widens_the_interval():
    n = 1000
    base = np.zeros(n, dtype=bool)
    base[:800] = True
    same = seeds_interval([base, base, base])
    spread = [np.roll(base, 0), base.copy(), base.copy()]
    spread[1][800:840] = True                  # 84%
    spread[2][760:800] = False                 # 76%
    wide = seeds_interval(spread)
    assert wide.estimate == pytest.approx(80.0)
    assert (wide.high - wide.low) > (same.high - same.low) + 1.0
    analytic = seeds_interval_analytic([80.0, 84.0, 76.0], n)
    assert analytic.low < 80 < analytic.high
    assert analytic.high - 80 == pytest.approx(1.96 * math.sqrt(16 / 3 + 1e4 * 0.16 / n), rel=1e-4)


def test_paired_difference_on_a_constructed_case():
    """A and B agree on 960 images; on 40 more A is right and B wrong: a gain of 4 points whose paired SE is
    sqrt(0.04 * 0.96 / 1000) = 0.62 points, far narrower than two unpaired binomial intervals."""
    n = 1000
    b = np.zeros(n, dtype=bool)
    b[:700] = True
    a = b.copy()
    a[700:740] = True
    d = paired_difference([a, a], [b])
    assert d.estimate == pytest.approx(4.0)
    half = 1.96 * math.sqrt(0.04 * 0.96 / n) * 100
    assert d.low == pytest.approx(4.0 - half, abs=0.25) and d.high == pytest.approx(4.0 + half, abs=0.25)
    assert d.excludes(0)
    unpaired = wilson(740, n).high - wilson(740, n).low
    assert d.high - d.low < unpaired / 2

    swapped = b.copy()                          # A right on 20 images B misses, B right on 20 A misses
    swapped[700:720] = True
    swapped[:20] = False
    tie = paired_difference([swapped], [b])
    assert tie.estimate == pytest.approx(0.0) and not tie.excludes(0)
    same = paired_difference([a], [a])
    assert (same.low, same.estimate, same.high) == (0.0, 0.0, 0.0)


def test_outcomes_round_trip_and_misuse():
    bits = np.array([1, 0, 1, 1, 0, 0, 0, 1, 1, 1], dtype=bool)
    back = decode_outcomes({"n": 10, "correct": encode_outcomes(bits), "ids_sha": "x"})
    assert back.tolist() == bits.tolist()
    with pytest.raises(ResultsError, match="not evaluated on the same test images"):
        paired_difference([bits], [bits[:5]])
    with pytest.raises(ResultsError, match="malformed"):
        decode_outcomes({"correct": "AA=="})
