"""carv_core.diagnostics: the unbiased |G|^2, the noise scale, and the SGD speed-up model.

Exact tests: the estimators' expectations by enumeration over small discrete laws,
and the speed-up formula against the expected decrease of a quadratic loss computed
by enumeration (the model it is derived from), not against a restatement.
"""

import itertools
import math

import numpy as np
import pytest

from carv_core import allocation
from carv_core.diagnostics import best_speedup, gradient_sq_norm, noise_scale, predicted_speedup

# A discrete law of one row estimate u in R^2: support points and probabilities.
SUPPORT = np.array([[1.0, -2.0], [0.5, 3.0], [-1.5, 0.25]])
PROBS = np.array([0.5, 0.3, 0.2])
MEAN = PROBS @ SUPPORT


@pytest.mark.parametrize("R", [2, 3, 4])
def test_gradient_sq_norm_is_unbiased_exactly(R):
    expected = 0.0
    for idx in itertools.product(range(len(PROBS)), repeat=R):
        expected += np.prod(PROBS[list(idx)]) * gradient_sq_norm(SUPPORT[list(idx)])
    assert expected == pytest.approx(MEAN @ MEAN, rel=1e-12, abs=1e-12)
    # The naive |mean of rows|^2 is biased upwards by V/R: the test can tell the two apart.
    naive = sum(np.prod(PROBS[list(i)]) * float(SUPPORT[list(i)].mean(0) @ SUPPORT[list(i)].mean(0))
                for i in itertools.product(range(len(PROBS)), repeat=R))
    var = PROBS @ ((SUPPORT - MEAN) ** 2).sum(1)
    assert naive == pytest.approx(MEAN @ MEAN + var / R, rel=1e-12)


def test_speedup_is_the_quadratic_models_progress_per_second():
    """On L(θ) = (L/2)|θ|², Ĝ = G + noise: E L(θ - η*Ĝ) by enumeration gives Δ = |G|²/(2L(1 + B))."""
    Lsm, theta = 2.0, np.array([0.3, -0.4])
    G = Lsm * theta
    noise = SUPPORT - MEAN                          # mean zero, trace covariance var

    def decrease(V_scale):
        # Ĝ = G + sqrt(V_scale) * noise; V = V_scale * var; the best step for this V.
        var = V_scale * (PROBS @ (noise ** 2).sum(1))
        eta = (G @ G) / (Lsm * (G @ G + var))
        after = sum(p * 0.5 * Lsm * np.sum((theta - eta * (G + math.sqrt(V_scale) * n)) ** 2)
                    for p, n in zip(PROBS, noise))
        return 0.5 * Lsm * theta @ theta - after, var

    sb, sw, c_u, c_d = 0.7, 2.9, 5.0, 0.5
    for (R0, K0), (R1, K1) in (((2, 1), (1, 8)), ((1, 4), (3, 2)), ((2, 2), (2, 16))):
        V0, V1 = (allocation.predicted_variance(R, K, sb, sw) for R, K in ((R0, K0), (R1, K1)))
        base = PROBS @ (noise ** 2).sum(1)
        d0, v0 = decrease(V0 / base)
        d1, v1 = decrease(V1 / base)
        assert v0 == pytest.approx(V0) and v1 == pytest.approx(V1)
        assert d0 == pytest.approx((G @ G) / (2 * Lsm * (1 + V0 / (G @ G))), rel=1e-10)
        C0, C1 = allocation.cost(R0, K0, c_u, c_d) + 0.3, allocation.cost(R1, K1, c_u, c_d) + 0.3
        got = predicted_speedup(R0, K0, R1, K1, sigma_b2=sb, sigma_w2=sw, grad_sq_norm=float(G @ G),
                                c_u=c_u, c_d=c_d, overhead=0.3)
        assert got.speedup == pytest.approx((d1 / C1) / (d0 / C0), rel=1e-10)
        assert got.noise_scale == pytest.approx(V1 / (G @ G))


def test_limits_ecm_and_cost_ratio():
    kw = dict(sigma_b2=1.0, sigma_w2=8.0, c_u=8.0, c_d=1.0)
    p = predicted_speedup(2, 1, 1, 8, grad_sq_norm=0.0, **kw)
    assert p.speedup == pytest.approx(p.ecm) and p.noise_scale == math.inf
    assert p.ecm == pytest.approx(allocation.ecm(4.5, 18.0, 2.0, 16.0))
    p = predicted_speedup(2, 1, 1, 8, grad_sq_norm=1e12, **kw)
    assert p.speedup == pytest.approx(18.0 / 16.0, rel=1e-9)     # only the cost ratio is left


def test_best_speedup_is_the_grid_argmax():
    kw = dict(sigma_b2=0.4, sigma_w2=6.0, c_u=3.0, c_d=0.2, overhead=1.5)
    for g in (0.0, 0.05, 1.0, 50.0):
        best = best_speedup(2, 1, grad_sq_norm=g, R_max=8, K_max=12, **kw)
        grid = [predicted_speedup(2, 1, R, K, grad_sq_norm=g, **kw) for R in range(1, 9) for K in range(1, 13)]
        top = max(s.speedup for s in grid)
        assert best.speedup == pytest.approx(top, rel=1e-12)
        assert best.speedup >= 1.0 - 1e-12            # the current configuration is on the grid
    # With an overhead a larger batch pays when the noise dominates, and not when it does not.
    assert best_speedup(1, 1, grad_sq_norm=0.0, R_max=8, K_max=12, **kw).R >= \
        best_speedup(1, 1, grad_sq_norm=50.0, R_max=8, K_max=12, **kw).R


def test_noise_scale_and_bad_input():
    assert noise_scale(3.0, 1.5) == 2.0
    assert noise_scale(3.0, -0.1) == math.inf
    with pytest.raises(ValueError, match="variance"):
        noise_scale(-1.0, 1.0)
    with pytest.raises(ValueError, match=r"rows must have shape \(R, P\) with R >= 2"):
        gradient_sq_norm([[1.0, 2.0]])
    with pytest.raises(ValueError, match="rows must be finite"):
        gradient_sq_norm([[1.0, np.nan], [0.0, 1.0]])
    with pytest.raises(ValueError, match="overhead"):
        predicted_speedup(1, 1, 1, 2, sigma_b2=1.0, sigma_w2=1.0, grad_sq_norm=1.0, c_u=1.0, c_d=1.0, overhead=-1)
    with pytest.raises(ValueError, match="all 0"):
        predicted_speedup(1, 1, 1, 2, sigma_b2=0.0, sigma_w2=0.0, grad_sq_norm=0.0, c_u=1.0, c_d=1.0)
    with pytest.raises(ValueError, match="K_max"):
        best_speedup(1, 1, sigma_b2=1.0, sigma_w2=1.0, grad_sq_norm=1.0, c_u=1.0, c_d=1.0, K_max=0)
