"""Backend parity: carv_torch against the float64 numpy reference carv_core.

The same uniforms (drawn in numpy, converted) go to both backends. Integer
timesteps must match exactly; weights and estimates to float64 rounding
(rtol 1e-12) or, in float32, to rtol 1e-6. Runs on every device of the
``device`` fixture (CUDA when present).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import carv_core  # noqa: E402
import carv_torch  # noqa: E402
from carv_core.testing import check_sampler, exact_law, exact_moments  # noqa: E402
from carv_core.testing.strategies import pmfs, proposals_for  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# Example counts come from the profile in tests/conftest.py (60 in ci/dev, 1000 in thorough).
FAST = settings(deadline=None)
DTYPES = [torch.float64, torch.float32]
RTOL = {torch.float64: 1e-12, torch.float32: 1e-6}


def uniforms_as(u: np.ndarray, device, dtype) -> torch.Tensor:
    """Uniforms held in ``dtype``, still in [0, 1) (1 - 2**-53 would round to 1 in float32)."""
    return torch.as_tensor(u, device=device).to(dtype).clamp(max=1 - torch.finfo(dtype).eps / 2)


def to_np(x):
    return x.detach().cpu().double().numpy()


def assert_close(actual: torch.Tensor, expected, dtype=torch.float64, atol=0.0):
    """``actual`` (a tensor) equals the numpy reference to the dtype's tolerance."""
    np.testing.assert_allclose(to_np(actual), np.asarray(expected, dtype=np.float64),
                               rtol=RTOL[dtype], atol=atol)


@st.composite
def target_and_proposal(draw, max_size=12):
    p = draw(pmfs(max_size=max_size))
    return p, draw(proposals_for(p))


@st.composite
def uniforms_for(draw, q):
    """(R, K) uniforms: a seeded core design plus the hard points (0, 1^-, CDF steps)."""
    design = draw(st.sampled_from(["iid", "stratified", "global", "systematic"]))
    R, K = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    u = carv_core.draw_uniforms(design, R, K, rng=draw(st.integers(0, 2**32 - 1)))
    edges = np.concatenate([[0.0, np.nextafter(1.0, 0.0)], np.cumsum(q)])
    edges = edges[edges < 1.0]
    return np.concatenate([u.ravel(), edges])


# --------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("dtype", DTYPES)
@FAST
@given(data=st.data())
def test_timesteps_from_uniforms_matches_core(device, dtype, data):
    p, q = data.draw(target_and_proposal())
    u = data.draw(uniforms_for(q))
    u_t = uniforms_as(u, device, dtype)
    # the core sees exactly the uniforms torch sees (float32 widens exactly)
    ref = carv_core.timesteps_from_uniforms(to_np(u_t), p, q)
    got = carv_torch.timesteps_from_uniforms(u_t, torch.as_tensor(p, device=device),
                                             torch.as_tensor(q, device=device))
    assert got.t.dtype == torch.int64 and got.w.dtype == dtype
    assert torch.equal(got.t.cpu(), torch.as_tensor(ref.t))
    assert_close(got.w, ref.w, dtype)


@FAST
@given(data=st.data())
def test_inverse_cdf_matches_core_with_short_total(device, data):
    """A last CDF entry below 1 and zero-mass bins: the same indices as the core."""
    q = data.draw(pmfs(max_size=10))
    cdf = np.cumsum(q) * data.draw(st.sampled_from([1.0, 1 - 1e-12, 0.999]))
    u = data.draw(uniforms_for(q))
    got = carv_torch.inverse_cdf(torch.as_tensor(cdf, device=device), torch.as_tensor(u, device=device))
    assert torch.equal(got.cpu(), torch.as_tensor(carv_core.inverse_cdf(cdf, u)))
    mass = np.diff(np.concatenate([[0.0], cdf]))
    assert (mass[got.cpu().numpy()] > 0).all()


def test_float32_uniform_just_below_one(device):
    """u -> 1^- in float32 lands on the last index with mass, as in the core."""
    u = torch.tensor([np.nextafter(np.float32(1), np.float32(0))], dtype=torch.float32, device=device)
    p = np.array([0.5, 0.5, 0.0])
    got = carv_torch.timesteps_from_uniforms(u, p, p)
    assert got.t.tolist() == [1] == carv_core.timesteps_from_uniforms(to_np(u), p, p).t.tolist()


