r"""Settings of :class:`carv_torch.guidance.CARVGuidance`, and threestudio's step schedules.

:class:`GuidanceConfig` is validated when it is built (a bad field is an error at
construction, naming it, not at the first call); :func:`scheduled_value` is the
schedule of the t range.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import carv_core
import numpy as np
import torch
from carv_core.weighting import WEIGHTINGS
from carv_core.designs import Design, as_design

from ._validation import is_validating
from .proposal_rules import PROPOSALS, Proposal

__all__ = ["SAMPLERS", "StepRange", "GuidanceConfig", "scheduled_value", "is_sampler", "check_rgb"]

#: Shorthand design names the config accepts (any :class:`carv_core.Design` works too).
SAMPLERS = carv_core.DESIGNS

StepRange = Union[float, Sequence[float]]

#: What ``GuidanceConfig.distributed`` may be.
DISTRIBUTED = ("auto", "off")


def scheduled_value(value: StepRange, global_step: int) -> float:
    r"""threestudio's schedule: a float, or $[s_0, v_0, v_1, s_1]$ ($[v_0, v_1, s_1]$ means $s_0 = 0$).

    $v = v_0 + (v_1 - v_0)\,\operatorname{clip}\big(\tfrac{\text{step} - s_0}{s_1 - s_0}, 0, 1\big)$.

    Example:
        >>> scheduled_value([0, 0.98, 0.5, 100], 50)
        0.74
    """
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        return float(value)
    v = list(value)
    if len(v) == 3:
        v = [0, *v]
    if len(v) != 4:
        raise ValueError(f"a step schedule must be a float or [start_step, start, end, end_step], got {value!r}")
    s0, v0, v1, s1 = v
    if s1 <= s0:
        return float(v1 if global_step >= s1 else v0)
    frac = min(max((global_step - s0) / (s1 - s0), 0.0), 1.0)
    return float(v0 + (v1 - v0) * frac)


def is_sampler(obj) -> bool:
    """Whether ``obj`` is a full sampler (a design and a transform), not a design or a name."""
    return not isinstance(obj, (str, Design)) and hasattr(obj, "design") and hasattr(obj, "transform")


@dataclass
class GuidanceConfig:
    r"""Settings of :class:`CARVGuidance`.

    Attributes:
        min_step_percent, max_step_percent: t range as fractions of $T$, each a float or a
            threestudio schedule ``[start_step, start, end, end_step]``.
        weighting, include_alpha, guidance_scale: the :class:`~carv_torch.integrands.SDS`
            objective built when a teacher (not an objective) is passed. ``include_alpha``
            multiplies the residual by $\alpha_t$ (the paper); threestudio does not (``False``).
        proposal: a :class:`~carv_torch.proposal_rules.Proposal` or ``"uniform"``, ``"weight"``, ``"adaptive"``.
        delta: defensive fraction for ``"weight"``/``"adaptive"`` (weights $\le 1/\delta$).
        adaptive_bins, adaptive_decay: bins and EMA factor of ``"adaptive"``.
        sampler: the design (a :class:`carv_core.Design` or a name in :data:`SAMPLERS`), or a
            full sampler (design + transform, e.g. certified by :mod:`carv_core.testing`), which
            then fixes $p$ and $q$ itself (``proposal`` must stay ``"uniform"``).
        antithetic: $(\epsilon, -\epsilon)$ pairs along $K$ (needs even $K$).
        K: inner draws per upstream sample, or ``"auto"``.
        k_min, k_max, k_init: bounds and first value of ``K="auto"``.
        decide_every: with ``K="auto"``, re-choose $K$ after every this many probes.
        probe_every: with ``K="auto"``, every this many calls is a variance probe.
        warmup: timings dropped before costs are used.
        fixed_costs: ``(c_u, c_d)`` injected instead of measured (reproducible ``K="auto"``).
        max_batch_size: largest teacher batch, applied during each call (restored after).
        seed: seeds the module's generator (under torch.distributed: each rank's per-call stream).
        distributed: ``"auto"`` (synchronise over the default process group when
            ``torch.distributed`` is initialised at construction) or ``"off"``
            (:mod:`carv_torch.distributed`).
        strata_across_ranks: with the ``global`` design on several ranks, one stratified draw
            over the world's draws (``False``: each rank its own, i.i.d. replicates).
        accumulation_steps: calls per optimizer step (gradient accumulation); with the ``global``
            design and ``strata_across_ranks`` a whole cycle's draws on every rank are one
            stratified draw, and $q$ and $K$ change only at a cycle's last call.
    """

    min_step_percent: StepRange = 0.02
    max_step_percent: StepRange = 0.98
    weighting: str = "sds"
    include_alpha: bool = True
    proposal: Any = "uniform"
    delta: float = 0.1
    adaptive_bins: int = 20
    adaptive_decay: float = 0.9
    sampler: Any = "stratified"
    antithetic: bool = False
    K: Union[int, str] = 4
    k_min: int = 2
    k_max: int = 32
    k_init: int = 4
    decide_every: int = 1
    probe_every: int = 20
    warmup: int = 2
    fixed_costs: Union[tuple, None] = field(default=None)
    max_batch_size: int = 64
    guidance_scale: float = 1.0
    seed: int = 0
    distributed: str = "auto"
    strata_across_ranks: bool = True
    accumulation_steps: int = 1

    def __post_init__(self):
        # Every field is checked, and numpy scalars become Python numbers, when the config is
        # built: a bad value is an error here, naming the field, never at the first call.
        for name in ("min_step_percent", "max_step_percent"):
            setattr(self, name, _step_range(name, getattr(self, name)))
        _check_range_order(self.min_step_percent, self.max_step_percent)
        if isinstance(self.weighting, str):
            if self.weighting not in WEIGHTINGS:
                raise ValueError(f"weighting must be one of {WEIGHTINGS} or a (T,) tensor of w(t), "
                                 f"got {self.weighting!r}")
        elif not (isinstance(self.weighting, torch.Tensor) or callable(self.weighting)):
            raise TypeError(f"weighting must be one of {WEIGHTINGS}, a (T,) tensor of w(t) or a callable, "
                            f"got {type(self.weighting).__name__}")
        if self.distributed not in DISTRIBUTED:
            raise ValueError(f"distributed must be one of {DISTRIBUTED}, got {self.distributed!r}")
        for name in ("include_alpha", "antithetic", "strata_across_ranks"):
            setattr(self, name, _flag(name, getattr(self, name)))
        if not isinstance(self.proposal, Proposal) and self.proposal not in PROPOSALS:
            raise ValueError(f"proposal must be a carv_torch.Proposal or one of {PROPOSALS}, "
                             f"got {self.proposal!r}")
        if is_sampler(self.sampler):
            if self.proposal != "uniform":
                raise ValueError("a full sampler carries its own q: leave proposal='uniform' "
                                 f"(got proposal={self.proposal!r})")
        else:
            as_design(self.sampler, "sampler")
        self.delta = _real("delta", self.delta, 0.0, 1.0, "in (0, 1]", low_open=True)
        self.adaptive_decay = _real("adaptive_decay", self.adaptive_decay, 0.0, 1.0, "in [0, 1)",
                                    high_open=True)
        self.guidance_scale = _real("guidance_scale", self.guidance_scale, -math.inf, math.inf,
                                    "finite")
        for name, minimum in (("adaptive_bins", 1), ("k_min", 1), ("decide_every", 1),
                              ("probe_every", 1), ("warmup", 0), ("max_batch_size", 1), ("seed", 0),
                              ("accumulation_steps", 1)):
            setattr(self, name, _integer(name, getattr(self, name), minimum))
        self.k_max = _integer("k_max", self.k_max, self.k_min, "k_min")
        self.k_init = _integer("k_init", self.k_init, 1)
        if isinstance(self.K, str):
            if self.K != "auto":
                raise TypeError(f"K must be an integer >= 1 or 'auto', got {self.K!r}")
            if not self.k_min <= self.k_init <= self.k_max:
                raise ValueError(f"k_init must lie in [k_min, k_max] = [{self.k_min}, {self.k_max}], "
                                 f"got {self.k_init}")
        else:
            self.K = _integer("K", self.K, 1, kind="an integer >= 1 or 'auto'")
            if self.antithetic and self.K % 2:
                raise ValueError(f"antithetic=True needs an even K, got K = {self.K}")
        if self.fixed_costs is not None:
            self.fixed_costs = _costs(self.fixed_costs)


def _flag(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r} ({type(value).__name__})")
    return bool(value)


def _integer(name: str, value, minimum: int, bound: str | None = None, kind: str = "an integer") -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {kind}, got {value!r} ({type(value).__name__})")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {bound or minimum}, got {value}"
                         + (f" < {bound} = {minimum}" if bound else ""))
    return value


def _real(name: str, value, low: float, high: float, expected: str, *, low_open: bool = False,
          high_open: bool = False) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number ({expected}), got {value!r} "
                        f"({type(value).__name__})")
    v = float(value)
    if not (math.isfinite(v) and (low < v if low_open else low <= v) and (v < high if high_open else v <= high)):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return v


def _step_range(name: str, value):
    r"""A t-range field as a float in $[0, 1]$ or a schedule list ``[s_0, v_0, v_1, s_1]`` of floats."""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        return _real(name, value, 0.0, 1.0, "in [0, 1]")
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) and not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a float in [0, 1] or a schedule [start_step, start, end, "
                        f"end_step], got {value!r}")
    v = list(value)
    if len(v) not in (3, 4):
        raise ValueError(f"{name} must be a float or a schedule [start_step, start, end, end_step] "
                         f"(or [start, end, end_step]), got {value!r}")
    v = [0.0, *v] if len(v) == 3 else v
    s0 = _real(f"{name}[start_step]", v[0], 0.0, math.inf, "finite and >= 0")
    s1 = _real(f"{name}[end_step]", v[3], 0.0, math.inf, "finite and >= 0")
    v0 = _real(f"{name}[start]", v[1], 0.0, 1.0, "in [0, 1]")
    v1 = _real(f"{name}[end]", v[2], 0.0, 1.0, "in [0, 1]")
    return [s0, v0, v1, s1]


def _check_range_order(lo: StepRange, hi: StepRange) -> None:
    # Both schedules are piecewise linear in the step, so their difference is too: checking
    # a <= b at every breakpoint of either (and at step 0) checks it at every step.
    steps = {0.0} | {s for v in (lo, hi) if isinstance(v, list) for s in (v[0], v[3])}
    for step in sorted(steps):
        a, b = scheduled_value(lo, step), scheduled_value(hi, step)
        if a > b:
            raise ValueError(f"min_step_percent must not exceed max_step_percent: at global step "
                             f"{step:g} they are {a} > {b}")


def _costs(value) -> tuple[float, float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)) or len(value) != 2:
        raise TypeError(f"fixed_costs must be None or a pair (c_u, c_d) of seconds, got {value!r}")
    return tuple(_real(f"fixed_costs[{i}] ({n})", c, 0.0, math.inf, "finite and > 0",
                       low_open=True) for i, (n, c) in enumerate(zip(("c_u", "c_d"), value)))


def check_rgb(x, device) -> None:
    """``rgb`` is a finite (when validating) floating ``(B, C, H, W)`` tensor on the teacher's ``device``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"rgb must be a tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"rgb must have shape (B, C, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"rgb must be a floating tensor, got dtype {x.dtype}")
    if x.device != device:
        raise ValueError(f"rgb is on {x.device} but the teacher is on {device}; "
                         f"move it with rgb.to({str(device)!r})")
    if is_validating() and not bool(torch.isfinite(x).all()):
        raise ValueError("rgb must be finite, got NaN or inf in the rendered images")
