"""DiffusersTeacher with tiny models built from configs; the exact Gaussian-mixture teacher."""

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel, UNet2DModel  # noqa: E402

from carv_torch.teachers import DiffusersTeacher, GaussianMixtureTeacher, Teacher  # noqa: E402

torch.set_num_threads(1)
DT = torch.float64


def tiny_unet(channels=3, dtype=DT):
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=channels, out_channels=channels,
                       block_out_channels=(16, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1,
                       norm_num_groups=8).to(dtype).eval()


def tiny_cond_unet(dtype=DT):
    torch.manual_seed(1)
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                norm_num_groups=8, cross_attention_dim=16,
                                attention_head_dim=4).to(dtype).eval()


def inputs(n, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, 8, 8, generator=g, dtype=DT), torch.randint(0, 100, (n,), generator=g)


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction", "sample"])
def test_prediction_types_convert_to_epsilon(pred):
    unet = tiny_unet()
    sched = DDPMScheduler(num_train_timesteps=100, prediction_type=pred)
    teacher = DiffusersTeacher(unet, sched)
    assert isinstance(teacher, Teacher) and teacher.prediction_type == pred
    x, t = inputs(5)
    with torch.no_grad():
        out = unet(x, t).sample
        eps = teacher.predict_noise(x, t)
    abar = sched.alphas_cumprod.to(DT)[t].reshape(-1, 1, 1, 1)
    a, s = abar.sqrt(), (1 - abar).sqrt()
    expected = {"epsilon": out, "v_prediction": a * out + s * x, "sample": (x - a * out) / s}[pred]
    assert torch.allclose(eps, expected, rtol=1e-10, atol=1e-12)


def test_conversions_are_consistent_on_an_exact_model():
    # If the model were exact, all three parameterisations give the same epsilon.
    x0, eps = inputs(4)[0], inputs(4, seed=1)[0]
    t = torch.tensor([5, 30, 60, 95])
    sched = DDIMScheduler(num_train_timesteps=100)
    abar = sched.alphas_cumprod.to(DT)[t].reshape(-1, 1, 1, 1)
    a, s = abar.sqrt(), (1 - abar).sqrt()
    x_t = a * x0 + s * eps
    target = {"epsilon": eps, "v_prediction": a * eps - s * x0, "sample": x0}
    for pred, out in target.items():
        class Exact(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.zeros(1, dtype=DT))

            def forward(self, sample, timestep, class_labels=None):
                return type("O", (), {"sample": out + 0 * self.w})()

        teacher = DiffusersTeacher(Exact(), DDIMScheduler(num_train_timesteps=100, prediction_type=pred))
        assert torch.allclose(teacher.predict_noise(x_t, t), eps, rtol=1e-9, atol=1e-10), pred


def test_cfg_formula_and_pair_batching():
    unet = tiny_cond_unet()
    teacher = DiffusersTeacher(unet, DDPMScheduler(num_train_timesteps=100), max_batch_size=4)
    x, t = inputs(3, c=4)
    g = torch.Generator().manual_seed(2)
    cond, unc = torch.randn(3, 5, 16, generator=g, dtype=DT), torch.randn(1, 5, 16, generator=g, dtype=DT)
    with torch.no_grad():
        e = teacher.predict_noise(x, t, cond, uncond=unc, guidance_scale=7.5)
        e_c = unet(x, t, encoder_hidden_states=cond).sample
        e_u = unet(x, t, encoder_hidden_states=unc.expand(3, 5, 16)).sample
    assert torch.allclose(e, e_u + 7.5 * (e_c - e_u), rtol=1e-9, atol=1e-10)
    with pytest.raises(ValueError, match="needs uncond"):
        teacher.predict_noise(x, t, cond, guidance_scale=7.5)
    with pytest.raises(ValueError, match="needs condition"):
        teacher.predict_noise(x, t)


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_chunk_size_invariance(chunk):
    unet = tiny_unet()
    x, t = inputs(7)
    ref = DiffusersTeacher(unet, DDPMScheduler(num_train_timesteps=100), max_batch_size=64)
    got = DiffusersTeacher(unet, DDPMScheduler(num_train_timesteps=100), max_batch_size=chunk)
    with torch.no_grad():
        assert torch.allclose(got.predict_noise(x, t), ref.predict_noise(x, t), rtol=1e-12, atol=1e-13)


