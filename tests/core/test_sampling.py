"""Samplers as pure transforms: inverse-CDF edge cases, strata laws, designs."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from carv_core import (
    DESIGNS,
    InverseCDFSampler,
    PiecewiseDensity,
    continuous_from_uniforms,
    draw_uniforms,
    gaussian_noise,
    inverse_cdf,
    stratum_pmfs,
    tabulate_density,
    timesteps_from_uniforms,
)
from carv_core.testing import breakpoints
from carv_core.testing.strategies import pmfs

TOP = np.nextafter(1.0, 0.0)


# --- discrete inverse CDF: named edge cases -------------------------------------------------

def test_inverse_cdf_explicit_zeros_never_returned():
    q = np.array([0.0, 0.3, 0.0, 0.0, 0.7, 0.0])
    cdf = np.cumsum(q)
    u = np.concatenate([np.linspace(0, TOP, 10001), cdf[cdf < 1], [TOP]])
    t = inverse_cdf(cdf, u)
    assert set(np.unique(t)) == {1, 4}


def test_inverse_cdf_boundary_queries():
    cdf = np.array([0.25, 0.5, 0.75, 1.0])
    # F^{-1}(u) = min{j : F(j) > u}: a query exactly on F(j) moves to j + 1.
    assert inverse_cdf(cdf, [0.0, 0.25, 0.5, 0.75]).tolist() == [0, 1, 2, 3]
    assert inverse_cdf(cdf, [np.nextafter(0.25, 0)]).tolist() == [0]


def test_inverse_cdf_u_to_one_in_float32():
    cdf = np.cumsum(np.array([0.2, 0.8, 0.0], dtype=np.float32)).astype(np.float64)
    u = np.array([np.nextafter(np.float32(1), np.float32(0))], dtype=np.float32).astype(np.float64)
    assert inverse_cdf(cdf, u).tolist() == [1]
    assert inverse_cdf(cdf, [TOP]).tolist() == [1]


def test_inverse_cdf_last_entry_below_one():
    cdf = np.array([0.3, 0.6, 0.9999999])  # rounding left the total short of 1
    assert inverse_cdf(cdf, [TOP, 0.99999995]).tolist() == [2, 2]
    cdf = np.array([0.3, 0.6, 0.6])  # and the short total with a trailing zero
    assert inverse_cdf(cdf, [TOP]).tolist() == [1]


@given(pmfs(max_size=10), st.lists(st.floats(0.0, TOP), min_size=1, max_size=50))
def test_inverse_cdf_matches_definition(q, us):
    u = np.array(us)
    cdf = np.cumsum(q)
    t = inverse_cdf(cdf, u)
    assert np.all(q[t] > 0)
    # Where the definition is unambiguous (u away from the float total), it holds exactly.
    ok = u * cdf[-1] < cdf[-1]
    brute = np.array([np.flatnonzero(cdf > x * cdf[-1])[0] if (cdf > x * cdf[-1]).any() else -1 for x in u])
    assert np.array_equal(t[ok], brute[ok])


# --- strata laws ------------------------------------------------------------------------------

@given(pmfs(max_size=12), st.integers(1, 9))
def test_stratum_pmfs_average_to_q(q, B):
    S = stratum_pmfs(q, B)
    np.testing.assert_allclose(S.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(S.mean(axis=0), q, atol=1e-12)
    assert np.all(S[:, q == 0] == 0)


@given(pmfs(max_size=10), st.integers(1, 6))
def test_bisected_breakpoints_agree_with_stratum_formula(q, B):
    # Two independent computations of the stratum law: the closed form from the
    # CDF, and breakpoints recovered by bisection from the transform alone.
    s = InverseCDFSampler(q, q, "stratified")
    cuts = breakpoints(s, q.size)
    lo, hi = cuts[:-1], cuts[1:]
    b = np.arange(B)[:, None]
    law = B * np.clip(np.minimum(hi, (b + 1) / B) - np.maximum(lo, b / B), 0, None)
    np.testing.assert_allclose(law, stratum_pmfs(q, B), atol=1e-12)


# --- designs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("design", DESIGNS)
def test_designs_shape_range_and_strata(design):
    R, K = 3, 8
    u = draw_uniforms(design, R, K, rng=np.random.default_rng(1))
    assert u.shape == (R, K) and u.min() >= 0 and u.max() < 1
    if design in ("stratified", "systematic", "sobol"):
        assert np.array_equal(np.sort(np.floor(u * K), axis=1), np.tile(np.arange(K), (R, 1)))
    if design == "global":
        assert np.array_equal(np.floor(u * R * K).ravel(), np.arange(R * K))
    if design == "systematic":
        np.testing.assert_allclose(np.diff(u, axis=1), 1.0 / K, atol=1e-15)


@pytest.mark.parametrize("design", DESIGNS)
def test_designs_reproducible_from_rng(design):
    a = draw_uniforms(design, 2, 4, rng=np.random.default_rng(7))
    b = draw_uniforms(design, 2, 4, rng=np.random.default_rng(7))
    assert np.array_equal(a, b)


def test_sobol_warns_for_non_power_of_two():
    with pytest.warns(UserWarning, match="power of 2"):
        draw_uniforms("sobol", 1, 6, rng=0)


@pytest.mark.parametrize("design", ["sobol", "iid", "stratified"])
def test_uniform_designs_statistically_uniform(design):
    # Statistical: each slot's u is U[0,1) marginally once the slot is forgotten,
    # so mean 1/2 and second moment 1/3 to within 5 standard errors.
    u = np.concatenate([draw_uniforms(design, 64, 8, rng=np.random.default_rng(s)).ravel() for s in range(20)])
    n = u.size
    assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / n)
    assert abs((u**2).mean() - 1 / 3) < 5 * np.sqrt(4 / 45 / n)


def test_sobol_sampler_unbiased_statistically():
    # Randomized QMC has no exact law here: seeded check within 4 standard errors.
    rng = np.random.default_rng(123)
    p = np.full(50, 0.02)
    q = np.linspace(1, 3, 50)
    q /= q.sum()
    f = np.sin(np.arange(50) / 7.0) + 0.1 * np.arange(50) / 50
    est = []
    for child in rng.spawn(400):
        t, w = timesteps_from_uniforms(draw_uniforms("sobol", 1, 8, child), p, q)
        est.append(np.mean(w * f[t]))
    est = np.array(est)
    se = est.std(ddof=1) / np.sqrt(est.size)
    assert abs(est.mean() - p @ f) < 4 * se
    assert se > 0


def test_continuous_sampler_unbiased_statistically():
    edges = np.linspace(0, 1, 33)
    p = tabulate_density(lambda t: np.exp(-((t - 0.4) ** 2) / 0.05), 0.0, 1.0, 32)
    q = PiecewiseDensity(edges, np.linspace(1, 2, 32) / np.linspace(1, 2, 32).sum())
    f = lambda t: np.cos(3 * t) + t**2  # noqa: E731
    # Exact target: integrate f against the piecewise-constant p by fine quadrature.
    grid = np.linspace(0, 1, 200001)
    mid = 0.5 * (grid[1:] + grid[:-1])
    target = np.sum(f(mid) * p.pdf(mid)) * (grid[1] - grid[0])
    rng = np.random.default_rng(5)
    est = []
    for design in ("iid", "stratified"):
        vals = []
        for child in rng.spawn(300):
            t, w = continuous_from_uniforms(draw_uniforms(design, 1, 4, child), p, q)
            assert np.all((t >= 0) & (t <= 1))
            vals.append(np.mean(w * f(t)))
        vals = np.array(vals)
        se = vals.std(ddof=1) / np.sqrt(vals.size)
        assert abs(vals.mean() - target) < 4 * se
        est.append(vals.var())
    assert est[1] < est[0]  # stratification helps for this smooth integrand


def test_continuous_inverse_cdf_is_exact_inverse():
    q = PiecewiseDensity(np.array([0.0, 0.5, 2.0, 3.0]), np.array([0.2, 0.0, 0.8]))
    u = np.linspace(0, TOP, 1001)
    t, _ = continuous_from_uniforms(u, q, q)
    np.testing.assert_allclose(q.cdf(t), u, atol=1e-12)
    assert not np.any((t > 0.5) & (t < 2.0))  # the zero-mass bin is skipped


def test_gaussian_noise_antithetic_pairs():
    eps = gaussian_noise((3, 2), K=4, rng=0, antithetic=True, R=2)
    assert eps.shape == (2, 4, 3, 2)
    np.testing.assert_array_equal(eps[:, 0::2], -eps[:, 1::2])
    with pytest.raises(ValueError, match="even"):
        gaussian_noise((3,), K=3, rng=0, antithetic=True)


def test_sampler_weights_are_p_over_q():
    p = np.array([0.1, 0.2, 0.3, 0.4])
    q = np.array([0.4, 0.3, 0.2, 0.1])
    draw = InverseCDFSampler(p, q, "iid")(R=5, K=7, rng=3)
    np.testing.assert_array_equal(draw.w, (p / q)[draw.t])
