"""One sampler protocol end to end: what the kit certifies is what sds, dmd and the guidance run.

A user writes a new design (antithetic pairs of uniforms) and a new transform
(a tempered inverse CDF, $q \\propto p^\\gamma$) in a few lines each, certifies them
exactly with :mod:`carv_core.testing`, and runs them unchanged on tensors. For the
same uniforms every backend lands on the core's timesteps, and the torch draw of the
design equals the core's layout applied to the same jitters.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import carv_core  # noqa: E402
import carv_torch  # noqa: E402
from carv_core import BreakpointSampler, Design, InverseCDFSampler, Layout, apply_layout  # noqa: E402
from carv_core.testing import check_sampler  # noqa: E402
from carv_torch import CARVGuidance, GaussianMixtureTeacher, GuidanceConfig  # noqa: E402


class PairedUniforms(Design):
    """Slots 2m and 2m+1 of a row share one jitter: u = xi and 1 - xi."""

    name = "paired"

    def layout(self, R, K):
        r, k = np.meshgrid(np.arange(R), np.arange(K), indexing="ij")
        return Layout(block=r * (K // 2) + k // 2, offset=k % 2, sign=np.where(k % 2, -1, 1),
                      denom=np.ones((R, K), dtype=np.int64), n_blocks=R * (K // 2))


class Tempered(BreakpointSampler):
    """t ~ q with q proportional to p**gamma (weights p/q): a transform written as breakpoints."""

    def __init__(self, p, gamma, design):
        q = np.where(p > 0, p, 0.0) ** gamma
        q /= q.sum()
        cuts = np.minimum(np.concatenate([[0.0], np.cumsum(q)]), 1.0)
        cuts[-1] = 1.0
        super().__init__(cuts, np.divide(p, q, out=np.zeros_like(p), where=q > 0), design)


T = 40
ABAR = torch.linspace(0.995, 0.02, T, dtype=torch.float64)


def target():
    p = np.zeros(T)
    p[3:37] = np.linspace(1.0, 3.0, 34)
    return p / p.sum()


@pytest.fixture(scope="module")
def samplers():
    p = target()
    return {"design": InverseCDFSampler(p, carv_core.weight_heuristic(p, np.linspace(0.1, 1, T), 0.2),
                                        PairedUniforms()),
            "transform": Tempered(p, 0.3, "stratified"),
            "both": Tempered(p, 0.3, PairedUniforms())}


@pytest.mark.parametrize("name", ["design", "transform", "both"])
def test_the_kit_certifies_the_user_sampler(samplers, name):
    table = np.random.default_rng(0).normal(size=(5, T, 3))
    report = check_sampler(samplers[name], target(), table, R=2, K=4)
    assert report.unbiased and getattr(report, "certified", True)


def test_the_kit_catches_a_biased_user_design():
    class Lopsided(Design):  # both slots in the lower half: strata do not cover [0, 1)
        name = "lopsided"

        def layout(self, R, K):
            ones = np.ones((R, K), dtype=np.int64)
            return Layout(np.arange(R * K).reshape(R, K), 0 * ones, ones, 2 * ones, R * K)

    p = target()
    table = np.random.default_rng(1).normal(size=(3, T))
    assert not check_sampler(InverseCDFSampler(p, p, Lopsided()), p, table, R=1, K=2).unbiased


def test_torch_draw_of_a_user_design_is_the_core_layout(device):
    gen = torch.Generator(device=device).manual_seed(3)
    xi = torch.rand(2 * 3, generator=torch.Generator(device=device).manual_seed(3),
                    device=device, dtype=torch.float64)
    u = carv_torch.draw_uniforms(PairedUniforms(), 2, 6, gen, device=device)
    expected = apply_layout(PairedUniforms().checked_layout(2, 6), xi.cpu().numpy())
    assert np.array_equal(u.cpu().numpy(), expected)
    assert torch.allclose(u[:, 1::2], 1 - u[:, ::2], atol=1e-15)


@pytest.mark.parametrize("name", ["design", "transform", "both"])
def test_same_timesteps_as_the_core_for_the_same_uniforms(samplers, name, device):
    core = samplers[name]
    runner = carv_torch.as_sampler(core, T, device=device)
    u = np.random.default_rng(5).random((64, 8))
    expected = core.transform(u)
    got = runner.transform(torch.as_tensor(u, device=device))
    assert np.array_equal(got.t.cpu().numpy(), expected.t)
    assert np.allclose(got.w.cpu().numpy(), expected.w, rtol=1e-15, atol=0)


def _core_draw(core, R, K, state, device):
    # The uniforms a torch generator in `state` gives for core's design, through the core transform.
    gen = torch.Generator(device=device).set_state(state)
    u = carv_torch.draw_uniforms(core.design, R, K, gen, device=device)
    return core.transform(u.cpu().numpy()).t


def _mixture(shift, device):
    means = torch.tensor([[0.5, -0.5, 0.25, 0.0], [-1.0, 0.5, 0.0, 1.0]], dtype=torch.float64) + shift
    return GaussianMixtureTeacher(means.to(device), 0.3, ABAR.to(device))


@pytest.mark.parametrize("name", ["design", "transform", "both"])
def test_sds_and_dmd_run_the_certified_sampler(samplers, name, device):
    core = samplers[name]
    x = torch.randn(3, 1, 2, 2, dtype=torch.float64, device=device, requires_grad=True)
    real, fake = _mixture(0.0, device), _mixture(0.3, device)
    gen = torch.Generator(device=device).manual_seed(7)
    state = gen.get_state()
    est = carv_torch.sds(real, x, K=4, sampler=core, generator=gen)
    assert np.array_equal(est.t.cpu().numpy(), _core_draw(core, 3, 4, state, device))
    state = gen.get_state()
    est = carv_torch.dmd(real, fake, x, K=4, sampler=core, generator=gen)
    assert np.array_equal(est.t.cpu().numpy(), _core_draw(core, 3, 4, state, device))
    est.loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_guidance_runs_a_full_user_sampler_and_a_user_design(samplers, device):
    teacher = _mixture(0.0, device)
    x = torch.randn(2, 1, 2, 2, dtype=torch.float64, device=device)
    # A full sampler (design + transform) carries its own p and q.
    core = samplers["both"]
    g = CARVGuidance(teacher, GuidanceConfig(sampler=core, K=4, seed=1))
    state = g.generator.get_state()
    out = g(x)
    assert np.array_equal(g.last.estimate.t.cpu().numpy(), _core_draw(core, 2, 4, state, device))
    assert (out["min_step"], out["max_step"]) == (3, 36)
    # A user design with the guidance's own p (t range) and weight-heuristic q.
    g = CARVGuidance(teacher, GuidanceConfig(sampler=PairedUniforms(), proposal="weight", K=4, seed=2))
    p, q = (v.cpu().numpy() for v in g.pmfs())
    state = g.generator.get_state()
    g(x)
    assert np.array_equal(g.last.estimate.t.cpu().numpy(),
                          _core_draw(InverseCDFSampler(p, q, PairedUniforms()), 2, 4, state, device))


def test_protocol_slips_are_named():
    with pytest.raises(ValueError, match="one of .* or a carv_core.designs.Design, got 'lhs'"):
        carv_torch.draw_uniforms("lhs", 1, 2)
    with pytest.raises(TypeError, match="not a carv_core.designs.Design subclass"):
        carv_core.as_design(type("Fake", (), {"layout": lambda self, R, K: None})())
    with pytest.raises(TypeError, match="must return a carv_core.designs.Layout"):
        carv_torch.draw_uniforms(type("Bad", (Design,), {"layout": lambda self, R, K: {}})(), 1, 2)
    with pytest.raises(ValueError, match="offset must keep u in"):
        bad = type("Bad", (Design,), {"layout": lambda self, R, K: Layout(
            np.zeros((R, K), dtype=np.int64), np.full((R, K), 2), np.ones((R, K), dtype=np.int64),
            np.ones((R, K), dtype=np.int64), 1)})()
        carv_torch.draw_uniforms(bad, 1, 2)
    with pytest.raises(ValueError, match="pass either sampler= or p/q"):
        carv_torch.sds(_mixture(0.0, "cpu"), torch.zeros(1, 1, 2, 2, dtype=torch.float64), K=2,
                       p=torch.full((T,), 1 / T), sampler=Tempered(target(), 0.5, "iid"))
    with pytest.raises(ValueError, match="a full sampler carries its own q"):
        GuidanceConfig(sampler=Tempered(target(), 0.5, "iid"), proposal="weight")


def test_stratify_clamps_below_one_like_the_core():
    xi = np.full(3, np.nextafter(1.0, 0.0))
    core = carv_core.stratify(xi, np.arange(3))
    torch_u = carv_torch.stratify(torch.as_tensor(xi), torch.arange(3))
    assert core.max() < 1 and torch_u.max().item() < 1
    assert np.array_equal(torch_u.numpy(), core)
