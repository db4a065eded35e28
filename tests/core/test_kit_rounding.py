"""Extreme importance weights: rounding-level bias is told apart from a real one.

With max p/q ~ 1e7 the float64 inverse CDF itself is biased by ~1e-9 of the
integrand (each cell of width ~1e-8 is off by an ulp of its cut, times a weight
of 1e7). The kit reports it as "rounding-level" (``unbiased`` stays True), while a
genuinely biased sampler with the same q is still "biased". The rounding bound is
checked against an exact rational computation of the same law.
"""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from carv_core import Antithetic, InverseCDFSampler
from carv_core.testing import check_sampler, exact_law, rounding_bound
from carv_core.testing.strategies import designs
from buggy_samplers import DensityAsWeight, PlantedBias  # noqa: E402

T = 12
P = np.full(T, 1.0 / T)
Q = np.linspace(1.0, 2.0, T)
Q[[3, 7]] = 1e-7  # tiny mass at two steps: weights p/q up to 1.3e7
Q = Q / Q.sum()
TABLE = np.stack([np.cos(np.arange(T)), np.sin(np.arange(T)) + 1.0])[:, :, None]
DESIGNS = ["iid", "stratified", "systematic", "global", Antithetic(stratified=True)]






def test_the_weights_are_extreme():
    assert 1e6 < (P / Q).max() < 1e8


@pytest.mark.parametrize("design", DESIGNS, ids=str)
def test_exact_sampler_with_extreme_weights_is_rounding_level(design):
    report = check_sampler(InverseCDFSampler(P, Q, design), P, TABLE, R=2, K=4)
    assert report.verdict == "rounding-level" and report.unbiased
    assert 1e-10 < report.relative_bias < report.rounding_bound / report.scale
    assert report.resolution == report.rounding_bound / report.scale > 1e-10


@pytest.mark.parametrize("design", DESIGNS, ids=str)
def test_real_bias_with_the_same_extreme_weights_is_still_biased(design):
    exact = check_sampler(InverseCDFSampler(P, Q, design), P, TABLE, R=2, K=4)
    # A bias ten times the resolution (about 1e-7 relative) is flagged ...
    eps = 10 * exact.resolution * exact.scale / np.linalg.norm(exact.target)
    assert check_sampler(PlantedBias(P, Q, design, eps), P, TABLE, R=2, K=4).verdict == "biased"
    # ... and so is the classic bug.
    assert check_sampler(DensityAsWeight(Q), P, TABLE, R=2, K=4).verdict == "biased"


def _exact_rational_mean(cuts, w, K):
    # E G_hat of the stratified breakpoint-form law in exact rational arithmetic:
    # stratum k lands on j with probability K |[k/K, (k+1)/K) ∩ [c_j, c_{j+1})|.
    X, _, D = TABLE.shape
    c = [Fraction(float(x)) for x in cuts]
    fbar = [[sum(Fraction(float(TABLE[x, j, d])) for x in range(X)) / X for d in range(D)] for j in range(T)]
    mean = [Fraction(0)] * D
    for k in range(K):
        a, b = Fraction(k, K), Fraction(k + 1, K)
        for j in range(T):
            overlap = min(c[j + 1], b) - max(c[j], a)
            if overlap > 0:
                for d in range(D):
                    mean[d] += overlap * Fraction(float(w[j])) * fbar[j][d]  # K * overlap / K
    target = [sum(Fraction(float(P[j])) * fbar[j][d] for j in range(T)) for d in range(D)]
    return np.array([float(m - g) for m, g in zip(mean, target)])


def test_rounding_bound_covers_the_exact_rational_bias_and_the_kits_error():
    sampler = InverseCDFSampler(P, Q, "stratified")
    law = exact_law(sampler, 1, 4, T)
    report = check_sampler(sampler, P, TABLE, R=1, K=4)
    exact_bias = _exact_rational_mean(law.cuts, law.weights, 4)
    kit_bias = report.expectation - report.target
    # The float64 law really is biased at this level (it is not an artefact of the kit) ...
    assert np.linalg.norm(exact_bias) > 1e-10 * report.scale
    # ... it is within the bound, and so is the kit's error in computing it.
    assert np.linalg.norm(exact_bias) <= report.rounding_bound
    assert np.linalg.norm(kit_bias - exact_bias) <= report.rounding_bound
    assert rounding_bound(law, TABLE, P) == report.rounding_bound


@st.composite
def extreme_problems(draw):
    n = draw(st.integers(3, 16))
    p = np.array(draw(st.lists(st.floats(0.05, 1.0), min_size=n, max_size=n)))
    q = np.array(draw(st.lists(st.floats(0.05, 1.0), min_size=n, max_size=n)))
    tiny = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=3))
    q[tiny] = 10.0 ** -draw(st.floats(5.0, 10.0))
    table = np.array(draw(st.lists(st.floats(-3, 3), min_size=2 * n, max_size=2 * n))).reshape(2, n)
    K = draw(st.sampled_from([1, 2, 4]))
    return p / p.sum(), q / q.sum(), table, K, draw(designs(K))


@given(extreme_problems())
def test_exact_sampler_is_never_biased_beyond_the_rounding_bound(problem):
    p, q, table, K, design = problem
    report = check_sampler(InverseCDFSampler(p, q, design), p, table, R=2, K=K)
    assert report.unbiased, report
    assert report.bias <= report.rounding_bound, report
