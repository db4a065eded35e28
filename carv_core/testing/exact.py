"""The kit's exact-law API under its original module path (kept for existing imports).

The code lives in one module per concept: :mod:`~carv_core.testing.law` (the exact
law of any affine design), :mod:`~carv_core.testing.moments` (exact moments and
variance components), :mod:`~carv_core.testing.check` (:func:`check_sampler`, its
rounding bound and verdict) and :mod:`~carv_core.testing.protocol` (the checks the
law rests on). ``breakpoints`` is :func:`carv_core.find_breakpoints` under its old name.
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
    "Block",
    "SamplerLaw",
    "Moments",
    "BiasReport",
    "breakpoints",
    "find_breakpoints",
    "exact_law",
    "exact_moments",
    "target_mean",
    "integrand_scale",
    "within_variance",
    "between_variance",
    "rounding_bound",
    "check_sampler",
    "check_elementwise",
    "check_breakpoint_form",
]
