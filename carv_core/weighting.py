r"""Timestep weightings $w(t)$ of the score-distillation residual.

The SDS integrand is $f = w(t)\,\alpha_t\,(\hat\epsilon_\phi(x_t, t) - \epsilon)$. This
module keeps the two factors apart: :func:`weighting` gives the preset $w(t)$,
and :func:`sds_weight` gives the factor the residual is actually multiplied by,
$w_{\rm SDS}(t) = w(t)\,\alpha_t$ (the paper's convention). Pass
``include_alpha=False`` to fold $\alpha_t$ into $w$ instead (threestudio's
convention multiplies by $w(t)$ only).

Presets, with $\bar\alpha_t$ the cumulative product:

| name | $w(t)$ |
|---|---|
| ``sds`` | $1 - \bar\alpha_t$ |
| ``uniform`` | $1$ |
| ``fantasia3d`` | $\sqrt{\bar\alpha_t}\,(1 - \bar\alpha_t)$ |
"""

from __future__ import annotations

from typing import Callable, Union

import numpy as np

from ._validation import as_float_array
from .schedules import DiscreteSchedule

__all__ = ["WEIGHTINGS", "weighting", "sds_weight"]

WEIGHTINGS = ("sds", "uniform", "fantasia3d")

Weighting = Union[str, Callable[[np.ndarray], np.ndarray]]


def weighting(name: Weighting, schedule: DiscreteSchedule) -> np.ndarray:
    r"""$w(t)$ for every integer $t$, shape ``(T,)``.

    Args:
        name: a preset (``"sds"``, ``"uniform"``, ``"fantasia3d"``) or a callable
            mapping $\bar\alpha_t$ (shape ``(T,)``) to non-negative weights.
        schedule: the teacher's schedule.

    Example:
        >>> from carv_core import make_schedule
        >>> s = make_schedule("linear", 3, 0.1, 0.3)
        >>> weighting("sds", s).round(4).tolist()
        [0.1, 0.28, 0.496]
    """
    if not isinstance(schedule, DiscreteSchedule):
        raise TypeError(f"schedule must be a DiscreteSchedule, got {type(schedule).__name__}")
    abar = schedule.alphas_cumprod
    if callable(name):
        w = as_float_array("weighting(alphas_cumprod)", name(abar.copy()), ndim=1)
        if w.shape != abar.shape:
            raise ValueError(f"a weighting callable must return shape {abar.shape}, got {w.shape}")
    elif name == "sds":
        w = 1.0 - abar
    elif name == "uniform":
        w = np.ones_like(abar)
    elif name == "fantasia3d":
        w = np.sqrt(abar) * (1.0 - abar)
    else:
        raise ValueError(f"weighting must be one of {WEIGHTINGS} or a callable, got {name!r}")
    if np.any(w < 0):
        j = int(np.argmax(w < 0))
        raise ValueError(f"weights must be non-negative, got w[{j}] = {w[j]}")
    return w


def sds_weight(name: Weighting, schedule: DiscreteSchedule, *, include_alpha: bool = True) -> np.ndarray:
    r"""$w_{\rm SDS}(t) = w(t)\,\alpha_t$ (or $w(t)$ when ``include_alpha=False``), shape ``(T,)``.

    This is the factor that multiplies $\hat\epsilon - \epsilon$, and the
    shape of the weight-heuristic proposal $q \propto p\,w_{\rm SDS}$.
    """
    if not isinstance(include_alpha, (bool, np.bool_)):
        raise TypeError(f"include_alpha must be a bool, got {include_alpha!r} ({type(include_alpha).__name__})")
    w = weighting(name, schedule)
    return w * schedule.alpha if include_alpha else w
