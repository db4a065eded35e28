r"""A drop-in for threestudio's ``stable-diffusion-guidance``: its call, its conventions, CARV's estimator.

A threestudio system calls its guidance once per training step,

    guidance_out = self.guidance(out["comp_rgb"], self.prompt_utils, **batch, rgb_as_latents=False)

with renders ``rgb`` of shape ``(B, H, W, C)`` in $[0, 1]$ (channels **last**), a prompt processor
output ``prompt_utils`` and the camera batch (``elevation``, ``azimuth``, ``camera_distances`` in
degrees and units, plus ``rays_o``, ``c2w``, ``mvp_mtx``, ``light_positions`` and the like, which are
accepted and ignored). It logs every returned key and adds ``value * lambda_<name>`` for each
``loss_<name>``. :class:`ThreestudioGuidance` answers that call with the hierarchical estimate

$$ g_r = \frac1K\sum_{k=1}^K \tilde w_{rk}\, w(t_{rk})\,\big(\hat\epsilon(z_{t,rk}, t_{rk}, y_r) - \epsilon_{rk}\big), \qquad
   z_{t,rk} = \alpha_{t_{rk}} z_r + \sigma_{t_{rk}}\epsilon_{rk}, \qquad
   \mathcal L = \frac{1}{2B}\sum_r \lVert z_r - \mathrm{sg}(z_r - g_r)\rVert^2 , $$

where $z_r$ is the encoded render $r$ and $w(t) = 1 - \bar\alpha_t$ (threestudio's ``sds``
weighting). With $K = 1$, $t \sim U\{t_{\min}, \dots, t_{\max}\}$ i.i.d. and $\tilde w = 1$ this *is*
threestudio's estimator; CARV's defaults ($K = 4$ stratified draws per render) lower its variance at
the same expectation.

Per call:

1. ``rgb`` ``(B, H, W, C)`` $\to$ ``(B, C, H, W)``, resized bilinearly (``align_corners=False``, no
   antialias) to the teacher's resolution and encoded, $z = s_{\rm vae}\,\mathcal E(2x - 1)$; with
   ``rgb_as_latents=True`` the tensor *is* $z$, resized to the UNet's latent size;
2. ``prompt_utils.get_text_embeddings(elevation, azimuth, camera_distances, view_dependent_prompting)``
   gives $[y_1..y_B;\ \varnothing_1..\varnothing_B]$ (``2B`` rows, conditional first);
3. :class:`~carv_torch.guidance.CARVGuidance` draws $(t, \epsilon)$, calls the teacher once for all
   $B K$ classifier-free-guidance pairs and forms $\mathcal L$.

Conventions, threestudio's by default:

| | threestudio | here |
|---|---|---|
| CFG | $\hat\epsilon_y + s_{\rm ts}(\hat\epsilon_y - \hat\epsilon_\varnothing)$ | ``cfg_convention="threestudio"``: the teacher gets $s = s_{\rm ts} + 1$ |
| residual | $w(t)(\hat\epsilon - \epsilon)$, no $\alpha_t$ | ``include_alpha=False`` (CARV's own default is ``True``) |
| VAE posterior | ``latent_dist.sample()`` | ``posterior="sample"``, drawn from the guidance's generator |
| resize | ``F.interpolate`` to 512 × 512 (latents: 64 × 64) | to the teacher's resolution (``resolution=`` overrides) |
| $t$ range | ``min_step_percent``, ``max_step_percent`` (schedules via ``C``) | the same config fields, driven by :meth:`~ThreestudioGuidance.update_step` |
| NaN | ``torch.nan_to_num(grad)`` | ``nan_to_num=True`` (see below) |
| returned | ``loss_sds``, ``grad_norm``, ``min_step``, ``max_step`` | the same, plus ``K`` and ``variance`` |

The CFG algebra:
$\hat\epsilon_y + s_{\rm ts}(\hat\epsilon_y - \hat\epsilon_\varnothing)
= \hat\epsilon_\varnothing + (\hat\epsilon_y - \hat\epsilon_\varnothing) + s_{\rm ts}(\hat\epsilon_y - \hat\epsilon_\varnothing)
= \hat\epsilon_\varnothing + (s_{\rm ts} + 1)(\hat\epsilon_y - \hat\epsilon_\varnothing)$,
so threestudio's ``guidance_scale: 100`` is CARV's $s = 101$ (``cfg_convention="carv"`` passes the
scale unchanged).

``nan_to_num`` applies ``torch.nan_to_num`` to each draw's $f$ (NaN $\to 0$, $\pm\infty \to$ the
largest finite value of the dtype), threestudio's treatment of ``grad``. While value validation is on
(:func:`carv_torch.set_validate_args`) a non-finite teacher output still raises first, naming its
timesteps (the teacher's ``nan_policy``); ``nan_to_num`` matters when the checks are off.

Every returned value is a Python number or a 0-dim tensor, so Lightning's ``self.log`` accepts
them as they are (``variance`` is ``nan`` when ``B = 1``, threestudio's default batch size: the
variance estimate and ``K="auto"`` need ``B >= 2``). The full diagnostics of the step are on
:attr:`ThreestudioGuidance.last`. Randomness comes from one ``torch.Generator`` (the guidance's,
seeded by ``GuidanceConfig.seed``, or ``generator=``): the posterior sample first, then the
uniforms of $t$, then $\epsilon$; a call that raises leaves it as it was.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Sequence, Union

import numpy as np
import torch
from torch import nn

from ._validation import is_validating
from .guidance import CARVGuidance, GuidanceConfig, GuidanceStep
from .integrands import SDS
from .prompts import FixedPrompt, PromptProvider
from .stable_diffusion import resize_to_teacher, teacher_resolution

__all__ = ["CFG_CONVENTIONS", "POSTERIORS", "PromptProvider", "FixedPrompt", "ThreestudioGuidance"]

CFG_CONVENTIONS = ("threestudio", "carv")
r"""How the CFG scale $s$ is read: ``"threestudio"``, $\hat\epsilon_y + s(\hat\epsilon_y - \hat\epsilon_\varnothing)$;
``"carv"``, $\hat\epsilon_\varnothing + s(\hat\epsilon_y - \hat\epsilon_\varnothing)$."""
POSTERIORS = ("sample", "mean")
r"""How the VAE posterior $q(z \mid x)$ becomes latents: a draw (threestudio) or its mean."""

Size = Union[int, Sequence[int], None]


class _NanToNum:
    # An Objective whose draws are torch.nan_to_num(f) of another's (threestudio's grad treatment).

    def __init__(self, objective):
        self.base = objective
        self.name = objective.name
        self.alphas_cumprod = objective.alphas_cumprod
        self.weights = objective.weights
        self.teacher = getattr(objective, "teacher", None)

    @property
    def encode(self):
        return getattr(self.base, "encode", None)

    def integrand(self, x_t, t, eps, **conditions):
        return torch.nan_to_num(self.base.integrand(x_t, t, eps, **conditions))


def _pair(name: str, size: Size):
    if size is None:
        return None
    def integer(s):
        return isinstance(s, numbers.Integral) and not isinstance(s, (bool, np.bool_))

    if integer(size):
        size = (size, size)
    if not (isinstance(size, (tuple, list)) and len(size) == 2
            and all(integer(s) and s >= 1 for s in size)):
        raise ValueError(f"{name} must be None, a positive integer or a pair (H, W) of them, got {size!r}")
    return int(size[0]), int(size[1])


def _unet_config(teacher):
    cfg = getattr(getattr(teacher, "unet", None), "config", None)
    return cfg if cfg is not None and hasattr(cfg, "sample_size") else None


class ThreestudioGuidance(nn.Module):
    r"""threestudio's guidance call and conventions on :class:`~carv_torch.guidance.CARVGuidance`.

    Returns $\{$ ``loss_sds`` $= \mathcal L$, ``grad_norm`` $= \lVert g\rVert$, ``min_step``, ``max_step``,
    ``K``, ``variance`` $= \widehat{\operatorname{Var}}\hat G\}$ (module docstring), each a number or a
    0-dim tensor. ``loss_sds.backward()`` sends $\partial\mathcal L/\partial\,\text{rgb}$ through the
    VAE encoder and the resize into the renderer.

    Args:
        teacher: a :class:`~carv_torch.teachers.Teacher`; a latent ``DiffusersTeacher`` (with a VAE)
            encodes the renders. Held, not registered: its weights are not in ``state_dict()``.
        config: the :class:`~carv_torch.guidance.GuidanceConfig` of the estimator ($K$, sampler,
            proposal, t range and its schedules, seed, ...). Its ``include_alpha`` and
            ``guidance_scale`` are replaced by this adapter's keywords (``self.config`` shows the
            values in force); set ``guidance_scale`` here, not in the config.
        guidance_scale: the CFG scale in the convention ``cfg_convention`` (threestudio's default 100).
        cfg_convention: ``"threestudio"`` (the teacher gets $s_{\rm ts} + 1$) or ``"carv"`` (unchanged).
        include_alpha: multiply the residual by $\alpha_t$; threestudio does not (``False``, the default
            here; :class:`~carv_torch.guidance.CARVGuidance` defaults to ``True``, the paper's).
        resolution: image size ``H`` or ``(H, W)`` the renders are resized to before encoding. ``None``
            derives it from the teacher: ``unet.config.sample_size`` $\cdot\,2^{n-1}$ with $n$ =
            ``len(vae.config.block_out_channels)`` for a latent teacher (512 for SD 1.x), the
            UNet's ``sample_size`` for a pixel teacher, no resize for a teacher without a UNet.
            Latents (``rgb_as_latents=True``) are resized to the UNet's ``sample_size``.
        posterior: ``"sample"`` (threestudio: $z \sim q(z\mid x)$, drawn with the guidance's generator,
            so a seeded run is reproducible) or ``"mean"`` (deterministic).
        view_dependent_prompting: passed to ``prompt_utils.get_text_embeddings``.
        nan_to_num: ``torch.nan_to_num`` on every draw's residual (module docstring).

    Call with ``rgb`` ``(B, H, W, C)``, ``prompt_utils`` (a :class:`PromptProvider`), ``elevation``,
    ``azimuth``, ``camera_distances`` (``(B,)`` each; the last two may be ``None`` where the provider
    ignores them), ``rgb_as_latents`` and any other batch keys (ignored). Keyword-only:
    ``generator`` (instead of the guidance's own) and ``params`` (for ``K="auto"``'s variance probes).

    The layout check reads the last axis only: it must hold the teacher's image channels
    (``vae.config.in_channels``, 3) or, with ``rgb_as_latents``, its latent channels
    (``unet.config.in_channels``, 4 for SD). A tensor whose *second* axis has that count instead
    is named as channels-first ``(B, C, H, W)`` in the error. A ``(B, 3, H, 3)`` tensor fits both
    layouts and is read as channels-last.

    Example:
        >>> import torch
        >>> from carv_torch.teachers import GaussianMixtureTeacher
        >>> abar = torch.linspace(0.999, 0.01, 100, dtype=torch.float64)
        >>> teacher = GaussianMixtureTeacher(torch.zeros(2, 4 * 4 * 4), 1.0, abar)
        >>> guidance = ThreestudioGuidance(teacher, GuidanceConfig(K=2), guidance_scale=7.5)
        >>> rgb = torch.rand(2, 4, 4, 4, requires_grad=True)
        >>> prompt = FixedPrompt(torch.zeros(1, 2), torch.zeros(1, 2))
        >>> out = guidance(rgb, prompt, torch.zeros(2), torch.zeros(2), torch.ones(2),
        ...                rgb_as_latents=True, c2w=torch.eye(4).expand(2, 4, 4))
        >>> sorted(out), out["min_step"], out["max_step"]
        (['K', 'grad_norm', 'loss_sds', 'max_step', 'min_step', 'variance'], 2, 98)
        >>> out["loss_sds"].backward(); rgb.grad.shape
        torch.Size([2, 4, 4, 4])
    """

    def __init__(self, teacher, config: GuidanceConfig | None = None, *, guidance_scale: float = 100.0,
                 cfg_convention: str = "threestudio", include_alpha: bool = False,
                 resolution: Size = None, posterior: str = "sample",
                 view_dependent_prompting: bool = True, nan_to_num: bool = True):
        super().__init__()
        config = GuidanceConfig() if config is None else config
        if not isinstance(config, GuidanceConfig):
            raise TypeError(f"config must be a carv_torch.GuidanceConfig, got {type(config).__name__}")
        if float(config.guidance_scale) != 1.0:
            raise ValueError(f"set the CFG scale with ThreestudioGuidance(guidance_scale=...), which "
                             f"converts the convention; got config.guidance_scale = "
                             f"{config.guidance_scale!r} (leave it at 1.0)")
        if cfg_convention not in CFG_CONVENTIONS:
            raise ValueError(f"cfg_convention must be one of {CFG_CONVENTIONS}, got {cfg_convention!r}")
        if posterior not in POSTERIORS:
            raise ValueError(f"posterior must be one of {POSTERIORS}, got {posterior!r}")
        if isinstance(guidance_scale, (bool, np.bool_)) or not isinstance(guidance_scale, numbers.Real) \
                or not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
        for name, flag in (("include_alpha", include_alpha), ("nan_to_num", nan_to_num),
                           ("view_dependent_prompting", view_dependent_prompting)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {flag!r}")
        if not callable(getattr(teacher, "predict_noise", None)):
            raise TypeError(f"teacher must follow carv_torch.teachers.Teacher (alphas_cumprod and "
                            f"predict_noise), got {type(teacher).__name__}")
        self.__dict__["teacher"] = teacher  # held, not a registered submodule
        self.guidance_scale, self.cfg_convention = float(guidance_scale), cfg_convention
        self.posterior, self.nan_to_num = posterior, nan_to_num
        self.view_dependent_prompting = view_dependent_prompting
        scale = self.guidance_scale + 1.0 if cfg_convention == "threestudio" else self.guidance_scale
        objective = SDS(teacher, weighting=config.weighting, include_alpha=include_alpha,
                        guidance_scale=scale)
        if nan_to_num:
            objective = _NanToNum(objective)
        self.carv = CARVGuidance(objective, dataclasses.replace(config, include_alpha=include_alpha,
                                                                guidance_scale=scale))
        # Sizes and channel counts the inputs are checked against.
        unet_cfg = _unet_config(teacher)
        self.is_latent = bool(getattr(teacher, "is_latent", False))
        latent = None if unet_cfg is None else _pair("unet.config.sample_size", unet_cfg.sample_size)
        if resolution is not None:
            self.resolution = _pair("resolution", resolution)
        elif self.is_latent and unet_cfg is not None:
            self.resolution = teacher_resolution(teacher)
        else:
            self.resolution = latent
        self.latent_size = latent
        vae_cfg = getattr(getattr(teacher, "vae", None), "config", None)
        self.latent_channels = getattr(unet_cfg, "in_channels", None)
        self.image_channels = (getattr(vae_cfg, "in_channels", 3) if self.is_latent
                               else self.latent_channels or 3)

    # ------------------------------------------------------------------ state

    @property
    def config(self) -> GuidanceConfig:
        """The estimator's configuration in force (``include_alpha`` and the teacher's $s$ included)."""
        return self.carv.config

    @property
    def teacher_guidance_scale(self) -> float:
        r"""The teacher's CFG scale $s$, in $\hat\epsilon_\varnothing + s(\hat\epsilon_y - \hat\epsilon_\varnothing)$."""
        return self.carv.config.guidance_scale

    @property
    def generator(self) -> torch.Generator:
        """The generator every call draws from unless given ``generator=``."""
        return self.carv.generator

    @property
    def last(self) -> GuidanceStep | None:
        """The full diagnostics of the last call (a :class:`~carv_torch.guidance.GuidanceStep`)."""
        return self.carv.last

    @property
    def min_step(self) -> int:
        """The smallest timestep the next call may draw (threestudio's attribute)."""
        return self.carv.step_range()[0]

    @property
    def max_step(self) -> int:
        """The largest timestep the next call may draw (threestudio's attribute)."""
        return self.carv.step_range()[1]

    def step_range(self) -> tuple[int, int]:
        """``(min_step, max_step)`` at the current global step."""
        return self.carv.step_range()

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        """threestudio's per-step hook: the global step drives the ``min/max_step_percent`` schedules."""
        self.carv.update_step(epoch, global_step, on_load_weights)

    def _settings(self) -> dict:
        return {"guidance_scale": self.guidance_scale, "cfg_convention": self.cfg_convention,
                "posterior": self.posterior, "resolution": self.resolution,
                "nan_to_num": self.nan_to_num,
                "view_dependent_prompting": self.view_dependent_prompting}

    def get_extra_state(self) -> dict:
        """The adapter's settings, checked on load (the estimator's state is the ``carv`` child's)."""
        return self._settings()

    def set_extra_state(self, state: dict) -> None:
        """Refuse a checkpoint written with other adapter settings; nothing changes before the check."""
        saved, current = dict(state), self._settings()
        differ = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        if differ:
            raise ValueError("the checkpoint was written with another ThreestudioGuidance; differing "
                             "settings: " + ", ".join(f"{k} (checkpoint {saved.get(k)!r}, now "
                                                       f"{current.get(k)!r})" for k in differ))

    # ------------------------------------------------------------------ inputs

    def _check_rgb(self, rgb, rgb_as_latents: bool) -> None:
        channels = self.latent_channels if rgb_as_latents else self.image_channels
        what = "latents" if rgb_as_latents else "images"
        if not isinstance(rgb, torch.Tensor):
            raise TypeError(f"rgb must be a tensor of shape (B, H, W, C), got {type(rgb).__name__}")
        if rgb.ndim != 4 or not rgb.is_floating_point():
            raise ValueError(f"rgb must be a floating tensor of shape (B, H, W, C) (threestudio's "
                             f"channels-last renders), got shape {tuple(rgb.shape)}, dtype {rgb.dtype}")
        # 1. Only the last axis tells the layouts apart: it must hold the channels. A
        #    (B, C, H, W) tensor whose second axis has that count is named as channels-first.
        if channels is not None and rgb.shape[-1] != channels:
            hint = ("; it looks channels-first (B, C, H, W): pass rgb.permute(0, 2, 3, 1)"
                    if rgb.shape[1] == channels else "")
            raise ValueError(f"rgb must have shape (B, H, W, C) with C = {channels} ({what} for this "
                             f"teacher, rgb_as_latents={rgb_as_latents}), got {tuple(rgb.shape)}{hint}")
        if rgb.device != self.carv.device:
            raise ValueError(f"rgb is on {rgb.device} but the teacher is on {self.carv.device}; "
                             f"move it with rgb.to({str(self.carv.device)!r})")
        if is_validating() and not bool(torch.isfinite(rgb).all()):  # one host read (value check)
            raise ValueError("rgb must be finite, got NaN or inf in the rendered images")

    def _encode(self, rgb, rgb_as_latents: bool, generator):
        x = rgb.permute(0, 3, 1, 2)
        size = self.latent_size if rgb_as_latents else self.resolution
        if size is not None:
            x = resize_to_teacher(x, size)
        if rgb_as_latents or not self.is_latent:
            return x.contiguous()
        return self.teacher.encode(x, generator=generator).to(rgb.dtype)

    def encode(self, rgb: torch.Tensor, *, rgb_as_latents: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        r"""The teacher's input $z$ ``(B, C', h, w)`` for renders ``rgb`` ``(B, H, W, C)`` (step 1 of a call).

        $z = s_{\rm vae}\,\mathcal E\big(2\,\operatorname{resize}(\text{rgb}^{\top}) - 1\big)$, the
        posterior mean without ``generator`` and a draw with it (``forward`` passes the guidance's
        generator when ``posterior="sample"``); differentiable in ``rgb``. With
        ``rgb_as_latents=True``, $z = \operatorname{resize}(\text{rgb}^{\top})$ to the latent size.
        """
        self._check_rgb(rgb, rgb_as_latents)
        return self._encode(rgb, rgb_as_latents, generator)

    def _conditions(self, prompt_utils, B: int, cameras: dict):
        if getattr(prompt_utils, "use_perp_neg", False):
            raise NotImplementedError("prompt_utils.use_perp_neg is true: Perp-Neg prompts are not "
                                      "supported; set prompt_processor.use_perp_neg=false")
        if not callable(getattr(prompt_utils, "get_text_embeddings", None)):
            raise TypeError(f"prompt_utils must have get_text_embeddings(elevation, azimuth, "
                            f"camera_distances, view_dependent_prompting) (threestudio's "
                            f"PromptProcessorOutput or a carv_torch.threestudio.PromptProvider), got "
                            f"{type(prompt_utils).__name__}")
        for name, value in cameras.items():
            if value is None and name != "elevation":
                continue  # a provider may ignore azimuth and distance (threestudio's batch has them)
            if not isinstance(value, torch.Tensor) or value.ndim != 1 or value.shape[0] != B:
                raise ValueError(f"{name} must be a tensor of shape ({B},) (one value per render in "
                                 f"rgb), got {getattr(value, 'shape', type(value).__name__)}")
        emb = prompt_utils.get_text_embeddings(cameras["elevation"], cameras["azimuth"],
                                               cameras["camera_distances"],
                                               self.view_dependent_prompting)
        if not isinstance(emb, torch.Tensor) or emb.ndim == 0 or emb.shape[0] != 2 * B:
            raise ValueError(f"prompt_utils.get_text_embeddings must return [cond; uncond] with "
                             f"leading dimension 2B = {2 * B} for B = {B} renders, got "
                             f"{tuple(getattr(emb, 'shape', ())) or type(emb).__name__}")
        if emb.is_floating_point() and isinstance(getattr(self.teacher, "dtype", None), torch.dtype):
            emb = emb.to(self.teacher.dtype)  # as threestudio's forward_unet (fp16 weights, fp32 cache)
        return emb[:B], emb[B:]

    # ------------------------------------------------------------------ call

    def forward(self, rgb: torch.Tensor, prompt_utils, elevation: torch.Tensor | None,
                azimuth: torch.Tensor | None, camera_distances: torch.Tensor | None,
                rgb_as_latents: bool = False, guidance_eval: bool = False, *,
                generator: torch.Generator | None = None, params=None, **batch: Any) -> dict:
        """One guidance step on threestudio's inputs; returns the scalar dict of the class docstring."""
        if guidance_eval:
            raise NotImplementedError("guidance_eval=True (threestudio's denoising previews) is not "
                                      "implemented; set system.freq.guidance_eval=0")
        self._check_rgb(rgb, rgb_as_latents)
        cond, uncond = self._conditions(prompt_utils, rgb.shape[0],
                                        {"elevation": elevation, "azimuth": azimuth,
                                         "camera_distances": camera_distances})
        gen = self.carv.generator if generator is None else generator
        if not isinstance(gen, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(gen).__name__}")
        state = gen.get_state()
        try:
            # 1. Encode (a posterior draw comes first from gen), 2. the hierarchical estimate.
            z = self._encode(rgb, rgb_as_latents, gen if self.posterior == "sample" else None)
            out = self.carv(z, cond, uncond, rgb_as_latents=True, generator=gen, params=params)
        except BaseException:
            gen.set_state(state)  # a failed call consumes no random numbers
            raise
        return {"loss_sds": out["loss_sds"], "grad_norm": out["grad_norm"],
                "min_step": out["min_step"], "max_step": out["max_step"],
                "K": out["K"], "variance": out["variance"]}
