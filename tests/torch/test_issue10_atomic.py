"""Failure atomicity of the functional objectives (issue 10).

The same call with a fault injected at a chosen point (a teacher raising in the
third chunk of a chunked batch, a NaN at chosen timesteps, a KeyboardInterrupt)
must leave the caller's generator exactly as it was, so that a retry with a
healthy teacher reproduces the fault-free call bit for bit.
"""

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from diffusers import DDPMScheduler, UNet2DModel  # noqa: E402

import carv_torch  # noqa: E402
from carv_torch.teachers import DiffusersTeacher, GaussianMixtureTeacher  # noqa: E402

torch.set_num_threads(1)
DT = torch.float64
T = 100
P = torch.full((T,), 1.0 / T, dtype=DT)


def tiny_unet():
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1,
                       norm_num_groups=8).to(DT).eval()


class Faulty(torch.nn.Module):
    """Wraps a UNet; the ``fail_at``-th forward call (1-based) raises ``error``."""

    def __init__(self, unet, fail_at=None, error=RuntimeError("injected fault")):
        super().__init__()
        self.unet, self.fail_at, self.error, self.calls = unet, fail_at, error, 0

    def forward(self, x, t, class_labels=None):
        self.calls += 1
        if self.calls == self.fail_at:
            raise self.error
        return self.unet(x, t, class_labels=class_labels)


class NanAt:
    """A teacher returning NaN for the inputs whose timestep is in ``steps``."""

    def __init__(self, base, steps):
        self.base, self.steps = base, torch.tensor(sorted(steps))
        self.alphas_cumprod = base.alphas_cumprod

    def predict_noise(self, x_t, t, condition=None, *, uncond=None, guidance_scale=1.0):
        eps = self.base.predict_noise(x_t, t, condition, uncond=uncond, guidance_scale=guidance_scale)
        bad = torch.isin(t, self.steps).reshape(-1, *([1] * (eps.ndim - 1)))
        return torch.where(bad, torch.full_like(eps, float("nan")), eps)


class Interrupting(NanAt):
    def predict_noise(self, *args, **kwargs):
        raise KeyboardInterrupt


def chunked(fail_at=None):
    teacher = DiffusersTeacher(Faulty(tiny_unet(), fail_at), DDPMScheduler(num_train_timesteps=T),
                               max_batch_size=2)
    return teacher


def gmm():
    abar = DDPMScheduler(num_train_timesteps=T).alphas_cumprod.to(DT)
    return GaussianMixtureTeacher(torch.zeros(2, 3 * 8 * 8, dtype=DT) + torch.tensor([[0.0], [1.0]], dtype=DT),
                                  0.5, abar)


def x_in():
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3), dtype=DT)


def assert_same_estimate(a, b):
    for name in ("grad", "t", "w", "loss"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def run_sds(teacher, gen):
    return carv_torch.sds(teacher, x_in(), K=4, p=P, generator=gen)


def test_a_fault_in_the_third_chunk_leaves_the_generator_and_a_retry_reproduces_the_run():
    reference = run_sds(chunked(), torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    before = gen.get_state()
    faulty = chunked(fail_at=3)  # 8 inputs in chunks of 2: the third chunk raises
    with torch.no_grad(), pytest.raises(RuntimeError, match="injected fault"):
        run_sds(faulty, gen)
    assert faulty.unet.calls == 3
    assert torch.equal(gen.get_state(), before)
    assert_same_estimate(run_sds(chunked(), gen), reference)


def test_nan_at_chosen_timesteps_is_reported_and_the_retry_is_bit_identical():
    base = gmm()
    reference = run_sds(base, torch.Generator().manual_seed(11))
    steps = reference.t.reshape(-1)[[1, 5]].tolist()
    gen = torch.Generator().manual_seed(11)
    before = gen.get_state()
    with carv_torch.set_validate_args(True), pytest.raises(FloatingPointError) as err:
        run_sds(NanAt(base, steps), gen)
    assert f"at timesteps {sorted(set(steps))}" in str(err.value)
    assert "teacher.predict_noise returned non-finite values (nan)" in str(err.value)
    assert torch.equal(gen.get_state(), before)
    assert_same_estimate(run_sds(base, gen), reference)


def test_keyboard_interrupt_restores_the_generator_of_every_functional_call():
    base = gmm()
    fake = gmm()
    fake.log_weights = torch.tensor([0.3, -0.3], dtype=DT)
    x0 = x_in()
    calls = {
        "sds": lambda teacher, gen: carv_torch.sds(teacher, x0, K=2, p=P, generator=gen),
        "dmd": lambda teacher, gen: carv_torch.dmd(base, teacher, x0, K=2, p=P, generator=gen),
        "estimate": lambda teacher, gen: carv_torch.estimate(carv_torch.SDS(teacher), x0, K=2, p=P,
                                                             generator=gen),
    }
    for name, call in calls.items():
        reference = call(fake, torch.Generator().manual_seed(5))
        gen = torch.Generator().manual_seed(5)
        before = gen.get_state()
        with pytest.raises(KeyboardInterrupt):
            call(Interrupting(fake, []), gen)
        assert torch.equal(gen.get_state(), before), name
        assert_same_estimate(call(fake, gen), reference)


class Linear:
    """A differentiable noise predictor eps = A x_t (for attribution)."""

    def __init__(self, fail=False):
        self.A = torch.eye(3 * 8 * 8, dtype=DT).mul(0.5).requires_grad_(True)
        self.alphas_cumprod = DDPMScheduler(num_train_timesteps=T).alphas_cumprod.to(DT)
        self.fail, self.calls = fail, 0

    def predict_noise(self, x_t, t, condition=None, **kw):
        self.calls += 1
        if self.fail and self.calls == 2:  # the second example's teacher call
            raise RuntimeError("injected fault")
        return (x_t.reshape(x_t.shape[0], -1) @ self.A).reshape(x_t.shape)


def test_attribution_is_failure_atomic():
    x0 = x_in()
    healthy = Linear()
    reference = carv_torch.attribution(healthy, x0, [healthy.A], K=3, p=P,
                                       generator=torch.Generator().manual_seed(2))
    gen = torch.Generator().manual_seed(2)
    before = gen.get_state()
    faulty = Linear(fail=True)
    with pytest.raises(RuntimeError, match="injected fault"):
        carv_torch.attribution(faulty, x0, [faulty.A], K=3, p=P, generator=gen)
    assert torch.equal(gen.get_state(), before)
    again = carv_torch.attribution(healthy, x0, [healthy.A], K=3, p=P, generator=gen)
    assert torch.equal(again.features, reference.features) and torch.equal(again.t, reference.t)


def test_the_global_generator_is_restored_when_no_generator_is_given():
    base = gmm()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    with pytest.raises(KeyboardInterrupt):
        carv_torch.sds(Interrupting(base, []), x_in(), K=2, p=P)
    assert torch.equal(torch.get_rng_state(), before)
