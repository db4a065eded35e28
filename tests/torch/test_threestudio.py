"""ThreestudioGuidance against threestudio's formulas, recomputed by hand on the shipped latent teacher.

The teacher is ``benchmarks.text_to_3d.teacher.load_teacher()`` (a real diffusers ``AutoencoderKL``
and class-conditional ``UNet2DModel``; images 3 x 64 x 64, latents 4 x 16 x 16, T = 1000). The
hand computations call the VAE and the UNet directly, as threestudio's
``stable-diffusion-guidance`` does; the noise is regenerated from a saved generator state with
the library's documented draw order (posterior sample, then uniforms, then noise).
"""

from __future__ import annotations

import math
import numbers

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import torch.nn.functional as F  # noqa: E402

import carv_torch as ct  # noqa: E402
from benchmarks.text_to_3d.teacher import load_teacher, null_condition, teacher_condition  # noqa: E402
from carv_torch.objectives import draw_inner  # noqa: E402
from carv_torch.threestudio import FixedPrompt, PromptProvider, ThreestudioGuidance  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher():
    return load_teacher(require_weights=True)


@pytest.fixture(scope="module")
def prompt():
    return FixedPrompt(teacher_condition(1), null_condition())


def cameras(B: int) -> dict:
    """A threestudio-shaped batch: the three camera tensors plus keys the guidance must ignore."""
    return {"elevation": torch.linspace(-10.0, 30.0, B), "azimuth": torch.linspace(-180.0, 90.0, B),
            "camera_distances": torch.full((B,), 2.5), "rays_o": torch.zeros(B, 4, 4, 3),
            "c2w": torch.eye(4).expand(B, 4, 4), "mvp_mtx": torch.eye(4).expand(B, 4, 4),
            "light_positions": torch.ones(B, 3), "height": 4, "width": 4}


def hand_encode(teacher, rgb_bhwc, size=(64, 64), generator=None):
    """threestudio's preprocessing: permute, F.interpolate, 2x - 1, the VAE posterior (mean or a draw)."""
    x = F.interpolate(rgb_bhwc.permute(0, 3, 1, 2), size, mode="bilinear", align_corners=False)
    dist = teacher.vae.encode(x * 2.0 - 1.0).latent_dist
    z = dist.mean if generator is None else dist.sample(generator=generator)
    return z * teacher.vae.config.scaling_factor


def threestudio_eps(teacher, x_t, t, s_ts):
    """threestudio's compute_grad_sds: one UNet batch on [cond; uncond], then e_c + s (e_c - e_u)."""
    N = x_t.shape[0]
    labels = torch.cat([teacher_condition(1).expand(N), null_condition().expand(N)])
    with torch.no_grad():
        out = teacher.unet(torch.cat([x_t, x_t]), torch.cat([t, t]), class_labels=labels).sample
    e_text, e_uncond = out.chunk(2)
    return e_text + s_ts * (e_text - e_uncond)


def noisy(teacher, z, draws):
    """x_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps for every (r, k), flattened to (R K, C, h, w)."""
    abar = teacher.alphas_cumprod[draws.t].to(z.dtype)[..., None, None, None]
    x_t = abar.sqrt() * z.detach()[:, None] + (1 - abar).sqrt() * draws.eps
    return x_t.reshape(-1, *z.shape[1:]), draws.t.reshape(-1), abar


# ---------------------------------------------------------------- Lightning's logging rule

def lightning_log(logged: dict, name: str, value) -> None:
    """``LightningModule.log``'s value rule, strictly: a number, or a tensor with one element."""
    if isinstance(value, bool) or isinstance(value, numbers.Number):
        logged[name] = float(value)
        return
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        logged[name] = float(value.detach())
        return
    raise ValueError(f"self.log({name!r}, value) needs a number or a one-element tensor, got "
                     f"{type(value).__name__}")


