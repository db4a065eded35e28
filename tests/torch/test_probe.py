"""Parameter-space variance probes: split-half components and K="auto"'s probe calls.

The split-half estimator (docs: maths/variance-estimation, Proposition 6) is checked
statistically against closed-form components of a hierarchical Gaussian model with
random linear "renders"; the guidance's probe is checked exactly against the same
estimator computed the long way (one autograd call per render and half).
"""

import math

import pytest

torch = pytest.importorskip("torch")

from carv_torch import objectives  # noqa: E402
from carv_torch.estimator import split_half_components, variance_components  # noqa: E402
from carv_torch.guidance import CARVGuidance, GuidanceConfig  # noqa: E402
from carv_torch.teachers import GaussianMixtureTeacher  # noqa: E402

torch.set_num_threads(1)
DT = torch.float64
T = 50
ABAR = torch.linspace(0.99, 0.03, T, dtype=DT)


# --------------------------------------------------------------------------- the estimator


def test_split_half_components_unbiased_for_mapped_terms():
    # xi_r = (mu_r, J_r): mu_r = m + sqrt(b) N(0, I), J_r one of two matrices at random;
    # Y_rk = mu_r + sqrt(s) N(0, I); the quantity of interest is Z = J^T Y (P-dim).
    g = torch.Generator().manual_seed(7)
    D, P, R, h, N = 4, 3, 3, 2, 4000
    Js = torch.randn(2, D, P, generator=g, dtype=DT)
    m = torch.tensor([1.0, -0.5, 0.3, 2.0], dtype=DT)
    b, s = 0.7, 1.3
    fro = (Js ** 2).sum(dim=(1, 2))                       # ||J_j||_F^2
    sigma_w2 = s * fro.mean()
    mapped_mean = torch.einsum("jdp,d->jp", Js, m)        # J_j^T m
    sigma_b2 = ((mapped_mean ** 2).sum(1) + b * fro).mean() - (mapped_mean.mean(0) ** 2).sum()

    idx = torch.randint(0, 2, (N, R), generator=g)
    J = Js[idx]                                           # (N, R, D, P)
    mu = m + math.sqrt(b) * torch.randn(N, R, D, generator=g, dtype=DT)
    Y = mu[:, :, None] + math.sqrt(s) * torch.randn(N, R, 2 * h, D, generator=g, dtype=DT)
    a = torch.einsum("nrdp,nrd->nrp", J, Y[:, :, :h].mean(2))
    c = torch.einsum("nrdp,nrd->nrp", J, Y[:, :, h:].mean(2))
    est_b, est_w = [], []
    for i in range(N):
        vc = split_half_components(a[i].mean(0), c[i].mean(0), (a[i] + c[i]) / 2, h)
        est_b.append(vc.sigma_b2)
        est_w.append(vc.sigma_w2)
    for est, truth in ((torch.stack(est_b), sigma_b2), (torch.stack(est_w), sigma_w2)):
        se = est.std() / math.sqrt(N)
        assert abs(est.mean() - truth) < 4.5 * se, (est.mean().item(), truth.item(), se.item())


def test_split_half_components_with_identity_map_matches_anova_in_expectation_and_algebra():
    # With J = I and h = K/2 both estimators target the same components; the algebra:
    # MS_B = 2h S^2 and sigma_b2 = (MS_B - MS_W)/(2h) as in the ANOVA.
    Y = torch.randn(4, 6, 5, generator=torch.Generator().manual_seed(1), dtype=DT)
    h = 3
    a, c = Y[:, :h].mean(1), Y[:, h:].mean(1)
    vc = split_half_components(a.mean(0), c.mean(0), (a + c) / 2, h)
    anova = variance_components(Y)
    assert torch.allclose(vc.ms_between, anova.ms_between)     # same row means
    assert torch.allclose(vc.sigma_b2, (vc.ms_between - vc.ms_within) / (2 * h))
    assert torch.allclose(vc.sigma_w2, 0.5 * 4 * h * ((a.mean(0) - c.mean(0)) ** 2).sum())


