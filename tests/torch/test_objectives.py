"""End-to-end unbiasedness of the SDS/DMD/attribution estimators against exact gradients.

Ground truth: a single-Gaussian teacher has $\\hat\\epsilon$ affine in $x_t$, so
$\\mathbb E_\\epsilon[\\hat\\epsilon(\\alpha x + \\sigma\\epsilon)] = \\sigma\\alpha(x - \\mu)/v$ exactly,
and the expectation over the discrete $t$ is an exact sum. The upstream
randomness $\\xi$ is a camera drawn from a finite set, so $G = \\frac1C\\sum_c J_c^\\top \\bar g(x_c)$
is exact too. Seeds are fixed (derandomized); tolerances are in standard errors.
"""

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from carv_torch import objectives  # noqa: E402
from carv_torch.distributions import uniform_timesteps  # noqa: E402
from carv_torch.proposals import AdaptiveProposal, weight_heuristic  # noqa: E402
from carv_torch.renderers import GridRenderer, orbit_cameras  # noqa: E402
from carv_torch.schedules import DiscreteSchedule  # noqa: E402
from carv_torch.teachers import GaussianMixtureTeacher  # noqa: E402
from carv_torch.weighting import sds_weight  # noqa: E402

torch.set_num_threads(1)
DT = torch.float64
T = 20
ABAR = torch.linspace(0.98, 0.05, T, dtype=DT)
P = uniform_timesteps(T, 0.1, 0.9).to(DT)
MU = torch.tensor([[0.3, -0.2, 0.1, 0.5]], dtype=DT)
S2 = torch.tensor([[0.5, 1.0, 2.0, 0.8]], dtype=DT)
N_SEEDS = 300
Z_MAX = 4.5  # per-coordinate bound in standard errors (6 coordinates, derandomized seeds)


def exact_sds_mean(x, mu, s2, weighting="sds", include_alpha=True):
    """sum_t p(t) w_sds(t) alpha_t E_eps[eps_hat - eps] for a single Gaussian, shape like x."""
    sched = DiscreteSchedule(ABAR)
    w = sds_weight(weighting, sched, include_alpha=include_alpha)
    a, s = sched.alpha, sched.sigma
    flat = x.reshape(x.shape[0], -1)
    out = torch.zeros_like(flat)
    for t in torch.nonzero(P).ravel().tolist():
        v = a[t] ** 2 * s2 + s[t] ** 2
        out = out + P[t] * w[t] * s[t] * a[t] * (flat - mu) / v
    return out.reshape(x.shape)


class LinearUpstream:
    """x_c = tanh(A_c theta), shape (1, 2, 2), for cameras c = 0..2."""

    def __init__(self):
        g = torch.Generator().manual_seed(7)
        self.A = torch.randn(3, 4, 6, generator=g, dtype=DT) * 0.5
        self.theta = torch.randn(6, generator=g, dtype=DT)

    def render(self, theta, cams):
        return torch.tanh(self.A[cams] @ theta).reshape(-1, 1, 2, 2)

    def exact(self, g_of_x):
        theta = self.theta.clone().requires_grad_(True)
        x = self.render(theta, torch.arange(3))
        (x * g_of_x(x.detach())).sum().div(3).backward()
        return theta.grad


def run_seeds(upstream, estimate, n_seeds=N_SEEDS, R=2):
    grads = []
    for seed in range(n_seeds):
        gen = torch.Generator().manual_seed(1000 + seed)
        cams = torch.randint(0, 3, (R,), generator=gen)
        theta = upstream.theta.clone().requires_grad_(True)
        x = upstream.render(theta, cams)
        est = estimate(x, gen)
        est.loss.backward()
        grads.append(theta.grad)
    return torch.stack(grads)


def z_scores(samples, exact):
    mean = samples.mean(0)
    se = samples.std(0) / samples.shape[0] ** 0.5
    return (mean - exact) / se


SDS_REPORT = {}


@pytest.mark.parametrize("proposal", ["uniform", "weight", "adaptive"])
@pytest.mark.parametrize("design", ["iid", "stratified", "global", "sobol"])
def test_sds_unbiased_every_sampler_and_proposal(design, proposal):
    teacher = GaussianMixtureTeacher(MU, S2, ABAR)
    up = LinearUpstream()
    exact = up.exact(lambda x: exact_sds_mean(x, MU, S2))
    w_sds = sds_weight("sds", DiscreteSchedule(ABAR))
    adaptive = AdaptiveProposal(P, n_bins=4, decay=0.5, delta=0.2)
    antithetic = design in ("stratified", "sobol")

    def estimate(x, gen):
        if proposal == "uniform":
            q = P
        elif proposal == "weight":
            q = weight_heuristic(P, w_sds, 0.1)
        else:
            q = adaptive.proposal()  # fixed before the draw
        est = objectives.sds(teacher, x, K=4, p=P, q=q, design=design, antithetic=antithetic,
                             generator=gen)
        if proposal == "adaptive":
            adaptive.update(est.t, est.sq_norm)  # updated after it
        return est

    z = z_scores(run_seeds(up, estimate), exact)
    SDS_REPORT[(design, proposal)] = z.abs().max().item()
    assert z.abs().max() < Z_MAX, f"{design}/{proposal}: bias in standard errors {z.tolist()}"


