r"""Samplers of the core protocol on tensors: breakpoint transforms and :func:`as_sampler`.

:func:`as_sampler` turns any sampler of the core protocol (a design and a
transform, e.g. one certified by :mod:`carv_core.testing`) into one that runs on
tensors: an inverse-CDF sampler keeps its exact host-built CDF; any other
transform runs as its breakpoints (:class:`BreakpointSampler`, the same
``searchsorted`` comparison as :class:`carv_core.BreakpointSampler`), so the law on
the device is bit-for-bit the law the kit certified.
"""

from __future__ import annotations

import carv_core
import torch

from ._validation import as_device, check_device, from_host, same_device, to_numpy
from .sampling import InverseCDFSampler, TimestepDraw, _uniforms, draw_uniforms

__all__ = ["BreakpointSampler", "as_sampler", "tabulate", "call_transform", "find_breakpoints"]

# The protocol checks and the bisection are host-side maths on the core's numpy transform.
call_transform = carv_core.call_transform
find_breakpoints = carv_core.find_breakpoints


class BreakpointSampler(carv_core.MonotoneSampler):
    r"""A monotone transform given by its breakpoints, on tensors: $t(u) = \#\{j \ge 1 : c_j \le u\}$, $\tilde w = w_t$.

    The torch twin of :class:`carv_core.BreakpointSampler`: the same comparison
    (``searchsorted(cuts[1:-1], u, right=True)`` in float64), so for the same uniforms
    it returns the core's timesteps exactly, on every device. Built by
    :func:`as_sampler` for any transform that is not an inverse CDF.

    Args:
        cuts: $0 = c_0 \le \dots \le c_T = 1$, shape ``(T + 1,)``.
        weights: $\tilde w_j$, shape ``(T,)``.
        design: a :class:`~carv_core.designs.Design` or shorthand.
        device: where the tables live and draws are made.

    Example:
        >>> s = BreakpointSampler([0.0, 0.5, 0.5, 1.0], [1.0, 9.0, 2.0], design="stratified")
        >>> s(R=1, K=2, generator=torch.Generator().manual_seed(0)).t.tolist()
        [[0, 2]]
    """

    def __init__(self, cuts, weights, design="iid", *, device=None):
        device = as_device("device", device)
        core = carv_core.BreakpointSampler(to_numpy("cuts", cuts) if isinstance(cuts, torch.Tensor) else cuts,
                                           to_numpy("weights", weights) if isinstance(weights, torch.Tensor)
                                           else weights, design)
        self.core = core
        self.design = core.design
        self._inner = from_host(core.cuts[1:-1], device=device)
        self.weights = from_host(core.weights, device=device)

    @property
    def device(self) -> torch.device:
        """Where the tables live."""
        return self.weights.device

    @property
    def n_timesteps(self) -> int:
        """$T$."""
        return self.weights.shape[0]

    def to(self, device) -> "BreakpointSampler":
        """The same sampler on another device (itself when already there)."""
        if same_device(as_device("device", device), self.device):
            return self
        return BreakpointSampler(self.core.cuts, self.core.weights, self.design, device=device)

    def with_design(self, design) -> "BreakpointSampler":
        """The same transform under another design."""
        return BreakpointSampler(self.core.cuts, self.core.weights, design, device=self.device)

    def transform(self, u) -> TimestepDraw:
        """$t$ and $\tilde w$ for uniforms ``u`` on :attr:`device` (``w`` in ``u``'s dtype)."""
        u = _uniforms(u)
        check_device("u", u, self.device, "the sampler's tables")
        return self._apply(u)

    def _apply(self, u: torch.Tensor) -> TimestepDraw:
        t = torch.searchsorted(self._inner, u.to(torch.float64).contiguous(), right=True)
        return TimestepDraw(t, self.weights[t].to(u.dtype))

    def __call__(self, R: int, K: int, generator=None) -> TimestepDraw:
        """Draw ``(R, K)`` timesteps and float64 weights on :attr:`device`."""
        # The design's draw is in [0, 1) by construction: no value check on it.
        return self._apply(draw_uniforms(self.design, R, K, generator, device=self.device))

    def __repr__(self) -> str:
        return f"carv_torch.BreakpointSampler(T={self.n_timesteps}, design={self.design!r})"


def as_sampler(sampler, n_timesteps: int | None = None, *, device=None):
    r"""A sampler of the core protocol, ready to run on tensors on ``device``.

    * a :class:`carv_torch.InverseCDFSampler` or :class:`BreakpointSampler`: moved to ``device``;
    * a :class:`carv_core.InverseCDFSampler`: the same $p$, $q$, design (exact host CDF);
    * a :class:`carv_core.BreakpointSampler`: its cuts and weights;
    * any other object with a ``design`` and a numpy ``transform(u)`` (a user sampler,
      certified by :mod:`carv_core.testing`): tabulated by :func:`carv_core.tabulate`
      to its breakpoints (needs ``n_timesteps``), i.e. exactly the law the kit computed.

    Example:
        >>> import numpy as np
        >>> core = carv_core.InverseCDFSampler(np.full(4, .25), np.full(4, .25), "antithetic")
        >>> as_sampler(core).design
        Antithetic(stratified=False)
    """
    device = as_device("device", device)
    if isinstance(sampler, (InverseCDFSampler, BreakpointSampler)):
        return sampler if device is None else sampler.to(device)
    if isinstance(sampler, carv_core.InverseCDFSampler):
        return InverseCDFSampler.from_core(sampler, device=device)
    if isinstance(sampler, carv_core.BreakpointSampler):
        return BreakpointSampler(sampler.cuts, sampler.weights, sampler.design, device=device)
    if not hasattr(sampler, "design") or not callable(getattr(sampler, "transform", None)):
        raise TypeError(f"sampler must have a design and a transform(u) (the carv_core sampler "
                        f"protocol), got {type(sampler).__name__}")
    if n_timesteps is None:
        raise ValueError(f"n_timesteps is needed to tabulate {type(sampler).__name__}'s transform "
                         "into breakpoints (the teacher's T)")
    return tabulate(sampler, n_timesteps, device=device)


def tabulate(sampler, n_timesteps: int, *, device=None) -> BreakpointSampler:
    r"""The :class:`BreakpointSampler` (on ``device``) of ``sampler``'s design, breakpoints and $w(t)$ (:func:`carv_core.tabulate`)."""
    tab = carv_core.tabulate(sampler, n_timesteps)
    return BreakpointSampler(tab.cuts, tab.weights, tab.design, device=device)
