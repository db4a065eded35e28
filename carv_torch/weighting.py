r"""Timestep weightings $w(t)$ as tensors on the schedule's device.

The tables are tabulated once per run by :mod:`carv_core.weighting` (presets
``sds`` $= 1 - \bar\alpha_t$, ``uniform`` $= 1$, ``fantasia3d`` $= \sqrt{\bar\alpha_t}(1 - \bar\alpha_t)$)
and moved to the device and dtype of the schedule; a callable weighting receives
$\bar\alpha_t$ as a tensor. :func:`sds_weight` is $w_{\rm SDS}(t) = w(t)\,\alpha_t$,
the factor that multiplies $\hat\epsilon - \epsilon$.
"""

from __future__ import annotations

from typing import Callable, Union

import carv_core
import torch
from carv_core.weighting import WEIGHTINGS

from ._validation import from_host, to_numpy
from .schedules import DiscreteSchedule

__all__ = ["WEIGHTINGS", "weighting", "sds_weight"]

Weighting = Union[str, Callable[[torch.Tensor], torch.Tensor]]


def _as_torch_schedule(schedule) -> DiscreteSchedule:
    if isinstance(schedule, DiscreteSchedule):
        return schedule
    if isinstance(schedule, carv_core.DiscreteSchedule):
        return DiscreteSchedule.from_core(schedule)
    raise TypeError(f"schedule must be a DiscreteSchedule, got {type(schedule).__name__}")


def _core_weighting(name: Weighting, schedule: DiscreteSchedule):
    """Translate a tensor callable into the numpy callable carv_core expects."""
    if not callable(name):
        return name
    abar = schedule.alphas_cumprod

    def on_host(abar_np):
        return to_numpy("weighting(alphas_cumprod)", name(abar.clone()))

    return on_host


def weighting(name: Weighting, schedule: DiscreteSchedule) -> torch.Tensor:
    r"""$w(t)$ for every integer $t$, shape ``(T,)``, on the schedule's device and dtype.

    Args:
        name: a preset (``"sds"``, ``"uniform"``, ``"fantasia3d"``) or a callable
            mapping $\bar\alpha_t$ (tensor of shape ``(T,)``) to non-negative weights.
        schedule: the teacher's schedule (a torch or a core ``DiscreteSchedule``).

    Example:
        >>> from carv_torch import make_schedule
        >>> weighting("sds", make_schedule("linear", 3, 0.1, 0.3)).round(decimals=4).tolist()
        [0.1, 0.28, 0.496]
    """
    schedule = _as_torch_schedule(schedule)
    w = carv_core.weighting(_core_weighting(name, schedule), schedule.to_core())
    abar = schedule.alphas_cumprod
    return from_host(w, device=abar.device, dtype=abar.dtype)


def sds_weight(name: Weighting, schedule: DiscreteSchedule, *, include_alpha: bool = True) -> torch.Tensor:
    r"""$w_{\rm SDS}(t) = w(t)\,\alpha_t$ (or $w(t)$ when ``include_alpha=False``), shape ``(T,)``.

    Example:
        >>> from carv_torch import make_schedule
        >>> sds_weight("uniform", make_schedule("linear", 2, 0.19, 0.19)).round(decimals=4).tolist()
        [0.9, 0.81]
    """
    schedule = _as_torch_schedule(schedule)
    w = carv_core.sds_weight(_core_weighting(name, schedule), schedule.to_core(),
                             include_alpha=include_alpha)
    abar = schedule.alphas_cumprod
    return from_host(w, device=abar.device, dtype=abar.dtype)
