"""Issue 10: best_allocation without a loop over K (exactly the loop's answer, tie-break
included), and allocation maths that neither overflows to inf/NaN nor names the wrong argument."""

import math
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carv_core import best_allocation, ecm, k_star, optimal_k, predict, predicted_variance, reuse_ceiling


def brute_force(budget, c_u, c_d, sb, sw, k_max):
    """Every K from 1 to k_max with its largest affordable R; least (variance, cost), first K."""
    best = None
    for K in range(1, k_max + 1):
        R = int(budget // (c_u + K * c_d))
        if R < 1:
            break
        key = ((sb + sw / K) / R, R * (c_u + K * c_d))
        if best is None or key < best[0]:
            best = (key, R, K)
    (variance, cost_), R, K = best
    return (R, K, variance, cost_)


def _check(budget, c_u, c_d, sb, sw, k_max):
    got = best_allocation(budget, c_u, c_d, sb, sw, k_max)
    assert tuple(got) == brute_force(budget, c_u, c_d, sb, sw, k_max)
    assert type(got.R) is int and type(got.K) is int


components = st.one_of(st.just(0.0), st.floats(1e-6, 1e6), st.sampled_from([5e-324, 1e-300, 1.0, 2.0]))


@given(st.floats(1.0, 500.0), st.floats(1e-3, 1e3), st.floats(1e-3, 1e3), components, components,
       st.integers(1, 60))
def test_best_allocation_equals_the_loop(units, c_u, c_d, sb, sw, k_max):
    _check(units * (c_u + c_d), c_u, c_d, sb, sw, k_max)


# Small integer grids make exact ties in variance and in cost common: the tie-break must match.
grid = st.sampled_from([0.25, 0.5, 1.0, 2.0, 3.0, 7.0])


@given(st.integers(2, 400).map(float), grid, grid, st.sampled_from([0.0, 1.0, 2.0, 1e-20, 1e20]),
       st.sampled_from([0.0, 1.0, 3.0, 1e-20, 1e20]), st.integers(1, 80))
def test_best_allocation_equals_the_loop_on_tie_heavy_grids(budget, c_u, c_d, sb, sw, k_max):
    if budget >= c_u + c_d:
        _check(budget, c_u, c_d, sb, sw, k_max)


@settings(max_examples=15)
@given(st.floats(1.0, 3e4), st.floats(1e-2, 1e4), st.floats(1e-2, 1e2), components, components,
       st.integers(1000, 20000))
def test_best_allocation_equals_the_loop_at_larger_k_max(units, c_u, c_d, sb, sw, k_max):
    _check(units * (c_u + c_d), c_u, c_d, sb, sw, k_max)


@pytest.mark.parametrize("case", [
    (50000.0, 1e4, 1.0, 1.0, 1e4, 20000),     # few steps of R, each thousands of K long
    (92500.0, 1e4, 1.0, 1.0, 1e4, 20000),
    (1000.0, 1.0, 0.01, 0.0, 1.0, 20000),     # sigma_b2 = 0: K* is unbounded
    (1e5, 3.0, 0.5, 0.0, 0.0, 20000),         # no variance at all: the cheapest allocation
    (1e5, 3.0, 0.5, 2.0, 0.0, 20000),         # sigma_w2 = 0: K = 1
    (188289088.374394, 22049.18835723441, 1221.498614659578, 0.12774082084589733, 8657825968.627277, 2000),
])
def test_best_allocation_equals_the_loop_on_named_cases(case):
    _check(*case)


def test_best_allocation_at_k_max_one_million_is_not_a_loop():
    # The loop took ~2 s (17 s on a slower machine) at k_max = 10**6 and would take hours at
    # 10**9; the search takes well under a millisecond. The bound is generous on purpose.
    for k_max in (10**6, 10**9):
        for args in ((1e12, 8.0, 1.0, 1.0, 8.0), (1e12, 1.0, 1e-6, 1.0, 1e6), (1e7, 1e4, 1.0, 1.0, 1e4)):
            start = time.perf_counter()
            alloc = best_allocation(*args, k_max=k_max)
            assert time.perf_counter() - start < 1.0, (args, k_max)
            assert 1 <= alloc.K <= k_max and alloc.cost <= args[0]
    alloc = best_allocation(1e12, 8.0, 1.0, 1.0, 8.0, k_max=10**6)
    assert (alloc.K, alloc.R) == (8, 62_500_000_000)


def test_best_allocation_rejects_budgets_that_buy_more_than_float64_samples():
    # budget // (c_u + c_d) is inf: the loop raised OverflowError from int(inf).
    with pytest.raises(ValueError, match="budget = 1e"):
        best_allocation(1e308, c_u=1e-3, c_d=1e-3, sigma_b2=1.0, sigma_w2=1.0)
    with pytest.raises(ValueError, match="k_max"):
        best_allocation(1e300, c_u=1.0, c_d=1.0, sigma_b2=0.0, sigma_w2=1.0, k_max=2**60)


# --- over- and underflow, argument names ---------------------------------------------------

def test_k_star_is_finite_when_only_an_intermediate_overflows():
    assert k_star(8.0, 1.0, 1.0, 1e308) == pytest.approx(math.sqrt(8.0) * 1e154, rel=1e-12)
    assert k_star(8.0, 1e-300, 1.0, 8.0) == pytest.approx(8e150, rel=1e-12)
    assert k_star(1e-300, 1.0, 1e300, 1.0) == pytest.approx(1e-300, rel=1e-12)  # underflow
    assert k_star(8.0, 1.0, 1.0, 8.0) == 8.0  # the plain formula, bit for bit, when it fits
    assert k_star(1e308, 1e-308, 1e-308, 1e308) == math.inf  # K* itself beyond float64


def test_optimal_k_with_a_huge_but_finite_k_star():
    K = optimal_k(c_u=1e308, c_d=1.0, sigma_b2=1.0, sigma_w2=5.0)
    assert 10**154 < K < 10**155
    with pytest.raises(ValueError, match="exceeds float64"):
        optimal_k(1e308, 1e-308, 1e-308, 1e308)
    assert optimal_k(1e308, 1e-308, 1e-308, 1e308, k_max=7) == 7
    # (sb + sw/K)(c_u + K c_d) overflows for both neighbours of K*, yet the better one wins.
    # K* = 2.9: K = 3 gives 15.21e600 < 15.62e600 for K = 2 (a tie of two infs picked 2).
    assert optimal_k(1e300, 1e300, 1e300, 8.41e300) == 3
    assert optimal_k(8.0, 1.0, 1.0, 5.0) == 6  # unchanged: floor/ceil of K* = 6.32


def test_predict_names_r0_and_k0():
    with pytest.raises(ValueError, match="R0 must be >= 1, got 0"):
        predict(1, 8, 8.0, 1.0, 1.0, 8.0, R0=0)
    with pytest.raises(TypeError, match="K0 must be an integer"):
        predict(1, 8, 8.0, 1.0, 1.0, 8.0, K0=True)


def test_predict_and_ecm_never_return_nan_from_overflowing_products():
    # c_d = 1e308: both costs overflow to inf, but ECM = (4.5 * 2 * 1e308) / (2 * 8e308) = 9/16.
    pred = predict(1, 8, c_u=8.0, c_d=1e308, sigma_b2=1.0, sigma_w2=8.0)
    assert pred.cost == math.inf
    assert pred.ecm == pytest.approx(9 / 16, rel=1e-12)
    assert ecm(1e300, 1e300, 1e300, 1e300) == pytest.approx(1.0, rel=1e-12)
    assert ecm(1e300, 1e-300, 1e-300, 1e300) == pytest.approx(1.0, rel=1e-12)
    assert ecm(4.0, 1.0, 1.0, 2.0) == 2.0
    # A variance that underflows to 0 is not an infinite ECM.
    pred = predict(10**300, 1, 1.0, 1.0, 1e-300, 0.0, R0=1)
    # V = 1e-600 -> 0, C = 2e300, V0 = 1e-300, C0 = 2: ECM = 2e-300 / 2e-300 = 1.
    assert pred.variance == 0.0 and pred.ecm == pytest.approx(1.0, rel=1e-9)
    assert predict(2, 4, 1.0, 1.0, 0.0, 0.0).ecm == 1.0  # no variance anywhere: no gain


def test_variance_and_reuse_ceiling_survive_an_overflowing_sum():
    assert predicted_variance(4, 1, 1e308, 1e308) == pytest.approx(5e307, rel=1e-12)
    assert reuse_ceiling(1e308, 1e308) == 2.0
    assert reuse_ceiling(1.0, 8.0) == 9.0
