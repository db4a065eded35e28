"""carv_torch.diagnostics: |G|^2 on the device, the cross-step GradientMonitor, the probes' ProbeNormMonitor, diagnose() on a real guidance."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import carv_core  # noqa: E402
from carv_torch import Accountant, GradientMonitor, ProbeNormMonitor, diagnose, gradient_sq_norm  # noqa: E402
from carv_torch.guidance import CARVGuidance, GuidanceConfig  # noqa: E402
from carv_torch.teachers import GaussianMixtureTeacher  # noqa: E402

DT = torch.float64
ABAR = torch.linspace(0.99, 0.03, 50, dtype=DT)


def test_gradient_sq_norm_matches_the_core():
    rows = torch.randn(5, 7, generator=torch.Generator().manual_seed(0), dtype=DT)
    assert gradient_sq_norm(rows) == pytest.approx(carv_core.gradient_sq_norm(rows.numpy()), rel=1e-12)
    assert gradient_sq_norm(rows.float()) == pytest.approx(carv_core.gradient_sq_norm(rows.numpy()), rel=1e-5)
    with pytest.raises(ValueError, match="R >= 2"):
        gradient_sq_norm(rows[:1])


def test_monitor_products_and_unbiasedness():
    p = torch.nn.Parameter(torch.zeros(3, dtype=DT))
    q = torch.nn.Parameter(torch.zeros(2, dtype=DT))
    mon = GradientMonitor([p, q], window=2000)
    g1, g2 = torch.tensor([1.0, 2.0, 0.0], dtype=DT), torch.tensor([0.5, -1.0], dtype=DT)
    p.grad = g1.clone()                       # q has no gradient: counts as zero
    assert math.isnan(mon.update()) and math.isnan(mon.grad_sq_norm)
    p.grad, q.grad = 2 * g1, g2.clone()
    assert mon.update() == pytest.approx(2 * float(g1 @ g1))
    # Statistical: Ĝ_s = G + noise_s, i.i.d.; the mean cross product is |G|^2 (not |G|^2 + V).
    gen = torch.Generator().manual_seed(1)
    G = torch.tensor([0.3, -0.2, 0.1, 0.4, 0.0], dtype=DT)
    mon = GradientMonitor([p, q], window=2000)
    products = []
    for _ in range(2001):
        g = G + torch.randn(5, generator=gen, dtype=DT)
        p.grad, q.grad = g[:3].clone(), g[3:].clone()
        out = mon.update()
        if out == out:
            products.append(out)
    se = np.std(products) * math.sqrt(3 / len(products))   # 1-dependent products: variance ≤ 3σ²/n
    assert abs(mon.grad_sq_norm - float(G @ G)) < 4 * se
    assert mon.estimate_sq_norm == pytest.approx(float(G @ G) + 5.0, rel=0.1)   # |G|^2 + V, V = 5
    p.grad = torch.tensor([math.nan, 0.0, 0.0], dtype=DT)
    with pytest.raises(ValueError, match="not finite"):
        mon.update()


def test_diagnose_a_guidance_run():
    gen = torch.Generator().manual_seed(0)
    teacher = GaussianMixtureTeacher(torch.randn(2, 12, generator=gen, dtype=DT), 0.5, ABAR)
    theta = torch.nn.Parameter(torch.rand(1, 3, 2, 2, generator=gen, dtype=DT))
    cfg = GuidanceConfig(K="auto", k_min=2, k_max=16, k_init=4, fixed_costs=(4.0, 1.0), seed=3, probe_every=1)
    g = CARVGuidance(teacher, cfg)
    mon = GradientMonitor([theta])
    with pytest.raises(ValueError, match="R and K"):
        diagnose(g, 1.0)
    for i in range(6):
        theta.grad = None
        x = theta + 0.2 * torch.rand(4, 3, 2, 2, generator=torch.Generator().manual_seed(i), dtype=DT)
        g(x, params=[theta])["loss_sds"].backward()
        mon.update()
    d = diagnose(g, mon.grad_sq_norm)
    acc = g.accountant
    assert (d.R, d.K) == (4, g.last.K)
    assert (d.sigma_b2, d.sigma_w2, d.c_u, d.c_d) == (acc.sigma_b2, acc.sigma_w2, 4.0, 1.0)
    assert d.variance == pytest.approx(carv_core.predicted_variance(4, d.K, acc.sigma_b2, acc.sigma_w2))
    assert d.best == carv_core.best_speedup(4, d.K, sigma_b2=acc.sigma_b2, sigma_w2=acc.sigma_w2,
                                            grad_sq_norm=mon.grad_sq_norm, c_u=4.0, c_d=1.0)
    assert set(d.scalars()) >= {"noise_scale", "predicted_speedup", "best_K"}
    assert all(isinstance(v, float) for v in d.scalars().values())


def test_diagnose_errors_name_what_is_missing():
    acc = Accountant(K=2, k_min=1, fixed_costs=(2.0, 1.0))
    with pytest.raises(ValueError, match="no variance components"):
        diagnose(acc, 1.0, R=2, K=2)
    acc.observe(sigma_b2=1.0, sigma_w2=4.0)
    with pytest.raises(ValueError, match="grad_sq_norm must be finite"):
        diagnose(acc, float("nan"), R=2, K=2)
    with pytest.raises(TypeError, match="CARVGuidance or an Accountant"):
        diagnose(object(), 1.0, R=1, K=1)
    d = diagnose(acc, 0.5, R=2, K=2)
    assert d.noise_scale == pytest.approx(((1.0 + 4.0 / 2) / 2) / 0.5)


def test_diagnose_counts_a_negative_running_sigma_b2_as_zero():
    """An unbiased running sigma_B^2 can be < 0 (seen on the DMD benchmark): counted as 0, like the K choice."""
    acc = Accountant(K=2, k_min=1, fixed_costs=(2.0, 1.0))
    acc.observe(sigma_b2=-3.0, sigma_w2=4.0)
    assert acc.sigma_b2 < 0
    d = diagnose(acc, 0.5, R=2, K=2)
    assert d.sigma_b2 == 0.0 and d.variance == pytest.approx((0.0 + 4.0 / 2) / 2)
    assert d.best == carv_core.best_speedup(2, 2, sigma_b2=0.0, sigma_w2=4.0, grad_sq_norm=0.5, c_u=2.0, c_d=1.0)


def _probe_run(calls: int, probe_every: int):
    gen = torch.Generator().manual_seed(0)
    teacher = GaussianMixtureTeacher(torch.randn(2, 12, generator=gen, dtype=DT), 0.5, ABAR)
    theta = torch.nn.Parameter(torch.rand(1, 3, 2, 2, generator=gen, dtype=DT))
    cfg = GuidanceConfig(K="auto", k_min=4, k_max=4, k_init=4, fixed_costs=(4.0, 1.0), seed=3,
                         probe_every=probe_every)
    g = CARVGuidance(teacher, cfg)
    mon = ProbeNormMonitor(window=2)
    seen = []
    for i in range(calls):
        theta.grad = None
        x = theta + 0.2 * torch.rand(5, 3, 2, 2, generator=torch.Generator().manual_seed(i), dtype=DT)
        g(x, params=[theta])["loss_sds"].backward()
        seen.append((g.last, mon.update(g)))
    return g, mon, seen


def test_probe_grad_sq_norm_is_the_unbiased_norm_of_its_rows():
    """On a probe, |G|^2 from the rows u_r = J_r^T Ybar_r; here x_r = theta + c_r, so J_r = I and u_r = Ybar_r."""
    g, mon, seen = _probe_run(calls=7, probe_every=3)
    probes = [(last, v) for last, v in seen if last.probe is not None]
    assert len(probes) == 3                                  # calls 0, 3, 6
    for last, value in probes:
        u = last.estimate.values.mean(1).reshape(5, -1).numpy()   # K = 4: both halves are all draws
        s = u.sum(0)
        want = (s @ s - (u * u).sum()) / (5 * 4)
        assert float(last.grad_sq_norm) == pytest.approx(want, rel=1e-10) and value == pytest.approx(want, rel=1e-10)
    assert all(last.grad_sq_norm is None and math.isnan(v) for last, v in seen if last.probe is None)
    # The window holds the last two probes' values.
    assert mon.count == 2 and mon.grad_sq_norm == pytest.approx((probes[1][1] + probes[2][1]) / 2, rel=1e-12)


def test_probe_norm_monitor_errors():
    mon = ProbeNormMonitor()
    assert math.isnan(mon.grad_sq_norm) and mon.count == 0
    with pytest.raises(TypeError, match="CARVGuidance"):
        mon.update(object())
    with pytest.raises(ValueError, match="window"):
        ProbeNormMonitor(window=0)