@FAST
@given(data=st.data())
def test_float32_tables_are_accepted(device, data):
    """float32 p, q (sum off by float32 rounding) give weights within 1e-6 of the float64 core."""
    p, q = data.draw(target_and_proposal(max_size=12))
    p32 = torch.as_tensor(p, device=device, dtype=torch.float32)
    q32 = torch.as_tensor(q, device=device, dtype=torch.float32)
    assert_close(carv_torch.importance_weights(p32, q32), carv_core.importance_weights(p, q), torch.float32)
    assert_close(carv_torch.weight_heuristic(p32, q32 + 1), carv_core.weight_heuristic(p, q + 1),
                 torch.float32, atol=1e-7)


@FAST
@given(data=st.data())
def test_cdf_stratum_pmfs_and_stratify_match_core(device, data):
    q = data.draw(pmfs(max_size=10))
    B = data.draw(st.integers(1, 8))
    q_t = torch.as_tensor(q, device=device)
    assert_close(carv_torch.cdf_from_pmf(q_t), carv_core.cdf_from_pmf(q))
    assert_close(carv_torch.stratum_pmfs(q_t, B), carv_core.stratum_pmfs(q, B))
    xi = np.random.default_rng(data.draw(st.integers(0, 99))).random((2, B))
    assert_close(carv_torch.stratify(torch.as_tensor(xi, device=device), torch.arange(B, device=device)),
                 carv_core.stratify(xi, np.arange(B)))


@pytest.mark.parametrize("dtype", DTYPES)
@FAST
@given(data=st.data())
def test_continuous_from_uniforms_matches_core(device, dtype, data):
    n = data.draw(st.integers(1, 8))
    p, q = data.draw(pmfs(size=n)), None
    q = data.draw(proposals_for(p))
    widths = np.array(data.draw(st.lists(st.floats(0.05, 2.0), min_size=n, max_size=n)))
    edges = np.concatenate([[0.0], np.cumsum(widths)])
    core_p, core_q = carv_core.PiecewiseDensity(edges, p), carv_core.PiecewiseDensity(edges, q)
    tp = carv_torch.PiecewiseDensity.from_core(core_p, device=device)
    tq = carv_torch.PiecewiseDensity.from_core(core_q, device=device)
    u_t = uniforms_as(data.draw(uniforms_for(q)), device, dtype)
    ref = carv_core.continuous_from_uniforms(to_np(u_t), core_p, core_q)
    got = carv_torch.continuous_from_uniforms(u_t, tp, tq)
    assert_close(got.t, ref.t, dtype, atol=1e-15)
    assert_close(got.w, ref.w, dtype)
    grid = np.linspace(-0.5, edges[-1] + 0.5, 23)
    grid_t = torch.as_tensor(grid, device=device)
    assert torch.equal(tq.bin_of(grid_t).cpu(), torch.as_tensor(core_q.bin_of(grid)))
    assert_close(tq.pdf(grid_t), core_q.pdf(grid))
    assert_close(tq.cdf(grid_t), core_q.cdf(grid), atol=1e-15)


class _TorchSamplerOnHost:
    """Adapter: the carv_core test-kit protocol (numpy in, numpy out) around a torch sampler."""

    def __init__(self, sampler, device):
        self.sampler, self.design, self.device = sampler, sampler.design, device

    def transform(self, u):
        draw = self.sampler.transform(torch.as_tensor(np.asarray(u, dtype=np.float64), device=self.device))
        return carv_core.TimestepDraw(draw.t.cpu().numpy(), to_np(draw.w))


@pytest.mark.parametrize("design", ["iid", "stratified", "global", "systematic"])
def test_inverse_cdf_sampler_has_the_core_exact_law(device, design):
    """The core's exact-law kit sees the same law, moments and zero bias for the torch sampler."""
    p = np.array([0.1, 0.0, 0.3, 0.2, 0.4])
    q = np.array([0.05, 0.1, 0.5, 0.15, 0.2])
    table = np.arange(10.0).reshape(2, 5, 1) ** 2
    core = carv_core.InverseCDFSampler(p, q, design)
    torch_sampler = _TorchSamplerOnHost(
        carv_torch.InverseCDFSampler(torch.as_tensor(p, device=device), torch.as_tensor(q, device=device),
                                     design), device)
    ref = exact_moments(exact_law(core, 2, 3, p.size), table)
    got = exact_moments(exact_law(torch_sampler, 2, 3, p.size), table)
    np.testing.assert_allclose(got.mean, ref.mean, rtol=1e-12)
    np.testing.assert_allclose(got.variance, ref.variance, rtol=1e-12)
    assert check_sampler(torch_sampler, p, table, R=2, K=3).unbiased


