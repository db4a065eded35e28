r"""Public test kit: exact laws and moments of samplers, certification, and Hypothesis strategies.

Write a sampler against the protocol (a ``design`` — any affine
:class:`~carv_core.Design`, built in or your own — and a pure, elementwise
``transform(u)``), then :func:`check_sampler` tells its exact bias (relative to the
integrand's RMS $\lVert f\rVert_{p,\pi}$, with a float64 rounding bound and a verdict)
and variance for any discrete $p$ and integrand table, and what it could not prove.

| module | concept |
|---|---|
| :mod:`~carv_core.testing.law` | :func:`exact_law`: the joint law of an ``(R, K)`` draw, any affine design |
| :mod:`~carv_core.testing.moments` | :func:`exact_moments`, :func:`target_mean`, :func:`integrand_scale`, :func:`within_variance`, :func:`between_variance` |
| :mod:`~carv_core.testing.check` | :func:`check_sampler`, :class:`BiasReport`, :func:`rounding_bound` |
| :mod:`~carv_core.testing.protocol` | :func:`check_elementwise`, :func:`check_breakpoint_form` |

Strategies live in :mod:`carv_core.testing.strategies` (imported separately: it
needs ``hypothesis``). :mod:`carv_core.testing.exact` keeps the original import path.
"""

from ..breakpoints import find_breakpoints
from ..breakpoints import find_breakpoints as breakpoints
from .check import VERDICTS, BiasReport, check_sampler, rounding_bound
from .law import EXACT_DESIGNS, Block, SamplerLaw, exact_law
from .moments import Moments, between_variance, exact_moments, integrand_scale, target_mean, within_variance
from .protocol import check_breakpoint_form, check_elementwise

__all__ = [
    "EXACT_DESIGNS",
    "VERDICTS",
    "BiasReport",
    "Block",
    "Moments",
    "SamplerLaw",
    "between_variance",
    "breakpoints",
    "check_breakpoint_form",
    "check_elementwise",
    "check_sampler",
    "exact_law",
    "exact_moments",
    "find_breakpoints",
    "integrand_scale",
    "rounding_bound",
    "target_mean",
    "within_variance",
]
