"""Proposals: heuristic, oracle, defensive mixture bound, adaptive proposal state."""

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from carv_core import (
    AdaptiveProposal,
    InverseCDFSampler,
    defensive_mixture,
    importance_weights,
    make_schedule,
    oracle_proposal,
    sds_weight,
    uniform_timesteps,
    weight_heuristic,
)
from carv_core.testing import check_sampler
from carv_core.testing.strategies import pmfs


def test_weight_heuristic_is_p_times_w_sds():
    s = make_schedule("scaled_linear", 1000, 0.00085, 0.012)
    p = uniform_timesteps(1000)
    w = sds_weight("sds", s)
    q = weight_heuristic(p, w)
    np.testing.assert_allclose(q, p * w / np.sum(p * w), rtol=1e-14)
    assert np.all(q[p == 0] == 0)


@given(st.integers(1, 15).flatmap(lambda n: st.tuples(pmfs(size=n), pmfs(size=n))), st.floats(0.01, 1.0))
def test_defensive_mixture_bounds_weights(pair, delta):
    q_hat, p = pair
    q = defensive_mixture(q_hat, p, delta)
    w = importance_weights(p, q)
    assert w.max() <= 1.0 / delta * (1 + 1e-12)


def test_oracle_zero_moment_where_p_positive_needs_mixture():
    p = np.array([0.5, 0.5])
    with pytest.raises(ValueError, match="zero mass at index 1"):
        oracle_proposal(p, [1.0, 0.0])
    q = oracle_proposal(p, [1.0, 0.0], delta=0.1)
    assert q[1] == pytest.approx(0.05)


def test_adaptive_converges_to_oracle_and_respects_delta():
    T = 40
    p = np.full(T, 1 / T)
    m = np.linspace(1, 100, T) ** 2  # E|f|^2 | t
    ap = AdaptiveProposal(p, n_bins=T, decay=0.5, delta=0.2)
    rng = np.random.default_rng(0)
    for _ in range(30):
        t = rng.integers(0, T, size=200)
        ap.update(t, m[t])
    expected = 0.8 * oracle_proposal(p, m) + 0.2 * p
    np.testing.assert_allclose(ap.proposal(), expected, rtol=1e-12)
    assert importance_weights(p, ap.proposal()).max() <= 1 / 0.2 + 1e-12


def test_adaptive_proposal_is_unbiased_at_every_state():
    # Whatever it has learnt, a frozen adaptive q gives an exactly unbiased sampler.
    T = 12
    p = uniform_timesteps(T, 0.1, 0.9)
    ap = AdaptiveProposal(p, n_bins=4, decay=0.3, delta=0.1)
    rng = np.random.default_rng(1)
    table = rng.normal(size=(3, T, 2))
    for _ in range(5):
        t = rng.choice(T, size=10, p=p)
        ap.update(t, rng.exponential(size=10) * (1 + t))
        report = check_sampler(InverseCDFSampler(p, ap.proposal(), "stratified"), p, table, R=2, K=3)
        assert report.unbiased, report


def test_adaptive_state_round_trips_through_json():
    p = np.full(10, 0.1)
    ap = AdaptiveProposal(p, n_bins=5, decay=0.7, delta=0.05)
    ap.update([0, 3, 9, 9], [1.0, 4.0, 9.0, 16.0])
    clone = AdaptiveProposal.from_state_dict(json.loads(json.dumps(ap.state_dict())))
    assert np.array_equal(clone.proposal(), ap.proposal())
    ap.update([1, 2], [5.0, 6.0])
    clone.update([1, 2], [5.0, 6.0])
    assert np.array_equal(clone.proposal(), ap.proposal())
    with pytest.raises(ValueError, match="n_bins"):
        AdaptiveProposal(p, n_bins=2).load_state_dict(ap.state_dict())
