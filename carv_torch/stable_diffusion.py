r"""A diffusers ``StableDiffusionPipeline`` as a CARV latent teacher.

Stable Diffusion scores latents $z = s_{\rm vae}\,\mathcal E(2\tilde x - 1)$ of images
$\tilde x \in [0, 1]^{3 \times H \times W}$ at the VAE's resolution
$H = W = f\cdot$ ``unet.config.sample_size``, $f$ = ``pipe.vae_scale_factor``
(512 for SD 1.x and 2.x-base, 768 for SD 2.x), conditioned on CLIP hidden states
$y$ of shape ``(1, L, D)`` (77 × 768 for SD 1.x, 77 × 1024 for SD 2.x). A guidance step on
a render $x$ of any size is

$$ x \xrightarrow{\ \text{bilinear}\ } \tilde x \xrightarrow{\ \mathcal E\ } z, \qquad
   g = \frac1K\sum_{k=1}^K \tilde w_k\, w(t_k)\,\alpha_{t_k}\big(\hat\epsilon(\alpha_{t_k} z + \sigma_{t_k}\epsilon_k, t_k) - \epsilon_k\big), \qquad
   \hat\epsilon = \hat\epsilon_\varnothing + s\,(\hat\epsilon_y - \hat\epsilon_\varnothing), $$

and $\partial L/\partial x = (\partial z/\partial x)^\top g / R$ flows back through the VAE
encoder and the resize. The pieces:

| piece | call |
|---|---|
| teacher: the UNet, $\bar\alpha_t$ of the scheduler, the VAE | :func:`teacher_from_pipeline` |
| $y$ and $\varnothing$ from the pipeline's own ``encode_prompt`` | :func:`prompt_embeddings` |
| render $\to$ VAE resolution | :func:`resize_to_teacher`, with :func:`teacher_resolution` |

Conventions, next to threestudio's ``stable-diffusion-guidance``:

- **CFG.** CARV uses $\hat\epsilon_\varnothing + s(\hat\epsilon_y - \hat\epsilon_\varnothing)$ (diffusers'
  sampling convention); threestudio's SDS forms $\hat\epsilon_y + s_{\rm ts}(\hat\epsilon_y - \hat\epsilon_\varnothing)$,
  which is $\hat\epsilon_\varnothing + (s_{\rm ts} + 1)(\hat\epsilon_y - \hat\epsilon_\varnothing)$: CARV's
  $s = s_{\rm ts} + 1$ (threestudio's default ``guidance_scale=100`` is ``guidance_scale=101`` here).
- **VAE posterior.** :meth:`~carv_torch.teachers.DiffusersTeacher.encode` takes the posterior
  *mean* when ``generator`` is ``None`` (what :class:`~carv_torch.guidance.CARVGuidance` does) and
  *samples* it with a generator; threestudio samples (``latent_dist.sample()``). To sample, encode
  with ``teacher.encode(images, generator=g)`` and call the guidance with ``rgb_as_latents=True``.
- **$\alpha_t$.** ``include_alpha=True`` (CARV's default) multiplies the residual by $\alpha_t$;
  threestudio's SDS does not (``include_alpha=False``).

Nothing here downloads or loads weights: the pipeline is the caller's
(``StableDiffusionPipeline.from_pretrained``), and the tests build a tiny random one from configs.
"""

from __future__ import annotations

import inspect
import numbers
import warnings
from typing import NamedTuple, Sequence, Union

import torch
import torch.nn.functional as F

from .teachers import DiffusersTeacher

__all__ = [
    "PromptEmbeddings",
    "teacher_from_pipeline",
    "prompt_embeddings",
    "teacher_resolution",
    "resize_to_teacher",
]

Prompt = Union[str, Sequence[str]]


class PromptEmbeddings(NamedTuple):
    r"""Text conditioning for classifier-free guidance, each ``(P, L, D)`` for ``P`` prompts.

    Detached, on the UNet's device and in its dtype; pass them as ``condition=`` and
    ``uncond=`` to :func:`~carv_torch.objectives.sds` or a :class:`~carv_torch.guidance.CARVGuidance`.

    Attributes:
        condition: $y$, the prompt's CLIP hidden states.
        uncond: $\varnothing$, the negative prompt's (``""`` gives the unconditional model).
    """

    condition: torch.Tensor
    uncond: torch.Tensor