def test_the_logging_rule_rejects_what_lightning_rejects(teacher, prompt):
    logged = {}
    for value in (None, {"a": 1.0}, torch.zeros(2), (1.0, 2.0)):
        with pytest.raises(ValueError):
            lightning_log(logged, "x", value)
    guidance = ThreestudioGuidance(teacher, ct.GuidanceConfig(K=1), guidance_scale=1.0)
    guidance(torch.rand(1, 16, 16, 4), prompt, **cameras(1), rgb_as_latents=True)
    with pytest.raises(ValueError):
        lightning_log(logged, "last", guidance.last)  # a NamedTuple of tensors
    for value in (3, 2.5, True, torch.tensor(1.0), torch.ones(1, 1)):
        lightning_log(logged, "x", value)


# ---------------------------------------------------------------- the stand-in system

def train(teacher, prompt, *, seed: int, steps: int = 3):
    """A threestudio system's training loop, call for call: render, guidance, log, weighted loss."""
    gen = torch.Generator().manual_seed(123)
    renderer = ct.GridRenderer(8, 16, 8, generator=gen)
    optimizer = torch.optim.SGD(renderer.parameters(), lr=50.0)
    guidance = ThreestudioGuidance(teacher, ct.GuidanceConfig(K=2, seed=seed), guidance_scale=7.5)
    lambdas = {"lambda_sds": 0.5}
    logged, history = [], []
    cam_gen = torch.Generator().manual_seed(7)
    for step in range(steps):
        guidance.update_step(epoch=0, global_step=step)       # BaseSystem.on_train_batch_start
        cams = ct.random_cameras(2, generator=cam_gen)
        o = cams.origins
        r = o.norm(dim=-1)
        batch = {"elevation": torch.rad2deg(torch.asin(o[:, 1] / r)),
                 "azimuth": torch.rad2deg(torch.atan2(o[:, 2], o[:, 0])), "camera_distances": r,
                 "rays_o": o[:, None].expand(2, 16 * 16, 3), "c2w": cams.rotations,
                 "mvp_mtx": torch.eye(4).expand(2, 4, 4), "light_positions": o, "height": 16,
                 "width": 16}
        comp_rgb = renderer(cams).permute(0, 2, 3, 1)          # (B, H, W, 3), as threestudio renders
        guidance_out = guidance(comp_rgb, prompt, **batch, rgb_as_latents=False)
        loss = 0.0
        step_log = {}
        for name, value in guidance_out.items():
            lightning_log(step_log, f"train/{name}", value)
            if name.startswith("loss_"):
                loss += value * lambdas[name.replace("loss_", "lambda_")]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        logged.append(step_log)
        history.append(float(loss.detach()))
    params = torch.cat([p.detach().reshape(-1) for p in renderer.parameters()])
    return params, logged, history, guidance


def test_a_threestudio_system_loop_logs_and_trains(teacher, prompt):
    start = torch.cat([p.detach().reshape(-1) for p in
                       ct.GridRenderer(8, 16, 8, generator=torch.Generator().manual_seed(123)).parameters()])
    params, logged, history, guidance = train(teacher, prompt, seed=0)
    keys = {"train/loss_sds", "train/grad_norm", "train/min_step", "train/max_step", "train/K",
            "train/variance"}
    assert all(set(step) == keys for step in logged)
    assert all(math.isfinite(v) for step in logged for v in step.values())
    assert all(step["train/K"] == 2 and (step["train/min_step"], step["train/max_step"]) == (20, 980)
               for step in logged)
    # the logged loss is lambda_sds * loss_sds, and loss_sds = |g|^2 / (2B)
    assert history == pytest.approx([0.5 * s["train/loss_sds"] for s in logged], rel=1e-6)
    assert [s["train/loss_sds"] for s in logged] == pytest.approx(
        [s["train/grad_norm"] ** 2 / 4 for s in logged], rel=1e-4)
    assert bool(torch.isfinite(params).all())
    assert (params - start).abs().max() > 1e-4
    # the posterior draws and (t, eps) come from the guidance's generator only: a rerun is
    # bit-identical, another seed is not
    again, _, _, _ = train(teacher, prompt, seed=0)
    other, _, _, _ = train(teacher, prompt, seed=1)
    assert torch.equal(params, again)
    assert not torch.equal(params, other)


