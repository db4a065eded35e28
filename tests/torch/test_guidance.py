"""CARVGuidance: reproducibility, checkpoint/resume, K="auto", bad input."""

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import carv_core  # noqa: E402
from carv_torch import DMD, FixedProposal, Integrand, OracleProposal, objectives  # noqa: E402
from carv_torch.guidance import CARVGuidance, GuidanceConfig, scheduled_value  # noqa: E402
from carv_torch.teachers import GaussianMixtureTeacher  # noqa: E402

torch.set_num_threads(1)
DT = torch.float64
T = 50
ABAR = torch.linspace(0.99, 0.03, T, dtype=DT)


def teacher(**kw):
    g = torch.Generator().manual_seed(0)
    return GaussianMixtureTeacher(torch.randn(2, 12, generator=g, dtype=DT), 0.5, ABAR, **kw)


def images(i, B=3):
    return torch.rand(B, 3, 2, 2, generator=torch.Generator().manual_seed(100 + i), dtype=DT)


def run(guidance, steps, start=0):
    outs = []
    for i in range(start, start + steps):
        guidance.update_step(0, i)
        x = images(i).requires_grad_(True)
        out = guidance(x)
        out["loss_sds"].backward()
        est = guidance.last.estimate
        outs.append((est.t.clone(), est.w.clone(), x.grad.clone(), out["K"]))
    return outs


def assert_same(a, b):
    assert len(a) == len(b)
    for (t1, w1, g1, k1), (t2, w2, g2, k2) in zip(a, b):
        assert torch.equal(t1, t2) and torch.equal(w1, w2) and torch.equal(g1, g2) and k1 == k2


@pytest.mark.parametrize("proposal,sampler", [("adaptive", "stratified"), ("weight", "sobol"),
                                              ("uniform", "global")])
def test_checkpoint_resume_is_bit_identical(proposal, sampler):
    cfg = GuidanceConfig(proposal=proposal, sampler=sampler, K=4, antithetic=True, seed=3,
                         min_step_percent=[0, 0.3, 0.02, 6], max_step_percent=0.98)
    full = run(CARVGuidance(teacher(), cfg), 10)
    first = CARVGuidance(teacher(), cfg)
    run(first, 5)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = CARVGuidance(teacher(), cfg)
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    assert_same(full[5:], run(resumed, 5, start=5))


def test_reproducible_from_seed_and_explicit_generator():
    cfg = GuidanceConfig(proposal="adaptive", K=2, seed=11)
    assert_same(run(CARVGuidance(teacher(), cfg), 3), run(CARVGuidance(teacher(), cfg), 3))
    a, b = CARVGuidance(teacher(), cfg), CARVGuidance(teacher(), cfg)
    g1 = a(images(0), generator=torch.Generator().manual_seed(5))
    g2 = b(images(0), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.last.estimate.t, b.last.estimate.t) and torch.equal(g1["loss_sds"], g2["loss_sds"])


def test_output_dict_is_scalars_and_diagnostics_are_on_last():
    g = CARVGuidance(teacher(), GuidanceConfig(K=4))
    out = g(images(0))
    assert set(out) == {"loss_sds", "grad_norm", "variance", "min_step", "max_step", "K"}
    assert all(isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.ndim == 0)
               for v in out.values())
    assert g.last.estimate.t.shape == (3, 4) and out["loss_sds"].ndim == 0
    assert out["min_step"] == 1 and out["max_step"] == 49 and out["K"] == 4


def test_t_range_schedule():
    assert scheduled_value([0, 0.98, 0.5, 100], 50) == pytest.approx(0.74)
    assert scheduled_value([0.98, 0.5, 100], 200) == pytest.approx(0.5)
    g = CARVGuidance(teacher(), GuidanceConfig(max_step_percent=[0, 0.98, 0.5, 10], K=2))
    g.update_step(0, 10)
    out = g(images(0))
    assert out["max_step"] == 25 and int(g.last.estimate.t.max()) <= 25


def test_k_auto_moves_toward_allocator_choice_when_costs_change():
    cfg = GuidanceConfig(K="auto", k_min=2, k_max=64, k_init=4, fixed_costs=(1.0, 1.0), seed=1,
                         probe_every=1)
    g = CARVGuidance(teacher(), cfg)
    with pytest.warns(UserWarning, match="pass params"):   # x is the parameter here
        for i in range(6):
            g(images(i, B=4))
    acc = g.accountant
    cheap_k = acc.K
    assert cheap_k == min(max(carv_core.optimal_k(1.0, 1.0, max(acc.sigma_b2, 0), acc.sigma_w2, k_max=64), 2), 64)
    acc.fixed_costs = (400.0, 1.0)  # upstream becomes 400x the teacher call
    for i in range(6, 9):
        g(images(i, B=4))
    dec = g.last.decision
    expected = min(max(carv_core.optimal_k(400.0, 1.0, max(dec.sigma_b2, 0), dec.sigma_w2, k_max=64), 2), 64)
    assert dec.K == expected and acc.K > cheap_k
    assert [d.step for d in acc.history] == list(range(9))


