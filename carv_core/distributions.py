r"""Target distributions $p(t)$ of the noise level.

A discrete $p$ is a probability mass function over the teacher's integer steps
$t = 0..T-1$, a float64 array of shape ``(T,)``. A continuous $p$ on an interval
is a :class:`PiecewiseDensity`: masses on bins with a constant density inside
each bin, so its CDF is piecewise linear and $F^{-1}$ is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ._validation import as_float_array, as_int, as_pmf, as_real

__all__ = ["pmf", "uniform_timesteps", "PiecewiseDensity", "tabulate_density"]


def pmf(values, name: str = "p", *, renormalise: bool = False) -> np.ndarray:
    r"""Validate a probability mass function: 1-D, finite, $\ge 0$, $|\sum_t p(t) - 1| \le 10^{-9}$.

    The sum tolerance is the fixed float64 ``PMF_ATOL`` $= 10^{-9}$, which does not grow
    with $T$: numpy's float64 summation errs by at most about $(128 + \log_2 T)\,2^{-53}$
    ($< 2\times 10^{-14}$), far below it, so only a pmf not normalised in float64
    (float32 rounding, a typo) misses it; see ``carv_core._validation.as_pmf``.

    Args:
        values: $p(t)$, shape ``(T,)``.
        name: the argument name used in error messages.
        renormalise: if ``True``, return $p / \sum_t p(t)$ (float64, the sum taken in
            float64) for any finite, non-negative ``values`` of positive total mass, however
            far its sum is from 1; zero total mass is a ``ValueError``.

    Example:
        >>> pmf([0.25, 0.75]).tolist()
        [0.25, 0.75]
        >>> pmf([1.0, 3.0], renormalise=True).tolist()
        [0.25, 0.75]
    """
    return as_pmf(name, values, renormalise=renormalise).copy()


def uniform_timesteps(num_train_timesteps: int = 1000, min_step_percent: float = 0.02,
                      max_step_percent: float = 0.98) -> np.ndarray:
    r"""Uniform $p$ on the integers $[\lfloor aT \rfloor, \lfloor bT \rfloor]$, both ends included.

    This is threestudio's default ($a = 0.02$, $b = 0.98$: steps 20..980 of 1000).

    Example:
        >>> p = uniform_timesteps(1000)
        >>> int(np.flatnonzero(p)[0]), int(np.flatnonzero(p)[-1]), round(float(p.sum()), 12)
        (20, 980, 1.0)
    """
    T = as_int("num_train_timesteps", num_train_timesteps, minimum=1)
    a = as_real("min_step_percent", min_step_percent, nonnegative=True, upper=1.0)
    b = as_real("max_step_percent", max_step_percent, nonnegative=True, upper=1.0)
    lo, hi = int(math.floor(a * T)), min(int(math.floor(b * T)), T - 1)
    if lo > hi:
        raise ValueError(
            f"min_step_percent ({a}) must not exceed max_step_percent ({b}): "
            f"the step range [{lo}, {hi}] is empty"
        )
    p = np.zeros(T)
    p[lo:hi + 1] = 1.0 / (hi - lo + 1)
    return p


@dataclass(frozen=True)
class PiecewiseDensity:
    r"""A density on $[e_0, e_n]$, constant on each bin $[e_i, e_{i+1})$.

    $p(t) = m_i / (e_{i+1} - e_i)$ on bin $i$, $F(t) = \sum_{j<i} m_j + m_i\,\tfrac{t - e_i}{e_{i+1} - e_i}$.

    Attributes:
        edges: bin edges, shape ``(n + 1,)``, strictly increasing.
        masses: bin masses, shape ``(n,)``, a pmf.
    """

    edges: np.ndarray
    masses: np.ndarray

    def __post_init__(self):
        edges = as_float_array("edges", self.edges, ndim=1)
        masses = as_pmf("masses", self.masses)
        if edges.shape[0] != masses.shape[0] + 1:
            raise ValueError(
                f"edges must have one more entry than masses, got {edges.shape[0]} edges "
                f"and {masses.shape[0]} masses"
            )
        with np.errstate(over="ignore"):
            widths = np.diff(edges)
        if np.any(widths <= 0):
            raise ValueError("edges must be strictly increasing")
        if not np.all(np.isfinite(widths)):
            raise ValueError(f"edges span [{edges[0]}, {edges[-1]}], whose bin widths overflow "
                             "float64; rescale t")
        for name, arr in (("edges", edges), ("masses", masses)):
            arr = arr.copy()
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    @property
    def widths(self) -> np.ndarray:
        """Bin widths $e_{i+1} - e_i$."""
        return np.diff(self.edges)

    def bin_of(self, t) -> np.ndarray:
        """Index of the bin holding each ``t`` (the last bin holds the right edge)."""
        t = as_float_array("t", t, allow_empty=True)
        return np.clip(np.searchsorted(self.edges, t, side="right") - 1, 0, self.masses.size - 1)

    def pdf(self, t) -> np.ndarray:
        """$p(t)$; zero outside $[e_0, e_n]$."""
        t = as_float_array("t", t, allow_empty=True)
        inside = (t >= self.edges[0]) & (t <= self.edges[-1])
        return np.where(inside, (self.masses / self.widths)[self.bin_of(t)], 0.0)

    def cdf(self, t) -> np.ndarray:
        """$F(t)$, piecewise linear."""
        t = np.clip(as_float_array("t", t, allow_empty=True), self.edges[0], self.edges[-1])
        i = self.bin_of(t)
        below = np.concatenate([[0.0], np.cumsum(self.masses)])[i]
        return below + self.masses[i] * (t - self.edges[i]) / self.widths[i]


def tabulate_density(density: Callable[[np.ndarray], np.ndarray], lower: float, upper: float,
                     n_bins: int = 256) -> PiecewiseDensity:
    r"""Tabulate an (unnormalised) density on $[a, b]$ into a :class:`PiecewiseDensity`.

    Bin masses are $\int_{e_i}^{e_{i+1}} p$ by 3-point Gauss-Legendre quadrature,
    then normalised.

    Example:
        >>> d = tabulate_density(lambda t: np.ones_like(t), 0.0, 1.0, 4)
        >>> d.masses.tolist()
        [0.25, 0.25, 0.25, 0.25]
    """
    if not callable(density):
        raise TypeError(f"density must be a callable t -> p(t) (vectorised), got {type(density).__name__}")
    a = as_real("lower", lower)
    b = as_real("upper", upper)
    if not a < b:
        raise ValueError(f"lower must be < upper, got lower={a}, upper={b}")
    if not math.isfinite(b - a):
        raise ValueError(f"upper - lower must be finite, got lower={a}, upper={b}; rescale t")
    n = as_int("n_bins", n_bins, minimum=1)
    edges = np.linspace(a, b, n + 1)
    nodes, weights = np.polynomial.legendre.leggauss(3)
    mid, half = (edges[1:] + edges[:-1]) / 2, (edges[1:] - edges[:-1]) / 2
    pts = mid[:, None] + half[:, None] * nodes[None, :]
    vals = as_float_array("density(t)", density(pts), allow_empty=False)
    if vals.shape != pts.shape:
        raise ValueError(f"density must be vectorised: expected shape {pts.shape}, got {vals.shape}")
    if np.any(vals < 0):
        raise ValueError("density must be non-negative on [lower, upper]")
    # The density is unnormalised: scale it by a power of two (exact) near its largest
    # value so that the quadrature cannot overflow.
    vals = np.ldexp(vals, -int(np.frexp(float(vals.max()))[1]))
    masses = (vals * weights).sum(axis=1) * half
    total = masses.sum()
    if total <= 0:
        raise ValueError("density integrates to zero on [lower, upper]")
    return PiecewiseDensity(edges, masses / total)
