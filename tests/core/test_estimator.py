"""The hierarchical estimator, its variance estimates, and Welford accumulation."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from carv_core import InverseCDFSampler, Welford, hierarchical_estimate, variance_components
from carv_core.testing import between_variance, exact_law, exact_moments, within_variance

finite = st.floats(-1e3, 1e3)


@given(arrays(np.float64, st.tuples(st.integers(2, 5), st.integers(1, 4), st.integers(1, 3)), elements=finite),
       st.data())
def test_estimate_is_weighted_grand_mean(values, data):
    R, K = values.shape[:2]
    w = data.draw(arrays(np.float64, (R, K), elements=st.floats(0, 10)))
    est = hierarchical_estimate(values, w)
    Y = values * w[:, :, None]
    np.testing.assert_allclose(est.mean, Y.mean(axis=(0, 1)), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(est.row_means, Y.mean(axis=1), rtol=1e-12, atol=1e-9)
    expected = np.var(Y.mean(axis=1), axis=0, ddof=1).sum() / R
    assert abs(est.variance - expected) <= 1e-9 * max(1.0, expected)


@given(arrays(np.float64, st.tuples(st.integers(2, 5), st.integers(2, 4), st.integers(1, 3)), elements=finite))
def test_anova_identity(values):
    # Sum of squares decomposes: total SS = K * between SS + within SS.
    R, K = values.shape[:2]
    vc = variance_components(values)
    total = np.sum((values - values.mean(axis=(0, 1))) ** 2)
    assert abs(vc.ms_between * (R - 1) + vc.ms_within * R * (K - 1) - total) <= 1e-8 * max(1.0, total)
    assert abs(vc.sigma_b2 - (vc.ms_between - vc.ms_within) / K) <= 1e-9 * max(1.0, abs(vc.sigma_b2))


def test_single_upstream_sample_has_undefined_variance():
    est = hierarchical_estimate(np.ones((1, 3, 2)))
    assert np.isnan(est.variance)
    with pytest.raises(ValueError, match="R >= 2 and K >= 2"):
        variance_components(np.ones((1, 3)))


# --- statistical: unbiasedness of the variance estimators -------------------------------------

def _problem():
    rng = np.random.default_rng(2024)
    T, X = 16, 5
    p = np.full(T, 1 / T)
    q = np.linspace(1.0, 2.0, T)
    q /= q.sum()
    table = rng.normal(size=(X, T, 2)) + np.linspace(0, 2, T)[None, :, None]
    return p, q, table


def _simulate(design, R, K, n_rep, seed):
    p, q, table = _problem()
    sampler = InverseCDFSampler(p, q, design)
    rng = np.random.default_rng(seed)
    est_var, sb, sw = [], [], []
    for child in rng.spawn(n_rep):
        xi = child.integers(0, table.shape[0], size=R)
        t, w = sampler(R, K, child)
        values = table[xi[:, None], t]
        est = hierarchical_estimate(values, w)
        est_var.append(est.variance)
        vc = variance_components(values, w)
        sb.append(vc.sigma_b2)
        sw.append(vc.sigma_w2)
    return np.array(est_var), np.array(sb), np.array(sw)


def _within_se(samples, truth, n_se=4.5):
    se = samples.std(ddof=1) / np.sqrt(samples.size)
    return abs(samples.mean() - truth) <= n_se * se, (samples.mean(), truth, se)


def test_anova_unbiased_for_iid_inner_draws():
    p, q, table = _problem()
    R, K = 4, 3
    law = exact_law(InverseCDFSampler(p, q, "iid"), R, K, p.size)
    sigma_b2 = between_variance(table, p)
    sigma_w2 = K * within_variance(law, table)
    _, sb, sw = _simulate("iid", R, K, 3000, seed=11)
    ok_b, info_b = _within_se(sb, sigma_b2)
    ok_w, info_w = _within_se(sw, sigma_w2)
    assert ok_b, info_b
    assert ok_w, info_w


@pytest.mark.parametrize("design", ["iid", "stratified", "systematic"])
def test_variance_estimate_from_upstream_means_unbiased(design):
    p, q, table = _problem()
    R, K = 4, 4
    truth = exact_moments(exact_law(InverseCDFSampler(p, q, design), R, K, p.size), table).variance
    est_var, _, _ = _simulate(design, R, K, 3000, seed=12)
    ok, info = _within_se(est_var, truth)
    assert ok, info


def test_anova_within_is_conservative_under_stratification():
    # Under stratification MS_W also counts spread between strata: E[sigma_w2_hat]
    # exceeds the stratified within-variance K * E Var(Y_bar | xi).
    p, q, table = _problem()
    R, K = 4, 4
    law = exact_law(InverseCDFSampler(p, q, "stratified"), R, K, p.size)
    truth = K * within_variance(law, table)
    _, _, sw = _simulate("stratified", R, K, 1000, seed=13)
    se = sw.std(ddof=1) / np.sqrt(sw.size)
    assert sw.mean() - truth > 5 * se


# --- Welford ---------------------------------------------------------------------------------

@given(arrays(np.float64, st.tuples(st.integers(2, 40), st.integers(1, 4)), elements=finite),
       st.lists(st.integers(1, 7), min_size=1, max_size=10))
def test_welford_matches_two_pass(x, chunks):
    acc = Welford()
    i = 0
    for c in chunks * 10:
        if i >= len(x):
            break
        part = x[i:i + c]
        acc.update(part if part.shape[0] > 1 else part[0])
        i += c
    if i < len(x):
        acc.update(x[i:])
    assert acc.count == len(x)
    np.testing.assert_allclose(acc.mean, x.mean(axis=0), rtol=1e-10, atol=1e-9)
    expected = np.var(x, axis=0, ddof=1).sum()
    assert abs(acc.trace_cov - expected) <= 1e-8 * max(1.0, expected)
    ref = x[0]
    mse = np.mean(np.sum((x - ref) ** 2, axis=1))
    assert abs(acc.mse(ref) - mse) <= 1e-8 * max(1.0, mse)


def test_welford_state_round_trip():
    acc = Welford()
    acc.update(np.arange(12.0).reshape(4, 3))
    other = Welford()
    other.load_state_dict(acc.state_dict())
    other.update([1.0, 2.0, 3.0])
    acc.update([1.0, 2.0, 3.0])
    assert other.count == acc.count and np.array_equal(other.mean, acc.mean) and other.m2 == acc.m2
