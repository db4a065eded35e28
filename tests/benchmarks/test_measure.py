"""The benchmarks' shared statistics: each standard error matches a direct Monte Carlo spread."""

import numpy as np
import pytest

from benchmarks.measure import ecm_estimate, ratio_se


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
