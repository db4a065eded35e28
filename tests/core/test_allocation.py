"""Allocation: the integer K, the budgeted (R, K), ECM and the reuse ceiling."""

import math
from fractions import Fraction

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from carv_core import (
    best_allocation,
    cost,
    ecm,
    k_star,
    optimal_k,
    predict,
    predicted_variance,
    relative_efficiency,
    reuse_ceiling,
)
from carv_core.testing.strategies import costs, variance_components


def _var_cost(K, c_u, c_d, sb, sw):
    return predicted_variance(1, K, sb, sw) * cost(1, K, c_u, c_d)


def _exact_var_cost(K, c_u, c_d, sb, sw):
    # (sigma_b2 + sigma_w2/K)(c_u + K c_d) in exact rationals (no rounding, subnormals included).
    f = Fraction
    return (f(sb) + f(sw) / K) * (f(c_u) + K * f(c_d))


@given(costs(), costs(), variance_components(), variance_components(), st.integers(1, 200))
def test_optimal_k_is_brute_force_minimiser(c_u, c_d, sb, sw, k_max):
    assume(sb > 0 or sw == 0)  # sigma_b2 = 0 < sigma_w2 is tested below: K -> k_max
    K = optimal_k(c_u, c_d, sb, sw, k_max=k_max)
    vals = [_exact_var_cost(k, c_u, c_d, sb, sw) for k in range(1, k_max + 1)]
    best = min(vals)
    assert 1 <= K <= k_max
    assert _exact_var_cost(K, c_u, c_d, sb, sw) <= best * (1 + Fraction(1, 10**12))
    # Ties go to the smaller K.
    assert K <= 1 + max(k for k, v in enumerate(vals) if v <= best * (1 + Fraction(1, 10**12)))


@given(costs(), costs(), st.floats(1e-3, 1e3), variance_components())
def test_uncapped_optimal_k_neighbours_k_star(c_u, c_d, sb, sw):
    K = optimal_k(c_u, c_d, sb, sw)
    ks = k_star(c_u, c_d, sb, sw)
    assert K in {max(1, math.floor(ks)), max(1, math.ceil(ks))}
    for other in (K - 1, K + 1):
        if other >= 1:
            assert _var_cost(K, c_u, c_d, sb, sw) <= _var_cost(other, c_u, c_d, sb, sw) * (1 + 1e-12)


def test_k_star_closed_form():
    assert k_star(8.0, 1.0, 1.0, 8.0) == 8.0
    assert k_star(1.0, 1.0, 0.0, 1.0) == math.inf
    assert k_star(1.0, 1.0, 1.0, 0.0) == 0.0
    assert optimal_k(1.0, 1.0, 1.0, 0.0) == 1
    assert optimal_k(1.0, 1.0, 0.0, 1.0, k_max=32) == 32
    with pytest.raises(ValueError, match="k_max"):
        optimal_k(1.0, 1.0, 0.0, 1.0)


@given(st.floats(1.0, 60.0), costs(), costs(), variance_components(), variance_components(),
       st.integers(1, 40))
def test_best_allocation_is_brute_force_optimum(budget_units, c_u, c_d, sb, sw, k_max):
    budget = budget_units * (c_u + c_d)
    alloc = best_allocation(budget, c_u, c_d, sb, sw, k_max)
    assert alloc.cost <= budget * (1 + 1e-12)
    brute = min(
        ((sb + sw / K) / R, R * (c_u + K * c_d))
        for K in range(1, k_max + 1)
        for R in range(1, int(budget // (c_u + K * c_d)) + 1)
    )
    assert alloc.variance <= brute[0] * (1 + 1e-12) + 1e-300


@given(st.integers(1, 8), st.integers(1, 64), costs(), costs(), st.floats(1e-3, 1e3), variance_components())
def test_predict_ecm_matches_definition(R, K, c_u, c_d, sb, sw):
    pred = predict(R, K, c_u, c_d, sb, sw)
    base_v, base_c = predicted_variance(2, 1, sb, sw), cost(2, 1, c_u, c_d)
    assert math.isclose(pred.ecm, ecm(base_v, base_c, pred.variance, pred.cost), rel_tol=1e-12)
    assert math.isclose(pred.ecm, (base_v * base_c) / (pred.variance * pred.cost), rel_tol=1e-12)


@given(st.floats(1e-3, 1e3), variance_components(), st.integers(1, 4))
def test_reuse_ceiling_is_the_limit(sb, sw, K0):
    # c_d / c_u -> 0 and K -> infinity: the predicted ECM approaches the ceiling from below.
    ceiling = reuse_ceiling(sb, sw, K0)
    approach = predict(2, 10**12, c_u=1.0, c_d=1e-18, sigma_b2=sb, sigma_w2=sw, R0=2, K0=K0).ecm
    assert approach <= ceiling * (1 + 1e-9)
    assert math.isclose(approach, ceiling, rel_tol=1e-5)


def test_relative_efficiency():
    assert relative_efficiency(3.0, 1.5) == 2.0


def test_published_scale_example():
    # With c_u/c_d = 8 and sigma_w2/sigma_b2 = 8, K* = 8 and ECM(R=1, K=8) vs (R=2, K=1)
    # is (4.5 * 18) / (2 * 16) = 2.53125, exactly.
    assert optimal_k(8.0, 1.0, 1.0, 8.0) == 8
    assert predict(1, 8, 8.0, 1.0, 1.0, 8.0).ecm == pytest.approx(2.53125, rel=1e-15)
