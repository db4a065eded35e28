"""Exact (noise-free) properties of every sampler/estimator combination.

For discrete t each sampler's law is known in closed form (design.md §2.3), so
expectations and variances are computed by enumeration and the claims are
checked to ~1e-12: unbiasedness of every affine design, the variance decomposition
Var = (sigma_b2 + sigma_w2(K)/K)/R, stratified <= i.i.d., weights averaging to
one under q, and agreement of ``exact_law`` + ``exact_moments`` with a
brute-force joint enumeration (``kit_brute_force``) for built-in designs and
random user layouts.
"""

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st
from kit_brute_force import enumerate_moments

from carv_core import InverseCDFSampler, importance_weights, oracle_proposal, weight_heuristic
from carv_core.testing import (
    between_variance,
    check_sampler,
    exact_law,
    exact_moments,
    target_mean,
    within_variance,
)
from carv_core.testing.strategies import designs, integrand_tables, layouts, pmfs, proposals_for

RTOL = 1e-12


@st.composite
def problems(draw, max_T=8, max_R=3, max_K=4):
    """A target p, proposal q, integrand table f(xi, t) and sizes R, K."""
    T = draw(st.integers(1, max_T))
    p = draw(pmfs(size=T))
    kind = draw(st.sampled_from(["p", "random", "heuristic", "oracle"]))
    if kind == "p":
        q = p
    elif kind == "random":
        q = draw(proposals_for(p))
    else:
        factor = np.array(draw(st.lists(st.floats(0.1, 10.0), min_size=T, max_size=T)))
        q = weight_heuristic(p, factor) if kind == "heuristic" else oracle_proposal(p, factor)
    table = draw(integrand_tables(T))
    X = table.shape[0]
    row_probs = draw(pmfs(size=X, allow_zeros=False))
    R = draw(st.integers(1, max_R))
    K = draw(st.integers(1, max_K))
    return p, q, table, row_probs, R, K


def _close(a, b, scale):
    return abs(a - b) <= RTOL * max(1.0, scale)


@given(problems(), st.data())
def test_every_design_is_unbiased(problem, data):
    p, q, table, pi, R, K = problem
    design = data.draw(designs(K))
    report = check_sampler(InverseCDFSampler(p, q, design), p, table, R=R, K=K, row_probs=pi)
    assert report.verdict == "unbiased" and report.certified, report
    assert report.relative_bias <= RTOL, report
    assert report.bias <= report.rounding_bound, report  # exact to rounding, and the bound knows it


@given(pmfs(max_size=12), st.data())
def test_weights_average_to_one_under_q(p, data):
    q = data.draw(proposals_for(p))
    w = importance_weights(p, q)
    assert abs(float(q @ w) - 1.0) <= 1e-12
    assert np.all(w[p == 0] == 0)


@given(problems())
def test_iid_variance_matches_closed_form(problem):
    # Var G_hat = (sigma_b2 + sigma_w2 / K) / R with
    # sigma_w2 = E_xi [ sum_t q w^2 |f|^2 - |sum_t q w f|^2 ], computed directly.
    p, q, table, pi, R, K = problem
    w = importance_weights(p, q)
    f = table.reshape(table.shape[0], table.shape[1], -1)
    second = np.einsum("t,t,xtd,xtd->x", q, w**2, f, f)
    first = np.einsum("t,t,xtd->xd", q, w, f)
    sigma_w2 = float(pi @ (second - np.sum(first**2, axis=1)))
    sigma_b2 = between_variance(table, p, pi)
    law = exact_law(InverseCDFSampler(p, q, "iid"), R, K, p.size)
    var = exact_moments(law, table, pi).variance
    closed = (sigma_b2 + sigma_w2 / K) / R
    assert _close(var, closed, closed)


@given(problems(), st.data())
def test_law_of_total_variance(problem, data):
    # Per-row designs: Var G_hat = (Var_xi E[Y|xi] + E_xi Var(Y|xi)) / R, the second
    # term computed one outcome xi at a time (a different code path: X separate tables).
    p, q, table, pi, R, K = problem
    design = data.draw(designs(K).filter(lambda d: d.name != "global"))
    law = exact_law(InverseCDFSampler(p, q, design), R, K, p.size)
    var = exact_moments(law, table, pi).variance
    decomposed = (between_variance(table, p, pi) + within_variance(law, table, pi)) / R
    assert _close(var, decomposed, decomposed)


