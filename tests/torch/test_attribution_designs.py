"""The D-TRAK timestep designs as sampler objects, judged by the exact test kit.

``FixedGrid`` (D-TRAK's ``range(0, T, T // K)``) is a quadrature: its exact law is a
point mass on the grid, and it is biased for integrands that are not constant on the
grid's cells. ``Systematic`` (the grid shifted by one uniform) is exactly unbiased for
every integrand, and when $K \\mid T$ it is the grid plus a shift uniform on
$\\{0, \\dots, T/K - 1\\}$, so it is D-TRAK-compatible.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import carv_core
from carv_core.designs import Systematic
from carv_core.testing import check_sampler, exact_law, exact_moments
from carv_core import FixedGrid
from carv_torch.sampling import InverseCDFSampler


def uniform(T):
    return np.full(T, 1.0 / T)


@pytest.mark.parametrize("T,K", [(1000, 4), (1000, 10), (1000, 64), (12, 5), (7, 7)])
def test_fixed_grid_draws_the_dtrak_grid_on_both_backends(T, K):
    p = uniform(T)
    core = carv_core.InverseCDFSampler(p, p, FixedGrid(T))
    want = [k * (T // K) for k in range(K)]
    for seed in range(5):
        assert core(R=3, K=K, rng=seed).t.tolist() == [want] * 3
    pt = torch.from_numpy(p)
    tt = InverseCDFSampler(pt, pt, FixedGrid(T))(3, K, torch.Generator().manual_seed(0))
    assert tt.t.tolist() == [want] * 3 and torch.equal(tt.w, torch.ones_like(tt.w))
    if T % K == 0:
        assert want == list(range(0, T, T // K))


def test_fixed_grid_law_is_a_point_mass_and_its_bias_is_the_quadrature_error():
    T, K = 12, 3
    p = uniform(T)
    rng = np.random.default_rng(0)
    table = rng.normal(size=(2, T))
    grid = carv_core.InverseCDFSampler(p, p, FixedGrid(T))
    report = check_sampler(grid, p, table, R=1, K=K)
    assert report.verdict == "biased"
    # Exactly the quadrature's error: E ghat = mean of f on the grid, G = mean of f.
    on_grid = table[:, [0, 4, 8]].mean(1)
    np.testing.assert_allclose(report.expectation, on_grid.mean(), rtol=1e-12)
    assert report.variance == pytest.approx(np.var(on_grid), rel=1e-9)   # only the row (x) varies
    law = exact_law(grid, 1, K, T)
    mom = exact_moments(law, np.ones((1, T)))
    np.testing.assert_allclose(mom.mean, 1.0)


@pytest.mark.parametrize("T,K", [(1000, 4), (1000, 64), (12, 4), (12, 5), (9, 2)])
def test_systematic_design_is_exactly_unbiased(T, K):
    p = uniform(T)
    rng = np.random.default_rng(T * 100 + K)
    table = rng.normal(size=(3, T, 2)) * rng.gamma(1.0, size=(1, T, 1))
    report = check_sampler(carv_core.InverseCDFSampler(p, p, Systematic()), p, table, R=2, K=K)
    assert report.verdict == "unbiased" and report.certified, report
    grid = check_sampler(carv_core.InverseCDFSampler(p, p, FixedGrid(T)), p, table, R=2, K=K)
    assert grid.verdict == "biased"


@pytest.mark.parametrize("K", [4, 10, 40])
def test_systematic_is_the_grid_plus_one_uniform_shift_when_K_divides_T(K):
    T = 1000
    p = torch.full((T,), 1.0 / T, dtype=torch.float64)
    draw = InverseCDFSampler(p, p, Systematic())(4000, K, torch.Generator().manual_seed(1))
    shift = draw.t[:, :1]
    assert torch.equal(draw.t - shift, torch.arange(0, T, T // K).expand(4000, K))
    # The shift's law, exactly: uniform on {0, ..., T/K - 1} (indicator integrands of t_0).
    law = exact_law(carv_core.InverseCDFSampler(p.numpy(), p.numpy(), Systematic()), 1, K, T)
    for j in (0, T // K // 2, T // K - 1):
        f = np.zeros((1, T))
        f[0, j] = 1.0                       # counts slot 0 at j (other slots never reach j < T/K)
        assert exact_moments(law, f).mean[0] * K == pytest.approx(K / T, rel=1e-12)


def test_fixed_grid_rejects_more_slots_than_steps():
    with pytest.raises(ValueError, match="K must be <= n_timesteps = 5"):
        FixedGrid(5).checked_layout(1, 6)
    with pytest.raises((ValueError, TypeError), match="n_timesteps"):
        FixedGrid(0)
