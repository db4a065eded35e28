r"""The inner level of the hierarchy: draws $(t_{rk}, \tilde w_{rk}, \epsilon_{rk})$ and the noisy inputs.

$t_{rk}$, $\tilde w_{rk}$ come from a sampler (a design and a transform,
:mod:`carv_torch.breakpoints`), $\epsilon_{rk} \sim \mathcal N(0, I)$, and the teacher
sees $x_{t,rk} = \alpha_{t_{rk}} x_r + \sigma_{t_{rk}} \epsilon_{rk}$. From the generator the
uniforms are drawn first, then the noise.
"""

from __future__ import annotations

import numbers
import weakref
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import torch

from ._validation import as_int, as_tensor, check_finite, is_validating, low_precision
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
    if isinstance(K, bool) or not isinstance(K, numbers.Integral):  # numpy integers are fine
        raise TypeError(f"K must be an integer >= 1, got {K!r} ({type(K).__name__})")
    K = int(K)
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


def _n_timesteps(sampler) -> int:
    # T of a sampler that as_sampler returned (torch InverseCDFSampler or BreakpointSampler).
    n = getattr(sampler, "n_timesteps", None)
    return int(n) if n is not None else int(sampler.p.shape[0])


def _pmf_arg(name: str, value, T, device):
    # Structural checks only: a tensor keeps its dtype (it is validated at that dtype's
    # tolerance by the sampler), arrays and sequences become float64 (float32 arrays float32).
    value = as_tensor(name, low_precision(value), ndim=1)
    if T is not None and value.shape[0] != T:
        raise ValueError(f"{name} must have T = {T} entries (one per teacher timestep), "
                         f"got {value.shape[0]}")
    return value if device is None else value.to(device)


def resolve_sampler(sampler=None, p=None, q=None, design="stratified", *, n_timesteps=None, device=None):
    r"""The sampler an objective runs: ``sampler`` (any core-protocol sampler, via
    :func:`~carv_torch.breakpoints.as_sampler`), or the inverse-CDF sampler of ``p``, ``q`` (default $p$), ``design``.

    With ``n_timesteps`` (the teacher's $T$), ``p``, ``q`` and the sampler must have $T$
    entries: a shorter $p$ would silently restrict $t$, a longer one draw steps the teacher lacks.
    """
    T = None if n_timesteps is None else as_int("n_timesteps", n_timesteps, minimum=1)
    if sampler is not None:
        if p is not None or q is not None:
            raise ValueError("pass either sampler= or p/q (a sampler carries its own p and q), not both")
        out = as_sampler(sampler, T, device=device)
        if T is not None and _n_timesteps(out) != T:
            raise ValueError(f"sampler must draw from T = {T} timesteps (one per teacher timestep), "
                             f"got a sampler over {_n_timesteps(out)}")
        return out
    if p is None:
        raise ValueError("pass p (the target pmf over the teacher's T steps) or sampler=")
    p_t = _pmf_arg("p", p, T, device)
    q_t = p_t if q is None else _pmf_arg("q", q, T, device)
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
    if not isinstance(common, (bool, np.bool_)):
        raise TypeError(f"common must be a bool, got {common!r} ({type(common).__name__})")
    if not isinstance(antithetic, (bool, np.bool_)):
        raise TypeError(f"antithetic must be a bool, got {antithetic!r} ({type(antithetic).__name__})")
    rows = 1 if common else R
    sampler = resolve_sampler(sampler, p, q, design, device=device)
    draw = sampler(rows, K, generator)
    eps = gaussian_noise(tuple(shape), K, generator, bool(antithetic), R=rows, device=device, dtype=dtype)
    if common and R > 1:
        out = InnerDraws(draw.t.expand(R, K), draw.w.expand(R, K), eps.expand(R, *eps.shape[1:]))
    else:
        out = InnerDraws(draw.t, draw.w, eps)
    _remember(out, _n_timesteps(sampler))
    return out


# Draws made by draw_inner (with validation on) have t in [0, T) and finite w by
# construction: check_draw_values skips them, so the guidance step pays no host read for
# them. Keyed by id(t); an entry holds weak references and version counters, so another
# tensor at a recycled id, or an in-place change, is checked like foreign draws.
_DRAWN: dict = {}


def _stamp(draws: InnerDraws):
    try:
        return (draws.t._version, draws.w._version)
    except RuntimeError:  # inference-mode tensors have no version counter
        return None


def _remember(draws: InnerDraws, T: int) -> None:
    stamp = _stamp(draws)
    if stamp is None or not is_validating():
        return
    if len(_DRAWN) >= 64:
        _DRAWN.clear()
    _DRAWN[id(draws.t)] = (weakref.ref(draws.t), weakref.ref(draws.w), stamp, T)


def _drawn_here(draws: InnerDraws, T: int) -> bool:
    hit = _DRAWN.get(id(draws.t))
    return (hit is not None and hit[0]() is draws.t and hit[1]() is draws.w
            and hit[2] == _stamp(draws) and hit[3] <= T)


def check_draw_values(draws: InnerDraws, T: int) -> None:
    r"""With validation on, raise unless ``draws.t`` lies in $[0, T)$ and ``draws.w`` is finite:
    one host read, skipped for draws that :func:`draw_inner` made (valid by construction)."""
    t, w = draws.t, draws.w
    if not is_validating() or t.numel() == 0 or t.device.type == "meta" or _drawn_here(draws, T):
        return
    lo, hi, finite = torch.stack([t.min().to(torch.float64), t.max().to(torch.float64),
                                  torch.isfinite(w).all().to(torch.float64)]).tolist()
    if lo < 0 or hi >= T:
        raise ValueError(f"draws.t must lie in [0, {T}) (the objective's T timesteps), got values "
                         f"in [{int(lo)}, {int(hi)}]")
    if not finite:
        check_finite("draws.w", w)


def _default_rng_state(device: torch.device):
    # (get, set) of the default generator of device: what a call with generator=None draws from.
    if device.type == "cpu":
        return torch.get_rng_state, torch.set_rng_state
    if device.type == "cuda":
        return (lambda: torch.cuda.get_rng_state(device)), (lambda s: torch.cuda.set_rng_state(s, device))
    return None


@contextmanager
def restoring(generator, device: torch.device):
    """Failure atomicity: if the body raises (anything, KeyboardInterrupt included), the
    generator (the device's default one when ``generator`` is None) is set back to its state
    at entry, so a retry draws exactly what the fault-free call would have drawn."""
    if isinstance(generator, torch.Generator):
        get, put = generator.get_state, generator.set_state
    else:
        pair = _default_rng_state(device) if generator is None else None
        get, put = pair if pair is not None else (lambda: None, None)
    state = get()
    try:
        yield
    except BaseException:
        if put is not None:
            put(state)
        raise


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