def test_split_half_components_bad_input():
    one = torch.zeros(3, dtype=DT)
    with pytest.raises(ValueError, match="R >= 2"):
        split_half_components(one, one, torch.zeros(1, 3, dtype=DT), 1)
    with pytest.raises(ValueError, match="half_a and half_b must have shape"):
        split_half_components(torch.zeros(2, dtype=DT), one, torch.zeros(2, 3, dtype=DT), 1)
    with pytest.raises(ValueError, match="h must be"):
        split_half_components(one, one, torch.zeros(2, 3, dtype=DT), 0)
    with pytest.raises(TypeError, match="h must be an integer"):
        split_half_components(one, one, torch.zeros(2, 3, dtype=DT), 1.5)
    with pytest.raises(ValueError, match="half_a"):
        split_half_components(torch.full((3,), float("nan"), dtype=DT), one,
                              torch.zeros(2, 3, dtype=DT), 1)


# --------------------------------------------------------------------------- the guidance's probe


def teacher():
    g = torch.Generator().manual_seed(0)
    return GaussianMixtureTeacher(torch.randn(2, 12, generator=g, dtype=DT), 0.5, ABAR)


def linear_scene(R=3, P=7, seed=0):
    # theta (P,) -> x_r = W_r theta, shaped (3, 2, 2): a "render" per camera with its own Jacobian.
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(R, 12, P, generator=g, dtype=DT)
    theta = torch.randn(P, generator=g, dtype=DT).requires_grad_(True)
    return W, theta


def render(W, theta):
    return torch.einsum("rdp,p->rd", W, theta).reshape(W.shape[0], 3, 2, 2)


@pytest.mark.parametrize("K", [4, 5])
def test_probe_equals_split_half_computed_the_long_way(K):
    W, theta = linear_scene()
    cfg = GuidanceConfig(K="auto", k_init=K, k_min=2, k_max=8, probe_every=1, sampler="stratified",
                         proposal="weight", fixed_costs=(4.0, 1.0), seed=5)
    guid = CARVGuidance(teacher(), cfg)
    x = render(W, theta)
    out = guid(x, params=[theta])
    assert out["K"] == K and guid.last.probe is not None

    # The same draws, i.i.d. (a probe does not stratify), from the same generator state.
    twin = CARVGuidance(teacher(), cfg)
    p, q = twin.pmfs()
    est = objectives.sds(twin.teacher, x.detach(), K=K, p=p, q=q, design="iid",
                         weighting=cfg.weighting, include_alpha=cfg.include_alpha,
                         guidance_scale=cfg.guidance_scale, generator=twin.generator)
    assert torch.equal(guid.last.estimate.t, est.t)
    h = K // 2
    Y = est.values.reshape(3, K, -1)
    a, c = Y[:, :h].mean(1), Y[:, h:2 * h].mean(1)
    za = torch.stack([W[r].T @ a[r] for r in range(3)])        # J_r^T (half A mean), per render
    zc = torch.stack([W[r].T @ c[r] for r in range(3)])
    expected = split_half_components(za.mean(0), zc.mean(0), (za + zc) / 2, h)
    assert torch.allclose(guid.last.probe.sigma_b2, expected.sigma_b2, rtol=1e-10)
    assert torch.allclose(guid.last.probe.sigma_w2, expected.sigma_w2, rtol=1e-10)
    # the first probe seeds the accountant's running components
    assert guid.accountant.sigma_b2 == pytest.approx(float(expected.sigma_b2), rel=1e-10)
    assert guid.accountant.sigma_w2 == pytest.approx(float(expected.sigma_w2), rel=1e-10)
    # and the loss still back-propagates the ordinary estimate (the probe retained the graph)
    out["loss_sds"].backward()
    assert torch.allclose(theta.grad, sum(W[r].T @ guid.last.estimate.grad[r].reshape(-1) for r in range(3)) / 3)


def test_probe_every_and_the_design_of_each_call():
    # Probe calls draw i.i.d., the others use the configured (stratified) design: each
    # call's timesteps are reproduced from the generator state just before it.
    W, theta = linear_scene()
    cfg = GuidanceConfig(K="auto", k_init=4, k_min=4, k_max=4, probe_every=3, sampler="stratified",
                         proposal="weight", fixed_costs=(4.0, 1.0), seed=2)
    guid = CARVGuidance(teacher(), cfg)
    p, q = guid.pmfs()
    probes = []
    for _ in range(7):
        state = guid.generator.get_state()
        x = render(W, theta)
        guid(x, params=[theta])
        probe = guid.last.probe is not None
        probes.append(probe)
        for design in ("iid", "stratified"):
            est = objectives.sds(guid.teacher, x.detach(), K=4, p=p, q=q, design=design,
                                 weighting=cfg.weighting, guidance_scale=cfg.guidance_scale,
                                 generator=torch.Generator().set_state(state))
            same = torch.equal(est.t, guid.last.estimate.t)
            assert same == (design == ("iid" if probe else "stratified")), (design, probe)
    assert probes == [True, False, False, True, False, False, True]