def _component(pipe, name: str, role: str):
    value = getattr(pipe, name, None)
    if value is None:
        raise TypeError(f"pipe must be a diffusers StableDiffusionPipeline with a {name} ({role}); "
                        f"got {type(pipe).__name__} whose {name} is missing or None")
    return value


def _first_param(module, name: str) -> torch.Tensor:
    try:
        return next(module.parameters())
    except (AttributeError, StopIteration):
        raise TypeError(f"pipe.{name} must be a torch module with parameters, got "
                        f"{type(module).__name__}") from None


def _alphas_cumprod(scheduler) -> torch.Tensor:
    abar = getattr(scheduler, "alphas_cumprod", None)
    if abar is None:
        raise TypeError(
            f"scheduler must carry the training schedule alphas_cumprod (DDPM, DDIM, PNDM, Euler, "
            f"LMS, DPM-Solver, UniPC and the other SD schedulers do), got {type(scheduler).__name__}; "
            f"pass scheduler=DDIMScheduler.from_config(pipe.scheduler.config) with the UNet's "
            f"training betas")
    abar = torch.as_tensor(abar).detach().to("cpu", torch.float64)
    if abar.ndim != 1 or abar.numel() < 2 or bool((abar <= 0).any()) or bool((abar > 1).any()):
        raise ValueError(f"scheduler.alphas_cumprod must be 1-D with values in (0, 1], got shape "
                         f"{tuple(abar.shape)} with range [{float(abar.min()):.3g}, "
                         f"{float(abar.max()):.3g}]")
    return abar


def teacher_from_pipeline(pipe, *, scheduler=None, max_batch_size: int = 64,
                          prediction_type: str | None = None, nan_policy: str = "raise",
                          check_finite: bool = True) -> DiffusersTeacher:
    r"""The latent teacher $\hat\epsilon(z_t, t, y)$ of a Stable Diffusion pipeline, $\bar\alpha_t$ from its scheduler.

    Returns ``DiffusersTeacher(pipe.unet, scheduler, pipe.vae, ...)``: the UNet's output is
    converted to $\hat\epsilon$ from the scheduler's ``prediction_type`` (``epsilon`` for SD 1.x and
    2.x-base, ``v_prediction`` for SD 2.x at 768), classifier-free guidance is
    $\hat\epsilon_\varnothing + s(\hat\epsilon_y - \hat\epsilon_\varnothing)$, and
    ``teacher.encode(images)`` is $s_{\rm vae}\,\mathcal E(2\,\text{images} - 1)$ with the posterior
    mean (``generator=None``) or a posterior sample (a ``torch.Generator``).

    $\bar\alpha_t$ depends only on the training betas in the scheduler's config, not on the
    sampler class: the pipeline's ``PNDMScheduler`` (SD 1.x), a ``DDIMScheduler`` loaded
    from the same ``scheduler/`` folder (threestudio) and a ``DDPMScheduler`` give the same
    $\bar\alpha_t$. Schedulers without ``alphas_cumprod`` (EDM, flow matching) are refused.

    The modules are held, not copied or changed: freeze them
    (``pipe.unet.requires_grad_(False)`` and the same for ``vae`` and ``text_encoder``). A VAE
    whose parameters require grad is allowed but warned about, because every
    ``loss.backward()`` through ``encode`` would also compute its weight gradients.

    Args:
        pipe: a diffusers ``StableDiffusionPipeline`` (any pipeline with a
            ``UNet2DConditionModel`` ``unet``, an ``AutoencoderKL`` ``vae`` and a ``scheduler``).
        scheduler: use this scheduler's $\bar\alpha_t$ and prediction type instead of ``pipe.scheduler``.
        max_batch_size: largest batch sent to the UNet in one call (a CFG pair counts twice).
        prediction_type: override the scheduler's ``epsilon``/``v_prediction``/``sample``.
        nan_policy: ``"raise"`` or ``"zero"`` (see :func:`~carv_torch.teachers.check_finite`).
        check_finite: ``False`` skips the finiteness check (one device sync per call).

    Raises:
        TypeError: ``pipe`` lacks a ``unet``, ``vae`` or ``scheduler``, its UNet takes no
            ``encoder_hidden_states``, or the scheduler has no ``alphas_cumprod``.
        ValueError: the UNet's input channels differ from the VAE's latent channels
            (an inpainting or depth UNet), or ``alphas_cumprod`` is not a schedule.
    """
    unet = _component(pipe, "unet", "the noise predictor")
    vae = _component(pipe, "vae", "the image-to-latent encoder")
    if scheduler is None:
        scheduler = _component(pipe, "scheduler", "the source of alphas_cumprod")
    _first_param(unet, "unet")
    _first_param(vae, "vae")
    if "encoder_hidden_states" not in inspect.signature(unet.forward).parameters:
        raise TypeError(f"pipe.unet must be a text-conditioned UNet2DConditionModel (its forward "
                        f"takes encoder_hidden_states), got {type(unet).__name__}")
    _alphas_cumprod(scheduler)
    c_unet = getattr(getattr(unet, "config", None), "in_channels", None)
    c_vae = getattr(getattr(vae, "config", None), "latent_channels", None)
    if c_unet is not None and c_vae is not None and c_unet != c_vae:
        raise ValueError(f"pipe.unet takes {c_unet} input channels but pipe.vae makes {c_vae}-channel "
                         f"latents; an inpainting or depth-conditioned UNet cannot score plain latents")
    if any(p.requires_grad for p in vae.parameters()):
        warnings.warn("pipe.vae has parameters that require grad: every loss.backward() through "
                      "teacher.encode also computes and accumulates VAE weight gradients; freeze it "
                      "with pipe.vae.requires_grad_(False)", UserWarning, stacklevel=2)
    return DiffusersTeacher(unet, scheduler, vae, max_batch_size=max_batch_size,
                            prediction_type=prediction_type, nan_policy=nan_policy,
                            check_finite=check_finite)