# ---------------------------------------------------------------- (1) the CFG convention

@pytest.mark.parametrize("convention", ["threestudio", "carv"])
def test_cfg_convention(teacher, prompt, convention):
    s, B, K = 7.5, 2, 3
    guidance = ThreestudioGuidance(teacher, ct.GuidanceConfig(K=K, seed=3), guidance_scale=s,
                                   cfg_convention=convention)
    assert guidance.teacher_guidance_scale == (s + 1 if convention == "threestudio" else s)
    z = torch.randn(B, 16, 16, 4, generator=torch.Generator().manual_seed(0))
    saved = guidance.generator.get_state()
    guidance(z, prompt, **cameras(B), rgb_as_latents=True)
    est = guidance.last.estimate
    # the same draws from the saved state (uniforms, then noise)
    g = torch.Generator().set_state(saved)
    draws = draw_inner(B, K, (4, 16, 16), sampler=guidance.carv.sampler(), generator=g)
    assert torch.equal(draws.t, est.t)
    x_t, t, abar = noisy(teacher, z.permute(0, 3, 1, 2), draws)
    with torch.no_grad():
        e_c = teacher.predict_noise(x_t, t, teacher_condition(1))
        e_u = teacher.predict_noise(x_t, t, null_condition())
    cfg = {"threestudio": e_c + s * (e_c - e_u), "carv": e_u + s * (e_c - e_u)}
    w = (1 - abar).reshape(B, K, 1, 1, 1)
    w_is = est.w.float()[..., None, None, None]
    grads = {name: (w_is * w * (e.reshape(draws.eps.shape) - draws.eps)).mean(1) for name, e in cfg.items()}
    scale = grads[convention].abs().max()
    assert torch.allclose(est.grad, grads[convention], rtol=1e-4, atol=1e-4 * scale)
    wrong = "carv" if convention == "threestudio" else "threestudio"
    assert (est.grad - grads[wrong]).abs().max() > 100 * 1e-4 * scale


# ---------------------------------------------------------------- (2) the resize

