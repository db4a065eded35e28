r"""A drop-in score-distillation guidance for training loops (threestudio style).

:class:`CARVGuidance` is called on rendered images $x$ ``(B, C, H, W)`` and returns
a dict whose ``loss_sds`` is the surrogate of :mod:`carv_torch.objectives`:
``loss_sds.backward()`` gives the hierarchical estimate
$\hat G = \frac1B\sum_r J_r^\top \frac1K\sum_k \tilde w_{rk}\,w(t_{rk})\,\alpha_{t_{rk}}(\hat\epsilon - \epsilon_{rk})$
(``include_alpha=False`` drops $\alpha_t$, threestudio's convention).

Per call:

1. $p$ = uniform on $[\lfloor aT\rfloor, \lfloor bT\rfloor]$ with $a, b$ from the (scheduled) t range;
2. $q$ = $p$ (``uniform``), $\propto p\,w_{\rm SDS}$ mixed with $p$ (``weight``), or the
   adaptive estimate of $q^\star \propto p\sqrt{\mathbb E[\lVert f\rVert^2\mid t]}$ (``adaptive``),
   fixed before the draw and updated after it (which keeps every step unbiased);
3. $K$ fixed, or (``K="auto"``) the :class:`~carv_torch.accounting.Accountant`'s choice
   from measured $c_u$, $c_d$ and running $\sigma_B^2$, $\sigma_W^2$.

**Variance probes** (``K="auto"``). $K^\star$ depends on the variance of the *parameter*
gradient $\frac1R\sum_r J_r^\top \bar Y_r$, not of $\bar Y_r$ itself: the Jacobian of the
render maps different cameras onto different parameters, so the between-render
variance in the teacher's input space can be ~0 while in parameter space it
dominates (measured on the text-to-3D benchmark). Every ``probe_every``-th call is a
probe: its inner draws are i.i.d. from $q$ (no stratification or antithetic pairs,
which bias the split-half and ANOVA estimates; the step stays unbiased), and, when
``params`` is passed, $R + 1$ vector-Jacobian products give the parameter-space
components of :func:`~carv_torch.estimator.split_half_components`, which feed the
accountant. Without ``params`` the probe falls back to the ANOVA of the teacher
input (right when the input *is* the parameter, e.g. image-space SDS) and warns once.
Probe work is excluded from the timed $c_u$ and $c_d$ but is part of a run's wall-clock.

The upstream cost $c_u$ is timed as the wall time from the end of one call to
the start of the next (render, backward, optimiser step), per image; the teacher
cost $c_d$ is timed inside the call, per draw. Checkpoints: ``state_dict()`` holds the adaptive
proposal, the accountant, the step counters and the generator state;
``load_state_dict`` restores them so that a resumed run continues bit-identically
on CPU (with a fixed $K$ or injected costs; see :mod:`carv_torch.accounting`).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import asdict, dataclass, field
from typing import Sequence, Union

import torch
from torch import nn

from . import objectives
from .accounting import Accountant
from .distributions import uniform_timesteps
from .estimator import split_half_components
from .proposals import AdaptiveProposal, weight_heuristic
from .schedules import DiscreteSchedule
from .weighting import sds_weight

__all__ = ["PROPOSALS", "SAMPLERS", "GuidanceConfig", "CARVGuidance", "scheduled_value"]

PROPOSALS = ("uniform", "weight", "adaptive")
SAMPLERS = ("iid", "stratified", "global", "systematic", "sobol")

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


@dataclass
class GuidanceConfig:
    r"""Settings of :class:`CARVGuidance`.

    Attributes:
        min_step_percent, max_step_percent: t range as fractions of $T$, each a float or a
            threestudio schedule ``[start_step, start, end, end_step]``.
        weighting: $w(t)$ preset (``sds``, ``uniform``, ``fantasia3d``).
        include_alpha: multiply the residual by $\alpha_t$ (paper) or not (threestudio).
        proposal: ``uniform``, ``weight`` or ``adaptive``.
        delta: defensive fraction for ``weight``/``adaptive`` (weights $\le 1/\delta$).
        adaptive_bins, adaptive_decay: bins and EMA factor of the adaptive proposal.
        sampler: uniform design: ``iid``, ``stratified``, ``global``, ``sobol`` (or ``systematic``).
        antithetic: $(\epsilon, -\epsilon)$ pairs along $K$ (needs even $K$).
        K: inner draws per render, or ``"auto"``.
        k_min: lower bound of ``K="auto"``.
        k_max: upper bound of ``K="auto"``.
        k_init: the first ``K`` of ``K="auto"``.
        decide_every: re-choose $K$ every this many calls.
        probe_every: with ``K="auto"``, every this many calls is a variance probe (module docstring).
        warmup: timings dropped before costs are used.
        fixed_costs: ``(c_u, c_d)`` injected instead of measured (reproducible ``K="auto"``).
        max_batch_size: largest teacher batch, applied during each call (the teacher's own
            setting is restored afterwards).
        guidance_scale: CFG scale.
        seed: seeds the module's generator.
    """

    min_step_percent: StepRange = 0.02
    max_step_percent: StepRange = 0.98
    weighting: str = "sds"
    include_alpha: bool = True
    proposal: str = "uniform"
    delta: float = 0.1
    adaptive_bins: int = 20
    adaptive_decay: float = 0.9
    sampler: str = "stratified"
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
        if self.proposal not in PROPOSALS:
            raise ValueError(f"proposal must be one of {PROPOSALS}, got {self.proposal!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.K != "auto":
            if isinstance(self.K, bool) or not isinstance(self.K, int):
                raise TypeError(f"K must be an integer >= 1 or 'auto', got {self.K!r}")
            if self.K < 1:
                raise ValueError(f"K must be >= 1 or 'auto', got {self.K}")
            if self.antithetic and self.K % 2:
                raise ValueError(f"antithetic=True needs an even K, got K = {self.K}")
        if isinstance(self.max_batch_size, bool) or not isinstance(self.max_batch_size, int) \
                or self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be an integer >= 1, got {self.max_batch_size!r}")
        for name in ("decide_every", "probe_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not 0.0 < float(self.delta) <= 1.0:
            raise ValueError(f"delta must lie in (0, 1], got {self.delta!r}")


class CARVGuidance(nn.Module):
    r"""Score distillation with hierarchical reuse, importance sampling and online $K$.

    Args:
        teacher: a :class:`~carv_torch.teachers.Teacher` (held, not registered: its
            weights are not part of this module's ``state_dict``).
        config: a :class:`GuidanceConfig`.

    Call with ``rgb`` ``(B, C, H, W)`` (images in $[0, 1]$ for a latent teacher, which
    encodes them; otherwise the teacher's input space), optional ``condition``/``uncond``
    (leading dim 1 or ``B``), and, with ``K="auto"``, ``params``: the parameters the loss is
    differentiated for (e.g. ``nerf.parameters()``), for the variance probes.
    Returns a dict: ``loss_sds``, ``grad_norm``, ``timesteps``
    ``(B, K)``, ``weights`` ``(B, K)``, ``K``, ``sigma_b2``, ``sigma_w2`` (this step's ANOVA in
    the teacher's input space, ``nan`` unless $B, K \ge 2$), ``probe`` (``None``, or the
    :class:`~carv_torch.estimator.VarianceComponents` a probe fed the accountant),
    ``variance``, ``min_step``, ``max_step``, ``c_u``, ``c_d``,
    ``k_decision`` (a :class:`~carv_torch.accounting.KDecision` or ``None``), and ``grad``
    ($g_r$, detached, shape of the teacher input).
    """

    def __init__(self, teacher, config: GuidanceConfig | None = None):
        super().__init__()
        self.config = config = config or GuidanceConfig()
        abar = getattr(teacher, "alphas_cumprod", None)
        if not isinstance(abar, torch.Tensor):
            raise TypeError(f"teacher must have an alphas_cumprod tensor, got {type(teacher).__name__}")
        self.__dict__["teacher"] = teacher  # not a registered submodule
        self.device = abar.device
        self.T = int(abar.shape[0])
        self.schedule = DiscreteSchedule(abar.to(torch.float64))
        self.w_sds = sds_weight(config.weighting, self.schedule, include_alpha=config.include_alpha)
        self.generator = torch.Generator(device=self.device).manual_seed(int(config.seed))
        auto = config.K == "auto"
        self.accountant = Accountant(K=config.k_init if auto else config.K,
                                     k_min=config.k_min if auto else config.K,
                                     k_max=config.k_max if auto else config.K,
                                     warmup=config.warmup, device=self.device,
                                     fixed_costs=config.fixed_costs)
        self.global_step = 0
        self.calls = 0
        self._p_range = None
        self._fixed_pmfs = None
        self._adaptive = None
        self._last_stop = None
        self._warned_input_space = False
        self._warned_single = False

    # ------------------------------------------------------------------ schedule

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        """threestudio's hook: the global step drives the t-range schedule."""
        self.global_step = int(global_step)

    def step_range(self) -> tuple[int, int]:
        r"""$(\lfloor aT\rfloor, \lfloor bT\rfloor)$ at the current global step."""
        a = scheduled_value(self.config.min_step_percent, self.global_step)
        b = scheduled_value(self.config.max_step_percent, self.global_step)
        return int(a * self.T), min(int(b * self.T), self.T - 1)

    def pmfs(self) -> tuple[torch.Tensor, torch.Tensor]:
        r"""The current target $p$ and proposal $q$, shape ``(T,)`` each."""
        cfg = self.config
        a = scheduled_value(cfg.min_step_percent, self.global_step)
        b = scheduled_value(cfg.max_step_percent, self.global_step)
        key = (a, b)
        # p, and the weight-heuristic q, change only with the t range: build them on the
        # host once per range, not once per call.
        if self._fixed_pmfs is None or self._fixed_pmfs[0] != key:
            p = uniform_timesteps(self.T, a, b).to(device=self.device, dtype=torch.float64)
            q = weight_heuristic(p, self.w_sds, cfg.delta).to(self.device) if cfg.proposal == "weight" else p
            self._fixed_pmfs = (key, p, q)
        _, p, q = self._fixed_pmfs
        if cfg.proposal != "adaptive":
            return p, q
        if self._adaptive is None:
            self._adaptive = AdaptiveProposal(p, n_bins=min(cfg.adaptive_bins, self.T),
                                              decay=cfg.adaptive_decay, delta=cfg.delta,
                                              device=self.device)
        elif key != self._p_range:
            # The t range moved: keep the learnt second moments (bins depend on T only).
            state = self._adaptive.state_dict()
            state["p"] = p.tolist()
            self._adaptive = AdaptiveProposal.from_state_dict(state, device=self.device)
        self._p_range = key
        return p, self._adaptive.proposal()

    # ------------------------------------------------------------------ call

    def _check_rgb(self, rgb):
        if not isinstance(rgb, torch.Tensor):
            raise TypeError(f"rgb must be a tensor of shape (B, C, H, W), got {type(rgb).__name__}")
        if rgb.ndim != 4:
            raise ValueError(f"rgb must have shape (B, C, H, W), got {tuple(rgb.shape)}")
        if not rgb.is_floating_point():
            raise TypeError(f"rgb must be a floating tensor, got dtype {rgb.dtype}")
        if rgb.device != self.device:
            raise ValueError(f"rgb is on {rgb.device} but the teacher is on {self.device}; "
                             f"move it with rgb.to({str(self.device)!r})")
        if not bool(torch.isfinite(rgb).all()):
            raise ValueError("rgb must be finite, got NaN or inf in the rendered images")

    @staticmethod
    def _check_params(params) -> list[torch.Tensor] | None:
        if params is None:
            return None
        if isinstance(params, torch.Tensor):
            params = [params]
        try:
            params = list(params)
        except TypeError:
            raise TypeError(f"params must be an iterable of tensors, got {type(params).__name__}") from None
        if not params or not all(isinstance(q, torch.Tensor) and q.requires_grad for q in params):
            raise ValueError("params must be a non-empty iterable of tensors that require grad "
                             "(e.g. nerf.parameters())")
        return params

    def _probe(self, x: torch.Tensor, est, params, R: int):
        # Parameter-space split-half components from R + 1 vector-Jacobian products of x.
        h = est.K // 2
        Y = est.values.to(x.dtype)
        half_a, half_b = Y[:, :h].mean(1), Y[:, h:2 * h].mean(1)
        rows = (half_a + half_b) / 2

        def vjp(grad_x):
            gs = torch.autograd.grad(x, params, grad_outputs=grad_x, retain_graph=True,
                                     allow_unused=True)
            return torch.cat([(torch.zeros_like(q) if g is None else g).reshape(-1)
                              for q, g in zip(params, gs)])

        v_a, v_b = vjp(half_a / R), vjp(half_b / R)
        u = []
        for r in range(R - 1):
            e = torch.zeros_like(rows)
            e[r] = rows[r]
            u.append(vjp(e))
        u.append(R * (v_a + v_b) / 2 - sum(u))  # the last row by linearity
        return split_half_components(v_a, v_b, torch.stack(u), h)

    def forward(self, rgb: torch.Tensor, condition=None, uncond=None, *,
                rgb_as_latents: bool = False, generator: torch.Generator | None = None,
                params=None) -> dict:
        """One guidance step; see the class docstring for the returned keys."""
        self._check_rgb(rgb)
        params = self._check_params(params)
        acc, cfg = self.accountant, self.config
        gen = self.generator if generator is None else generator
        start = acc.marker()
        R = rgb.shape[0]
        if self._last_stop is not None:
            acc.interval("upstream", self._last_stop, start, n=R)
        teacher = self.teacher
        latent = getattr(teacher, "is_latent", False) and not rgb_as_latents
        x = teacher.encode(rgb) if latent else rgb
        p, q = self.pmfs()
        K = acc.K
        if cfg.antithetic and K % 2:
            K += 1 if K < acc.k_max else -1
        probe = cfg.K == "auto" and R >= 2 and K >= 2 and self.calls % cfg.probe_every == 0
        if cfg.K == "auto" and R < 2 and not self._warned_single:
            warnings.warn(f"K='auto' needs >= 2 upstream samples per call to estimate sigma_B^2; "
                          f"got {R}, so K stays at {K}", UserWarning, stacklevel=2)
            self._warned_single = True
        if probe and params is not None and not x.requires_grad:
            raise ValueError("params were given but the teacher input does not require grad: "
                             "render with autograd on, or drop params")
        # The config's batch limit applies to this call only: the teacher may be shared.
        own_batch = getattr(teacher, "max_batch_size", None)
        if own_batch is not None:
            teacher.max_batch_size = cfg.max_batch_size
        try:
            with acc.measure("inner", n=R * K):
                est = objectives.sds(teacher, x, K=K, p=p, q=q,
                                     design="iid" if probe else cfg.sampler,
                                     weighting=cfg.weighting, include_alpha=cfg.include_alpha,
                                     condition=condition, uncond=uncond,
                                     guidance_scale=cfg.guidance_scale,
                                     antithetic=cfg.antithetic and not probe, generator=gen)
        finally:
            if own_batch is not None:
                teacher.max_batch_size = own_batch
        # Update only after the draw: the next step's q is fixed before its draw.
        if self._adaptive is not None:
            self._adaptive.update(est.t, est.sq_norm)
        sb = sw = float("nan")
        if est.components is not None:
            sb, sw = float(est.components.sigma_b2), float(est.components.sigma_w2)
        probed = None
        if probe:
            if params is not None:
                probed = self._probe(x, est, params, R)
            else:
                if not self._warned_input_space:
                    warnings.warn("K='auto' without params: choosing K from variance components in "
                                  "the teacher's input space, which can differ greatly from the "
                                  "parameter gradient's; pass params=... (module docstring)",
                                  UserWarning, stacklevel=2)
                    self._warned_input_space = True
                probed = est.components
            acc.observe(float(probed.sigma_b2), float(probed.sigma_w2))
        decision = None
        if cfg.K == "auto" and (self.calls + 1) % cfg.decide_every == 0:
            decision = acc.decide(self.calls)
        self.calls += 1
        lo, hi = self.step_range()
        out = {
            "loss_sds": est.loss, "grad_norm": est.grad_norm, "timesteps": est.t,
            "weights": est.w, "K": K, "sigma_b2": sb, "sigma_w2": sw, "probe": probed,
            "variance": float(est.variance), "min_step": lo, "max_step": hi,
            "c_u": acc.c_u, "c_d": acc.c_d, "k_decision": decision, "grad": est.grad,
        }
        self._last_stop = acc.marker()
        return out

    # ------------------------------------------------------------------ checkpoints

    def get_extra_state(self) -> dict:
        """Adaptive proposal, accountant, counters and generator state (in ``state_dict()``)."""
        return {
            "config": asdict(self.config),
            "calls": self.calls,
            "global_step": self.global_step,
            "p_range": self._p_range,
            "adaptive": None if self._adaptive is None else self._adaptive.state_dict(),
            "accountant": self.accountant.state_dict(),
            "generator": self.generator.get_state().clone(),
        }

    def set_extra_state(self, state: dict) -> None:
        """Restore :meth:`get_extra_state` output (via ``load_state_dict``)."""
        state = copy.deepcopy(state)
        # Chunking does not change results; every other setting must match the checkpoint's.
        saved, current = dict(state["config"]), asdict(self.config)
        differ = sorted(k for k in set(saved) | set(current)
                        if k != "max_batch_size" and saved.get(k) != current.get(k))
        if differ:
            raise ValueError(
                "the checkpoint was written with another GuidanceConfig; differing fields: "
                + ", ".join(f"{k} (checkpoint {saved.get(k)!r}, now {current.get(k)!r})" for k in differ)
            )
        self.calls, self.global_step = int(state["calls"]), int(state["global_step"])
        self._p_range = None if state["p_range"] is None else tuple(state["p_range"])
        self._adaptive = None if state["adaptive"] is None else \
            AdaptiveProposal.from_state_dict(state["adaptive"], device=self.device)
        self.accountant.load_state_dict(state["accountant"])
        self.generator.set_state(state["generator"])
        self._last_stop = None
