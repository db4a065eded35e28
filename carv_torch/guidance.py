r"""A guidance module for training loops: any objective, any sampler, online $K$.

:class:`CARVGuidance` wraps an :class:`~carv_torch.integrands.Objective` (a teacher
alone means :class:`~carv_torch.integrands.SDS`; DMD with a real and a fake teacher,
or a user's integrand, run the same way). Called on upstream outputs $x$
``(B, *S)`` (images in $[0, 1]$ for a latent teacher, which encodes them), it
returns a flat dict of **scalars** that a training loop can log as it is:
``loss_<name>`` (``loss.backward()`` gives the hierarchical estimate
$\hat G = \frac1B\sum_r J_r^\top \frac1K\sum_k \tilde w_{rk} f(x_r, t_{rk}, \epsilon_{rk})$),
``grad_norm``, ``variance`` ($\widehat{\operatorname{Var}}\hat G$ from the $B$ row means, ``nan``
when $B = 1$), ``min_step``, ``max_step`` and ``K``. The full diagnostics of the step
(timesteps, weights, $g_r$, ANOVA components, probe, $K$ decision) are on
:attr:`CARVGuidance.last`, a :class:`GuidanceStep`.

Per call:

1. $p$ = uniform on $[\lfloor aT\rfloor, \lfloor bT\rfloor]$ with $a, b$ from the (scheduled) t range
   (cached on the *integer* range, so an annealed schedule rebuilds only when a step bound moves);
2. $q$ from the :class:`~carv_torch.proposals.Proposal` (``"uniform"``, ``"weight"`` $\propto p\,w$,
   ``"adaptive"``, an oracle or fixed table, or a user's rule), fixed before the draw and
   updated after it (every step stays unbiased);
3. $t = F_q^{-1}(u)$ with $u$ from the config's **design** (:mod:`carv_core.designs`; a name or an
   object), or a full user **sampler** (a design and a transform, run as certified);
4. $K$ fixed, or (``K="auto"``) the :class:`~carv_torch.accounting.Accountant`'s choice.

**Host reads.** With value validation off (:func:`carv_torch.set_validate_args`), a
call with a fixed $K$ and a static proposal reads nothing back from the device; the
``adaptive`` proposal makes one read (its update copies $t$ and $\lVert f\rVert^2$ in one
transfer); with ``K="auto"``, a probe call (one in ``probe_every``) makes one more
(the two variance components) and resolves the pending timing events. With
validation on, add: the finiteness of ``rgb``, the teacher's t range and its output
finiteness (each one read).

**Variance probes** (``K="auto"``). $K^\star$ depends on the variance of the *parameter*
gradient, not of $\bar Y_r$: every ``probe_every``-th call draws its inner draws i.i.d. (the
step stays unbiased) and, with ``params``, $R + 1$ vector-Jacobian products give the
parameter-space components of :func:`~carv_torch.estimator.split_half_components`; without
``params`` the input-space ANOVA is used (warns once). $K$ is re-chosen after every
``decide_every``-th probe. $c_u$ is timed from the end of one call to the end of the
next call's encode (render, backward, optimiser step and the teacher's encoder), per
upstream sample; $c_d$ inside the call, per draw.

Checkpoints: ``state_dict()`` holds the proposal's state, the accountant, the
counters and the generator; ``load_state_dict`` resumes bit-identically on CPU (with a
fixed $K$ or injected costs). A call that raises leaves the generator as it was.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple, Sequence, Union

import carv_core
import torch
from carv_core.designs import IID, Design, as_design
from torch import nn

from ._validation import is_validating
from .accounting import Accountant
from .breakpoints import as_sampler
from .integrands import SDS, Objective
from .objectives import GradientEstimate, draw_inner, estimate_from_draws
from .probes import parameter_space_components
from .proposals import PROPOSALS, Proposal, as_proposal

__all__ = ["PROPOSALS", "SAMPLERS", "GuidanceConfig", "GuidanceStep", "CARVGuidance",
           "scheduled_value"]

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


def _is_sampler(obj) -> bool:
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
        if _is_sampler(self.sampler):
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


class GuidanceStep(NamedTuple):
    r"""Everything one call computed (:attr:`CARVGuidance.last`); tensors stay on the device.

    Attributes:
        estimate: the :class:`~carv_torch.objectives.GradientEstimate` (``t``, ``w``, ``grad``, ``components``, ...).
        K, min_step, max_step: this call's $K$ and integer step range.
        probe: the :class:`~carv_torch.estimator.VarianceComponents` a probe fed the accountant, or ``None``.
        decision: the :class:`~carv_torch.accounting.KDecision` made after this call, or ``None``.
    """

    estimate: GradientEstimate
    K: int
    min_step: int
    max_step: int
    probe: Any
    decision: Any


class CARVGuidance(nn.Module):
    r"""Hierarchical reuse, importance sampling and online $K$ for any objective.

    Args:
        objective: an :class:`~carv_torch.integrands.Objective` (e.g. ``DMD(real, fake)``), or a
            :class:`~carv_torch.teachers.Teacher`, which means ``SDS(teacher, ...)`` with the
            config's ``weighting``, ``include_alpha`` and ``guidance_scale``. Teachers are held,
            not registered: their weights are not in this module's ``state_dict``.
        config: a :class:`GuidanceConfig`.

    Call with ``x`` ``(B, *S)``, the objective's conditions as keywords (``condition``,
    ``uncond``; DMD also ``fake_condition``; leading dim 1 or ``B``; the first two may also
    be passed positionally), ``rgb_as_latents`` (skip the encoder), and, with
    ``K="auto"``, ``params``: the parameters the loss is differentiated for (e.g.
    ``nerf.parameters()``), for the variance probes. Returns the scalar dict of the module
    docstring.
    """

    def __init__(self, objective, config: GuidanceConfig | None = None):
        super().__init__()
        self.config = config = config or GuidanceConfig()
        if not isinstance(objective, Objective):
            objective = SDS(objective, weighting=config.weighting, include_alpha=config.include_alpha,
                            guidance_scale=config.guidance_scale)
        self.__dict__["objective"] = objective  # not a registered submodule
        abar = objective.alphas_cumprod
        self.device = abar.device
        self.T = int(abar.shape[0])
        self._weights_host = objective.weights.detach().cpu().numpy()
        self.generator = torch.Generator(device=self.device).manual_seed(int(config.seed))
        auto = config.K == "auto"
        self.accountant = Accountant(K=config.k_init if auto else config.K,
                                     k_min=config.k_min if auto else config.K,
                                     k_max=config.k_max if auto else config.K,
                                     warmup=config.warmup, device=self.device,
                                     fixed_costs=config.fixed_costs)
        self._user_sampler = as_sampler(config.sampler, self.T, device=self.device) \
            if _is_sampler(config.sampler) else None
        self.design = None if self._user_sampler is not None else as_design(config.sampler)
        self.proposal = copy.deepcopy(as_proposal(config.proposal, delta=config.delta,
                                                  n_bins=config.adaptive_bins,
                                                  decay=config.adaptive_decay))
        self.global_step = 0
        self.calls = 0
        self.probes = 0
        self.last: GuidanceStep | None = None
        self._tables = None  # (key, sampler) for the current integer step range
        self._last_stop = None
        self._warned = set()

    @property
    def teacher(self):
        """The SDS objective's teacher (``None`` for other objectives)."""
        return getattr(self.objective, "teacher", None)

    # ------------------------------------------------------------------ schedule

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        """threestudio's hook: the global step drives the t-range schedule."""
        self.global_step = int(global_step)

    def step_range(self) -> tuple[int, int]:
        r"""$(\lfloor aT\rfloor, \min(\lfloor bT\rfloor, T - 1))$ at the current global step."""
        if self._user_sampler is not None:
            has = torch.nonzero(torch.as_tensor(self._sampler_support())).flatten()
            return int(has[0]), int(has[-1])
        a = scheduled_value(self.config.min_step_percent, self.global_step)
        b = scheduled_value(self.config.max_step_percent, self.global_step)
        return int(a * self.T), min(int(b * self.T), self.T - 1)

    def _sampler_support(self):
        s = self._user_sampler
        return (s.p > 0).cpu().numpy() if hasattr(s, "p") else (s.core.cuts[1:] > s.core.cuts[:-1])

    def pmfs(self) -> tuple[torch.Tensor, torch.Tensor]:
        r"""The current target $p$ and proposal $q$, shape ``(T,)`` each (float64, on the device)."""
        s = self.sampler()
        if hasattr(s, "p"):
            return s.p, s.q
        raise ValueError("this guidance runs a breakpoint sampler: it has weights, not a p and q")

    def sampler(self):
        """The sampler the next call draws from (rebuilt only when $p$ or $q$ changed)."""
        if self._user_sampler is not None:
            return self._user_sampler
        key = self.step_range()
        if self._tables is None or self._tables[0] != key:
            a = scheduled_value(self.config.min_step_percent, self.global_step)
            b = scheduled_value(self.config.max_step_percent, self.global_step)
            p = carv_core.uniform_timesteps(self.T, a, b)
            core = carv_core.InverseCDFSampler(p, self.proposal.pmf(p, self._weights_host), self.design)
            self._tables = (key, as_sampler(core, device=self.device), p)
        return self._tables[1]

    # ------------------------------------------------------------------ call

    def _check_input(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"rgb must be a tensor of shape (B, C, H, W), got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(f"rgb must have shape (B, C, H, W), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"rgb must be a floating tensor, got dtype {x.dtype}")
        if x.device != self.device:
            raise ValueError(f"rgb is on {x.device} but the teacher is on {self.device}; "
                             f"move it with rgb.to({str(self.device)!r})")
        if is_validating() and not bool(torch.isfinite(x).all()):
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

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            warnings.warn(message, UserWarning, stacklevel=3)
            self._warned.add(key)

    def _teachers(self):
        objs = [getattr(self.objective, n, None) for n in ("teacher", "real", "fake")]
        return [o for o in objs if o is not None and hasattr(o, "max_batch_size")]

    def forward(self, rgb: torch.Tensor, condition=None, uncond=None, *,
                rgb_as_latents: bool = False, generator: torch.Generator | None = None,
                params=None, **conditions) -> dict:
        """One guidance step; see the module docstring for the returned keys."""
        self._check_input(rgb)
        params = self._check_params(params)
        acc, cfg = self.accountant, self.config
        gen = self.generator if generator is None else generator
        if not isinstance(gen, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(gen).__name__}")
        gen_state = gen.get_state()
        R, auto = rgb.shape[0], cfg.K == "auto"
        K = acc.K
        if cfg.antithetic and K % 2:
            K += 1 if K < acc.k_max else -1
        probe = auto and R >= 2 and K >= 2 and self.calls % cfg.probe_every == 0
        if auto and R < 2:
            self._warn_once("single", f"K='auto' needs >= 2 upstream samples per call to estimate "
                                      f"sigma_B^2; got {R}, so K stays at {K}")
        encode = getattr(self.objective, "encode", None)
        if probe and params is not None and not rgb.requires_grad:
            raise ValueError("params were given but rgb does not require grad: render with "
                             "autograd on, or drop params")
        saved_batch = [(t, t.max_batch_size) for t in self._teachers()]
        try:
            for t, _ in saved_batch:
                t.max_batch_size = cfg.max_batch_size
            x = encode(rgb) if (encode is not None and not rgb_as_latents) else rgb
            encoded = acc.marker()
            sampler = self.sampler()
            if probe:
                sampler = sampler.with_design(IID())
            draws = draw_inner(R, K, x.shape[1:], sampler=sampler,
                               antithetic=cfg.antithetic and not probe, generator=gen,
                               device=x.device, dtype=x.dtype)
            given = dict(condition=condition, uncond=uncond, **conditions)
            est = estimate_from_draws(self.objective, x, draws,
                                      **{k: v for k, v in given.items() if v is not None})
            inner_done = acc.marker()  # the probe's VJPs are not teacher cost
            probed = None
            if probe:
                if params is not None:
                    probed = parameter_space_components(x, est.values, params)
                else:
                    self._warn_once("input", "K='auto' without params: choosing K from variance "
                                             "components in the teacher's input space, which can "
                                             "differ greatly from the parameter gradient's; pass "
                                             "params=... (module docstring)")
                    probed = est.components
        except BaseException:
            gen.set_state(gen_state)  # a failed call consumes no random numbers
            raise
        finally:
            for t, size in saved_batch:
                t.max_batch_size = size
        # State changes only after the step succeeded.
        if self._last_stop is not None:
            acc.interval("upstream", self._last_stop, encoded, n=R)
        acc.interval("inner", encoded, inner_done, n=R * K)
        if self.proposal.adaptive:
            self.proposal.update(est.t, est.sq_norm)  # the next q is fixed before its draw
            self._tables = None
        decision = None
        if probed is not None:
            sb, sw = torch.stack([probed.sigma_b2, probed.sigma_w2]).tolist()  # one read
            acc.observe(sb, sw)
            self.probes += 1
            if self.probes % cfg.decide_every == 0:
                decision = acc.decide(self.calls)
        self.calls += 1
        lo, hi = self.step_range()
        self.last = GuidanceStep(est, K, lo, hi, probed, decision)
        self._last_stop = acc.marker()
        return {f"loss_{self.objective.name}": est.loss, "grad_norm": est.grad_norm,
                "variance": est.variance, "min_step": lo, "max_step": hi, "K": K}

    # ------------------------------------------------------------------ checkpoints

    def get_extra_state(self) -> dict:
        """Proposal state, accountant, counters and generator state (in ``state_dict()``)."""
        return {
            "config": asdict(self.config),
            "calls": self.calls,
            "probes": self.probes,
            "global_step": self.global_step,
            "proposal": self.proposal.state_dict(),
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
        self.probes = int(state.get("probes", 0))
        self.proposal.load_state_dict(state["proposal"])
        self.accountant.load_state_dict(state["accountant"])
        self.generator.set_state(state["generator"])
        self._tables = None
        self._last_stop = None