@pytest.mark.parametrize("design", carv_core.DESIGNS)
def test_draw_uniforms_designs(device, design):
    g = torch.Generator(device=device).manual_seed(0)
    R, K = 3, 8
    u = carv_torch.draw_uniforms(design, R, K, g, device=device)
    assert u.shape == (R, K) and u.dtype == torch.float64 and u.device.type == device.type
    assert bool(((u >= 0) & (u < 1)).all())
    u2 = carv_torch.draw_uniforms(design, R, K, torch.Generator(device=device).manual_seed(0), device=device)
    assert torch.equal(u, u2)
    k = torch.arange(K, device=device)
    if design in ("stratified", "systematic"):
        assert torch.equal(torch.floor(u * K), k.expand(R, K).double())
    if design == "systematic":
        assert torch.allclose(u - k / K, (u - k / K)[:, :1].expand(R, K), atol=1e-15)
    if design == "global":
        assert torch.equal(torch.floor(u.reshape(-1) * R * K), torch.arange(R * K, device=device).double())
    if design == "sobol":  # each row is a (0,m,1)-net: one point per 1/K interval
        assert torch.equal(torch.sort(torch.floor(u * K), dim=1).values, k.expand(R, K).double())


def test_draw_uniforms_float32_stays_below_one(device, monkeypatch):
    """(k + xi)/K rounds to 1.0 in float32 for xi near 1; the draw clamps it below 1."""
    real_rand = torch.rand

    def rand_near_one(shape, **kwargs):
        return torch.full(shape, 1 - 2.0**-40, dtype=kwargs["dtype"], device=kwargs["device"])

    monkeypatch.setattr(torch, "rand", rand_near_one)
    u = carv_torch.draw_uniforms("stratified", 1, 3, device=device, dtype=torch.float32)
    monkeypatch.setattr(torch, "rand", real_rand)
    assert torch.tensor(2 + (1 - 2.0**-40), dtype=torch.float64).div(3).float().item() == 1.0
    assert float(u.max()) < 1.0
    assert u.dtype == torch.float32


def test_sobol_warns_for_k_not_power_of_two(device):
    with pytest.warns(UserWarning, match="power of 2"):
        carv_torch.draw_uniforms("sobol", 1, 6, torch.Generator(device=device).manual_seed(0))


def test_inverse_cdf_sampler_call_and_to(device):
    p = torch.full((4,), 0.25, dtype=torch.float64, device=device)
    s = carv_torch.InverseCDFSampler(p, p, "stratified")
    draw = s(R=2, K=4, generator=torch.Generator(device=device).manual_seed(1))
    assert draw.t.tolist() == [[0, 1, 2, 3]] * 2
    assert torch.equal(draw.w, torch.ones(2, 4, dtype=torch.float64, device=device))
    assert s.to("cpu").device.type == "cpu"


@pytest.mark.parametrize("antithetic", [False, True])
def test_gaussian_noise(device, antithetic):
    eps = carv_torch.gaussian_noise((3, 2), 4, torch.Generator(device=device).manual_seed(0),
                                    antithetic=antithetic, R=2, device=device)
    assert eps.shape == (2, 4, 3, 2) and eps.dtype == torch.get_default_dtype()
    again = carv_torch.gaussian_noise((3, 2), 4, torch.Generator(device=device).manual_seed(0),
                                      antithetic=antithetic, R=2, device=device)
    assert torch.equal(eps, again)
    if antithetic:
        assert torch.equal(eps[:, 0::2], -eps[:, 1::2])


# --------------------------------------------------------------------------- proposals


@pytest.mark.parametrize("dtype", DTYPES)
@FAST
@given(data=st.data())
def test_proposals_match_core(device, dtype, data):
    p, q = data.draw(target_and_proposal())
    delta = data.draw(st.floats(0.01, 1.0))
    w_sds = np.array(data.draw(st.lists(st.floats(0.1, 5.0), min_size=p.size, max_size=p.size)))

    def t(x):
        return torch.as_tensor(x, device=device, dtype=torch.float64)

    assert_close(carv_torch.importance_weights(t(p), t(q)).to(dtype), carv_core.importance_weights(p, q), dtype)
    assert_close(carv_torch.defensive_mixture(t(q), t(p), delta), carv_core.defensive_mixture(q, p, delta),
                 atol=1e-17)
    assert_close(carv_torch.weight_heuristic(t(p), t(w_sds), delta), carv_core.weight_heuristic(p, w_sds, delta))
    assert_close(carv_torch.oracle_proposal(t(p), t(w_sds), delta), carv_core.oracle_proposal(p, w_sds, delta))


