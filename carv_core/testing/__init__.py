"""Public test kit: exact laws and moments of samplers, and Hypothesis strategies.

Write a sampler against the protocol (a ``design`` and a pure ``transform(u)``),
then :func:`check_sampler` tells its exact bias and variance for any discrete
$p$ and integrand table. Strategies live in :mod:`carv_core.testing.strategies`
(imported separately: it needs ``hypothesis``).
"""

from .exact import (
    EXACT_DESIGNS,
    BiasReport,
    Block,
    Moments,
    SamplerLaw,
    between_variance,
    breakpoints,
    check_sampler,
    exact_law,
    exact_moments,
    target_mean,
    within_variance,
)

__all__ = [
    "EXACT_DESIGNS",
    "BiasReport",
    "Block",
    "Moments",
    "SamplerLaw",
    "between_variance",
    "breakpoints",
    "check_sampler",
    "exact_law",
    "exact_moments",
    "target_mean",
    "within_variance",
]
