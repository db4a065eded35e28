"""A real StableDiffusionPipeline (CLIP text encoder, UNet2DConditionModel, AutoencoderKL,
PNDM scheduler) plugged into CARV, built tiny and random from configs; nothing is downloaded.

Every check recomputes the quantity independently: the tokenizer and text encoder called by
hand, the UNet called directly for CFG, the VAE posterior read directly, the SDS residual
formed by hand from the same draws, and the image gradient as an explicit vector-Jacobian
product through the resize and the encoder.
"""

import json
import string

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    FlowMatchEulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

import carv_torch as ct  # noqa: E402
from carv_torch.stable_diffusion import (  # noqa: E402
    PromptEmbeddings,
    prompt_embeddings,
    resize_to_teacher,
    teacher_from_pipeline,
    teacher_resolution,
)

torch.set_num_threads(1)
DT = torch.float64
T = 1000
L = 16          # tokenizer.model_max_length (77 in SD)
PROMPT = "a photo of a cat"
SCALE = 7.5


def tiny_tokenizer(folder) -> CLIPTokenizer:
    # Byte-level BPE over single letters (with and without the end-of-word suffix) and a
    # few merges, so that different prompts give different ids.
    letters = string.ascii_lowercase
    tokens = (["<|startoftext|>", "<|endoftext|>"] + list(letters) + [c + "</w>" for c in letters]
              + ["ph", "ot", "cat</w>", "ca"])
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\np h\no t\nc a\nca t</w>\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=L)


def sd_scheduler():
    # SD 1.x's scheduler config (scheduler/scheduler_config.json).
    return PNDMScheduler(num_train_timesteps=T, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", set_alpha_to_one=False,
                         skip_prk_steps=True, steps_offset=1)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    tokenizer = tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=32,
        cross_attention_dim=32, attention_head_dim=8)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=32, sample_size=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=len(tokenizer), max_position_embeddings=L, projection_dim=32,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    # UNet and VAE in float64 (exact comparisons); the text encoder stays float32, so the
    # embeddings must be cast to the UNet's dtype.
    unet.to(DT).eval().requires_grad_(False)
    vae.to(DT).eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=sd_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


@pytest.fixture(scope="module")
def emb(pipe):
    return prompt_embeddings(pipe, PROMPT)


def with_components(pipe, **changes):
    # Built whole, then the components removed: before diffusers 0.33 the pipeline's
    # __init__ reads vae.config unguarded (the floor is 0.30).
    out = StableDiffusionPipeline(**{k: pipe.components[k] for k in (
        "vae", "text_encoder", "tokenizer", "unet", "scheduler", "safety_checker",
        "feature_extractor")}, requires_safety_checker=False)
    for name, value in changes.items():
        setattr(out, name, value)
    return out


def direct_text(pipe, prompt):
    ids = pipe.tokenizer(prompt, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


def direct_eps(pipe, x_t, t, emb):
    # The two halves of CFG, each a plain UNet call.
    n = x_t.shape[0]
    with torch.no_grad():
        e_u = pipe.unet(x_t, t, encoder_hidden_states=emb.uncond.expand(n, -1, -1)).sample
        e_c = pipe.unet(x_t, t, encoder_hidden_states=emb.condition.expand(n, -1, -1)).sample
    return e_u, e_c


def direct_encode(pipe, images):
    return pipe.vae.encode(2 * images - 1).latent_dist.mean * pipe.vae.config.scaling_factor


def direct_sds_grad(pipe, z, draws, emb, scale):
    # g_r = (1/K) sum_k w_rk (1 - abar) sqrt(abar) (eps_hat - eps), abar from the scheduler.
    R, K = draws.t.shape
    abar = pipe.scheduler.alphas_cumprod.to(DT)[draws.t].reshape(R, K, 1, 1, 1)
    x_t = abar.sqrt() * z.detach()[:, None] + (1 - abar).sqrt() * draws.eps
    e_u, e_c = direct_eps(pipe, x_t.reshape(R * K, *z.shape[1:]), draws.t.reshape(-1), emb)
    eps_hat = (e_u + scale * (e_c - e_u)).reshape(draws.eps.shape)
    f = (1 - abar) * abar.sqrt() * (eps_hat - draws.eps)
    return (draws.w.reshape(R, K, 1, 1, 1) * f).mean(1)


# --------------------------------------------------------------------------- teacher


def scaled_linear_abar():
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T, dtype=DT) ** 2
    return torch.cumprod(1 - betas, 0)