@FAST
@given(data=st.data())
def test_adaptive_proposal_matches_core_and_round_trips(device, data):
    p = data.draw(pmfs(min_size=4, max_size=12, allow_zeros=False))
    n_bins = data.draw(st.integers(1, p.size))
    core = carv_core.AdaptiveProposal(p, n_bins=n_bins, decay=0.5, delta=0.2)
    tp = carv_torch.AdaptiveProposal(torch.as_tensor(p, device=device), n_bins=n_bins, decay=0.5, delta=0.2)
    rng = np.random.default_rng(data.draw(st.integers(0, 99)))
    for _ in range(3):
        t = rng.integers(0, p.size, size=5)
        sq = rng.exponential(size=5) * (t + 1)
        core.update(t, sq)
        tp.update(torch.as_tensor(t, device=device), torch.as_tensor(sq, device=device))
        q = tp.proposal()
        assert q.device.type == device.type
        assert_close(q, core.proposal())
    state = tp.state_dict()
    assert state == core.state_dict()
    # checkpoint written by one backend, resumed by the other
    assert_close(carv_torch.AdaptiveProposal.from_state_dict(core.state_dict(), device=device).proposal(),
                 core.proposal(), atol=0)
    np.testing.assert_array_equal(carv_core.AdaptiveProposal.from_state_dict(state).proposal(), to_np(q))


# --------------------------------------------------------------------------- estimator


