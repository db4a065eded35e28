r"""Timestep sampling on tensors: a uniform design, then a pure transform.

As in :mod:`carv_core.sampling`:

1. :func:`draw_uniforms` draws $u \in [0,1)^{R\times K}$ with a ``torch.Generator``
   (the only random step) under a design *object* of :mod:`carv_core.designs`
   (or its shorthand name): an affine design's integer :class:`~carv_core.designs.Layout`
   is read once and applied on the device, so a user design runs unchanged;
2. :func:`timesteps_from_uniforms` maps $u$ to $t = F_q^{-1}(u)$ and
   $\tilde w = p(t)/q(t)$ on the device of $u$, without a host round trip.

:func:`carv_torch.breakpoints.as_sampler` turns any sampler of the core protocol
(e.g. one certified by :mod:`carv_core.testing`) into one that runs on tensors.

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
from carv_core.designs import DESIGNS, Design, as_design

from ._validation import (
    as_device,
    as_dtype,
    as_int,
    as_tensor,
    as_pmf64,
    check_device,
    check_finite,
    check_support,
    check_unit_interval,
    from_host,
    host_pmf,
    is_validating,
    low_precision,
    resolve_device,
    same_device,
    to_numpy,
)
from .distributions import PiecewiseDensity
from .layouts import draw_layout, largest_below_one
from .proposals import pmf_pair, ratio

__all__ = [
    "DESIGNS",
    "Design",
    "as_design",
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
    q = as_tensor("q", low_precision(q), ndim=1)
    return torch.cumsum(as_pmf64("q", q), 0)


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


def _host_ends(cdf: np.ndarray) -> tuple[float, int]:
    # F(T-1) and the last index with mass, read once from a host-built CDF.
    total = float(cdf[-1])
    return total, int(np.searchsorted(cdf, total, side="left"))


def _inverse_cdf_at(cdf: torch.Tensor, u: torch.Tensor, total: float, last: int) -> torch.Tensor:
    # _inverse_cdf with its two ends from _host_ends: the same values (u * total is the
    # same float64 product, exact when total is 1; clamp(max=last) is minimum(idx, last)),
    # two device ops fewer per draw.
    v = u.to(torch.float64)
    if total != 1.0:
        v = v * total
    return torch.searchsorted(cdf, v.contiguous(), right=True).clamp_(max=last)


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
        # One host read: non-finite entries (NaN fails every comparison, so it would pass
        # the order check), order, and the last entry, as the core checks them.
        finite, ordered, end = torch.stack([
            torch.isfinite(cdf).all().to(torch.float64),
            ((cdf[0] >= 0) & (torch.diff(cdf) >= 0).all()).to(torch.float64), cdf[-1]]).tolist()
        if not finite:
            check_finite("cdf", cdf)
        if not ordered:
            raise ValueError("cdf must be non-negative and non-decreasing")
        if not end > 0:
            raise ValueError(f"cdf must end above 0, got cdf[-1] = {end}")
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
    r"""$u = (\text{offset} + \xi)/B$ along the last axis of length $B$: the pure stratification map.

    ``xi`` (jitters) must lie in $[0, 1)$ and ``offset`` (stratum indices) in $[0, B - 1]$, so
    that $u \in [0, 1)$; both are value checks (one host read), switched off with
    :func:`carv_torch.set_validate_args`.
    """
    xi = as_tensor("xi", xi, allow_empty=True)
    if xi.ndim == 0:
        raise ValueError("xi must have at least 1 dimension(s) (strata along the last axis), "
                         "got shape ()")
    B = xi.shape[-1]
    off = torch.as_tensor(offset, device=xi.device, dtype=xi.dtype)
    if is_validating() and xi.numel() and xi.device.type != "meta":
        # One host read on the happy path; NaN fails every comparison.
        ok = torch.stack([((xi >= 0) & (xi < 1)).all(), ((off >= 0) & (off <= B - 1)).all()])
        xi_ok, off_ok = ok.tolist()
        if not xi_ok:
            check_unit_interval("xi", xi)
        if not off_ok:
            check_finite("offset", off)
            raise ValueError(f"offset must hold stratum indices in [0, B - 1] = [0, {B - 1}] "
                             f"(B = {B} strata along the last axis of xi), got values in "
                             f"[{float(off.min())}, {float(off.max())}]")
    u = (off + xi) / B
    # (B - 1 + xi) / B can round up to exactly 1.0 for xi close to 1: keep u < 1 (as carv_core).
    return u.clamp_(max=largest_below_one(u.dtype))


def draw_uniforms(design, R: int, K: int, generator=None, *, device=None,
                  dtype: torch.dtype = torch.float64) -> torch.Tensor:
    r"""Draw $u$ of shape ``(R, K)`` under a uniform design (:mod:`carv_core.designs`).

    The draw reads the same :class:`~carv_core.designs.Layout` as the core and the
    exact kit: jitters first, then (for shuffled designs) the permutation keys.
    Strata are formed in float64 and the result is rounded to ``dtype`` and
    clamped below 1, so $u \in [0, 1)$ holds in every dtype (in float32,
    $(K - 1 + \xi)/K$ would otherwise round to 1 about once in $2^{25}/K$ rows).

    Args:
        design: a :class:`~carv_core.designs.Design` or a shorthand in :data:`DESIGNS`.
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
    design = as_design(design)
    R = as_int("R", R, minimum=1)
    K = as_int("K", K, minimum=1)
    device = resolve_device(device, generator)
    dtype = as_dtype("dtype", dtype)
    if dtype.itemsize < 4:  # torch.finfo(dtype).bits < 32, without building a finfo per call
        warnings.warn(
            f"dtype {dtype} has a {torch.finfo(dtype).bits}-bit float: uniforms are quantised to "
            f"steps of {torch.finfo(dtype).eps:.3g}, which coarsens the inverse CDF. "
            "Draw in float32 or float64 and cast the results instead.",
            UserWarning,
            stacklevel=2,
        )
    u = draw_layout(design, R, K, generator, device)
    if dtype == torch.float64 and design.affine:
        return u  # _draw clamped it below 1 in float64 already
    return u.to(dtype).clamp_(max=largest_below_one(dtype))


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
    p, q, _ = pmf_pair("p", p, "q", q, device=u.device, other="u")
    check_support(p, q)
    return _transform(torch.cumsum(q, 0), ratio(p, q), u)


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
class InverseCDFSampler(carv_core.MonotoneSampler):
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
    design: Design = "iid"

    def __post_init__(self):
        # p, q are kept as float64 (a lower-precision pair renormalised): the law that is drawn.
        p, q, _ = pmf_pair("p", self.p, "q", self.q)
        check_support(p, q)
        object.__setattr__(self, "design", as_design(self.design))
        object.__setattr__(self, "p", p)
        object.__setattr__(self, "q", q)
        cdf = np.cumsum(to_numpy("q", q))
        object.__setattr__(self, "_cdf", from_host(cdf, device=p.device))
        object.__setattr__(self, "_ends", _host_ends(cdf))
        object.__setattr__(self, "_weights", ratio(p, q))

    @property
    def device(self) -> torch.device:
        """Device of ``p``, ``q`` and the draws."""
        return self.p.device

    def to(self, device) -> "InverseCDFSampler":
        """The same sampler on another device (itself when already there)."""
        if same_device(as_device("device", device), self.device):
            return self
        return InverseCDFSampler(self.p.to(device), self.q.to(device), self.design)

    @classmethod
    def from_core(cls, sampler: carv_core.InverseCDFSampler, device=None) -> "InverseCDFSampler":
        """The torch twin of a (validated) core sampler: tables copied host-to-device, no device read."""
        if not isinstance(sampler, carv_core.InverseCDFSampler):
            raise TypeError(f"sampler must be a carv_core.InverseCDFSampler, got {type(sampler).__name__}")
        device = as_device("device", device)
        out = object.__new__(cls)
        p, q = from_host(sampler.p, device=device), from_host(sampler.q, device=device)
        cdf = np.cumsum(sampler.q)
        for name, value in (("p", p), ("q", q), ("design", sampler.design),
                            ("_cdf", from_host(cdf, device=device)), ("_ends", _host_ends(cdf)),
                            ("_weights", from_host(carv_core.importance_weights(sampler.p, sampler.q),
                                                   device=device))):
            object.__setattr__(out, name, value)
        return out

    def with_design(self, design) -> "InverseCDFSampler":
        """The same transform under another design (tables shared, nothing re-validated)."""
        out = object.__new__(type(self))
        for name in ("p", "q", "_cdf", "_ends", "_weights"):
            object.__setattr__(out, name, getattr(self, name))
        object.__setattr__(out, "design", as_design(design))
        return out

    def transform(self, u) -> TimestepDraw:
        """The pure transform (see :func:`timesteps_from_uniforms`); ``u`` on :attr:`device`."""
        u = _uniforms(u)
        check_device("u", u, self.device, "the sampler's p")
        return self._apply(u)

    def _apply(self, u: torch.Tensor) -> TimestepDraw:
        t = _inverse_cdf_at(self._cdf, u, *self._ends)
        return TimestepDraw(t, self._weights[t].to(u.dtype))

    def __call__(self, R: int, K: int, generator=None) -> TimestepDraw:
        """Draw ``(R, K)`` timesteps and float64 weights on :attr:`device`."""
        # The design's draw is in [0, 1) by construction: no value check on it.
        return self._apply(draw_uniforms(self.design, R, K, generator, device=self.device))


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

