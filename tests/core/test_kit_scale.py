"""The kit judges bias against the integrand's own scale, so its verdict is the same at every magnitude.

Relative bias = ||E G_hat - G|| / ||f||_{p,pi} with ||f||_{p,pi} the RMS of f under p and
the row law (never max(1, ||G||), which made the tolerance absolute for small tables).
The smallest relative bias reported as "biased" is ``rtol`` = 1e-10 at every scale of
||G|| from 1e-12 to 1e12 (one test per decade), and about 2e-14 (the rounding floor of
this problem) with ``rtol=0``; the guide's table lists both.
"""

from dataclasses import dataclass

import numpy as np
import pytest

from carv_core import InverseCDFSampler, TimestepDraw, inverse_cdf, uniform_timesteps
from carv_core.testing import check_sampler, integrand_scale, target_mean
from buggy_samplers import DensityAsWeight, PlantedBias  # noqa: E402

T = 20
P = uniform_timesteps(T, 0.1, 0.9)
Q = np.where(P > 0, np.linspace(1, 3, T), 0)
Q = Q / Q.sum()
BASE = np.stack([np.sin(np.arange(T) / 3.0), np.arange(T) / T])[:, :, None] * [1.0, -2.0]
BASE = BASE / np.linalg.norm(target_mean(BASE, P))  # ||G|| = 1
DECADES = range(-12, 13)
RTOL = 1e-10  # check_sampler's default: the documented smallest detectable relative bias






@dataclass(frozen=True)
class FlippedSign:
    """Bug: w = -p/q."""

    design: str = "stratified"

    def transform(self, u):
        t = inverse_cdf(np.cumsum(Q), u)
        return TimestepDraw(t, -(P / np.where(Q > 0, Q, 1.0))[t])


def _planted(relative, table, design="stratified"):
    # Weights times (1 + eps) bias G_hat by eps ||G||, i.e. by eps ||G|| / scale relative.
    eps = relative * integrand_scale(table, P) / np.linalg.norm(target_mean(table, P))
    return PlantedBias(P, Q, design, eps)


@pytest.mark.parametrize("decade", DECADES, ids=lambda k: f"G=1e{k:+d}")
def test_smallest_detectable_relative_bias_is_the_same_at_every_scale(decade):
    table = BASE * 10.0**decade
    exact = check_sampler(InverseCDFSampler(P, Q, "stratified"), P, table, R=2, K=4)
    assert exact.verdict == "unbiased" and exact.certified
    assert exact.resolution == RTOL  # the rounding floor (~2e-14 here) is far below rtol
    # Planted at twice the threshold: flagged, and its size is measured to 1e-4.
    flagged = check_sampler(_planted(2 * RTOL, table), P, table, R=2, K=4)
    assert flagged.verdict == "biased" and not flagged.unbiased
    assert flagged.relative_bias == pytest.approx(2 * RTOL, rel=1e-4)
    # At half the threshold it is (by design) not: the threshold is sharp.
    assert check_sampler(_planted(RTOL / 2, table), P, table, R=2, K=4).verdict == "unbiased"
    # rtol=0 leaves only the rounding bound: 1e-12 (~50x the floor) is then flagged.
    floor = check_sampler(InverseCDFSampler(P, Q, "stratified"), P, table, R=2, K=4, rtol=0)
    assert floor.unbiased and floor.resolution < 1e-13
    assert check_sampler(_planted(1e-12, table), P, table, R=2, K=4, rtol=0).verdict == "biased"


@pytest.mark.parametrize("factor", [1e-6, 1e6])
def test_density_as_weight_flagged_on_small_and_large_tables(factor):
    table = BASE * factor
    report = check_sampler(DensityAsWeight(Q), P, table, R=2, K=4)
    assert report.verdict == "biased" and not report.unbiased
    reference = check_sampler(DensityAsWeight(Q), P, BASE, R=2, K=4)
    assert report.relative_bias == pytest.approx(reference.relative_bias, rel=1e-12)
    assert report.relative_bias > 0.1


def test_sign_flip_flagged_when_G_is_tiny():
    table = BASE * 1e-11
    report = check_sampler(FlippedSign(), P, table, R=2, K=4)
    assert report.verdict == "biased"
    assert report.bias == pytest.approx(2 * np.linalg.norm(target_mean(table, P)), rel=1e-9)


def test_bias_is_caught_when_G_is_zero():
    # f has mean zero under p for every xi but not under q: ||G|| = 0, the scale is not,
    # and a sampler that forgets the weights is flagged.
    f = np.sin(np.arange(T) / 2.0) * (P > 0)
    f = f - P @ f * (P > 0)
    table = np.stack([f, 3 * f])
    assert np.linalg.norm(target_mean(table, P)) < 1e-15
    forgot = PlantedBias(P, Q, "stratified", 0.0)

    class ForgotWeights:
        design = "stratified"

        def transform(self, u):
            t, _ = forgot.transform(u)
            return TimestepDraw(t, np.ones(np.shape(u)))

    assert check_sampler(ForgotWeights(), P, table, R=2, K=4).verdict == "biased"
    assert check_sampler(InverseCDFSampler(P, Q, "stratified"), P, table, R=2, K=4).verdict == "unbiased"


def test_zero_table_is_unbiased_with_zero_scale():
    report = check_sampler(InverseCDFSampler(P, Q, "iid"), P, np.zeros((2, T)), R=1, K=2)
    assert report.scale == 0.0 and report.bias == 0.0
    assert report.verdict == "unbiased" and report.relative_bias == 0.0


def test_scale_is_the_rms_of_f_under_p_and_the_row_law():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(3, T, 2))
    pi = np.array([0.2, 0.3, 0.5])
    direct = np.sqrt(sum(pi[x] * P[t] * table[x, t] @ table[x, t] for x in range(3) for t in range(T)))
    assert integrand_scale(table, P, pi) == pytest.approx(direct, rel=1e-14)
    assert integrand_scale(table * 1e-200, P, pi) == pytest.approx(direct * 1e-200, rel=1e-14)
    assert integrand_scale(table * 1e200, P, pi) == pytest.approx(direct * 1e200, rel=1e-14)
