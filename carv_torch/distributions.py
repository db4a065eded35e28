r"""Target distributions $p(t)$ of the noise level, as tensors.

A discrete $p$ is a pmf over the teacher's integer steps $t = 0..T-1$, a tensor
of shape ``(T,)``. A continuous $p$ is a :class:`PiecewiseDensity` (bin masses,
constant density inside each bin) whose :meth:`~PiecewiseDensity.pdf` and
:meth:`~PiecewiseDensity.cdf` run on the tensors' device. Construction and
validation go through :mod:`carv_core.distributions` on the host (once per run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import carv_core
import numpy as np
import torch

from ._validation import as_device, as_dtype, as_tensor, from_host, host_pmf, is_validating, to_numpy

__all__ = ["pmf", "uniform_timesteps", "PiecewiseDensity", "tabulate_density"]


def _device_dtype_of(value, device, dtype):
    """Default placement: that of ``value`` when it is a tensor, else CPU float64."""
    if isinstance(value, torch.Tensor):
        return (as_device("device", device) or value.device,
                as_dtype("dtype", dtype) if dtype is not None else value.dtype)
    return as_device("device", device), as_dtype("dtype", dtype) if dtype is not None else torch.float64


def pmf(values, name: str = "p", *, renormalise: bool = False, device=None,
        dtype: torch.dtype | None = None) -> torch.Tensor:
    """Validate a probability mass function (1-D, finite, >= 0, sums to 1) and return it as a tensor.

    A tensor keeps its device and dtype unless ``device``/``dtype`` are given;
    anything else becomes a float64 tensor. A lower-precision tensor is held to its own
    dtype's sum tolerance (:func:`carv_torch._validation.pmf_atol`). With
    ``renormalise=True`` the sum need not be 1: ``values / values.sum()`` (in float64) is
    returned, for finite, non-negative ``values`` with a positive sum. Validation reads
    the values (syncs).

    Example:
        >>> pmf([0.25, 0.75]).tolist()
        [0.25, 0.75]
        >>> pmf([1.0, 3.0], renormalise=True).tolist()
        [0.25, 0.75]
    """
    device, dtype = _device_dtype_of(values, device, dtype)
    renormalise = bool(renormalise) if isinstance(renormalise, np.bool_) else renormalise
    if renormalise is True:  # host maths and messages of carv_core.pmf (no sum tolerance)
        host = to_numpy(name, values) if isinstance(values, torch.Tensor) else values
        return from_host(carv_core.pmf(host, name, renormalise=True), device=device, dtype=dtype)
    checked = carv_core.pmf(host_pmf(name, values), name, renormalise=renormalise)
    if isinstance(values, torch.Tensor):
        return values.detach().clone().to(device=device, dtype=dtype)
    return from_host(checked, device=device, dtype=dtype)


def uniform_timesteps(num_train_timesteps: int = 1000, min_step_percent: float = 0.02,
                      max_step_percent: float = 0.98, *, device=None,
                      dtype: torch.dtype = torch.float64) -> torch.Tensor:
    r"""Uniform $p$ on the integers $[\lfloor aT \rfloor, \lfloor bT \rfloor]$, shape ``(T,)``.

    Example:
        >>> p = uniform_timesteps(1000)
        >>> int(p.nonzero()[0]), int(p.nonzero()[-1])
        (20, 980)
    """
    p = carv_core.uniform_timesteps(num_train_timesteps, min_step_percent, max_step_percent)
    return from_host(p, device=as_device("device", device), dtype=as_dtype("dtype", dtype))


@dataclass(frozen=True, eq=False)
class PiecewiseDensity:
    r"""A density on $[e_0, e_n]$, constant on each bin $[e_i, e_{i+1})$, held as tensors.

    $p(t) = m_i / (e_{i+1} - e_i)$ on bin $i$, $F(t) = \sum_{j<i} m_j + m_i\,\tfrac{t - e_i}{e_{i+1} - e_i}$.

    Attributes:
        edges: bin edges, shape ``(n + 1,)``, strictly increasing.
        masses: bin masses, shape ``(n,)``, a pmf, on the device of ``edges``.

    Example:
        >>> d = PiecewiseDensity(torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64),
        ...                      torch.tensor([0.25, 0.75], dtype=torch.float64))
        >>> d.cdf(torch.tensor([0.5, 0.75], dtype=torch.float64)).tolist()
        [0.25, 0.625]
    """

    edges: torch.Tensor
    masses: torch.Tensor

    def __post_init__(self):
        edges = as_tensor("edges", self.edges, ndim=1)
        masses = as_tensor("masses", self.masses, ndim=1, device=edges.device, other="edges")
        if edges.shape[0] != masses.shape[0] + 1:
            raise ValueError(
                f"edges must have one more entry than masses, got {edges.shape[0]} edges "
                f"and {masses.shape[0]} masses"
            )
        if is_validating() and edges.device.type != "meta":
            # Host-side value checks (a sync), once: the core's checks and messages.
            carv_core.PiecewiseDensity(to_numpy("edges", edges), to_numpy("masses", masses))
        object.__setattr__(self, "edges", edges)
        object.__setattr__(self, "masses", masses.to(edges.dtype))

    @classmethod
    def from_core(cls, density: carv_core.PiecewiseDensity, *, device=None,
                  dtype: torch.dtype = torch.float64) -> "PiecewiseDensity":
        """The same density as a :class:`carv_core.PiecewiseDensity`, on ``device``."""
        if not isinstance(density, carv_core.PiecewiseDensity):
            raise TypeError(f"density must be a carv_core.PiecewiseDensity, got {type(density).__name__}")
        device, dtype = as_device("device", device), as_dtype("dtype", dtype)
        return cls(from_host(density.edges, device=device, dtype=dtype),
                   from_host(density.masses, device=device, dtype=dtype))

    @property
    def widths(self) -> torch.Tensor:
        """Bin widths $e_{i+1} - e_i$, shape ``(n,)``."""
        return torch.diff(self.edges)

    def _t(self, t) -> torch.Tensor:
        return as_tensor("t", t, device=self.edges.device, other="edges", allow_empty=True)

    def bin_of(self, t) -> torch.Tensor:
        """Index of the bin holding each ``t`` (the last bin holds the right edge), int64."""
        t = self._t(t)
        idx = torch.searchsorted(self.edges, t.to(self.edges.dtype).contiguous(), right=True) - 1
        return idx.clamp(0, self.masses.numel() - 1)

    def pdf(self, t) -> torch.Tensor:
        """$p(t)$; zero outside $[e_0, e_n]$."""
        t = self._t(t).to(self.edges.dtype)
        inside = (t >= self.edges[0]) & (t <= self.edges[-1])
        density = (self.masses / self.widths)[self.bin_of(t)]
        return torch.where(inside, density, torch.zeros_like(density))

    def cdf(self, t) -> torch.Tensor:
        """$F(t)$, piecewise linear."""
        t = torch.clamp(self._t(t).to(self.edges.dtype), self.edges[0], self.edges[-1])
        i = self.bin_of(t)
        below = torch.cat([self.masses.new_zeros(1), torch.cumsum(self.masses, 0)])[i]
        return below + self.masses[i] * (t - self.edges[i]) / self.widths[i]


def tabulate_density(density: Callable[[torch.Tensor], torch.Tensor], lower: float, upper: float,
                     n_bins: int = 256, *, device=None,
                     dtype: torch.dtype = torch.float64) -> PiecewiseDensity:
    r"""Tabulate an (unnormalised) density on $[a, b]$ into a :class:`PiecewiseDensity`.

    The quadrature is :func:`carv_core.tabulate_density`'s (3-point Gauss-Legendre
    per bin); ``density`` is called once on a float64 CPU tensor of nodes.

    Example:
        >>> d = tabulate_density(lambda t: torch.ones_like(t), 0.0, 1.0, 4)
        >>> d.masses.tolist()
        [0.25, 0.25, 0.25, 0.25]
    """

    def on_host(t: np.ndarray) -> np.ndarray:
        return to_numpy("density(t)", density(torch.as_tensor(t)))

    core = carv_core.tabulate_density(on_host, lower, upper, n_bins)
    return PiecewiseDensity.from_core(core, device=device, dtype=dtype)
