r"""The inner level of the hierarchy: draws $(t_{rk}, \tilde w_{rk}, \epsilon_{rk})$ and the noisy inputs.

$t_{rk}$, $\tilde w_{rk}$ come from a sampler (a design and a transform,
:mod:`carv_torch.breakpoints`), $\epsilon_{rk} \sim \mathcal N(0, I)$, and the teacher
sees $x_{t,rk} = \alpha_{t_{rk}} x_r + \sigma_{t_{rk}} \epsilon_{rk}$. From the generator the
uniforms are drawn first, then the noise.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .breakpoints import as_sampler
from .integrands import _derived, _expand
from .sampling import InverseCDFSampler, gaussian_noise

__all__ = ["InnerDraws", "resolve_sampler", "draw_inner"]


class InnerDraws(NamedTuple):
    r"""Inner draws: timesteps ``t`` ``(R, K)``, weights $\tilde w$ ``(R, K)``, noise ``eps`` ``(R, K, *S)``."""

    t: torch.Tensor
    w: torch.Tensor
    eps: torch.Tensor


def _check_K(K, antithetic: bool) -> int:
    if isinstance(K, bool) or not isinstance(K, int):
        raise TypeError(f"K must be an integer >= 1, got {K!r} ({type(K).__name__})")
    if K < 1:
        raise ValueError(f"K must be >= 1, got {K}")
    if antithetic and K % 2:
        raise ValueError(f"K must be even for antithetic noise pairs, got K = {K}")
    return K


def _per_draw(value, R: int, K: int, name: str):
    # Conditioning given per upstream sample (leading dim 1 or R) -> one row per draw.
    if value is None or not isinstance(value, torch.Tensor):
        return value
    if value.ndim == 0 or value.shape[0] not in (1, R):
        raise ValueError(f"{name} must have leading dimension 1 or R = {R}, got shape {tuple(value.shape)}")
    return value if value.shape[0] == 1 else value.repeat_interleave(K, dim=0)


def resolve_sampler(sampler=None, p=None, q=None, design="stratified", *, n_timesteps=None, device=None):
    r"""The sampler an objective runs: ``sampler`` (any core-protocol sampler, via
    :func:`~carv_torch.breakpoints.as_sampler`), or the inverse-CDF sampler of ``p``, ``q`` (default $p$), ``design``."""
    if sampler is not None:
        if p is not None or q is not None:
            raise ValueError("pass either sampler= or p/q (a sampler carries its own p and q), not both")
        return as_sampler(sampler, n_timesteps, device=device)
    if p is None:
        raise ValueError("pass p (the target pmf over the teacher's T steps) or sampler=")
    p_t = torch.as_tensor(p, dtype=torch.float64, device=device)
    q_t = p_t if q is None else torch.as_tensor(q, dtype=torch.float64, device=device)
    return InverseCDFSampler(p_t, q_t, design)


def draw_inner(R: int, K: int, shape, p=None, q=None, *, sampler=None, design="stratified",
               antithetic: bool = False, common: bool = False, generator=None,
               device=None, dtype: torch.dtype = torch.float32) -> InnerDraws:
    r"""Draw $t_{rk}$, $\tilde w_{rk}$ from the sampler and $\epsilon_{rk} \sim \mathcal N(0, I)$.

    Args:
        R, K: upstream samples and inner draws per sample.
        shape: the shape $S$ of one upstream output.
        p, q, design: shorthand for the inverse-CDF sampler ($q = p$ when ``None``).
        sampler: any sampler of the core protocol instead (a design and a transform).
        antithetic: noise in pairs $(\epsilon, -\epsilon)$ along $K$.
        common: common random numbers: one row of draws shared by all $R$.
        generator: ``torch.Generator`` on ``device``; uniforms first, then noise.
    """
    K = _check_K(K, antithetic)
    rows = 1 if common else R
    sampler = resolve_sampler(sampler, p, q, design, device=device)
    draw = sampler(rows, K, generator)
    eps = gaussian_noise(tuple(shape), K, generator, antithetic, R=rows, device=device, dtype=dtype)
    if common and R > 1:
        return InnerDraws(draw.t.expand(R, K), draw.w.expand(R, K), eps.expand(R, *eps.shape[1:]))
    return InnerDraws(draw.t, draw.w, eps)


def _noise_tables(abar: torch.Tensor, dtype: torch.dtype, device: torch.device):
    # alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t) for every t: float64, then cast.
    # Elementwise, so a lookup equals computing them per draw: two lookups per step
    # instead of six ops.
    def build(a):
        a = a.to(device=device, dtype=torch.float64)
        return a.sqrt().to(dtype), (1.0 - a).sqrt().to(dtype)
    return _derived(abar, "noise", dtype, device, build)


def _noisy(x: torch.Tensor, draws: InnerDraws, abar: torch.Tensor):
    # x_t = alpha_t x + sigma_t eps for every (r, k), flattened to (R K, *S).
    alpha_t, sigma_t = _noise_tables(abar, x.dtype, x.device)
    alpha = _expand(alpha_t[draws.t], draws.eps)
    sigma = _expand(sigma_t[draws.t], draws.eps)
    x_t = alpha * x.detach()[:, None] + sigma * draws.eps
    return x_t.reshape(-1, *x.shape[1:]), draws.t.reshape(-1)