@pytest.mark.parametrize("override", [None, DDIMScheduler, DDPMScheduler])
def test_teacher_holds_the_pipeline_modules_and_schedule(pipe, override):
    sched = None if override is None else override.from_config(pipe.scheduler.config)
    teacher = teacher_from_pipeline(pipe, scheduler=sched, max_batch_size=6)
    assert isinstance(teacher, ct.DiffusersTeacher) and isinstance(teacher, ct.Teacher)
    assert teacher.unet is pipe.unet and teacher.vae is pipe.vae and teacher.is_latent
    assert teacher.scheduler is (pipe.scheduler if sched is None else sched)
    assert teacher.prediction_type == "epsilon" and teacher.max_batch_size == 6
    # abar depends on the training betas only, not on the sampler class (float32 in diffusers).
    assert torch.allclose(teacher.alphas_cumprod, scaled_linear_abar(), rtol=1e-5, atol=0)


def test_teacher_reads_v_prediction_from_the_scheduler(pipe):
    sched = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    teacher = teacher_from_pipeline(pipe, scheduler=sched)
    x, t = torch.randn(2, 4, 8, 8, dtype=DT), torch.tensor([100, 700])
    with torch.no_grad():
        v = pipe.unet(x, t, encoder_hidden_states=torch.zeros(2, L, 32, dtype=DT)).sample
    abar = sched.alphas_cumprod.to(DT)[t].reshape(-1, 1, 1, 1)
    expected = abar.sqrt() * v + (1 - abar).sqrt() * x          # eps = alpha v + sigma x_t
    got = teacher.predict_noise(x, t, torch.zeros(1, L, 32, dtype=DT))
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_teacher_refuses_what_is_not_a_latent_sd_pipeline(pipe):
    with pytest.raises(TypeError, match="pipe must be a diffusers StableDiffusionPipeline with a vae"):
        teacher_from_pipeline(with_components(pipe, vae=None))
    with pytest.raises(TypeError, match="with a unet.*UNet2DConditionModel"):
        teacher_from_pipeline(pipe.unet)
    with pytest.raises(TypeError, match="scheduler must carry .*alphas_cumprod.*FlowMatchEulerDiscrete"):
        teacher_from_pipeline(pipe, scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.vae.requires_grad_(True)
    try:
        with pytest.warns(UserWarning, match="pipe.vae has parameters that require grad"):
            teacher_from_pipeline(pipe)
    finally:
        pipe.vae.requires_grad_(False)
    with pytest.raises(ValueError, match="nan_policy"):
        teacher_from_pipeline(pipe, nan_policy="ignore")


# --------------------------------------------------------------------------- prompts


def test_prompt_embeddings_equal_the_text_encoder_called_directly(pipe, emb):
    assert isinstance(emb, PromptEmbeddings)
    cond, uncond = direct_text(pipe, PROMPT), direct_text(pipe, "")
    assert emb.condition.shape == emb.uncond.shape == (1, L, 32)
    assert emb.condition.dtype == emb.uncond.dtype == DT            # the UNet's, not the encoder's
    assert not emb.condition.requires_grad and not emb.uncond.requires_grad
    assert torch.allclose(emb.condition, cond.to(DT), rtol=0, atol=0)
    assert torch.allclose(emb.uncond, uncond.to(DT), rtol=0, atol=0)
    assert (cond - uncond).abs().max() > 1e-2                       # the prompt is not the null


def test_prompt_embeddings_of_several_prompts_and_a_negative_prompt(pipe, emb):
    many = prompt_embeddings(pipe, [PROMPT, "a dog"], negative_prompt="blurry")
    assert many.condition.shape == many.uncond.shape == (2, L, 32)
    # A batch of 2 through the float32 encoder rounds differently from a batch of 1.
    close = dict(rtol=1e-5, atol=1e-6)
    assert torch.allclose(many.condition[:1], emb.condition, **close)
    assert torch.allclose(many.condition[1], direct_text(pipe, "a dog")[0].to(DT), **close)
    assert torch.allclose(many.uncond, direct_text(pipe, "blurry").to(DT).expand(2, -1, -1), **close)
    assert (many.uncond[0] - emb.uncond[0]).abs().max() > 1e-2


def test_prompt_embeddings_bad_input(pipe):
    with pytest.raises(TypeError, match="with a text_encoder"):
        prompt_embeddings(with_components(pipe, text_encoder=None), PROMPT)
    with pytest.raises(TypeError, match="prompt must be a string or a non-empty list of strings, got int"):
        prompt_embeddings(pipe, 3)
    with pytest.raises(ValueError, match="negative_prompt must be one string or 2 strings .* got 3"):
        prompt_embeddings(pipe, ["a", "b"], negative_prompt=["x", "y", "z"])


# --------------------------------------------------------------------------- CFG


def test_cfg_equals_the_unet_called_directly(pipe, emb):
    teacher = teacher_from_pipeline(pipe, max_batch_size=4)        # 3 inputs: chunks of 2 CFG pairs
    g = torch.Generator().manual_seed(1)
    x_t, t = torch.randn(3, 4, 8, 8, generator=g, dtype=DT), torch.tensor([20, 500, 980])
    e_u, e_c = direct_eps(pipe, x_t, t, emb)
    got = teacher.predict_noise(x_t, t, emb.condition, uncond=emb.uncond, guidance_scale=SCALE)
    assert torch.allclose(got, e_u + SCALE * (e_c - e_u), rtol=1e-9, atol=1e-10)
    # threestudio's e_c + s_ts (e_c - e_u) is CARV's scale s_ts + 1.
    s_ts = SCALE - 1
    assert torch.allclose(got, e_c + s_ts * (e_c - e_u), rtol=1e-9, atol=1e-10)
    assert (e_c - e_u).abs().max() > 1e-3                           # guidance does something


# --------------------------------------------------------------------------- images


def test_resize_is_pixel_centred_bilinear():
    row = torch.tensor([[[[0.0, 1.0]]]], dtype=DT)
    # align_corners=False samples at (i + 1/2) W0/W - 1/2, clamped: -1/4, 1/4, 3/4, 5/4.
    assert resize_to_teacher(row, (1, 4)).flatten().tolist() == [0.0, 0.25, 0.75, 1.0]
    x = torch.rand(2, 3, 16, 16, dtype=DT)
    assert resize_to_teacher(x, 16) is x
    assert torch.allclose(resize_to_teacher(torch.full((1, 3, 5, 7), 0.3, dtype=DT), (16, 12)),
                          torch.full((1, 3, 16, 12), 0.3, dtype=DT), rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match=r"rgb must be a floating tensor of shape \(B, C, H, W\)"):
        resize_to_teacher(torch.rand(3, 16, 16), 16)
    with pytest.raises(ValueError, match="size must be a positive integer"):
        resize_to_teacher(x, (16, 0))
    with pytest.warns(UserWarning, match="channels-last"):
        resize_to_teacher(torch.rand(1, 12, 12, 3), 16)


def test_encode_equals_the_vae_posterior_at_the_teacher_resolution(pipe):
    teacher = teacher_from_pipeline(pipe)
    size = teacher_resolution(pipe)
    assert size == (pipe.unet.config.sample_size * pipe.vae_scale_factor,) * 2 == (16, 16)
    images = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(2), dtype=DT)
    resized = resize_to_teacher(images, size)
    assert resized.shape == (2, 3, 16, 16)
    with torch.no_grad():
        z = teacher.encode(resized)
        dist = pipe.vae.encode(2 * resized - 1).latent_dist
        sampled = teacher.encode(resized, generator=torch.Generator().manual_seed(3))
    # The latents have the UNet's native size, and are the posterior mean times s_vae ...
    assert z.shape == (2, 4, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    assert torch.allclose(z, dist.mean * pipe.vae.config.scaling_factor, rtol=1e-12, atol=1e-12)
    # ... or, with a generator, a posterior sample mean + std * N(0, I) from that generator.
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(3), dtype=DT)
    expected = (dist.mean + dist.std * noise) * pipe.vae.config.scaling_factor
    assert torch.allclose(sampled, expected, rtol=1e-12, atol=1e-12)
    assert (sampled - z).abs().max() > 1e-6


