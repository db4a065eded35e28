r"""Timestep sampling on tensors: a uniform design, then a pure transform.

As in :mod:`carv_core.sampling` (design.md §4):

1. :func:`draw_uniforms` draws $u \in [0,1)^{R\times K}$ with a ``torch.Generator``
   (the only random step; designs ``iid``, ``stratified``, ``global``,
   ``systematic``, ``sobol``, see the core module for the table);
2. :func:`timesteps_from_uniforms` maps $u$ to $t = F_q^{-1}(u)$ and
   $\tilde w = p(t)/q(t)$ on the device of $u$, without a host round trip.

Fed the same uniforms, the transform returns *exactly* the core's integer
timesteps: the inverse CDF always runs in float64 (float32 uniforms are widened
exactly), with ``torch.searchsorted(right=True)`` for $\min\{j : F(j) > u\}$, the
same scaling by the last CDF entry and the same clip to the last index with
mass. One caveat: the functional form computes $F = \mathrm{cumsum}(q)$ on the
device, and a CUDA scan may round differently from numpy's sequential sum in
the last bit, so a uniform within one ulp of a CDF step may land on the
neighbour there. :class:`InverseCDFSampler` builds $F$ once on the host with
numpy and is exact on every device.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import NamedTuple

import carv_core
import numpy as np
import torch
from carv_core.sampling import DESIGNS

from ._validation import (
    as_dtype,
    as_int,
    as_tensor,
    check_device,
    check_pmf,
    check_support,
    check_unit_interval,
    from_host,
    host_pmf,
    is_validating,
    resolve_device,
    to_numpy,
)
from .distributions import PiecewiseDensity
from .proposals import pmf_pair, ratio

__all__ = [
    "DESIGNS",
    "TimestepDraw",
    "cdf_from_pmf",
    "inverse_cdf",
    "stratum_pmfs",
    "stratify",
    "draw_uniforms",
    "timesteps_from_uniforms",
    "continuous_from_uniforms",
    "InverseCDFSampler",
    "gaussian_noise",
]


class TimestepDraw(NamedTuple):
    """Timesteps (int64 for discrete $t$) and importance weights, both of shape ``(R, K)``."""

    t: torch.Tensor
    w: torch.Tensor


def _uniforms(u) -> torch.Tensor:
    """``u`` as a real floating tensor (structural checks always, range check gated)."""
    u = as_tensor("u", u, allow_empty=True)
    check_unit_interval("u", u)
    return u


def cdf_from_pmf(q) -> torch.Tensor:
    r"""$F(j) = \sum_{i \le j} q(i)$, shape ``(T,)``, in float64 on the device of ``q``."""
    q = as_tensor("q", q, ndim=1)
    check_pmf("q", q)
    return torch.cumsum(q.to(torch.float64), 0)


def _inverse_cdf(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    # The steps of carv_core.sampling._inverse_cdf, on the device of u:
    # 1. scale u by the total so a last CDF entry below 1 (rounding) is harmless;
    # 2. min{j : F(j) > u} is searchsorted(right=True): a zero-mass j has
    #    F(j) = F(j-1), so j-1 is found first and j is never returned;
    # 3. u -> 1^- can still round onto F(T-1); clip to the last index with mass.
    total = cdf[-1:]
    idx = torch.searchsorted(cdf, (u.to(torch.float64) * total).contiguous(), right=True)
    last = torch.searchsorted(cdf, total, right=False)
    return torch.minimum(idx, last)


def inverse_cdf(cdf, u) -> torch.Tensor:
    r"""Discrete $F^{-1}(u) = \min\{j : F(j) > u\}$, elementwise over ``u`` (int64, ``u``'s shape).

    Never returns an index of zero mass; handles $u \to 1^-$ and a last CDF
    entry slightly below 1.

    Args:
        cdf: non-decreasing, shape ``(T,)``, last entry > 0, on the device of ``u``.
        u: uniforms in $[0, 1)$, any shape.

    Example:
        >>> inverse_cdf(torch.tensor([0.25, 0.25, 1.0]), torch.tensor([0.0, 0.2, 0.25, 0.99])).tolist()
        [0, 0, 2, 2]
    """
    u = _uniforms(u)
    cdf = as_tensor("cdf", cdf, ndim=1, device=u.device, other="u").to(torch.float64)
    if is_validating() and cdf.device.type != "meta":
        if bool((cdf[0] < 0) | (torch.diff(cdf) < 0).any()):
            raise ValueError("cdf must be non-negative and non-decreasing")
        if not float(cdf[-1]) > 0:
            raise ValueError(f"cdf must end above 0, got cdf[-1] = {float(cdf[-1])}")
    return _inverse_cdf(cdf, u)


def stratum_pmfs(q, B: int) -> torch.Tensor:
    r"""$P(t_b = j) = B\,\big|[\tfrac bB, \tfrac{b+1}B) \cap [F(j-1), F(j))\big|$, shape ``(B, T)``.

    An analysis helper: computed by :func:`carv_core.stratum_pmfs` on the host and
    returned on the device and dtype of ``q`` (float64 for arrays).

    Example:
        >>> stratum_pmfs(torch.tensor([0.5, 0.25, 0.25]), 2).tolist()
        [[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]]
    """
    law = carv_core.stratum_pmfs(host_pmf("q", q), B)
    if isinstance(q, torch.Tensor):
        return from_host(law, device=q.device, dtype=q.dtype)
    return from_host(law)


def stratify(xi, offset) -> torch.Tensor:
    r"""$u = (\text{offset} + \xi)/B$ along the last axis of length $B$: the pure stratification map."""
    xi = as_tensor("xi", xi, allow_empty=True)
    return (torch.as_tensor(offset, device=xi.device, dtype=xi.dtype) + xi) / xi.shape[-1]


def _largest_below_one(dtype: torch.dtype) -> float:
    return 1.0 - torch.finfo(dtype).eps / 2


def _sobol_rows(R: int, K: int, generator, device) -> torch.Tensor:
    # One scrambled engine per row, seeded from the generator (independent
    # streams, no seed + i). SobolEngine runs on the CPU; the seeds are R
    # integers read to the host, the draws are moved to `device`.
    seeds = torch.randint(0, 2**62, (R,), generator=generator,
                          device=generator.device if generator is not None else "cpu")
    rows = [torch.quasirandom.SobolEngine(1, scramble=True, seed=int(s)).draw(K, dtype=torch.float64)[:, 0]
            for s in seeds.tolist()]
    return torch.stack(rows).to(device)


def draw_uniforms(design: str, R: int, K: int, generator=None, *, device=None,
                  dtype: torch.dtype = torch.float64) -> torch.Tensor:
    r"""Draw $u$ of shape ``(R, K)`` under a uniform design (see :mod:`carv_core.sampling`).

    Strata are formed in float64 and the result is rounded to ``dtype`` and
    clamped below 1, so $u \in [0, 1)$ holds in every dtype (in float32,
    $(K - 1 + \xi)/K$ would otherwise round to 1 about once in $2^{25}/K$ rows).

    Args:
        design: one of :data:`DESIGNS`.
        R, K: upstream samples and inner draws per upstream sample.
        generator: ``torch.Generator`` or ``None`` (torch's global generator).
        device: where to draw (default: the generator's device, else torch's
            default device); must match the generator's device.
        dtype: a floating dtype; half precision quantises the inverse CDF (warns).

    Example:
        >>> u = draw_uniforms("stratified", 2, 4, torch.Generator().manual_seed(0))
        >>> bool((torch.floor(u * 4) == torch.arange(4)).all())
        True
    """
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {DESIGNS}, got {design!r}")
    R = as_int("R", R, minimum=1)
    K = as_int("K", K, minimum=1)
    device = resolve_device(device, generator)
    dtype = as_dtype("dtype", dtype)
    if torch.finfo(dtype).bits < 32:
        warnings.warn(
            f"dtype {dtype} has a {torch.finfo(dtype).bits}-bit float: uniforms are quantised to "
            f"steps of {torch.finfo(dtype).eps:.3g}, which coarsens the inverse CDF. "
            "Draw in float32 or float64 and cast the results instead.",
            UserWarning,
            stacklevel=2,
        )

    def rand(*shape):
        return torch.rand(shape, generator=generator, device=device, dtype=torch.float64)

    if design == "iid":
        u = rand(R, K)
    elif design == "stratified":
        u = stratify(rand(R, K), torch.arange(K, device=device))
    elif design == "global":
        u = stratify(rand(R * K), torch.arange(R * K, device=device)).reshape(R, K)
    elif design == "systematic":
        u = stratify(rand(R, 1).expand(R, K), torch.arange(K, device=device))
    else:
        if K & (K - 1):
            warnings.warn(
                f"K = {K} is not a power of 2: a scrambled Sobol prefix of that length loses "
                "its balance properties. Prefer K in {1, 2, 4, 8, ...}.",
                UserWarning,
                stacklevel=2,
            )
        u = _sobol_rows(R, K, generator, device)
    return u.to(dtype).clamp_(max=_largest_below_one(dtype))


def timesteps_from_uniforms(u, p, q) -> TimestepDraw:
    r"""The pure transform $t = F_q^{-1}(u)$, $\tilde w = p(t)/q(t)$, on the device of ``u``.

    Args:
        u: uniforms in $[0,1)$, floating tensor of any shape (typically ``(R, K)``).
        p: target pmf, shape ``(T,)``, on ``u``'s device (arrays are moved there).
        q: proposal pmf, shape ``(T,)``, positive wherever ``p`` is.

    Returns:
        ``t`` (int64, ``u``'s shape) and ``w`` (``u``'s dtype). The inverse CDF and
        the ratio run in float64, so ``t`` equals carv_core's exactly.

    Example:
        >>> timesteps_from_uniforms(torch.tensor([[0.1, 0.9]], dtype=torch.float64),
        ...                         torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75]))
        TimestepDraw(t=tensor([[0, 1]]), w=tensor([[2.0000, 0.6667]], dtype=torch.float64))
    """
    u = _uniforms(u)
    p, q = pmf_pair("p", p, "q", q, device=u.device, other="u")
    check_support(p, q)
    return _transform(torch.cumsum(q.to(torch.float64), 0), ratio(p, q), u)


def _transform(cdf: torch.Tensor, weights: torch.Tensor, u: torch.Tensor) -> TimestepDraw:
    t = _inverse_cdf(cdf, u)
    return TimestepDraw(t, weights[t].to(u.dtype))


def continuous_from_uniforms(u, p: PiecewiseDensity, q: PiecewiseDensity) -> TimestepDraw:
    r"""Continuous $t = F_q^{-1}(u)$ for piecewise-constant densities on shared bins.

    $t = e_i + (u - F(i-1))/q_i \cdot (e_{i+1} - e_i)$ with $i$ the discrete inverse
    CDF of $q$'s masses; $\tilde w = p_i/q_i$. Runs in float64 on the device of ``u``;
    returns ``t`` and ``w`` in ``u``'s dtype.
    """
    if not isinstance(p, PiecewiseDensity) or not isinstance(q, PiecewiseDensity):
        raise TypeError("p and q must be carv_torch.PiecewiseDensity instances")
    u = _uniforms(u)
    for name, d in (("p", p), ("q", q)):
        check_device(f"{name}.edges", d.edges, u.device, "u")
    if p.edges.shape != q.edges.shape or not torch.equal(p.edges, q.edges):
        raise ValueError("p and q must share the same bin edges")
    check_support(p.masses, q.masses, p_name="p.masses", q_name="q.masses")
    masses, edges = q.masses.to(torch.float64), q.edges.to(torch.float64)
    cdf = torch.cumsum(masses, 0)
    i = _inverse_cdf(cdf, u)
    below = torch.cat([cdf.new_zeros(1), cdf[:-1]])[i]
    frac = ((u.to(torch.float64) * cdf[-1] - below) / masses[i]).clamp(0.0, float(np.nextafter(1.0, 0.0)))
    t = edges[i] + frac * torch.diff(edges)[i]
    w = p.masses.to(torch.float64)[i] / masses[i]
    return TimestepDraw(t.to(u.dtype), w.to(u.dtype))


@dataclass(frozen=True, eq=False)
class InverseCDFSampler:
    r"""A uniform ``design`` followed by $t = F_q^{-1}(u)$, $\tilde w = p/q$, on tensors.

    $F_q$ and the weight table are built once on the host (numpy's sequential
    cumsum, as carv_core) and kept on the device of ``p``, so :meth:`transform`
    is exact on every device and never syncs.

    Example:
        >>> s = InverseCDFSampler(p=torch.full((4,), 0.25), q=torch.full((4,), 0.25), design="stratified")
        >>> s(R=1, K=4, generator=torch.Generator().manual_seed(0)).t.tolist()
        [[0, 1, 2, 3]]
    """

    p: torch.Tensor
    q: torch.Tensor
    design: str = "iid"

    def __post_init__(self):
        p, q = pmf_pair("p", self.p, "q", self.q)
        check_support(p, q)
        if self.design not in DESIGNS:
            raise ValueError(f"design must be one of {DESIGNS}, got {self.design!r}")
        object.__setattr__(self, "p", p)
        object.__setattr__(self, "q", q)
        cdf = np.cumsum(to_numpy("q", q))
        object.__setattr__(self, "_cdf", from_host(cdf, device=p.device))
        object.__setattr__(self, "_weights", ratio(p, q))

    @property
    def device(self) -> torch.device:
        """Device of ``p``, ``q`` and the draws."""
        return self.p.device

    def to(self, device) -> "InverseCDFSampler":
        """The same sampler on another device."""
        return InverseCDFSampler(self.p.to(device), self.q.to(device), self.design)

    def transform(self, u) -> TimestepDraw:
        """The pure transform (see :func:`timesteps_from_uniforms`); ``u`` on :attr:`device`."""
        u = _uniforms(u)
        check_device("u", u, self.device, "the sampler's p")
        return _transform(self._cdf, self._weights, u)

    def __call__(self, R: int, K: int, generator=None) -> TimestepDraw:
        """Draw ``(R, K)`` timesteps and float64 weights on :attr:`device`."""
        return self.transform(draw_uniforms(self.design, R, K, generator, device=self.device))


def gaussian_noise(shape, K: int, generator=None, antithetic: bool = False, R: int = 1, *,
                   device=None, dtype: torch.dtype | None = None) -> torch.Tensor:
    r"""$\epsilon_{rk} \sim \mathcal N(0, I)$ of shape ``(R, K, *shape)``.

    With ``antithetic=True`` draws come in pairs $(\epsilon, -\epsilon)$ along $K$
    (``K`` must be even); each draw is still marginally $\mathcal N(0, I)$.
    ``dtype`` defaults to torch's default dtype, the one a teacher usually runs in.

    Example:
        >>> e = gaussian_noise((3,), 2, torch.Generator().manual_seed(0), antithetic=True)
        >>> bool((e[:, 0] == -e[:, 1]).all())
        True
    """
    K = as_int("K", K, minimum=1)
    R = as_int("R", R, minimum=1)
    shape = tuple(as_int("shape", s, minimum=1) for s in shape)
    device = resolve_device(device, generator)
    dtype = as_dtype("dtype", dtype if dtype is not None else torch.get_default_dtype())
    if not antithetic:
        return torch.randn((R, K, *shape), generator=generator, device=device, dtype=dtype)
    if K % 2:
        raise ValueError(f"K must be even for antithetic noise, got K = {K}")
    half = torch.randn((R, K // 2, *shape), generator=generator, device=device, dtype=dtype)
    return torch.stack([half, -half], dim=2).reshape(R, K, *shape)