def test_sds_unbiased_through_renderer_with_mixture_teacher():
    # A two-component mixture (eps_hat non-linear in x_t): exact sum over t,
    # a large antithetic eps sample per t for the reference.
    g = torch.Generator().manual_seed(3)
    r = GridRenderer(6, 6, 8, generator=g, dtype=DT)
    D = 3 * 6 * 6
    teacher = GaussianMixtureTeacher(0.5 * torch.randn(2, D, generator=g, dtype=DT),
                                     torch.tensor([0.3, 0.6], dtype=DT), ABAR)
    cams = orbit_cameras(torch.tensor([0.0, 2.0, 4.0], dtype=DT), torch.tensor([0.2, -0.1, 0.3], dtype=DT))
    sched = DiscreteSchedule(ABAR)
    w = sds_weight("sds", sched)
    with torch.no_grad():
        x_all = r(cams)
        ref = torch.zeros_like(x_all)
        half = torch.randn(4000, *x_all.shape[1:], generator=g, dtype=DT)
        eps = torch.cat([half, -half])
        for t in torch.nonzero(P).ravel().tolist():
            for c in range(3):
                xt = sched.alpha[t] * x_all[c] + sched.sigma[t] * eps
                e_hat = teacher.predict_noise(xt, torch.full((eps.shape[0],), t))
                ref[c] += P[t] * w[t] * e_hat.mean(0)  # w = w(t) alpha_t
    directions = torch.randn(3, sum(p.numel() for p in r.parameters()), generator=g, dtype=DT)

    def flat_grad(loss):
        grads = torch.autograd.grad(loss, list(r.parameters()))
        return torch.cat([gr.reshape(-1) for gr in grads])

    exact = directions @ flat_grad((r(cams) * ref).sum() / 3)
    proj = []
    for seed in range(120):
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, 3, (2,), generator=gen)
        sub = orbit_cameras(torch.tensor([0.0, 2.0, 4.0], dtype=DT)[idx],
                            torch.tensor([0.2, -0.1, 0.3], dtype=DT)[idx])
        est = objectives.sds(teacher, r(sub), K=8, p=P, q=weight_heuristic(P, w, 0.1),
                             design="stratified", antithetic=True, generator=gen)
        proj.append(directions @ flat_grad(est.loss))
    z = z_scores(torch.stack(proj), exact)
    SDS_REPORT[("renderer", "weight")] = z.abs().max().item()
    assert z.abs().max() < Z_MAX, z.tolist()


def test_surrogate_gradient_is_the_chain_rule():
    teacher = GaussianMixtureTeacher(MU, S2, ABAR)
    up = LinearUpstream()
    theta = up.theta.clone().requires_grad_(True)
    x = up.render(theta, torch.tensor([0, 2, 1]))
    est = objectives.sds(teacher, x, K=3, p=P, generator=torch.Generator().manual_seed(0))
    (g_loss,) = torch.autograd.grad(est.loss, theta, retain_graph=True)
    (g_chain,) = torch.autograd.grad(x, theta, grad_outputs=est.grad / x.shape[0])
    assert torch.allclose(g_loss, g_chain, rtol=1e-12, atol=1e-14)
    # threestudio's normalisation: 0.5 * mse(x, sg(x - g), sum) / batch_size
    ts = 0.5 * F.mse_loss(x, (x - est.grad).detach(), reduction="sum") / x.shape[0]
    assert torch.allclose(est.loss, ts, rtol=1e-14)
    assert torch.allclose(est.grad_norm, est.grad.norm())


def test_sds_k1_scale_matches_mean_of_k_draws():
    # g_r is the mean over K: repeating one draw K times gives the K = 1 estimate.
    teacher = GaussianMixtureTeacher(MU, S2, ABAR)
    x = torch.randn(2, 1, 2, 2, dtype=DT, generator=torch.Generator().manual_seed(1))
    est = objectives.sds(teacher, x, K=4, p=P, generator=torch.Generator().manual_seed(2))
    sched = DiscreteSchedule(ABAR)
    w = sds_weight("sds", sched)
    draws = objectives.draw_inner(2, 4, x.shape[1:], P, P, generator=torch.Generator().manual_seed(2),
                                  dtype=DT)
    a, s = sched.alpha[draws.t], sched.sigma[draws.t]
    xt = a[..., None, None, None] * x[:, None] + s[..., None, None, None] * draws.eps
    e_hat = teacher.predict_noise(xt.reshape(8, 1, 2, 2), draws.t.reshape(-1)).reshape(draws.eps.shape)
    f = w[draws.t][..., None, None, None] * (e_hat - draws.eps)  # w = w(t) alpha_t
    assert torch.allclose(est.grad, f.mean(1), rtol=1e-12, atol=1e-14)
    assert torch.allclose(est.sq_norm, f.pow(2).flatten(2).sum(-1), rtol=1e-12)
    assert est.components is not None and est.K == 4