@st.composite
def values_and_weights(draw, min_r=1, min_k=1):
    R, K, D = draw(st.integers(min_r, 4)), draw(st.integers(min_k, 4)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    values = rng.normal(size=(R, K, D)) * scale + draw(st.floats(-2.0, 2.0)) * scale
    weights = None if draw(st.booleans()) else rng.exponential(size=(R, K))
    return values, weights


def _round(x: np.ndarray | None, dtype) -> np.ndarray | None:
    """The values a dtype actually holds, as float64 (what the core should see)."""
    return None if x is None else torch.as_tensor(x).to(dtype).double().numpy()


@pytest.mark.parametrize("dtype", DTYPES)
@FAST
@given(vw=values_and_weights())
def test_hierarchical_estimate_matches_core(device, dtype, vw):
    values, weights = _round(vw[0], dtype), _round(vw[1], dtype)
    ref = carv_core.hierarchical_estimate(values, weights)
    got = carv_torch.hierarchical_estimate(
        torch.as_tensor(values, device=device).to(dtype),
        None if weights is None else torch.as_tensor(weights, device=device).to(dtype))
    assert got.variance.ndim == 0 and got.variance.device.type == device.type
    scale = float(np.abs(values).max() * (1 if weights is None else np.abs(weights).max()))
    assert_close(got.mean, ref.mean, dtype, atol=RTOL[dtype] * scale)
    assert_close(got.row_means, ref.row_means, dtype, atol=RTOL[dtype] * scale)
    if values.shape[0] == 1:
        assert torch.isnan(got.variance) and np.isnan(ref.variance)
    else:
        assert_close(got.variance, ref.variance, dtype, atol=RTOL[dtype] * scale**2)


@pytest.mark.parametrize("dtype", DTYPES)
@FAST
@given(vw=values_and_weights(min_r=2, min_k=2))
def test_variance_components_match_core(device, dtype, vw):
    values, weights = _round(vw[0], dtype), _round(vw[1], dtype)
    ref = carv_core.variance_components(values, weights)
    got = carv_torch.variance_components(
        torch.as_tensor(values, device=device).to(dtype),
        None if weights is None else torch.as_tensor(weights, device=device).to(dtype))
    scale = float(np.abs(values).max() * (1 if weights is None else np.abs(weights).max()))
    for name in carv_core.VarianceComponents._fields:
        value = getattr(got, name)
        assert value.ndim == 0 and value.dtype == dtype
        assert_close(value, getattr(ref, name), dtype, atol=RTOL[dtype] * scale**2)


@pytest.mark.parametrize("dtype", DTYPES)
@FAST
@given(data=st.data())
def test_welford_matches_core_and_round_trips(device, dtype, data):
    D = data.draw(st.integers(1, 4))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    batches = [_round(rng.normal(size=(data.draw(st.integers(1, 4)), D)) + 3.0, dtype) for _ in range(3)]
    core, acc = carv_core.Welford(), carv_torch.Welford(device=device)
    for b in batches:
        core.update(b)
        acc.update(torch.as_tensor(b, device=device).to(dtype))
    assert acc.count == core.count
    assert acc.mean.dtype == torch.float64 and acc.mean.device.type == device.type
    assert_close(acc.mean, core.mean)
    assert_close(acc.trace_cov, core.trace_cov)
    ref = rng.normal(size=D)
    assert_close(acc.mse(torch.as_tensor(ref, device=device)), core.mse(ref))
    state = acc.state_dict()
    assert state["count"] == core.state_dict()["count"]
    other = carv_core.Welford()
    other.load_state_dict(state)
    assert_close(acc.trace_cov, other.trace_cov)
    back = carv_torch.Welford(device=device)
    back.load_state_dict(core.state_dict())
    assert_close(back.mean, core.mean, atol=0)
    assert back.mean.device.type == device.type


def test_welford_nan_before_two(device):
    acc = carv_torch.Welford()
    assert torch.isnan(acc.trace_cov)
    acc.update(torch.ones(3, device=device))
    assert acc.count == 1 and torch.isnan(acc.trace_cov)
    assert acc.mean.device.type == device.type


# --------------------------------------------------------------------------- schedules, weighting, distributions


@pytest.mark.parametrize("name", carv_core.BETA_SCHEDULES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_schedules_match_core(device, name, dtype):
    core = carv_core.make_schedule(name, 1000)
    s = carv_torch.make_schedule(name, 1000, device=device, dtype=dtype)
    assert s.alphas_cumprod.dtype == dtype and s.device.type == device.type
    assert s.num_train_timesteps == 1000
    assert_close(carv_torch.make_betas(name, 1000, device=device), carv_core.make_betas(name, 1000), atol=0)
    for attr in ("alphas_cumprod", "alpha", "sigma", "snr"):
        assert_close(getattr(s, attr), getattr(core, attr), dtype)
    s64 = s.to(dtype=torch.float64)
    assert s64.alphas_cumprod.dtype == torch.float64
    assert_close(carv_torch.DiscreteSchedule.from_betas(carv_torch.make_betas(name, 50)).alphas_cumprod,
                 carv_core.DiscreteSchedule.from_betas(carv_core.make_betas(name, 50)).alphas_cumprod, atol=0)


@pytest.mark.parametrize("name", carv_core.BETA_SCHEDULES)
def test_schedule_equals_diffusers(name):
    """An independent computation: diffusers' own DDPMScheduler (no download needed)."""
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=name,
                                    beta_start=0.00085, beta_end=0.012)
    ours = carv_torch.make_schedule(name, 1000, dtype=torch.float32).alphas_cumprod
    assert torch.equal(ours, sched.alphas_cumprod)


@pytest.mark.parametrize("name", ["flow_matching", "vp_cosine", "vp_linear"])
def test_continuous_schedules_match_core(device, name):
    t = np.linspace(0.0, 1.0, 41)
    core = carv_core.continuous_schedule(name)
    s = carv_torch.continuous_schedule(name)
    t_t = torch.as_tensor(t, device=device)
    for attr in ("alpha", "sigma", "snr"):
        got, ref = getattr(s, attr)(t_t), getattr(core, attr)(t)
        finite = np.isfinite(ref)
        assert np.array_equal(np.isfinite(to_np(got)), finite)
        assert_close(got[torch.as_tensor(finite, device=device)], ref[finite])


@pytest.mark.parametrize("preset", [*carv_core.WEIGHTINGS, "callable"])
@pytest.mark.parametrize("include_alpha", [True, False])
def test_weighting_matches_core(device, preset, include_alpha):
    core_s = carv_core.make_schedule("linear", 100)
    s = carv_torch.make_schedule("linear", 100, device=device)
    if preset == "callable":
        seen = []

        def name(abar):
            seen.append(abar)
            return (1 - abar) ** 2

        core_name = lambda abar: (1 - abar) ** 2  # noqa: E731
    else:
        name = core_name = preset
    got = carv_torch.sds_weight(name, s, include_alpha=include_alpha)
    assert got.device.type == device.type
    assert_close(got, carv_core.sds_weight(core_name, core_s, include_alpha=include_alpha))
    assert_close(carv_torch.weighting(name, core_s), carv_core.weighting(core_name, core_s))
    if preset == "callable":
        assert all(isinstance(a, torch.Tensor) for a in seen)


def test_distributions_match_core(device):
    p = carv_torch.uniform_timesteps(1000, device=device)
    assert_close(p, carv_core.uniform_timesteps(1000), atol=0)
    assert_close(carv_torch.pmf(p), carv_core.pmf(to_np(p)), atol=0)
    assert carv_torch.pmf(p).device.type == device.type

    def density(t):
        return 1.0 + t**2

    d = carv_torch.tabulate_density(lambda t: density(t), 0.0, 2.0, 16, device=device)
    ref = carv_core.tabulate_density(density, 0.0, 2.0, 16)
    assert_close(d.edges, ref.edges, atol=0)
    assert_close(d.masses, ref.masses)
    assert_close(d.widths, ref.widths)