def test_resize_matches_interpolate(teacher, prompt):
    gen = torch.Generator().manual_seed(1)
    guidance = ThreestudioGuidance(teacher, ct.GuidanceConfig(K=1), posterior="mean")
    # the derived resolution: unet.sample_size * 2 ** (VAE blocks - 1)
    factor = 2 ** (len(teacher.vae.config.block_out_channels) - 1)
    assert guidance.resolution == (teacher.unet.config.sample_size * factor,) * 2 == (64, 64)
    for shape in [(2, 32, 32, 3), (2, 128, 96, 3)]:                 # up- and downsampled
        rgb = torch.rand(*shape, generator=gen)
        with torch.no_grad():
            assert torch.allclose(guidance.encode(rgb), hand_encode(teacher, rgb), atol=1e-6)
    custom = ThreestudioGuidance(teacher, ct.GuidanceConfig(K=1), resolution=(48, 32))
    rgb = torch.rand(1, 20, 20, 3, generator=gen)
    with torch.no_grad():
        assert torch.allclose(custom.encode(rgb), hand_encode(teacher, rgb, (48, 32)), atol=1e-6)
    # latents: resized to the UNet's sample size, not encoded
    lat = torch.randn(2, 8, 8, 4, generator=gen)
    want = F.interpolate(lat.permute(0, 3, 1, 2), (16, 16), mode="bilinear", align_corners=False)
    assert torch.equal(guidance.encode(lat, rgb_as_latents=True), want)
    # and the call itself runs through it: d loss / d rgb = J^T g / B with J the hand resize
    lat.requires_grad_(True)
    out = guidance(lat, prompt, **cameras(2), rgb_as_latents=True)
    out["loss_sds"].backward()
    leaf = lat.detach().clone().requires_grad_(True)
    hand = F.interpolate(leaf.permute(0, 3, 1, 2), (16, 16), mode="bilinear", align_corners=False)
    (want_grad,) = torch.autograd.grad((hand * guidance.last.estimate.grad).sum() / 2, leaf)
    assert torch.allclose(lat.grad, want_grad, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- (3) bad input

def test_channels_first_and_other_bad_input_raise(teacher, prompt):
    guidance = ThreestudioGuidance(teacher, ct.GuidanceConfig(K=1))
    with pytest.raises(ValueError, match=r"rgb must have shape \(B, H, W, C\) with C = 3.*"
                                         r"channels-first.*permute\(0, 2, 3, 1\)"):
        guidance(torch.rand(2, 3, 64, 64), prompt, **cameras(2))
    with pytest.raises(ValueError, match=r"rgb .*C = 4 .*rgb_as_latents=True.*channels-first"):
        guidance(torch.rand(2, 4, 16, 16), prompt, **cameras(2), rgb_as_latents=True)
    with pytest.raises(ValueError, match=r"C = 3") as info:
        guidance(torch.rand(2, 64, 64, 5), prompt, **cameras(2))
    assert "channels-first" not in str(info.value)
    with pytest.raises(ValueError, match=r"rgb must be a floating tensor of shape \(B, H, W, C\)"):
        guidance(torch.rand(64, 64, 3), prompt, **cameras(2))
    bad = torch.rand(2, 64, 64, 3)
    bad[0, 3, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="rgb must be finite"):
        guidance(bad, prompt, **cameras(2))
    state = guidance.generator.get_state()
    with ct.set_validate_args(False):   # the value check is switchable; the shape checks are not
        guidance(torch.rand(2, 16, 16, 4), prompt, **cameras(2), rgb_as_latents=True)
        with pytest.raises(ValueError, match="channels-first"):
            guidance(torch.rand(2, 3, 64, 64), prompt, **cameras(2))
    assert not torch.equal(state, guidance.generator.get_state())

    class Half:  # returns B rows instead of 2B
        def get_text_embeddings(self, elevation, azimuth, camera_distances, view_dependent_prompting=True):
            return teacher_condition(1).expand(elevation.shape[0])

    assert isinstance(Half(), PromptProvider) and isinstance(prompt, PromptProvider)
    with pytest.raises(ValueError, match=r"get_text_embeddings must return \[cond; uncond\] with "
                                         r"leading dimension 2B = 4 for B = 2 renders, got \(2,\)"):
        guidance(torch.rand(2, 16, 16, 4), Half(), **cameras(2), rgb_as_latents=True)
    with pytest.raises(ValueError, match=r"elevation must be a tensor of shape \(2,\)"):
        guidance(torch.rand(2, 16, 16, 4), prompt, **{**cameras(2), "elevation": torch.zeros(3)},
                 rgb_as_latents=True)

    class PerpNeg(FixedPrompt):
        use_perp_neg = True

    with pytest.raises(NotImplementedError, match="use_perp_neg"):
        guidance(torch.rand(1, 16, 16, 4), PerpNeg(teacher_condition(1), null_condition()),
                 **cameras(1), rgb_as_latents=True)
    with pytest.raises(NotImplementedError, match="guidance_eval"):
        guidance(torch.rand(1, 16, 16, 4), prompt, **cameras(1), rgb_as_latents=True, guidance_eval=True)
    with pytest.raises(ValueError, match=r"ThreestudioGuidance\(guidance_scale=\.\.\.\).*7\.5"):
        ThreestudioGuidance(teacher, ct.GuidanceConfig(guidance_scale=7.5))
    with pytest.raises(ValueError, match="cfg_convention must be one of"):
        ThreestudioGuidance(teacher, cfg_convention="diffusers")
    with pytest.raises(ValueError, match="posterior must be one of"):
        ThreestudioGuidance(teacher, posterior="mode")
    with pytest.raises(ValueError, match="condition must have leading dimension 1"):
        FixedPrompt(torch.tensor([1, 2]), torch.tensor([3, 4]))


def test_fixed_prompt_stacks_cond_then_uncond():
    y, u = torch.randn(1, 5, 8), torch.randn(1, 5, 8)
    emb = FixedPrompt(y, u).get_text_embeddings(torch.zeros(3), torch.zeros(3), torch.ones(3), False)
    assert emb.shape == (6, 5, 8)
    assert torch.equal(emb[:3], y.expand(3, 5, 8)) and torch.equal(emb[3:], u.expand(3, 5, 8))


# ---------------------------------------------------------------- (4) threestudio's gradient

@pytest.mark.parametrize("posterior", ["mean", "sample"])
def test_gradient_is_threestudios_formula(teacher, prompt, posterior):
    s, B = 10.0, 2
    config = ct.GuidanceConfig(K=1, sampler="iid", proposal="uniform", seed=5)
    guidance = ThreestudioGuidance(teacher, config, guidance_scale=s, posterior=posterior)
    assert guidance.config.include_alpha is False          # threestudio's default, not CARV's
    rgb = torch.rand(B, 40, 40, 3, generator=torch.Generator().manual_seed(2), requires_grad=True)
    saved = guidance.generator.get_state()
    out = guidance(rgb, prompt, **cameras(B))
    out["loss_sds"].backward()
    est = guidance.last.estimate
    # by hand: the posterior (a draw first, from the same generator), then t, then eps
    g = torch.Generator().set_state(saved)
    leaf = rgb.detach().clone().requires_grad_(True)
    z = hand_encode(teacher, leaf, generator=g if posterior == "sample" else None)
    draws = draw_inner(B, 1, (4, 16, 16), sampler=guidance.carv.sampler(), generator=g)
    assert torch.equal(draws.t, est.t) and torch.equal(est.w, torch.ones_like(est.w))
    assert bool(((est.t >= 20) & (est.t <= 980)).all())
    x_t, t, _ = noisy(teacher, z, draws)
    w = (1 - teacher.alphas_cumprod[t]).to(z.dtype).view(-1, 1, 1, 1)    # w(t) = 1 - abar_t
    grad = torch.nan_to_num(w * (threestudio_eps(teacher, x_t, t, s) - draws.eps.reshape(x_t.shape)))
    scale = grad.abs().max()
    assert torch.allclose(est.grad, grad, rtol=1e-4, atol=1e-5 * scale)
    loss = 0.5 * F.mse_loss(z, (z - grad).detach(), reduction="sum") / B
    assert float(out["loss_sds"].detach()) == pytest.approx(float(loss.detach()), rel=1e-4)
    assert float(out["grad_norm"]) == pytest.approx(float(grad.norm()), rel=1e-4)
    (want,) = torch.autograd.grad(loss, leaf)
    assert torch.allclose(rgb.grad, want, rtol=1e-3, atol=1e-4 * want.abs().max())
    # with alpha_t in the residual the gradient would differ
    alpha = teacher.alphas_cumprod[t].sqrt().to(z.dtype).view(-1, 1, 1, 1)
    assert (est.grad - alpha * grad).abs().max() > 0.01 * scale


def test_failed_call_leaves_the_generator(teacher):
    guidance = ThreestudioGuidance(teacher, ct.GuidanceConfig(K=2))   # posterior="sample"
    state = guidance.generator.get_state()
    bad = FixedPrompt(torch.tensor([[0.5]]), torch.tensor([[0.5]]))   # float labels: the UNet fails
    with pytest.raises(Exception):
        guidance(torch.rand(2, 64, 64, 3), bad, **cameras(2))
    assert torch.equal(state, guidance.generator.get_state()) and guidance.carv.calls == 0


# ---------------------------------------------------------------- (5) update_step and schedules

def test_update_step_moves_the_step_range(teacher, prompt):
    lo_s, hi_s = [0, 0.02, 0.2, 100], [0, 0.98, 0.5, 100]
    guidance = ThreestudioGuidance(teacher, ct.GuidanceConfig(K=4, min_step_percent=lo_s,
                                                              max_step_percent=hi_s))

    def percent(schedule, step):  # threestudio's C(): linear in the step, clamped to [0, 1]
        s0, v0, v1, s1 = schedule
        return v0 + (v1 - v0) * max(min(1.0, (step - s0) / (s1 - s0)), 0.0)

    seen = []
    for global_step in (0, 30, 100, 250):
        guidance.update_step(epoch=0, global_step=global_step)
        out = guidance(torch.randn(2, 16, 16, 4), prompt, **cameras(2), rgb_as_latents=True)
        lo, hi = int(1000 * percent(lo_s, global_step)), int(1000 * percent(hi_s, global_step))
        assert (out["min_step"], out["max_step"]) == (lo, hi) == (guidance.min_step, guidance.max_step)
        t = guidance.last.estimate.t
        assert bool(((t >= lo) & (t <= hi)).all())
        seen.append((lo, hi))
    assert seen[0] == (20, 980) and seen[-1] == (200, 500)


def test_checkpoint_round_trip(teacher, prompt):
    config = ct.GuidanceConfig(K=2, proposal="adaptive", seed=9)
    a = ThreestudioGuidance(teacher, config, guidance_scale=5.0)
    z = torch.randn(2, 16, 16, 4, generator=torch.Generator().manual_seed(4))
    a(z, prompt, **cameras(2), rgb_as_latents=True)
    state = a.state_dict()
    b = ThreestudioGuidance(teacher, config, guidance_scale=5.0)
    b.load_state_dict(state)
    out_a = a(z, prompt, **cameras(2), rgb_as_latents=True)
    out_b = b(z, prompt, **cameras(2), rgb_as_latents=True)
    assert torch.equal(a.last.estimate.t, b.last.estimate.t)
    assert float(out_a["loss_sds"]) == float(out_b["loss_sds"])
    with pytest.raises(ValueError, match=r"posterior \(checkpoint 'sample', now 'mean'\)"):
        ThreestudioGuidance(teacher, config, guidance_scale=5.0, posterior="mean").load_state_dict(state)


def test_nan_to_num_zeroes_non_finite_draws_when_checks_are_off(teacher, prompt):
    z = torch.randn(2, 16, 16, 4, generator=torch.Generator().manual_seed(6))
    z[0, 2, 2, 0] = float("inf")            # poisons every teacher output of render 0
    grads = {}
    with ct.set_validate_args(False):
        for flag in (True, False):
            guidance = ThreestudioGuidance(teacher, ct.GuidanceConfig(K=2, seed=2), nan_to_num=flag)
            guidance(z, prompt, **cameras(2), rgb_as_latents=True)
            grads[flag] = guidance.last.estimate.grad
    assert bool(torch.isnan(grads[False][0]).all())              # unguarded, the NaN reaches g
    assert bool(torch.isfinite(grads[True]).all())               # torch.nan_to_num: NaN -> 0
    assert torch.equal(grads[True][0], torch.zeros_like(grads[True][0]))
    assert torch.equal(grads[True][1], grads[False][1])          # the finite render is untouched
    with pytest.raises(ValueError, match="rgb must be finite"):    # validation on: refused first
        ThreestudioGuidance(teacher, ct.GuidanceConfig(K=2))(z, prompt, **cameras(2), rgb_as_latents=True)
