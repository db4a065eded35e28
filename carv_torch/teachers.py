r"""Teachers: frozen noise predictors $\hat\epsilon(x_t, t, y)$ under $x_t = \alpha_t x_0 + \sigma_t \epsilon$.

A teacher maps noisy inputs ``x_t`` of shape ``(N, C, H, W)`` and integer
timesteps ``t`` of shape ``(N,)`` to an epsilon prediction of the same shape as
``x_t``, with $\alpha_t = \sqrt{\bar\alpha_t}$, $\sigma_t = \sqrt{1 - \bar\alpha_t}$
taken from its ``alphas_cumprod`` (shape ``(T,)``).

Classifier-free guidance (CFG) with scale $s$:

$$ \hat\epsilon = \hat\epsilon(x_t, t, \varnothing) + s\,\big(\hat\epsilon(x_t, t, y) - \hat\epsilon(x_t, t, \varnothing)\big), $$

the unconditional and conditional halves evaluated in one batched call
(diffusers' convention; $s = 1$ is the conditional model). threestudio's SDS forms
$\hat\epsilon_y + s_{\rm ts}(\hat\epsilon_y - \hat\epsilon_\varnothing)$, so its $s_{\rm ts}$ is this
$s - 1$ (:mod:`carv_torch.threestudio` converts).

Other parameterisations are converted to epsilon:

| ``prediction_type`` | model output | $\hat\epsilon$ |
|---|---|---|
| ``epsilon`` | $\hat\epsilon$ | itself |
| ``v_prediction`` | $\hat v = \alpha_t\epsilon - \sigma_t x_0$ | $\alpha_t \hat v + \sigma_t x_t$ |
| ``sample`` | $\hat x_0$ | $(x_t - \alpha_t \hat x_0)/\sigma_t$ |

A non-finite prediction is an error that names the affected timesteps; it is
never propagated silently (``nan_policy="zero"`` zeroes those rows and warns). These
checks read values back from the device and are skipped, like every value check,
while validation is off (:func:`carv_torch.set_validate_args`).
"""

from __future__ import annotations

import inspect
import numbers
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ._validation import check_finite as finite_values
from ._validation import is_validating
from .integrands import _guidance_scale, check_outputs, checks_itself

__all__ = [
    "PREDICTION_TYPES",
    "NAN_POLICIES",
    "Teacher",
    "DiffusersTeacher",
    "check_finite",
]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
NAN_POLICIES = ("raise", "zero")


@runtime_checkable
class Teacher(Protocol):
    r"""The protocol every teacher follows.

    Attributes:
        alphas_cumprod: $\bar\alpha_t$, shape ``(T,)``, on the teacher's device.
    """

    alphas_cumprod: torch.Tensor

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, condition: Any = None, *,
                      uncond: Any = None, guidance_scale: float = 1.0) -> torch.Tensor:
        r"""$\hat\epsilon$ of shape ``(N, C, H, W)`` for ``x_t`` ``(N, C, H, W)`` and ``t`` ``(N,)``,
        in the dtype and on the device of ``x_t`` (the objectives check all three)."""
        ...


def check_finite(eps: torch.Tensor, t: torch.Tensor, nan_policy: str = "raise",
                 name: str = "teacher.predict_noise") -> torch.Tensor:
    r"""Raise ``FloatingPointError`` naming the timesteps whose prediction is not finite.

    With ``nan_policy="zero"`` those rows are set to 0 and a ``RuntimeWarning``
    names them instead. Forces a device sync (it reads one flag back to the host).
    The message reads e.g. ``real.predict_noise returned non-finite values (nan) at
    timesteps [3, 17] (2 of 8 inputs)``.

    Args:
        eps: predictions, shape ``(N, ...)``.
        t: their timesteps, shape ``(N,)``.

    Example:
        >>> eps = torch.tensor([[0.5], [float("nan")]])
        >>> check_finite(eps, torch.tensor([3, 7]), nan_policy="zero").tolist()  # warns
        [[0.5], [0.0]]
    """
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
    return check_outputs(t, [(name, eps, nan_policy)])[0]