# --------------------------------------------------------------------------- SDS and guidance


def image_vjp(pipe, images, grad_z, size):
    # (d z / d images)^T grad_z through the resize and the encoder's posterior mean.
    x = images.detach().requires_grad_(True)
    z = direct_encode(pipe, resize_to_teacher(x, size))
    return torch.autograd.grad(z, x, grad_outputs=grad_z)[0]


def test_sds_step_through_the_vae_equals_the_hand_computation(pipe, emb):
    teacher = teacher_from_pipeline(pipe)
    images = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(4), dtype=DT)
    images.requires_grad_(True)
    z = teacher.encode(images)
    p = torch.zeros(T, dtype=DT)
    p[20:981] = 1.0 / 961                                          # threestudio's t range
    est = ct.sds(teacher, z, K=2, p=p, q=None, design="stratified", condition=emb.condition,
                 uncond=emb.uncond, guidance_scale=SCALE, generator=torch.Generator().manual_seed(0))
    est.loss.backward()
    # 1. The same draws, then the residual by hand from direct UNet calls.
    draws = ct.draw_inner(1, 2, z.shape[1:], p, None, design="stratified",
                          generator=torch.Generator().manual_seed(0), device=z.device, dtype=z.dtype)
    assert torch.equal(est.t, draws.t)
    expected = direct_sds_grad(pipe, z, draws, emb, SCALE)
    assert torch.allclose(est.grad, expected, rtol=1e-9, atol=1e-12)
    # 2. The image gradient is (dz/dx)^T g / R, finite and nonzero.
    assert torch.isfinite(images.grad).all() and images.grad.abs().max() > 0
    vjp = image_vjp(pipe, images, expected / z.shape[0], (16, 16))
    assert torch.allclose(images.grad, vjp, rtol=1e-9, atol=1e-14)


