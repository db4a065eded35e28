r"""Settings of :class:`carv_torch.guidance.CARVGuidance`, and threestudio's step schedules.

:class:`GuidanceConfig` is validated when it is built (a bad field is an error at
construction, naming it, not at the first call); :func:`scheduled_value` is the
schedule of the t range.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import carv_core
from carv_core.designs import Design, as_design

from .proposals import PROPOSALS, Proposal

__all__ = ["SAMPLERS", "StepRange", "GuidanceConfig", "scheduled_value", "is_sampler"]

#: Shorthand design names the config accepts (any :class:`carv_core.Design` works too).
SAMPLERS = carv_core.DESIGNS

StepRange = Union[float, Sequence[float]]


def scheduled_value(value: StepRange, global_step: int) -> float:
    r"""threestudio's schedule: a float, or $[s_0, v_0, v_1, s_1]$ ($[v_0, v_1, s_1]$ means $s_0 = 0$).

    $v = v_0 + (v_1 - v_0)\,\operatorname{clip}\big(\tfrac{\text{step} - s_0}{s_1 - s_0}, 0, 1\big)$.

    Example:
        >>> scheduled_value([0, 0.98, 0.5, 100], 50)
        0.74
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
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
        proposal: a :class:`~carv_torch.proposals.Proposal` or ``"uniform"``, ``"weight"``, ``"adaptive"``.
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
        seed: seeds the module's generator.
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

    def __post_init__(self):
        if not isinstance(self.proposal, Proposal) and self.proposal not in PROPOSALS:
            raise ValueError(f"proposal must be a carv_torch.proposals.Proposal or one of {PROPOSALS}, "
                             f"got {self.proposal!r}")
        if is_sampler(self.sampler):
            if self.proposal != "uniform":
                raise ValueError("a full sampler carries its own q: leave proposal='uniform' "
                                 f"(got proposal={self.proposal!r})")
        else:
            as_design(self.sampler, "sampler")
        if self.K != "auto":
            if isinstance(self.K, bool) or not isinstance(self.K, int):
                raise TypeError(f"K must be an integer >= 1 or 'auto', got {self.K!r}")
            if self.K < 1:
                raise ValueError(f"K must be >= 1 or 'auto', got {self.K}")
            if self.antithetic and self.K % 2:
                raise ValueError(f"antithetic=True needs an even K, got K = {self.K}")
        for name in ("max_batch_size", "decide_every", "probe_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not 0.0 < float(self.delta) <= 1.0:
            raise ValueError(f"delta must lie in (0, 1], got {self.delta!r}")
        if float(self.guidance_scale) != float(self.guidance_scale):
            raise ValueError(f"guidance_scale must be a number, got {self.guidance_scale!r}")