def _check_inputs(x_t, t, T: int, *, finite_x: bool = False):
    # Structural checks always; with validation on, one host read for the range of t (and,
    # with finite_x, whether x_t is finite: a NaN input is the caller's, not the teacher's).
    if not isinstance(x_t, torch.Tensor) or x_t.ndim < 2 or not x_t.is_floating_point():
        raise TypeError(f"x_t must be a floating tensor of shape (N, C, H, W), got "
                        f"{type(x_t).__name__} {getattr(x_t, 'shape', '')}")
    if not isinstance(t, torch.Tensor) or t.shape != x_t.shape[:1] or t.is_floating_point():
        raise ValueError(f"t must be an integer tensor of shape ({x_t.shape[0]},) like x_t's "
                         f"first axis, got {type(t).__name__} {getattr(t, 'shape', '')} "
                         f"{getattr(t, 'dtype', '')}")
    if t.device != x_t.device:
        raise ValueError(f"t is on {t.device} but x_t is on {x_t.device}; put both on one device")
    if is_validating() and t.numel() and t.device.type != "meta":
        lo, hi = torch.aminmax(t)
        facts = [lo.to(torch.float64), hi.to(torch.float64)]
        if finite_x:
            facts.append(torch.isfinite(x_t).all().to(torch.float64))
        read = torch.stack(facts).tolist()  # one host read (value check)
        lo, hi = int(read[0]), int(read[1])
        if lo < 0 or hi >= T:
            raise ValueError(f"t must lie in [0, {T}), got values in [{lo}, {hi}]")
        if finite_x and not read[2]:
            finite_values("x_t", x_t)


def _coefficients(alphas_cumprod: torch.Tensor, t: torch.Tensor, like: torch.Tensor):
    # alpha_t, sigma_t in float64, then cast, broadcastable against `like`.
    abar = alphas_cumprod.to(device=like.device, dtype=torch.float64)[t]
    shape = (-1,) + (1,) * (like.ndim - 1)
    return abar.sqrt().to(like.dtype).reshape(shape), (1.0 - abar).sqrt().to(like.dtype).reshape(shape)


def _rows(value, n: int, name: str):
    # Conditioning with leading dim 1 or n, broadcast to n rows.
    if value is None:
        return None
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a tensor or None, got {type(value).__name__}")
    if value.ndim == 0 or value.shape[0] not in (1, n):
        raise ValueError(f"{name} must have leading dimension 1 or {n} (one row per input), "
                         f"got shape {tuple(value.shape)}")
    return value.expand(n, *value.shape[1:]) if value.shape[0] == 1 else value


