r"""Noise schedules: $x_t = \alpha_t x_0 + \sigma_t \epsilon$.

Discrete variance-preserving schedules are built from betas exactly as
diffusers' ``DDPMScheduler`` builds them ($\bar\alpha_t = \prod_{s\le t}(1-\beta_s)$,
float32 betas, accumulation in float64 as torch's CPU ``cumprod`` does), so that
$\alpha_t = \sqrt{\bar\alpha_t}$, $\sigma_t = \sqrt{1-\bar\alpha_t}$ and
$\mathrm{SNR}_t = \alpha_t^2/\sigma_t^2$ match a diffusers teacher.

Continuous-time schedules give $\alpha(t), \sigma(t)$ for $t \in [0, 1]$; the
flow-matching path $\alpha = 1 - t$, $\sigma = t$ is one of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ._validation import as_float_array, as_int, as_real

__all__ = [
    "BETA_SCHEDULES",
    "DiscreteSchedule",
    "ContinuousSchedule",
    "make_betas",
    "make_schedule",
    "continuous_schedule",
]

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def _linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    # torch.linspace in float32: a float32 step, the first half counted up from
    # `start`, the second half down from `end`, each entry one fused multiply-add
    # (a float32 product is exact in float64, so float64 then one rounding).
    start32, end32 = np.float32(start), np.float32(end)
    if steps == 1:
        return np.array([start32], dtype=np.float32)
    step = np.float64(np.float32((end32 - start32) / np.float32(steps - 1)))
    idx = np.arange(steps, dtype=np.float64)
    up = np.float64(start32) + idx * step
    down = np.float64(end32) - (steps - 1 - idx) * step
    return np.where(idx < steps // 2, up, down).astype(np.float32)


def _cosine_alpha_bar(t):
    return np.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def make_betas(beta_schedule: str = "scaled_linear", num_train_timesteps: int = 1000,
               beta_start: float = 0.00085, beta_end: float = 0.012,
               max_beta: float = 0.999) -> np.ndarray:
    r"""Betas $\beta_0..\beta_{T-1}$ (float32 values, returned as float64).

    - ``linear``: $\beta_t$ evenly spaced from ``beta_start`` to ``beta_end``;
    - ``scaled_linear``: $\sqrt{\beta_t}$ evenly spaced (Stable Diffusion);
    - ``squaredcos_cap_v2``: $\beta_t = \min(1 - \bar\alpha(\tfrac{t+1}{T})/\bar\alpha(\tfrac{t}{T}), 0.999)$
      with $\bar\alpha(s) = \cos^2\!\big(\tfrac{s + 0.008}{1.008}\tfrac{\pi}{2}\big)$.

    Example:
        >>> make_betas("linear", 4, 0.1, 0.4).round(6).tolist()
        [0.1, 0.2, 0.3, 0.4]
    """
    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")
    T = as_int("num_train_timesteps", num_train_timesteps, minimum=1)
    beta_start = as_real("beta_start", beta_start, positive=True, upper=1.0)
    beta_end = as_real("beta_end", beta_end, positive=True, upper=1.0)
    max_beta = as_real("max_beta", max_beta, positive=True, upper=1.0)
    if beta_schedule == "linear":
        betas = _linspace_f32(beta_start, beta_end, T)
    elif beta_schedule == "scaled_linear":
        betas = _linspace_f32(beta_start**0.5, beta_end**0.5, T) ** 2
    else:
        i = np.arange(T, dtype=np.float64)
        ratio = _cosine_alpha_bar((i + 1) / T) / _cosine_alpha_bar(i / T)
        betas = np.minimum(1.0 - ratio, max_beta).astype(np.float32)
    return betas.astype(np.float64)


@dataclass(frozen=True)
class DiscreteSchedule:
    r"""A discrete VP schedule given by $\bar\alpha_t$, $t = 0..T-1$.

    Attributes:
        alphas_cumprod: $\bar\alpha_t$, shape ``(T,)``, in [0, 1].
    """

    alphas_cumprod: np.ndarray

    def __post_init__(self):
        abar = as_float_array("alphas_cumprod", self.alphas_cumprod, ndim=1)
        if np.any(abar < 0) or np.any(abar > 1):
            raise ValueError(
                f"alphas_cumprod must lie in [0, 1], got values in [{abar.min()}, {abar.max()}]"
            )
        abar = abar.copy()
        abar.setflags(write=False)
        object.__setattr__(self, "alphas_cumprod", abar)

    @classmethod
    def from_betas(cls, betas) -> "DiscreteSchedule":
        r"""$\bar\alpha_t = \prod_{s=0}^{t} (1 - \beta_s)$, float32 factors, float64 product."""
        b = as_float_array("betas", betas, ndim=1)
        if np.any(b <= 0) or np.any(b >= 1):
            raise ValueError(f"betas must lie in (0, 1), got values in [{b.min()}, {b.max()}]")
        alphas = (np.float32(1.0) - b.astype(np.float32)).astype(np.float64)
        # torch's CPU cumprod accumulates float32 in double, then rounds each entry.
        return cls(np.cumprod(alphas).astype(np.float32).astype(np.float64))

    @property
    def num_train_timesteps(self) -> int:
        """$T$, the number of integer timesteps."""
        return int(self.alphas_cumprod.shape[0])

    @property
    def alpha(self) -> np.ndarray:
        r"""$\alpha_t = \sqrt{\bar\alpha_t}$."""
        return np.sqrt(self.alphas_cumprod)

    @property
    def sigma(self) -> np.ndarray:
        r"""$\sigma_t = \sqrt{1 - \bar\alpha_t}$."""
        return np.sqrt(1.0 - self.alphas_cumprod)

    @property
    def snr(self) -> np.ndarray:
        r"""$\mathrm{SNR}_t = \bar\alpha_t / (1 - \bar\alpha_t)$ (``inf`` where $\bar\alpha_t = 1$)."""
        with np.errstate(divide="ignore"):
            return self.alphas_cumprod / (1.0 - self.alphas_cumprod)


def make_schedule(beta_schedule: str = "scaled_linear", num_train_timesteps: int = 1000,
                  beta_start: float = 0.00085, beta_end: float = 0.012) -> DiscreteSchedule:
    """The schedule diffusers' ``DDPMScheduler`` builds with the same arguments.

    Example:
        >>> s = make_schedule("scaled_linear", 1000, 0.00085, 0.012)
        >>> round(float(s.alphas_cumprod[-1]), 5)
        0.00466
    """
    return DiscreteSchedule.from_betas(
        make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end)
    )


@dataclass(frozen=True)
class ContinuousSchedule:
    r"""A continuous-time schedule $t \in [0, 1] \mapsto (\alpha(t), \sigma(t))$.

    Attributes:
        name: ``"flow_matching"``, ``"vp_cosine"`` or ``"vp_linear"``.
        alpha_fn, sigma_fn: vectorised callables on float64 arrays.
    """

    name: str
    alpha_fn: Callable[[np.ndarray], np.ndarray]
    sigma_fn: Callable[[np.ndarray], np.ndarray]

    def _t(self, t) -> np.ndarray:
        t = as_float_array("t", t, allow_empty=True)
        if t.size and (t.min() < 0 or t.max() > 1):
            raise ValueError(f"t must lie in [0, 1], got values in [{t.min()}, {t.max()}]")
        return t

    def alpha(self, t) -> np.ndarray:
        r"""$\alpha(t)$."""
        return self.alpha_fn(self._t(t))

    def sigma(self, t) -> np.ndarray:
        r"""$\sigma(t)$."""
        return self.sigma_fn(self._t(t))

    def snr(self, t) -> np.ndarray:
        r"""$\alpha(t)^2 / \sigma(t)^2$."""
        t = self._t(t)
        with np.errstate(divide="ignore"):
            return self.alpha_fn(t) ** 2 / self.sigma_fn(t) ** 2


def continuous_schedule(name: str = "flow_matching", beta_min: float = 0.1,
                        beta_max: float = 20.0) -> ContinuousSchedule:
    r"""A named continuous-time schedule.

    - ``flow_matching`` (rectified flow): $\alpha = 1 - t$, $\sigma = t$;
    - ``vp_cosine``: $\alpha = \cos(\tfrac{t + 0.008}{1.008}\tfrac{\pi}{2})$, $\sigma = \sqrt{1 - \alpha^2}$;
    - ``vp_linear`` (VP-SDE): $\bar\alpha(t) = \exp(-\beta_{\min} t - \tfrac12(\beta_{\max}-\beta_{\min})t^2)$,
      $\alpha = \sqrt{\bar\alpha}$, $\sigma = \sqrt{1-\bar\alpha}$.

    Example:
        >>> continuous_schedule("flow_matching").sigma([0.25]).tolist()
        [0.25]
    """
    if name == "flow_matching":
        return ContinuousSchedule(name, lambda t: 1.0 - t, lambda t: t)
    if name == "vp_cosine":
        a = lambda t: np.cos((t + 0.008) / 1.008 * math.pi / 2)  # noqa: E731
        return ContinuousSchedule(name, a, lambda t: np.sqrt(np.clip(1.0 - a(t) ** 2, 0.0, 1.0)))
    if name == "vp_linear":
        b0 = as_real("beta_min", beta_min, positive=True)
        b1 = as_real("beta_max", beta_max, positive=True)
        log_abar = lambda t: -b0 * t - 0.5 * (b1 - b0) * t**2  # noqa: E731
        return ContinuousSchedule(
            name,
            lambda t: np.exp(0.5 * log_abar(t)),
            lambda t: np.sqrt(-np.expm1(log_abar(t))),
        )
    raise ValueError(
        f"name must be one of ('flow_matching', 'vp_cosine', 'vp_linear'), got {name!r}"
    )