def _prompt_list(name: str, value, n: int | None = None) -> list[str]:
    if isinstance(value, str):
        return [value] * (1 if n is None else n)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        if n is not None and len(value) != n:
            raise ValueError(f"{name} must be one string or {n} strings (one per prompt), got "
                             f"{len(value)}")
        return list(value)
    raise TypeError(f"{name} must be a string or a non-empty list of strings, got "
                    f"{type(value).__name__} {value!r}")


def prompt_embeddings(pipe, prompt: Prompt, negative_prompt: Prompt = "", *,
                      device=None) -> PromptEmbeddings:
    r"""$y = \mathrm{CLIP}(\text{prompt})$ and $\varnothing = \mathrm{CLIP}(\text{negative prompt})$, each ``(P, L, D)``.

    Computed by the pipeline's own ``encode_prompt(prompt, device, 1, True,
    negative_prompt=...)`` under ``torch.no_grad()``: the tokenizer pads to
    ``tokenizer.model_max_length`` ($L$ = 77 for SD) and the text encoder's last hidden
    state is returned, exactly what the pipeline feeds its UNet when sampling (textual
    inversion tokens and LoRA scales included). The empty negative prompt gives the
    unconditional embedding $\varnothing$ of classifier-free guidance (diffusers' and threestudio's).

    Args:
        pipe: a ``StableDiffusionPipeline`` with ``text_encoder``, ``tokenizer`` and ``unet``.
        prompt: one prompt (``P = 1``) or a list of ``P`` prompts (one per render, e.g.
            view-dependent prompts; the objectives take a leading dim of 1 or ``R``).
        negative_prompt: one string for every prompt, or ``P`` strings.
        device: where the embeddings go; ``None`` for the UNet's device. They are cast to
            the UNet's dtype. The text encoder runs on its own device.

    Returns:
        :class:`PromptEmbeddings` ``(condition, uncond)``, detached.
    """
    text_encoder = _component(pipe, "text_encoder", "encodes the prompt")
    _component(pipe, "tokenizer", "tokenizes the prompt")
    unet_param = _first_param(_component(pipe, "unet", "sets the embeddings' device and dtype"), "unet")
    if not callable(getattr(pipe, "encode_prompt", None)):
        raise TypeError(f"pipe must have an encode_prompt method (a StableDiffusionPipeline), got "
                        f"{type(pipe).__name__}")
    prompts = _prompt_list("prompt", prompt)
    negatives = _prompt_list("negative_prompt", negative_prompt, n=len(prompts))
    target = unet_param.device if device is None else torch.device(device)
    encoder_device = _first_param(text_encoder, "text_encoder").device
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(prompts, encoder_device, 1, True,
                                          negative_prompt=negatives)
    return PromptEmbeddings(cond.detach().to(device=target, dtype=unet_param.dtype),
                            uncond.detach().to(device=target, dtype=unet_param.dtype))


