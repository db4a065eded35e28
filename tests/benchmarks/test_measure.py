"""The benchmarks' shared statistics: each standard error matches a direct Monte Carlo spread; exact bootstrap laws."""

import numpy as np
import pytest

from benchmarks.measure import ecm_estimate, ratio_se, two_level_interval


def test_paired_ratio_standard_error_matches_its_spread():
    rng = np.random.default_rng(0)
    ratios, ses = [], []
    for _ in range(2000):
        a = rng.gamma(4.0, 1.0, size=40)
        b = 0.5 * a + rng.gamma(2.0, 0.5, size=40)      # correlated, as paired replicates can be
        r, se = ratio_se(a, b)
        ratios.append(r)
        ses.append(se)
    assert np.mean(ses) == pytest.approx(np.std(ratios), rel=0.1)


def test_ecm_and_its_standard_error_from_independent_variance_estimates():
    # Each variance is the mean of n squared errors (as the studies measure it); costs known.
    rng = np.random.default_rng(1)
    n, v_b, v_m, c_b, c_m = 64, 3.0, 0.5, 1.0, 2.0
    values, ses = [], []
    for _ in range(3000):
        e_b = v_b * rng.chisquare(1, n)
        e_m = v_m * rng.chisquare(1, n)
        value, se = ecm_estimate(e_b.mean(), e_b.std(ddof=1) / np.sqrt(n), c_b,
                                 e_m.mean(), e_m.std(ddof=1) / np.sqrt(n), c_m)
        values.append(value)
        ses.append(se)
    assert np.median(values) == pytest.approx(v_b * c_b / (v_m * c_m), rel=0.05)
    assert np.mean(ses) == pytest.approx(np.std(values), rel=0.1)
    assert ecm_estimate(4.0, 0.0, 1.0, 1.0, 0.0, 2.0) == (2.0, 0.0)


def test_two_level_interval():
    rng = np.random.default_rng(0)
    same = two_level_interval([[2.0] * 50, [2.0] * 50, [2.0] * 50], rng)
    assert same == (2.0, 2.0)
    # Seeds at 0, 1, 2 without sampling noise: the mean of 3 seeds drawn with replacement, whose
    # extremes (all 0 or all 2) each have probability 1/27 > 2.5 %.
    assert two_level_interval([[0.0] * 50, [1.0] * 50, [2.0] * 50], rng, draws=20000) == (0.0, 2.0)
    # Identical seeds, replicates 0 or 1: the mean of one replicate per seed, P(all 0) = 1/8.
    assert two_level_interval([[0.0, 1.0] * 25] * 3, rng, draws=20000) == (0.0, 1.0)
    # ... and each seed draws its own replicate: quartiles 1/3 and 2/3 (a shared index gives 0 and 1).
    lo, hi = two_level_interval([[0.0, 1.0] * 25] * 3, rng, level=0.5, draws=20000)
    assert (lo, hi) == pytest.approx((1 / 3, 2 / 3), abs=1e-12)
    # Seeds 0 and 10 (two seeds): P(both 0) = 1/4, so the interval is the full range [0, 10].
    assert two_level_interval([[0.0] * 9, [10.0] * 9], rng) == (0.0, 10.0)