def test_guidance_step_on_a_small_render(pipe, emb):
    teacher = teacher_from_pipeline(pipe)
    config = ct.GuidanceConfig(K=2, guidance_scale=SCALE, seed=0)
    size = teacher_resolution(pipe)
    render = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(5), dtype=DT)
    render.requires_grad_(True)
    out = ct.CARVGuidance(teacher, config)(resize_to_teacher(render, size), condition=emb.condition,
                                           uncond=emb.uncond)
    out["loss_sds"].backward()
    assert (out["min_step"], out["max_step"]) == (20, 980)          # threestudio's t range
    assert torch.isfinite(render.grad).all() and render.grad.abs().max() > 0
    # The same step on latents encoded by hand (posterior mean of the VAE at 2x - 1, times
    # s_vae) gives the same loss; its latent gradient dL/dz = g / R, pulled back through the
    # encoder and the resize, is the render's gradient.
    z = direct_encode(pipe, resize_to_teacher(render.detach(), size)).requires_grad_(True)
    out_z = ct.CARVGuidance(teacher, config)(z, condition=emb.condition, uncond=emb.uncond,
                                             rgb_as_latents=True)
    out_z["loss_sds"].backward()
    assert torch.allclose(out["loss_sds"], out_z["loss_sds"], rtol=1e-10, atol=0)
    assert torch.allclose(render.grad, image_vjp(pipe, render, z.grad, size), rtol=1e-9, atol=1e-14)