def teacher_resolution(pipe) -> tuple[int, int]:
    r"""The VAE input resolution $(H, W) = f\cdot$ ``unet.config.sample_size``, $f$ = ``pipe.vae_scale_factor``.

    $f = 2^{(\text{number of VAE blocks}) - 1}$ = 8 for every SD VAE, so SD 1.x gives
    ``(512, 512)`` and SD 2.x at 768 gives ``(768, 768)``. Latents of an image this size have
    the UNet's native ``sample_size``.
    """
    unet = _component(pipe, "unet", "its sample_size is the latent resolution")
    vae = _component(pipe, "vae", "its scale factor maps latent to image resolution")
    factor = getattr(pipe, "vae_scale_factor", None)
    if factor is None:
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
    size = unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return int(h) * int(factor), int(w) * int(factor)


def resize_to_teacher(rgb: torch.Tensor, size, *, antialias: bool = False) -> torch.Tensor:
    r"""Bilinear resize $\tilde x = \operatorname{resize}_{H\times W}(x)$ of images ``(B, C, H_0, W_0)`` to ``(B, C, H, W)``.

    ``F.interpolate(rgb, (H, W), mode="bilinear", align_corners=False)``, threestudio's resize
    of renders to 512 × 512 before the VAE: pixel centres are matched (output pixel $i$
    samples the input at $(i + \tfrac12)\,H_0/H - \tfrac12$, clamped at the border), so
    upsampling a 2-pixel row $(0, 1)$ to 4 gives $(0, \tfrac14, \tfrac34, 1)$. It is linear, hence
    differentiable with a fixed Jacobian. Downsampling by more than 2× aliases unless
    ``antialias=True``. An image already of size ``(H, W)`` is returned as is.

    Args:
        rgb: renders ``(B, C, H_0, W_0)``, channels first, values in $[0, 1]$.
        size: ``H`` (square) or ``(H, W)``; :func:`teacher_resolution` gives the pipeline's.
        antialias: passed to ``F.interpolate`` (a low-pass filter when downsampling).

    Example:
        >>> import torch
        >>> row = torch.tensor([[[[0.0, 1.0]]]])
        >>> resize_to_teacher(row, (1, 4)).flatten().tolist()
        [0.0, 0.25, 0.75, 1.0]
        >>> resize_to_teacher(torch.rand(2, 3, 64, 64), 512).shape
        torch.Size([2, 3, 512, 512])
    """
    if not isinstance(rgb, torch.Tensor) or rgb.ndim != 4 or not rgb.is_floating_point():
        raise ValueError(f"rgb must be a floating tensor of shape (B, C, H, W), got "
                         f"{type(rgb).__name__} {tuple(getattr(rgb, 'shape', ()))} "
                         f"{getattr(rgb, 'dtype', '')}; threestudio renders (B, H, W, 3) need "
                         f"rgb.permute(0, 3, 1, 2)")
    def whole(s) -> bool:  # an int >= 1; numpy integers are ints too, bools are not
        return isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1
    if whole(size):
        size = (size, size)
    if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(whole(s) for s in size)):
        raise ValueError(f"size must be a positive integer or a pair (H, W) of them, got {size!r}")
    size = (int(size[0]), int(size[1]))
    if rgb.shape[-1] in (1, 3) and rgb.shape[1] not in (1, 3):
        warnings.warn(f"rgb has shape {tuple(rgb.shape)}, which looks channels-last; "
                      f"resize_to_teacher expects (B, C, H, W): use rgb.permute(0, 3, 1, 2)",
                      UserWarning, stacklevel=2)
    if tuple(rgb.shape[-2:]) == tuple(size):
        return rgb
    return F.interpolate(rgb, size=tuple(size), mode="bilinear", align_corners=False,
                         antialias=antialias)
