"""Schedules: bit-identical to diffusers' DDPMScheduler, and the VP identities."""

import numpy as np
import pytest

from carv_core import continuous_schedule, make_betas, make_schedule

CASES = [
    ("linear", 1e-4, 0.02),
    ("scaled_linear", 0.00085, 0.012),
    ("squaredcos_cap_v2", 1e-4, 0.02),
]


@pytest.mark.parametrize("beta_schedule,beta_start,beta_end", CASES)
@pytest.mark.parametrize("T", [1, 2, 7, 50, 333, 1000])
def test_alphas_cumprod_identical_to_diffusers(beta_schedule, beta_start, beta_end, T):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(
        num_train_timesteps=T, beta_schedule=beta_schedule, beta_start=beta_start, beta_end=beta_end
    )
    ours = make_schedule(beta_schedule, T, beta_start, beta_end)
    # Bit-identical, not merely close: the float32 values diffusers computes.
    assert np.array_equal(ours.alphas_cumprod, ref.alphas_cumprod.double().numpy())
    assert np.array_equal(make_betas(beta_schedule, T, beta_start, beta_end), ref.betas.double().numpy())


@pytest.mark.parametrize("beta_schedule,beta_start,beta_end", CASES)
def test_vp_identities(beta_schedule, beta_start, beta_end):
    s = make_schedule(beta_schedule, 1000, beta_start, beta_end)
    np.testing.assert_allclose(s.alpha**2 + s.sigma**2, 1.0, rtol=0, atol=1e-15)
    np.testing.assert_allclose(s.snr, s.alpha**2 / s.sigma**2, rtol=1e-14)
    assert np.all(np.diff(s.alphas_cumprod) < 0)
    assert s.num_train_timesteps == 1000


@pytest.mark.parametrize("name", ["flow_matching", "vp_cosine", "vp_linear"])
def test_continuous_schedules(name):
    sched = continuous_schedule(name)
    t = np.linspace(0.0, 1.0, 101)
    a, s = sched.alpha(t), sched.sigma(t)
    assert np.all(np.diff(a) <= 1e-15) and np.all(np.diff(s) >= -1e-15)
    if name == "flow_matching":
        np.testing.assert_array_equal(a, 1 - t)
        np.testing.assert_array_equal(s, t)
    else:
        np.testing.assert_allclose(a**2 + s**2, 1.0, atol=1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        np.testing.assert_allclose(sched.snr(t[1:-1]), a[1:-1] ** 2 / s[1:-1] ** 2, rtol=1e-12)


def test_vp_cosine_continuous_matches_discrete_cosine():
    # The discrete squaredcos_cap_v2 alpha_bar telescopes to the continuous one
    # at t = (i + 1) / T (while no beta is capped).
    T = 1000
    disc = make_schedule("squaredcos_cap_v2", T).alphas_cumprod
    cont = continuous_schedule("vp_cosine")
    i = np.arange(T)
    t = (i + 1) / T
    expected = cont.alpha(t) ** 2 / cont.alpha(np.zeros(1)) ** 2
    np.testing.assert_allclose(disc[: T - 20], expected[: T - 20], rtol=1e-4)