def test_measured_costs_feed_the_accountant():
    g = CARVGuidance(teacher(), GuidanceConfig(K="auto", warmup=1))
    for i in range(4):
        x = images(i).requires_grad_(True)
        g(x, params=[x])
    assert g.accountant.c_d > 0 and g.accountant.c_u > 0


def test_bad_input():
    g = CARVGuidance(teacher(), GuidanceConfig(K=2))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        g(torch.rand(3, 12, dtype=DT))
    with pytest.raises(TypeError, match="floating"):
        g(torch.ones(3, 3, 2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="finite"):
        g(torch.full((3, 3, 2, 2), float("nan"), dtype=DT))
    with pytest.raises(ValueError, match="is on meta"):
        g(torch.rand(3, 3, 2, 2, dtype=DT, device="meta"))
    with pytest.raises(ValueError, match="K must be >= 1"):
        GuidanceConfig(K=0)
    with pytest.raises(TypeError, match="K must be an integer"):
        GuidanceConfig(K="many")
    with pytest.raises(ValueError, match="sampler"):
        GuidanceConfig(sampler="lhs")
    with pytest.raises(ValueError, match="even K"):
        GuidanceConfig(K=3, antithetic=True)


def test_wrong_generator_raises():
    import numpy as np

    g = CARVGuidance(teacher(), GuidanceConfig(K=2))
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        g(images(0), generator=np.random.default_rng(0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_generator_on_wrong_device_raises():
    g = CARVGuidance(teacher(), GuidanceConfig(K=2))
    with pytest.raises(ValueError, match="generator is on device"):
        g(images(0), generator=torch.Generator(device="cuda"))


def test_nan_from_teacher_is_reported_with_timesteps():
    bad = teacher()
    bad.means[0, 0] = float("nan")
    g = CARVGuidance(bad, GuidanceConfig(K=2))
    with pytest.raises(FloatingPointError, match="timesteps"):
        g(images(0))



def test_resume_with_another_config_is_refused():
    g = CARVGuidance(teacher(), GuidanceConfig(K=2, seed=0))
    other = CARVGuidance(teacher(), GuidanceConfig(K=4, seed=0))
    with pytest.raises(ValueError, match=r"differing fields: K \(checkpoint 2, now 4\)"):
        other.load_state_dict(g.state_dict())
    # The chunk size does not change results, so it may differ.
    CARVGuidance(teacher(), GuidanceConfig(K=2, seed=0, max_batch_size=7)).load_state_dict(g.state_dict())


def test_guidance_does_not_change_the_shared_teacher():
    shared = teacher()
    shared.max_batch_size = 1024  # as a DiffusersTeacher built elsewhere would have
    g = CARVGuidance(shared, GuidanceConfig(K=2, max_batch_size=1))
    g(images(0))
    assert shared.max_batch_size == 1024


def _mixture(shift):
    means = torch.tensor([[0.3, -0.2, 0.1, 0.0], [-0.5, 0.4, 0.0, 0.6]], dtype=DT) + shift
    return GaussianMixtureTeacher(means, 0.5, teacher().alphas_cumprod)


def test_guidance_runs_dmd_with_a_real_and_a_fake_teacher():
    real, fake = _mixture(0.0), _mixture(0.4)
    x = torch.rand(2, 1, 2, 2, generator=torch.Generator().manual_seed(9), dtype=DT).requires_grad_(True)
    g = CARVGuidance(DMD(real, fake), GuidanceConfig(K=4, proposal="weight", seed=4))
    state = g.generator.get_state()
    out = g(x)
    assert set(out) == {"loss_dmd", "grad_norm", "variance", "min_step", "max_step", "K"}
    p, q = g.pmfs()
    est = objectives.dmd(real, fake, x.detach(), K=4, p=p, q=q, design="stratified",
                         generator=torch.Generator().set_state(state))
    assert torch.equal(g.last.estimate.t, est.t) and torch.allclose(g.last.estimate.grad, est.grad)
    out["loss_dmd"].backward()
    assert torch.allclose(x.grad, est.grad / 2)


def test_guidance_runs_a_user_integrand_and_proposal_objects():
    abar = teacher().alphas_cumprod
    obj = Integrand(lambda x_t, t, eps: x_t * 0 + t.to(x_t.dtype)[:, None, None, None], abar,
                    name="tstep")
    oracle = OracleProposal(torch.linspace(1.0, 4.0, abar.shape[0], dtype=DT), delta=0.2)
    g = CARVGuidance(obj, GuidanceConfig(K=8, proposal=oracle, sampler="iid", seed=0))
    out = g(images(0))
    est = g.last.estimate
    # f is t itself: each row mean is the importance-weighted mean of its draws' t.
    assert torch.allclose(est.grad[:, 0, 0, 0], (est.w * est.t.to(DT)).mean(1))
    assert "loss_tstep" in out
    p, q = g.pmfs()
    expected = carv_core.oracle_proposal(p.numpy(), torch.linspace(1.0, 4.0, abar.shape[0]).double().numpy(), 0.2)
    assert np.allclose(q.numpy(), expected, rtol=1e-12)
    fixed = CARVGuidance(obj, GuidanceConfig(K=2, proposal=FixedProposal(q), sampler="iid"))
    assert torch.equal(fixed.pmfs()[1], q)