class DiffusersTeacher:
    r"""A diffusers UNet and its scheduler as a :class:`Teacher`.

    $\bar\alpha_t$ comes from the scheduler (``DDPMScheduler``, ``DDIMScheduler``
    or any scheduler with ``alphas_cumprod``), the prediction type from its
    config. The ``N`` inputs (all $R K$ noisy copies, twice that under CFG) are
    evaluated in chunks of at most ``max_batch_size``; every chunk is an
    independent forward pass, so the result does not depend on the chunk size
    (up to the backend's batch-size-dependent rounding, ~1e-6 in float32).

    Args:
        unet: ``UNet2DModel`` (condition = ``class_labels``) or ``UNet2DConditionModel``
            (condition = ``encoder_hidden_states``, shape ``(N or 1, L, D)``).
        scheduler: provides ``alphas_cumprod`` and ``config.prediction_type``.
        vae: optional ``AutoencoderKL``; makes this a latent teacher (:meth:`encode`).
        max_batch_size: largest batch sent to the UNet in one call.
        nan_policy: ``"raise"`` (default) or ``"zero"`` (see :func:`check_finite`).
        check_finite: set ``False`` to skip the finiteness check (saves a device sync); it is
            also skipped while value validation is off (:func:`carv_torch.set_validate_args`).

    The wrapper does not change ``requires_grad`` of the modules: freeze them
    (``unet.requires_grad_(False)``) for distillation; keep them trainable for attribution.
    """

    def __init__(self, unet, scheduler, vae=None, *, max_batch_size: int = 64,
                 prediction_type: str | None = None, nan_policy: str = "raise",
                 check_finite: bool = True):
        abar = getattr(scheduler, "alphas_cumprod", None)
        if abar is None:
            raise TypeError(f"scheduler must have alphas_cumprod (a DDPM/DDIM scheduler), got "
                            f"{type(scheduler).__name__}")
        pred = prediction_type or getattr(getattr(scheduler, "config", None), "prediction_type",
                                          "epsilon")
        if pred not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {pred!r}")
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, numbers.Integral) \
                or max_batch_size < 1:  # numpy integers are fine
            raise ValueError(f"max_batch_size must be an integer >= 1, got {max_batch_size!r}")
        max_batch_size = int(max_batch_size)
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
        if not isinstance(check_finite, (bool, np.bool_)):
            raise TypeError(f"check_finite must be a bool, got {check_finite!r} "
                            f"({type(check_finite).__name__})")
        check_finite = bool(check_finite)
        self.unet, self.scheduler, self.vae = unet, scheduler, vae
        self.prediction_type = pred
        self.max_batch_size = max_batch_size
        self.nan_policy = nan_policy
        self.check_finite = check_finite
        param = next(unet.parameters())
        self.alphas_cumprod = torch.as_tensor(abar).to(device=param.device, dtype=torch.float64)
        self._conditional = "encoder_hidden_states" in inspect.signature(unet.forward).parameters

    @property
    def device(self) -> torch.device:
        """The UNet's device."""
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The UNet's parameter dtype."""
        return next(self.unet.parameters()).dtype

    @property
    def is_latent(self) -> bool:
        """Whether an ``AutoencoderKL`` maps images to this teacher's inputs."""
        return self.vae is not None

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        r"""Latents $z = s_{\rm vae}\,\mathcal E(2\,\text{images} - 1)$, differentiable in ``images``.

        Args:
            images: ``(B, 3, H, W)`` in $[0, 1]$ (mapped to $[-1, 1]$ as threestudio does).
            generator: sample the posterior with it; ``None`` takes its mean (deterministic).
        """
        if self.vae is None:
            raise ValueError("encode needs a vae; this DiffusersTeacher was built without one")
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise ValueError(f"images must be a (B, C, H, W) tensor, got "
                             f"{getattr(images, 'shape', type(images).__name__)}")
        dist = self.vae.encode(2.0 * images.to(self.vae.dtype) - 1.0).latent_dist
        z = dist.mean if generator is None else dist.sample(generator=generator)
        return z * self.vae.config.scaling_factor

    def _model(self, x, t, cond):
        if self._conditional:
            if cond is None:
                raise ValueError("a UNet2DConditionModel needs condition (encoder_hidden_states, "
                                 "shape (N or 1, L, D)), got None")
            return self.unet(x, t, encoder_hidden_states=cond).sample
        return self.unet(x, t, class_labels=cond).sample

    def _to_epsilon(self, out, x_t, t):
        if self.prediction_type == "epsilon":
            return out
        alpha, sigma = _coefficients(self.alphas_cumprod, t, x_t)
        if self.prediction_type == "v_prediction":
            return alpha * out + sigma * x_t
        return (x_t - alpha * out) / sigma

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, condition=None, *, uncond=None,
                      guidance_scale: float = 1.0) -> torch.Tensor:
        r"""$\hat\epsilon$ of shape ``(N, C, H, W)``, with CFG when ``guidance_scale != 1``.

        Args:
            x_t: noisy inputs, ``(N, C, H, W)`` on the UNet's device.
            t: integer timesteps, ``(N,)``.
            condition: $y$ (leading dim 1 or ``N``), or ``None``.
            uncond: $\varnothing$ for CFG (leading dim 1 or ``N``); needed when ``guidance_scale != 1``.
            guidance_scale: $s$.
        """
        guidance_scale = _guidance_scale(guidance_scale)
        _check_inputs(x_t, t, self.alphas_cumprod.shape[0])
        if x_t.device != self.device:
            raise ValueError(f"x_t is on {x_t.device} but the UNet is on {self.device}")
        N = x_t.shape[0]
        cond, unc = _rows(condition, N, "condition"), _rows(uncond, N, "uncond")
        cfg = guidance_scale != 1.0
        if cfg and unc is None:
            raise ValueError(f"guidance_scale = {guidance_scale} needs uncond (the null condition); "
                             "pass uncond or guidance_scale=1.0")
        x_in = x_t.to(self.dtype)
        out = []
        # 1. Chunks of whole inputs; under CFG a chunk holds (uncond, cond) pairs.
        step = max(1, self.max_batch_size // 2) if cfg else self.max_batch_size
        for a in range(0, N, step):
            b = min(a + step, N)
            xs, ts = x_in[a:b], t[a:b]
            if cfg:
                both = self._model(torch.cat([xs, xs]), torch.cat([ts, ts]),
                                   torch.cat([unc[a:b], cond[a:b]]))
                e_u, e_c = self._to_epsilon(both, torch.cat([xs, xs]), torch.cat([ts, ts])).chunk(2)
                # 2. CFG on epsilon (after conversion, so it is the same for every parameterisation).
                out.append(e_u + guidance_scale * (e_c - e_u))
            else:
                out.append(self._to_epsilon(self._model(xs, ts, None if cond is None else cond[a:b]),
                                            xs, ts))
        eps = torch.cat(out).to(x_t.dtype)
        if self.check_finite and checks_itself(self):
            return check_finite(eps, t, self.nan_policy, f"{type(self).__name__}.predict_noise")
        return eps

    __call__ = predict_noise


def __getattr__(name: str):
    # GaussianMixtureTeacher lives in carv_torch.mixture_teacher; importing it from here still works.
    if name == "GaussianMixtureTeacher":
        from .mixture_teacher import GaussianMixtureTeacher

        return GaussianMixtureTeacher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
