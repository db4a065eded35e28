r"""Noise schedules on tensors: $x_t = \alpha_t x_0 + \sigma_t \epsilon$.

The betas and $\bar\alpha_t = \prod_{s\le t}(1-\beta_s)$ are built on the host by
:mod:`carv_core.schedules` (bit-for-bit what diffusers' ``DDPMScheduler`` builds)
and then moved to the requested device and dtype, as diffusers itself does:
there is one implementation of the schedule maths, not two.
Continuous-time schedules are evaluated on tensors, on their device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import carv_core
import torch
from carv_core.schedules import BETA_SCHEDULES

from ._validation import (
    as_device,
    as_dtype,
    as_tensor,
    check_finite,
    from_host,
    is_validating,
    to_numpy,
)

__all__ = [
    "BETA_SCHEDULES",
    "DiscreteSchedule",
    "ContinuousSchedule",
    "make_betas",
    "make_schedule",
    "continuous_schedule",
]


def make_betas(beta_schedule: str = "scaled_linear", num_train_timesteps: int = 1000,
               beta_start: float = 0.00085, beta_end: float = 0.012,
               max_beta: float = 0.999, *, device=None,
               dtype: torch.dtype = torch.float64) -> torch.Tensor:
    r"""Betas $\beta_0..\beta_{T-1}$, shape ``(T,)``: :func:`carv_core.make_betas` on a device.

    Example:
        >>> make_betas("linear", 4, 0.1, 0.4).round(decimals=6).tolist()
        [0.1, 0.2, 0.3, 0.4]
    """
    betas = carv_core.make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end, max_beta)
    return from_host(betas, device=as_device("device", device), dtype=as_dtype("dtype", dtype))


@dataclass(frozen=True, eq=False)
class DiscreteSchedule:
    r"""A discrete VP schedule given by $\bar\alpha_t$, $t = 0..T-1$, held as a tensor.

    Attributes:
        alphas_cumprod: $\bar\alpha_t$, tensor of shape ``(T,)``, in [0, 1].
            Lists and numpy arrays are converted to float64 CPU tensors.

    Example:
        >>> s = DiscreteSchedule(torch.tensor([0.75, 0.5], dtype=torch.float64))
        >>> s.snr.tolist()
        [3.0, 1.0]
    """

    alphas_cumprod: torch.Tensor

    def __post_init__(self):
        abar = as_tensor("alphas_cumprod", self.alphas_cumprod, ndim=1)
        if is_validating() and abar.device.type != "meta":
            # Host-side value checks (a sync), once: the core's checks and messages.
            carv_core.DiscreteSchedule(to_numpy("alphas_cumprod", abar))
        object.__setattr__(self, "alphas_cumprod", abar)

    @classmethod
    def from_betas(cls, betas) -> "DiscreteSchedule":
        r"""$\bar\alpha_t = \prod_{s=0}^{t} (1 - \beta_s)$, via :meth:`carv_core.DiscreteSchedule.from_betas`.

        The result keeps the device and dtype of ``betas`` when it is a tensor.
        """
        abar = carv_core.DiscreteSchedule.from_betas(to_numpy("betas", betas)).alphas_cumprod
        if isinstance(betas, torch.Tensor):
            return cls(from_host(abar, device=betas.device, dtype=betas.dtype))
        return cls(from_host(abar))

    @classmethod
    def from_core(cls, schedule: carv_core.DiscreteSchedule, *, device=None,
                  dtype: torch.dtype = torch.float64) -> "DiscreteSchedule":
        """The same schedule as a :class:`carv_core.DiscreteSchedule`, on ``device``."""
        if not isinstance(schedule, carv_core.DiscreteSchedule):
            raise TypeError(f"schedule must be a carv_core.DiscreteSchedule, got {type(schedule).__name__}")
        return cls(from_host(schedule.alphas_cumprod, device=as_device("device", device),
                                   dtype=as_dtype("dtype", dtype)))

    def to_core(self) -> carv_core.DiscreteSchedule:
        """A host float64 copy as a :class:`carv_core.DiscreteSchedule` (syncs)."""
        return carv_core.DiscreteSchedule(to_numpy("alphas_cumprod", self.alphas_cumprod))

    def to(self, device=None, dtype: torch.dtype | None = None) -> "DiscreteSchedule":
        """The same schedule on another device and/or dtype."""
        dtype = None if dtype is None else as_dtype("dtype", dtype)
        return DiscreteSchedule(self.alphas_cumprod.to(device=as_device("device", device), dtype=dtype))

    @property
    def device(self) -> torch.device:
        """Device of :attr:`alphas_cumprod`."""
        return self.alphas_cumprod.device

    @property
    def num_train_timesteps(self) -> int:
        """$T$, the number of integer timesteps."""
        return int(self.alphas_cumprod.shape[0])

    @property
    def alpha(self) -> torch.Tensor:
        r"""$\alpha_t = \sqrt{\bar\alpha_t}$, shape ``(T,)``."""
        return torch.sqrt(self.alphas_cumprod)

    @property
    def sigma(self) -> torch.Tensor:
        r"""$\sigma_t = \sqrt{1 - \bar\alpha_t}$, shape ``(T,)``."""
        return torch.sqrt(1.0 - self.alphas_cumprod)

    @property
    def snr(self) -> torch.Tensor:
        r"""$\mathrm{SNR}_t = \bar\alpha_t / (1 - \bar\alpha_t)$ (``inf`` where $\bar\alpha_t = 1$)."""
        return self.alphas_cumprod / (1.0 - self.alphas_cumprod)


def make_schedule(beta_schedule: str = "scaled_linear", num_train_timesteps: int = 1000,
                  beta_start: float = 0.00085, beta_end: float = 0.012, *, device=None,
                  dtype: torch.dtype = torch.float64) -> DiscreteSchedule:
    """The schedule diffusers' ``DDPMScheduler`` builds with the same arguments, on ``device``.

    Example:
        >>> s = make_schedule("scaled_linear", 1000, 0.00085, 0.012)
        >>> round(float(s.alphas_cumprod[-1]), 5)
        0.00466
    """
    core = carv_core.make_schedule(beta_schedule, num_train_timesteps, beta_start, beta_end)
    return DiscreteSchedule.from_core(core, device=device, dtype=dtype)


@dataclass(frozen=True)
class ContinuousSchedule:
    r"""A continuous-time schedule $t \in [0, 1] \mapsto (\alpha(t), \sigma(t))$ on tensors.

    Attributes:
        name: ``"flow_matching"``, ``"vp_cosine"`` or ``"vp_linear"``.
        alpha_fn, sigma_fn: elementwise callables on floating tensors (any device).
    """

    name: str
    alpha_fn: Callable[[torch.Tensor], torch.Tensor]
    sigma_fn: Callable[[torch.Tensor], torch.Tensor]

    def _t(self, t) -> torch.Tensor:
        t = as_tensor("t", t, allow_empty=True)
        if is_validating() and t.numel() and t.device.type != "meta":
            check_finite("t", t)
            lo, hi = float(t.min()), float(t.max())
            if lo < 0 or hi > 1:
                raise ValueError(f"t must lie in [0, 1], got values in [{lo}, {hi}]")
        return t

    def alpha(self, t) -> torch.Tensor:
        r"""$\alpha(t)$, the shape of ``t``."""
        return self.alpha_fn(self._t(t))

    def sigma(self, t) -> torch.Tensor:
        r"""$\sigma(t)$, the shape of ``t``."""
        return self.sigma_fn(self._t(t))

    def snr(self, t) -> torch.Tensor:
        r"""$\alpha(t)^2 / \sigma(t)^2$ (``inf`` where $\sigma(t) = 0$)."""
        t = self._t(t)
        return self.alpha_fn(t) ** 2 / self.sigma_fn(t) ** 2


def _vp_cosine_alpha(t: torch.Tensor) -> torch.Tensor:
    return torch.cos((t + 0.008) / 1.008 * (math.pi / 2))


def continuous_schedule(name: str = "flow_matching", beta_min: float = 0.1,
                        beta_max: float = 20.0) -> ContinuousSchedule:
    r"""A named continuous-time schedule evaluated on tensors.

    - ``flow_matching`` (rectified flow): $\alpha = 1 - t$, $\sigma = t$;
    - ``vp_cosine``: $\alpha = \cos(\tfrac{t + 0.008}{1.008}\tfrac{\pi}{2})$, $\sigma = \sqrt{1 - \alpha^2}$;
    - ``vp_linear`` (VP-SDE): $\log\bar\alpha(t) = -\beta_{\min} t - \tfrac12(\beta_{\max}-\beta_{\min})t^2$,
      $\alpha = \sqrt{\bar\alpha}$, $\sigma = \sqrt{1-\bar\alpha}$.

    The names and argument checks are those of :func:`carv_core.continuous_schedule`.

    Example:
        >>> continuous_schedule("flow_matching").sigma(torch.tensor([0.25])).tolist()
        [0.25]
    """
    core = carv_core.continuous_schedule(name, beta_min, beta_max)  # validates name and betas
    if core.name == "flow_matching":
        return ContinuousSchedule(name, lambda t: 1.0 - t, lambda t: t)
    if core.name == "vp_cosine":
        return ContinuousSchedule(
            name, _vp_cosine_alpha,
            lambda t: torch.sqrt(torch.clamp(1.0 - _vp_cosine_alpha(t) ** 2, 0.0, 1.0)),
        )
    b0, b1 = float(beta_min), float(beta_max)

    def log_abar(t):
        return -b0 * t - 0.5 * (b1 - b0) * t**2

    return ContinuousSchedule(
        name,
        lambda t: torch.exp(0.5 * log_abar(t)),
        lambda t: torch.sqrt(-torch.expm1(log_abar(t))),
    )