def test_fixed_k_never_probes():
    W, theta = linear_scene()
    guid = CARVGuidance(teacher(), GuidanceConfig(K=4, probe_every=1, seed=0))
    for _ in range(3):
        guid(render(W, theta), params=[theta])
        assert guid.last.probe is None


def test_probe_warnings_and_bad_params():
    W, theta = linear_scene()
    guid = CARVGuidance(teacher(), GuidanceConfig(K="auto", probe_every=1, fixed_costs=(4.0, 1.0)))
    with pytest.warns(UserWarning, match="pass params"):
        guid(render(W, theta).detach())
    assert guid.last.probe is not None                       # x-space ANOVA fallback
    single = CARVGuidance(teacher(), GuidanceConfig(K="auto", fixed_costs=(4.0, 1.0)))
    with pytest.warns(UserWarning, match="pass params"):
        out = single(render(W[:1], theta))
    assert single.last.probe is None and out["K"] == 4
    with pytest.raises(ValueError, match="params must be a non-empty iterable"):
        guid(render(W, theta), params=[theta.detach()])
    with pytest.raises(ValueError, match="params must be a non-empty iterable"):
        guid(render(W, theta), params=[])
    with pytest.raises(TypeError, match="params must be an iterable"):
        guid(render(W, theta), params=3)
    fresh = CARVGuidance(teacher(), GuidanceConfig(K="auto", probe_every=1, fixed_costs=(4.0, 1.0)))
    with pytest.raises(ValueError, match="does not require grad"):
        fresh(render(W, theta).detach(), params=[theta])
    with pytest.raises(ValueError, match="probe_every must be >= 1, got 0"):
        GuidanceConfig(K="auto", probe_every=0)
    with pytest.raises(TypeError, match="decide_every must be an integer, got True"):
        GuidanceConfig(decide_every=True)


def test_k_auto_at_one_render_per_call_probes_in_bursts_across_steps():
    """R = 1 (threestudio's batch_size 1): bursts of 3 consecutive probe calls feed the accountant."""
    from carv_torch.probes import SingleRenderProbe

    W, theta = linear_scene(R=6, seed=3)
    cfg = GuidanceConfig(K="auto", k_init=4, k_min=2, k_max=64, probe_every=5, sampler="stratified",
                         fixed_costs=(40.0, 1.0), seed=8)
    guid = CARVGuidance(teacher(), cfg)
    opt = torch.optim.SGD([theta], lr=1e-3)
    twin, seen, observed = SingleRenderProbe(order=2), [], []
    for step in range(8):
        x = render(W[step % 6:step % 6 + 1], theta)
        state = guid.generator.get_state()
        out = guid(x, params=[theta])
        seen.append(guid.last.probe is not None)
        phase = step % 5
        if phase <= 2:  # a probe call: i.i.d. draws, and the twin sees the same values
            p, q = guid.pmfs()
            iid = objectives.sds(guid.teacher, x.detach(), K=out["K"], p=p, q=q, design="iid",
                                 weighting=cfg.weighting, guidance_scale=cfg.guidance_scale,
                                 generator=torch.Generator().set_state(state))
            assert torch.equal(iid.t, guid.last.estimate.t)
            expected = twin.observe(x, guid.last.estimate.values, [theta], step=step)
            if expected is not None:
                observed.append(expected)
                assert torch.allclose(guid.last.probe.sigma_b2, expected.sigma_b2, rtol=1e-12)
                assert guid.last.decision is not None and guid.last.decision.step == step
        opt.zero_grad()
        out["loss_sds"].backward()
        opt.step()
    # One estimate per burst, at its last call (steps 2 and 7): the window restarts after a gap.
    assert seen == [False, False, True, False, False, False, False, True]
    assert guid.accountant.sigma_w2 == pytest.approx(
        0.9 * float(observed[0].sigma_w2) + 0.1 * float(observed[1].sigma_w2), rel=1e-10)