def test_include_alpha_false_is_threestudio_convention():
    teacher = GaussianMixtureTeacher(MU, S2, ABAR)
    x = torch.randn(2, 1, 2, 2, dtype=DT, generator=torch.Generator().manual_seed(1))
    a = objectives.sds(teacher, x, K=2, p=P, generator=torch.Generator().manual_seed(5))
    b = objectives.sds(teacher, x, K=2, p=P, include_alpha=False,
                       generator=torch.Generator().manual_seed(5))
    alpha = ABAR.sqrt()[a.t][..., None, None, None]
    assert torch.equal(a.t, b.t)
    assert a.grad.abs().sum() > 0
    # with K = 2 the per-draw factors differ, so compare draw by draw through sq_norm
    assert torch.allclose(a.sq_norm, b.sq_norm * alpha.reshape(2, 2) ** 2, rtol=1e-12)


def test_dmd_unbiased_and_descends_toward_real():
    real = GaussianMixtureTeacher(torch.zeros(1, 4, dtype=DT), 1.0, ABAR)
    fake_mu = torch.tensor([[1.0, -0.5, 0.5, 0.25]], dtype=DT)
    fake = GaussianMixtureTeacher(fake_mu, 0.5, ABAR)
    x = fake_mu.reshape(1, 1, 2, 2).expand(2, 1, 2, 2).clone()
    sched = DiscreteSchedule(ABAR)
    exact = torch.zeros(4, dtype=DT)
    for t in torch.nonzero(P).ravel().tolist():
        a, s = sched.alpha[t], sched.sigma[t]
        # E eps = s a (x - mu) / (a^2 s0^2 + s^2); x = mu_fake zeroes the fake term
        exact += P[t] * s * a * (fake_mu[0] - 0.0) / (a**2 * 1.0 + s**2)
    grads = []
    for seed in range(N_SEEDS):
        est = objectives.dmd(real, fake, x, K=4, p=P, design="stratified",
                             generator=torch.Generator().manual_seed(seed))
        grads.append(est.grad.mean(0).reshape(-1))
    z = z_scores(torch.stack(grads), exact)
    assert z.abs().max() < Z_MAX, z.tolist()
    # gradient descent on x moves it from the fake mean toward the real one
    assert float(torch.stack(grads).mean(0) @ fake_mu[0]) > 0


def test_attribution_unbiased_and_common_random_numbers():
    mu = MU.clone().requires_grad_(True)
    teacher = GaussianMixtureTeacher(mu, S2, ABAR)
    x0 = torch.tensor([[0.5, 0.1, -0.3, 1.0], [-0.4, 0.2, 0.6, 0.0]], dtype=DT)
    sched = DiscreteSchedule(ABAR)
    exact = torch.zeros(2, 4, dtype=DT)
    for t in torch.nonzero(P).ravel().tolist():
        a, s = sched.alpha[t], sched.sigma[t]
        v = a**2 * S2[0] + s**2
        c = s * a / v
        exact += P[t] * (-2 * c**2 * (x0 - MU[0])) / 4  # w = 1, D = 4
    feats = {False: [], True: []}
    for crn in (False, True):
        for seed in range(200):
            est = objectives.attribution(teacher, x0.reshape(2, 1, 2, 2), [mu], K=4, p=P,
                                         common_random_numbers=crn,
                                         generator=torch.Generator().manual_seed(seed))
            if crn:
                assert torch.equal(est.t[0], est.t[1])
            feats[crn].append(est.features)
        z = z_scores(torch.stack(feats[crn]).reshape(200, -1), exact.reshape(-1))
        assert z.abs().max() < Z_MAX, (crn, z.tolist())
    diff_var = {crn: (torch.stack(f)[:, 0] - torch.stack(f)[:, 1]).var(0).sum() for crn, f in feats.items()}
    assert diff_var[True] < 0.5 * diff_var[False]


@pytest.mark.parametrize("bad,match", [
    (dict(K=0), "K must be >= 1"),
    (dict(K=3, antithetic=True), "even"),
    (dict(K=2.0), "K must be an integer"),
])
def test_bad_arguments_raise(bad, match):
    teacher = GaussianMixtureTeacher(MU, S2, ABAR)
    x = torch.zeros(2, 1, 2, 2, dtype=DT)
    kw = dict(K=2, p=P)
    kw.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        objectives.sds(teacher, x, **kw)


def test_bad_upstream_raises():
    teacher = GaussianMixtureTeacher(MU, S2, ABAR)
    with pytest.raises(TypeError, match="x must be a floating tensor"):
        objectives.sds(teacher, torch.zeros(2, 1, 2, 2, dtype=torch.int64), K=2, p=P)
    with pytest.raises(ValueError, match="coordinates"):
        objectives.sds(teacher, torch.zeros(2, 1, 3, 3, dtype=DT), K=2, p=P)