@given(problems())
def test_stratified_never_above_iid(problem):
    p, q, table, pi, R, K = problem
    var = {d: exact_moments(exact_law(InverseCDFSampler(p, q, d), R, K, p.size), table, pi).variance
           for d in ("iid", "stratified")}
    assert var["stratified"] <= var["iid"] * (1 + 1e-12) + 1e-12


@given(problems(max_K=1))
def test_global_strata_never_above_iid_when_K_is_one(problem):
    p, q, table, pi, R, _ = problem
    var = {d: exact_moments(exact_law(InverseCDFSampler(p, q, d), R, 1, p.size), table, pi).variance
           for d in ("iid", "global")}
    assert var["global"] <= var["iid"] * (1 + 1e-12) + 1e-12


# --- brute force: enumerate the joint law without the kit ------------------------------------

def _assert_matches_brute_force(sampler, p, q, table, pi, R, K):
    brute = enumerate_moments(sampler, q, R, K, table, pi, max_cases=20_000)
    assume(brute is not None)
    mean, var = brute
    w = importance_weights(p, q)
    mom = exact_moments(exact_law(sampler, R, K, p.size), table, pi)
    scale = float(np.abs(table).max() ** 2) * max(1.0, float(w.max() ** 2))
    np.testing.assert_allclose(mom.mean, mean, rtol=1e-12, atol=1e-12 * max(1.0, np.sqrt(scale)))
    assert abs(mom.variance - var) <= 1e-11 * max(1.0, scale)


@given(problems(max_T=4, max_R=2, max_K=4), st.data())
def test_exact_moments_equal_brute_force_enumeration(problem, data):
    p, q, table, pi, R, K = problem
    sampler = InverseCDFSampler(p, q, data.draw(designs(K)))
    _assert_matches_brute_force(sampler, p, q, table, pi, R, K)
    np.testing.assert_allclose(exact_moments(exact_law(sampler, R, K, p.size), table, pi).mean,
                               target_mean(table, p, pi), atol=1e-11 * max(1.0, float(np.abs(table).max())))


@given(problems(max_T=4, max_R=2, max_K=2), st.data())
def test_user_layouts_equal_brute_force_enumeration(problem, data):
    # Any valid Layout (jitters shared within and across rows, mirrored slots, uneven
    # strata): the law is exact even when the design is biased.
    p, q, table, pi, R, K = problem
    sampler = InverseCDFSampler(p, q, data.draw(layouts(R, K)))
    _assert_matches_brute_force(sampler, p, q, table, pi, R, K)


def test_stratification_strictly_helps_a_monotone_integrand():
    # A concrete case where stratification must win: f increasing in t, one upstream outcome.
    T = 10
    p = np.full(T, 0.1)
    table = np.arange(T, dtype=float)[None, :]
    var = {d: exact_moments(exact_law(InverseCDFSampler(p, p, d), 1, 5, T), table).variance
           for d in ("iid", "stratified", "systematic")}
    assert abs(var["iid"] - 8.25 / 5) < 1e-12  # Var of U{0..9} is 8.25
    assert var["stratified"] < var["iid"] / 4
    assert var["systematic"] < var["iid"] / 4


def test_oracle_proposal_minimises_iid_variance():
    # q* = p sqrt(m) / Z minimises sum_t p^2 m / q: compare with many other proposals, one xi.
    rng = np.random.default_rng(0)
    T = 12
    p = rng.dirichlet(np.ones(T))
    f = rng.normal(size=(1, T, 3)) * np.linspace(0.1, 3, T)[None, :, None]
    m = np.sum(f[0] ** 2, axis=1)
    q_star = oracle_proposal(p, m)

    def var(q):
        return exact_moments(exact_law(InverseCDFSampler(p, q, "iid"), 1, 1, T), f).variance

    v_star = var(q_star)
    for _ in range(50):
        assert v_star <= var(rng.dirichlet(np.ones(T))) + 1e-12
    assert v_star < var(p)
