r"""Timestep sampling as pure transforms of uniforms.

Every sampler is split in two:

1. a *uniform design* draws $u \in [0,1)^{R\times K}$ (the only random step);
2. a *pure transform* maps $u$ to timesteps and weights,
   $t = F_q^{-1}(u)$, $\tilde w = p(t)/q(t)$.

Designs are objects (:mod:`carv_core.designs`: ``IID``, ``Stratified``, ``GlobalStrata``,
``Systematic``, ``Antithetic``, ``PermutedStrata``, ``Sobol`` or a user's own); their
names (``"stratified"``, ...) are shorthands. Each $u_{rk}$ is marginally uniform over
a stratum, and the strata of a row (of the batch, for ``global``) cover $[0,1)$
with equal mass, so every design is unbiased.

A sampler is a design plus a transform. :class:`InverseCDFSampler` is the
standard one; :class:`carv_core.breakpoints.BreakpointSampler` is any monotone
transform written as its breakpoints.

Discrete inverse CDF: $F^{-1}(u) = \min\{j : F(j) > u\}$. Stratum $b$ of $B$
lands on $j$ with probability $B\,\big|[\tfrac bB, \tfrac{b+1}B) \cap [F(j-1), F(j))\big|$
(:func:`stratum_pmfs`), which makes every discrete sampler's moments exactly
computable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ._validation import as_float_array, as_int, as_pmf, as_unit_interval, check_support, rng_from
from .designs import DESIGNS, Design, as_design
from .distributions import PiecewiseDensity
from .proposals import importance_weights

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
    "MonotoneSampler",
    "InverseCDFSampler",
    "gaussian_noise",
]


class TimestepDraw(NamedTuple):
    """Timesteps and their importance weights, both of shape ``(R, K)``."""

    t: np.ndarray
    w: np.ndarray


def cdf_from_pmf(q) -> np.ndarray:
    r"""$F(j) = \sum_{i \le j} q(i)$, shape ``(T,)``."""
    return np.cumsum(as_pmf("q", q))


def _inverse_cdf(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    # 1. Scale u by the total so a last CDF entry below 1 (rounding) is harmless.
    # 2. min{j : F(j) > u} is searchsorted(side="right"): a zero-mass j has
    #    F(j) = F(j-1), so j-1 is found first and j is never returned.
    # 3. u -> 1^- can still round onto F(T-1); clip to the last index with mass.
    total = cdf[-1]
    idx = np.searchsorted(cdf, u * total, side="right")
    last = int(np.searchsorted(cdf, total, side="left"))
    return np.minimum(idx, last)


def inverse_cdf(cdf, u) -> np.ndarray:
    r"""Discrete $F^{-1}(u) = \min\{j : F(j) > u\}$, elementwise over ``u``.

    Never returns an index of zero mass; handles $u \to 1^-$ and a last CDF
    entry slightly below 1.

    Args:
        cdf: non-decreasing, shape ``(T,)``, last entry > 0 (scaled to 1).
        u: uniforms in $[0, 1)$, any shape.

    Example:
        >>> inverse_cdf([0.25, 0.25, 1.0], [0.0, 0.2, 0.25, 0.99]).tolist()
        [0, 0, 2, 2]
    """
    cdf = as_float_array("cdf", cdf, ndim=1)
    if np.any(np.diff(cdf) < 0) or cdf[0] < 0:
        raise ValueError("cdf must be non-negative and non-decreasing")
    if not cdf[-1] > 0:
        raise ValueError(f"cdf must end above 0, got cdf[-1] = {cdf[-1]}")
    return _inverse_cdf(cdf, as_unit_interval("u", u))


def stratum_pmfs(q, B: int) -> np.ndarray:
    r"""$P(t_b = j) = B\,\big|[\tfrac bB, \tfrac{b+1}B) \cap [F(j-1), F(j))\big|$, shape ``(B, T)``.

    Row $b$ is the law of the stratified draw in stratum $b$; the rows average to $q$.

    Example:
        >>> stratum_pmfs([0.5, 0.25, 0.25], 2).tolist()
        [[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]]
    """
    cdf = cdf_from_pmf(q)
    B = as_int("B", B, minimum=1)
    lo_t = np.concatenate([[0.0], cdf[:-1]])[None, :]
    hi_t = cdf[None, :]
    b = np.arange(B)[:, None]
    lo_s, hi_s = b / B, (b + 1) / B
    return B * np.clip(np.minimum(hi_s, hi_t) - np.maximum(lo_s, lo_t), 0.0, None)


def stratify(xi, offset) -> np.ndarray:
    r"""$u = (\text{offset} + \xi)/B$ along the last axis of length $B$: the pure stratification map.

    Args:
        xi: jitters in $[0, 1)$, shape ``(..., B)``.
        offset: stratum indices in $[0, B - 1]$, broadcastable against ``xi``.

    Example:
        >>> stratify([0.5, 0.5], [0, 1]).tolist()
        [0.25, 0.75]
    """
    xi = as_unit_interval("xi", xi)
    if xi.ndim == 0:
        raise ValueError("xi must have at least 1 dimension(s) (strata along the last axis), "
                         "got shape ()")
    B = xi.shape[-1]
    off = as_float_array("offset", offset, allow_empty=True)
    try:
        np.broadcast_shapes(off.shape, xi.shape)
    except ValueError:
        raise ValueError(f"offset of shape {off.shape} does not broadcast against xi of shape "
                         f"{xi.shape}") from None
    if off.size and (off.min() < 0 or off.max() > B - 1):
        raise ValueError(f"offset must hold stratum indices in [0, B - 1] = [0, {B - 1}] "
                         f"(B = {B} strata along the last axis of xi), got values in "
                         f"[{off.min()}, {off.max()}]")
    # (B - 1 + xi) / B can round up to exactly 1.0 for xi close to 1: keep u < 1.
    return np.minimum((off + xi) / B, np.nextafter(1.0, 0.0))


def draw_uniforms(design, R: int, K: int, rng=None) -> np.ndarray:
    r"""Draw $u$ of shape ``(R, K)`` under a uniform design (:mod:`carv_core.designs`).

    Args:
        design: a :class:`~carv_core.designs.Design` or a shorthand in :data:`DESIGNS`.
        R, K: upstream samples and inner draws per upstream sample.
        rng: numpy ``Generator``, seed or ``None``.

    Example:
        >>> u = draw_uniforms("stratified", 2, 4, rng=0)
        >>> bool((np.floor(u * 4) == np.arange(4)).all())
        True
    """
    R = as_int("R", R, minimum=1)
    K = as_int("K", K, minimum=1)
    return as_design(design).draw(R, K, rng)


def timesteps_from_uniforms(u, p, q) -> TimestepDraw:
    r"""The pure transform $t = F_q^{-1}(u)$, $\tilde w = p(t)/q(t)$.

    Args:
        u: uniforms in $[0,1)$, any shape (typically ``(R, K)``).
        p: target pmf, shape ``(T,)``.
        q: proposal pmf, shape ``(T,)``, positive wherever ``p`` is.

    Example:
        >>> timesteps_from_uniforms([[0.1, 0.9]], [0.5, 0.5], [0.25, 0.75])
        TimestepDraw(t=array([[0, 1]]), w=array([[2.        , 0.66666667]]))
    """
    u = as_unit_interval("u", u)
    weights = importance_weights(p, q)
    t = _inverse_cdf(np.cumsum(as_pmf("q", q)), u)
    return TimestepDraw(t, weights[t])


def continuous_from_uniforms(u, p: PiecewiseDensity, q: PiecewiseDensity) -> TimestepDraw:
    r"""Continuous $t = F_q^{-1}(u)$ for piecewise-constant densities on shared bins.

    The bin is the discrete inverse CDF of $q$'s masses; the position inside it
    is the leftover fraction, $t = e_i + (u - F(i-1))/q_i \cdot (e_{i+1} - e_i)$.
    The weight is $p(t)/q(t) = p_i/q_i$.
    """
    if not isinstance(p, PiecewiseDensity) or not isinstance(q, PiecewiseDensity):
        raise TypeError("p and q must be PiecewiseDensity instances")
    if not np.array_equal(p.edges, q.edges):
        raise ValueError("p and q must share the same bin edges")
    u = as_unit_interval("u", u)
    check_support(p.masses, q.masses, p_name="p.masses", q_name="q.masses")
    cdf = np.cumsum(q.masses)
    i = _inverse_cdf(cdf, u)
    below = np.concatenate([[0.0], cdf[:-1]])[i]
    frac = np.clip((u * cdf[-1] - below) / q.masses[i], 0.0, np.nextafter(1.0, 0.0))
    t = q.edges[i] + frac * q.widths[i]
    return TimestepDraw(t, p.masses[i] / q.masses[i])


class MonotoneSampler:
    r"""Marker base: a sampler whose ``transform`` is non-decreasing in $u$ *by construction*.

    The exact kit takes monotonicity as proved for these and reports it as
    checked-on-probes for any other transform. Subclass only when it is provable
    (an inverse CDF, a breakpoint table).
    """


@dataclass(frozen=True, eq=False)
class InverseCDFSampler(MonotoneSampler):
    r"""The standard sampler: a uniform ``design`` followed by $t = F_q^{-1}(u)$, $\tilde w = p/q$.

    A sampler is a ``design`` (:mod:`carv_core.designs`; a name is a shorthand) and a
    pure, elementwise ``transform(u) -> TimestepDraw``: the protocol
    :mod:`carv_core.testing` checks and :mod:`carv_torch` runs. Call it to draw.

    Example:
        >>> s = InverseCDFSampler(p=np.full(4, 0.25), q=np.full(4, 0.25), design="stratified")
        >>> s(R=1, K=4, rng=0).t.tolist()
        [[0, 1, 2, 3]]
    """

    p: np.ndarray
    q: np.ndarray
    design: Design = "iid"

    def __post_init__(self):
        p, q = as_pmf("p", self.p), as_pmf("q", self.q)
        check_support(p, q)
        if p.shape != q.shape:
            raise ValueError(f"p and q must have the same shape, got {p.shape} and {q.shape}")
        object.__setattr__(self, "p", p)
        object.__setattr__(self, "q", q)
        object.__setattr__(self, "design", as_design(self.design))

    def transform(self, u) -> TimestepDraw:
        """The pure transform (see :func:`timesteps_from_uniforms`)."""
        return timesteps_from_uniforms(u, self.p, self.q)

    def __call__(self, R: int, K: int, rng=None) -> TimestepDraw:
        """Draw ``(R, K)`` timesteps and weights."""
        return self.transform(draw_uniforms(self.design, R, K, rng))


def gaussian_noise(shape, K: int, rng=None, antithetic: bool = False, R: int = 1) -> np.ndarray:
    r"""$\epsilon_{rk} \sim \mathcal N(0, I)$ of shape ``(R, K, *shape)``.

    With ``antithetic=True`` draws come in pairs $(\epsilon, -\epsilon)$ along $K$
    (``K`` must be even); each draw is still marginally $\mathcal N(0, I)$.
    """
    K = as_int("K", K, minimum=1)
    R = as_int("R", R, minimum=1)
    if not isinstance(shape, (tuple, list)):
        raise TypeError(f"shape must be a tuple of ints, got {shape!r} ({type(shape).__name__})")
    shape = tuple(as_int("shape", s, minimum=1) for s in shape)
    if not isinstance(antithetic, (bool, np.bool_)):
        raise TypeError(f"antithetic must be True or False, got {antithetic!r}")
    rng = rng_from(rng)
    if not antithetic:
        return rng.standard_normal((R, K, *shape))
    if K % 2:
        raise ValueError(f"K must be even for antithetic noise, got K = {K}")
    half = rng.standard_normal((R, K // 2, *shape))
    return np.stack([half, -half], axis=2).reshape(R, K, *shape)

