"""The public test kit catches biased samplers and passes unbiased ones."""

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given

from carv_core import InverseCDFSampler, TimestepDraw, inverse_cdf, stratum_pmfs, uniform_timesteps
from carv_core.testing import check_sampler, exact_law
from carv_core.testing.strategies import pmfs, proposals_for
from buggy_samplers import DensityAsWeight  # noqa: E402

T = 20
P = uniform_timesteps(T, 0.1, 0.9)
Q = np.where(P > 0, np.linspace(1, 3, T), 0)
Q = Q / Q.sum()
TABLE = np.stack([np.sin(np.arange(T) / 3.0), np.arange(T) / T])[:, :, None] * [1.0, -2.0]




@dataclass(frozen=True)
class AnnealedT:
    """A deterministic annealed timestep (t fixed by the schedule, not drawn)."""

    step: int = 12
    design: str = "iid"

    def transform(self, u):
        return TimestepDraw(np.full(np.shape(u), self.step), np.ones(np.shape(u)))


@dataclass(frozen=True)
class ForgotWeights:
    """Draws from q but never reweights (w = 1)."""

    design: str = "iid"

    def transform(self, u):
        t = inverse_cdf(np.cumsum(Q), u)
        return TimestepDraw(t, np.ones(np.shape(u)))


@pytest.mark.parametrize("sampler", [DensityAsWeight(Q), AnnealedT(), ForgotWeights()],
                         ids=["density-as-weight", "annealed-t", "forgot-weights"])
def test_kit_catches_biased_samplers(sampler):
    report = check_sampler(sampler, P, TABLE, R=2, K=4)
    assert not report.unbiased
    assert report.bias > 1e-3


@pytest.mark.parametrize("design", ["iid", "stratified", "global", "systematic"])
def test_kit_passes_unbiased_samplers(design):
    report = check_sampler(InverseCDFSampler(P, Q, design), P, TABLE, R=2, K=4)
    assert report.unbiased and report.relative_bias < 1e-12


def test_kit_rejects_non_monotone_transform():
    @dataclass(frozen=True)
    class Shuffled:
        design: str = "iid"

        def transform(self, u):
            t = (np.floor(np.asarray(u) * T).astype(int) * 7) % T
            return TimestepDraw(t, np.ones(np.shape(u)))

    with pytest.raises(ValueError, match="non-decreasing"):
        check_sampler(Shuffled(), P, TABLE)


def test_kit_rejects_sobol_design():
    with pytest.raises(ValueError, match="not affine: cannot be enumerated exactly; check it statistically"):
        exact_law(InverseCDFSampler(P, Q, "sobol"), 1, 4, T)


@given(pmfs(max_size=9), pmfs(max_size=9))
def test_kit_law_for_stratified_matches_closed_form(p, q_raw):
    q = q_raw if q_raw.size == p.size else p
    q = np.where(p > 0, np.maximum(q, 1e-3), q)
    q = q / q.sum()
    K = 3
    law = exact_law(InverseCDFSampler(p, q, "stratified"), 1, K, p.size)
    S = stratum_pmfs(q, K)
    for blk in law.blocks:
        k = int(blk.slots[0, 1])
        dense = np.bincount(blk.t[:, 0], weights=blk.probs, minlength=p.size)
        np.testing.assert_allclose(dense, S[k], atol=1e-12)


@given(pmfs(max_size=8).flatmap(lambda p: proposals_for(p).map(lambda q: (p, q))))
def test_kit_flags_density_as_weight_whenever_it_matters(pq):
    # For a generic integrand the bug is caught unless q/p happens to be constant.
    p, q = pq

    @dataclass(frozen=True)
    class Buggy:
        design: str = "iid"

        def transform(self, u):
            t = inverse_cdf(np.cumsum(q), u)
            return TimestepDraw(t, q[t])

    table = np.arange(1.0, p.size + 1)[None, :]
    report = check_sampler(Buggy(), p, table, K=2)
    exact_expectation = float(np.sum(q * q * table[0]))
    assert abs(report.expectation[0] - exact_expectation) < 1e-12 * max(1, exact_expectation)
    # The bias relative to the RMS of f under p, computed here independently of the kit.
    relative = abs(exact_expectation - float(p @ table[0])) / np.sqrt(float(p @ table[0] ** 2))
    if relative > 1e-9:
        assert report.verdict == "biased" and not report.unbiased
    elif relative < 1e-11:
        assert report.unbiased


def test_kit_resolves_tiny_breakpoints():
    # Regression: the weight heuristic on T = 1000 puts CDF breakpoints near 1e-4,
    # where a fixed number of halvings left the cut several ulps high.
    from carv_core import make_schedule, sds_weight, weight_heuristic

    sched = make_schedule("scaled_linear", 1000, 0.00085, 0.012)
    p = uniform_timesteps(1000)
    q = weight_heuristic(p, sds_weight("sds", sched))
    law = exact_law(InverseCDFSampler(p, q, "stratified"), 1, 8, 1000)
    S = stratum_pmfs(q, 8)
    for blk in law.blocks:
        dense = np.bincount(blk.t[:, 0], weights=blk.probs, minlength=1000)
        np.testing.assert_allclose(dense, S[int(blk.slots[0, 1])], atol=1e-12)
