"""Exact (noise-free) properties of every sampler/estimator combination.

For discrete t each sampler's law is known in closed form (design.md §2.3), so
expectations and variances are computed by enumeration and the claims are
checked to ~1e-12: unbiasedness, the variance decomposition
Var = (sigma_b2 + sigma_w2(K)/K)/R, stratified <= i.i.d., weights averaging to
one under q, and agreement of the pairwise formula in ``exact_moments`` with a
brute-force enumeration of the joint law.
"""

import itertools

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from carv_core import InverseCDFSampler, importance_weights, oracle_proposal, stratum_pmfs, weight_heuristic
from carv_core.testing import (
    EXACT_DESIGNS,
    between_variance,
    check_sampler,
    exact_law,
    exact_moments,
    target_mean,
    within_variance,
)
from carv_core.testing.strategies import integrand_tables, pmfs, proposals_for

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


@given(problems(), st.sampled_from(EXACT_DESIGNS))
def test_every_design_is_unbiased(problem, design):
    p, q, table, pi, R, K = problem
    report = check_sampler(InverseCDFSampler(p, q, design), p, table, R=R, K=K, row_probs=pi)
    assert report.relative_bias <= RTOL, report


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


@given(problems(), st.sampled_from(["iid", "stratified", "systematic"]))
def test_law_of_total_variance(problem, design):
    # Per-row designs: Var G_hat = (Var_xi E[Y|xi] + E_xi Var(Y|xi)) / R, the second
    # term computed one outcome xi at a time (a different code path: X separate tables).
    p, q, table, pi, R, K = problem
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


# --- brute force: enumerate the joint law without the pairwise formula ------------------------

def _row_scenarios(design, q, w, r, R, K):
    """(prob, t_row, w_row) for row r, from the closed-form CDF, not from bisection."""
    cdf = np.cumsum(q)
    if design == "systematic":
        cuts = (K * cdf[None, :-1] - np.arange(K)[:, None]).ravel()
        cuts = np.unique(np.concatenate([[0.0, 1.0], cuts[(cuts > 0) & (cuts < 1)]]))
        out = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            u = (np.arange(K) + 0.5 * (a + b)) / K
            t = np.searchsorted(cdf, u * cdf[-1], side="right")
            out.append((b - a, t, w[t]))
        return out
    if design == "iid":
        laws = [q] * K
    elif design == "stratified":
        laws = list(stratum_pmfs(q, K))
    else:
        laws = list(stratum_pmfs(q, R * K)[r * K:(r + 1) * K])
    supports = [np.flatnonzero(law > 0) for law in laws]
    out = []
    for combo in itertools.product(*supports):
        t = np.array(combo)
        out.append((float(np.prod([laws[k][t[k]] for k in range(K)])), t, w[t]))
    return out


@given(problems(max_T=4, max_R=2, max_K=3), st.sampled_from(EXACT_DESIGNS))
def test_exact_moments_equal_brute_force_enumeration(problem, design):
    p, q, table, pi, R, K = problem
    w = importance_weights(p, q)
    f = table.reshape(table.shape[0], table.shape[1], -1)
    mean, var = 0.0, 0.0
    for r in range(R):
        # Rows are independent in every exact design: enumerate (xi, row scenario).
        probs, ys = [], []
        for prob, t, wt in _row_scenarios(design, q, w, r, R, K):
            for x in range(f.shape[0]):
                probs.append(prob * pi[x])
                ys.append((wt[:, None] * f[x, t]).mean(axis=0))
        probs, ys = np.array(probs), np.array(ys)
        m = probs @ ys
        mean = mean + m / R
        var += float(probs @ np.sum((ys - m) ** 2, axis=1)) / R**2
    law = exact_law(InverseCDFSampler(p, q, design), R, K, p.size)
    mom = exact_moments(law, table, pi)
    scale = float(np.abs(f).max() ** 2) * max(1.0, float(w.max() ** 2))
    np.testing.assert_allclose(mom.mean, mean, rtol=1e-12, atol=1e-12 * max(1.0, np.sqrt(scale)))
    assert abs(mom.variance - var) <= 1e-11 * max(1.0, scale)
    np.testing.assert_allclose(mom.mean, target_mean(table, p, pi), atol=1e-11 * max(1.0, np.sqrt(scale)))


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