def test_latent_path_through_autoencoder_is_differentiable():
    torch.manual_seed(2)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32),
                        latent_channels=4, norm_num_groups=8, sample_size=16).to(DT).eval()
    teacher = DiffusersTeacher(tiny_unet(channels=4), DDPMScheduler(num_train_timesteps=100), vae=vae)
    img = torch.rand(2, 3, 16, 16, dtype=DT, requires_grad=True)
    z = teacher.encode(img)
    expected = vae.encode(2 * img - 1).latent_dist.mean * vae.config.scaling_factor
    assert z.shape == (2, 4, 8, 8) and teacher.is_latent
    assert torch.allclose(z, expected)
    z.sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0
    eps = teacher.predict_noise(z.detach(), torch.tensor([3, 50]))
    assert eps.shape == z.shape


def test_nonfinite_output_raises_naming_timesteps():
    unet = tiny_unet()
    teacher = DiffusersTeacher(unet, DDPMScheduler(num_train_timesteps=100))
    x, _ = inputs(3)
    x[1, 0, 0, 0] = float("nan")
    t = torch.tensor([10, 42, 77])
    with torch.no_grad(), pytest.raises(FloatingPointError, match=r"timesteps \[42\]"):
        teacher.predict_noise(x, t)
    zeroing = DiffusersTeacher(unet, DDPMScheduler(num_train_timesteps=100), nan_policy="zero")
    with torch.no_grad(), pytest.warns(RuntimeWarning, match=r"\[42\]"):
        e = zeroing.predict_noise(x, t)
    assert torch.equal(e[1], torch.zeros_like(e[1])) and torch.isfinite(e).all()


def test_bad_inputs_raise():
    teacher = DiffusersTeacher(tiny_unet(), DDPMScheduler(num_train_timesteps=100))
    x, t = inputs(2)
    with pytest.raises(ValueError, match="t must be an integer tensor"):
        teacher.predict_noise(x, t.to(DT))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 100\)"):
        teacher.predict_noise(x, torch.tensor([0, 100]))
    with pytest.raises(ValueError, match="max_batch_size"):
        DiffusersTeacher(tiny_unet(), DDPMScheduler(num_train_timesteps=100), max_batch_size=0)
    with pytest.raises(TypeError, match="alphas_cumprod"):
        DiffusersTeacher(tiny_unet(), object())


def test_gaussian_mixture_eps_matches_autograd_score():
    g = torch.Generator().manual_seed(4)
    M, D = 3, 12
    means = torch.randn(M, D, generator=g, dtype=DT)
    var = 0.2 + torch.rand(M, D, generator=g, dtype=DT)
    logw = torch.randn(M, generator=g, dtype=DT)
    abar = torch.linspace(0.99, 0.02, 50, dtype=DT)
    teacher = GaussianMixtureTeacher(means, var, abar, logw)
    x = torch.randn(6, 3, 2, 2, generator=g, dtype=DT)
    t = torch.tensor([0, 5, 17, 30, 42, 49])

    def log_density(xf, tt):
        # independent computation: log sum_m pi_m N(x; a mu_m, a^2 s_m^2 + s^2) with torch.distributions
        a, s = abar[tt].sqrt(), (1 - abar[tt]).sqrt()
        comp = torch.distributions.Independent(
            torch.distributions.Normal(a * means, (a**2 * var + s**2).sqrt()), 1)
        return torch.logsumexp(torch.log_softmax(logw, 0) + comp.log_prob(xf[None]), 0)

    expected = []
    for i in range(6):
        xi = x[i].reshape(-1).clone().requires_grad_(True)
        (score,) = torch.autograd.grad(log_density(xi, t[i]), xi)
        expected.append(-(1 - abar[t[i]]).sqrt() * score)
    eps = teacher.predict_noise(x, t)
    assert torch.allclose(eps.reshape(6, -1), torch.stack(expected), rtol=1e-10, atol=1e-12)
    # differentiable in x_t, works in float32
    xr = x.clone().requires_grad_(True)
    teacher.predict_noise(xr, t).sum().backward()
    assert xr.grad is not None and torch.isfinite(xr.grad).all()
    e32 = teacher.to(dtype=torch.float32).predict_noise(x.float(), t)
    assert e32.dtype == torch.float32 and torch.allclose(e32.double(), eps, rtol=1e-4, atol=1e-5)


def test_gaussian_mixture_cfg_on_log_weights():
    abar = torch.linspace(0.99, 0.02, 20, dtype=DT)
    teacher = GaussianMixtureTeacher(torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=DT), 0.3, abar)
    x, t = torch.zeros(2, 2, dtype=DT), torch.tensor([5, 10])
    cond = torch.tensor([[0.0, -5.0]], dtype=DT)
    e_c = teacher.predict_noise(x, t, cond)
    e_u = teacher.predict_noise(x, t)
    e = teacher.predict_noise(x, t, cond, guidance_scale=3.0)
    assert torch.allclose(e, e_u + 3.0 * (e_c - e_u))
