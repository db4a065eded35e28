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
2. $q$ from the :class:`~carv_torch.proposal_rules.Proposal` (``"uniform"``, ``"weight"`` $\propto p\,w$,
   ``"adaptive"``, an oracle or fixed table, or a user's rule), fixed before the draw and
   updated after it (every step stays unbiased);
3. $t = F_q^{-1}(u)$, $u$ from the config's **design** (:mod:`carv_core.designs`) or a certified user **sampler**;
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
``params`` the input-space ANOVA is used (warns once). With one upstream sample per call
(threestudio's ``batch_size: 1``) the probe is a burst of three consecutive calls, each
with two VJPs, and $\sigma_B^2$ comes from the second differences of their single-render
means (:class:`~carv_torch.probes.SingleRenderProbe`, unbiased under a linear drift of the
mean gradient; the optimiser stepping on the probe's own gradient inside the burst leaves a
small bias, about 7 % of $\operatorname{tr}(A\Sigma)$ under Adam: see the maths page
*Single-render probes*); this needs ``params``. $K$ is re-chosen after every
``decide_every``-th probe. $c_u$ is timed from the end of one call to the end of the
next call's encode (render, backward, optimiser step and the teacher's encoder), per
upstream sample; $c_d$ inside the call, per draw.

**Upstream designs** (:mod:`carv_torch.control_variates`). ``replicates=M``: the $B$ rows are $M$
independent replicates of a camera design (rows not i.i.d.); probes take $\sigma_B^2$ from the
replicate means, ``variance`` is ``nan``. ``control_variate=table, cells=c``: the loss gets
:func:`~carv_torch.control_variates.correction_term` (backward gives $\hat G_{\rm cv}$), probes
measure $J^\top g - \phi_c$, and the table is refreshed with the step's per-view gradients
(at $B = 1$ from its backward; at $B \ge 2$ by $B$ extra VJPs, reused on probe calls). So
``K="auto"`` is chosen for the estimator actually run. The table is the caller's to checkpoint.
Checkpoints: ``state_dict()`` holds a versioned checkpoint (:mod:`carv_torch.checkpoints`:
format, $T$, config, counters, the proposal's state, the probe window, the accountant, the
generator); ``load_state_dict`` validates all of it before changing anything and resumes
bit-identically on CPU (with a fixed $K$ or injected costs).

**Failure-atomic.** A call that raises (a teacher error or NaN, an out-of-memory error in a
chunk, ``KeyboardInterrupt``) leaves the generator, the proposal, the accountant, the probe
window and the counters as they were, so a retry reproduces the run that never failed bit
for bit. (The measured upstream interval that would span the failed attempt is dropped.)
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, NamedTuple

import carv_core
import torch
from carv_core.designs import IID, GlobalStrata, as_design
from torch import nn

from .distributed import Cycle, World, current_world, rank_seed, reduce_probe, row_weight
from .checkpoints import accountant_for, checkpoint, validated_state
from .breakpoints import as_sampler
from .integrands import SDS, Objective
from .objectives import GradientEstimate, draw_inner, estimate_from_draws
from .control_variates import checked_upstream, correction_term, per_view_gradients, refresh_after_backward
from .probes import SingleRenderProbe, checked_params, components_from_rows, row_vjps, sq_norm_of_mean
from .estimator import variance_components
from .guidance_config import SAMPLERS, GuidanceConfig, check_rgb, is_sampler, scheduled_value
from .proposal_rules import PROPOSALS, as_proposal

__all__ = ["PROPOSALS", "SAMPLERS", "GuidanceConfig", "GuidanceStep", "CARVGuidance",
           "scheduled_value"]

class GuidanceStep(NamedTuple):
    r"""Everything one call computed (:attr:`CARVGuidance.last`); tensors stay on the device.

    Attributes:
        estimate: the :class:`~carv_torch.objectives.GradientEstimate` (``t``, ``w``, ``grad``, ``components``, ...).
        K, min_step, max_step: this call's $K$ and integer step range.
        probe: the :class:`~carv_torch.estimator.VarianceComponents` a probe fed the accountant, or ``None``.
        decision: the :class:`~carv_torch.accounting.KDecision` made after this call, or ``None``.
        grad_sq_norm: a parameter-space probe's unbiased $\lVert G\rVert^2$ from its i.i.d. rows (device tensor).
    """

    estimate: GradientEstimate
    K: int
    min_step: int
    max_step: int
    probe: Any
    decision: Any
    grad_sq_norm: Any = None

    def components(self):
        r"""This step's input-space ANOVA $\hat\sigma_B^2$, $\hat\sigma_W^2$ of $Y_{rk}$ (on demand; ``None`` unless
        $B, K \ge 2$): a proxy for the parameter-space components at best (module docstring)."""
        R, K = self.estimate.values.shape[:2]
        return variance_components(self.estimate.values) if R >= 2 and K >= 2 else None


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
    ``nerf.parameters()``), for the variance probes; under ``torch.distributed``,
    ``world_rows``: every rank's row count, when known (else gathered, one small collective).
    Returns the scalar dict of the module docstring. Data-parallel runs:
    :mod:`carv_torch.distributed` (streams, strata across ranks, one $q$, one $K$).
    """

    def __init__(self, objective, config: GuidanceConfig | None = None):
        super().__init__()
        if config is not None and not isinstance(config, GuidanceConfig):
            raise TypeError(f"config must be a carv_torch.GuidanceConfig (e.g. GuidanceConfig(**settings)), "
                            f"got {type(config).__name__}")
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
        self.accountant = accountant_for(config, self.device)
        self._user_sampler = as_sampler(config.sampler, self.T, device=self.device) \
            if is_sampler(config.sampler) else None
        self.design = None if self._user_sampler is not None else as_design(config.sampler)
        self.proposal = copy.deepcopy(as_proposal(config.proposal, delta=config.delta,
                                                  n_bins=config.adaptive_bins,
                                                  decay=config.adaptive_decay))
        self.global_step = 0
        self.calls = 0
        self.probes = 0
        self.last: GuidanceStep | None = None
        self._tables = None  # (integer step range, sampler or None when q is stale, p)
        self._last_stop = None
        self._support = None if self._user_sampler is None else self._sampler_range()
        objs = [getattr(objective, n, None) for n in ("teacher", "real", "fake")]
        self._teachers = [o for o in objs if o is not None and hasattr(o, "max_batch_size")]
        self._warned = set()
        self._single = SingleRenderProbe(order=2)
        self._cv_hook = None  # the pending R = 1 control-variate refresh (a grad hook)
        self.world = current_world() if config.distributed == "auto" else World()
        self._cycle = Cycle(config.accumulation_steps)

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
        if self._support is not None:
            return self._support
        a = scheduled_value(self.config.min_step_percent, self.global_step)
        b = scheduled_value(self.config.max_step_percent, self.global_step)
        return int(a * self.T), min(int(b * self.T), self.T - 1)

    def _sampler_range(self) -> tuple[int, int]:
        # A full sampler's support, read once (its first and last t with mass).
        s = self._user_sampler
        has = (s.p > 0).cpu().numpy() if hasattr(s, "p") else (s.core.cuts[1:] > s.core.cuts[:-1])
        idx = has.nonzero()[0]
        return int(idx[0]), int(idx[-1])

    def pmfs(self) -> tuple[torch.Tensor, torch.Tensor]:
        r"""The current target $p$ and proposal $q$, shape ``(T,)`` each (float64, on the device)."""
        s = self.sampler()
        if hasattr(s, "p"):
            return s.p, s.q
        raise ValueError("this guidance runs a breakpoint sampler: it has weights, not a p and q")

    def sampler(self, key: tuple[int, int] | None = None):
        """The sampler the next call draws from (rebuilt only when $p$ or $q$ changed)."""
        if self._user_sampler is not None:
            return self._user_sampler
        key = self.step_range() if key is None else key
        tables = self._tables
        if tables is not None and tables[0] == key and tables[1] is not None:
            return tables[1]
        if tables is not None and tables[0] == key:
            p = tables[2]  # only q changed (an adaptive update): p is kept
        else:
            a = scheduled_value(self.config.min_step_percent, self.global_step)
            b = scheduled_value(self.config.max_step_percent, self.global_step)
            p = carv_core.uniform_timesteps(self.T, a, b)
        core = carv_core.InverseCDFSampler(p, self.proposal.pmf(p, self._weights_host), self.design)
        self.__dict__["_tables"] = (key, as_sampler(core, device=self.device), p)
        return self._tables[1]

    # ------------------------------------------------------------------ call

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            warnings.warn(message, UserWarning, stacklevel=3)
            self._warned.add(key)

    def _probe(self, x, est, params, R: int, replicates: int, control):
        # This probe call's variance components (parameter space when params are given) and,
        # with params and R >= 2, the per-row VJPs u (the control variate's refresh reuses them).
        if R == 1:
            return self._single.observe(x, est.values, params, step=self.calls,
                                        control=None if control is None else control[0]), None
        if params is not None:
            v_a, v_b, u, h = row_vjps(x, est.values, params)
            return components_from_rows(v_a, v_b, u, h, replicates=replicates, control=control), u
        self._warn_once("input", "K='auto' without params: choosing K from variance components "
                                 "in the teacher's input space, which can differ greatly from the "
                                 "parameter gradient's; pass params=... (module docstring)")
        return variance_components(est.values), None

    def forward(self, rgb: torch.Tensor, condition=None, uncond=None, *,
                rgb_as_latents: bool = False, generator: torch.Generator | None = None,
                params=None, world_rows=None, replicates: int = 1, control_variate=None, cells=None,
                **conditions) -> dict:
        """One guidance step; see the module docstring for the returned keys (and *Upstream designs*)."""
        check_rgb(rgb, self.device)
        params = checked_params(params)
        replicates, table, cells = checked_upstream(rgb.shape[0], params, replicates, control_variate, cells)
        if self._cv_hook is not None:  # a refresh whose backward never ran: dropped
            self.__dict__["_cv_hook"] = self._cv_hook.remove()
        acc, cfg = self.accountant, self.config
        gen = self.generator if generator is None else generator
        if not isinstance(gen, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(gen).__name__}")
        gen_state = gen.get_state()
        R, auto, world = rgb.shape[0], cfg.K == "auto", self.world
        if world.size == 1 and cfg.distributed == "auto" and current_world().size > 1:
            self._warn_once("late-group", "torch.distributed was initialised after this CARVGuidance "
                                          "was built: it runs as a single process (every rank draws "
                                          "the same stream); build it after init_process_group")
        cycle = self._cycle  # the accumulation cycle (one micro-step per call)
        rows = cycle.rows_for(world, R, world_rows, rgb.device, self.calls)
        last = cycle.micro(self.calls) == cycle.steps - 1
        K = acc.K
        if cfg.antithetic and K % 2:
            K += 1 if K < acc.k_max else -1
        # R >= 2: one probe call in probe_every; R = 1: a burst of order + 1 calls (carv_torch.probes).
        # All ranks probe together (a mix of single-row and multi-row ranks does not probe).
        phase = (self.calls // cycle.steps) % cfg.probe_every  # whole cycles probe
        lo_rows, hi_rows = min(rows), max(rows)
        probe = auto and K >= 2 and (phase == 0 if lo_rows >= 2 else
                                     hi_rows == 1 and phase <= self._single.order)
        if auto and replicates > 1 and params is None:
            raise ValueError("K='auto' with replicates > 1 needs params=... (the replicates' spread is "
                             "measured in parameter space)")
        if auto and R < 2 and params is None:
            probe = False
            self._warn_once("single", f"K='auto' with {R} upstream sample per call estimates "
                                      "sigma_B^2 across steps, from parameter-space probes: pass "
                                      f"params=...; without them K stays at {K}")
        encode = getattr(self.objective, "encode", None)
        if probe and params is not None and not rgb.requires_grad:
            raise ValueError("params were given but rgb does not require grad: render with "
                             "autograd on, or drop params")
        # Failure-atomic: what a call changes (generator, probe window, accountant, proposal) is
        # snapshotted and restored if anything below raises (a Proposal changes only its state_dict).
        saved_single, saved_acc = self._single.state, acc.snapshot()
        saved_proposal = self.proposal.state_dict()  # O(T) host copy (the adaptive bins)
        saved_tables = self._tables  # the (p, q) cache goes with the proposal
        saved_batch = [(t, t.max_batch_size) for t in self._teachers
                       if t.max_batch_size != cfg.max_batch_size]
        key = self.step_range()
        try:
            for t, _ in saved_batch:
                t.max_batch_size = cfg.max_batch_size
            x = encode(rgb) if (encode is not None and not rgb_as_latents) else rgb
            encoded = acc.marker()
            sampler = self.sampler(key)
            if world.size > 1 and generator is None:  # rank s, call n: its own stream
                gen.manual_seed(rank_seed(cfg.seed, world.rank, self.calls))
            comb = not probe and (world.size > 1 or cycle.steps > 1) and cfg.strata_across_ranks \
                and isinstance(sampler.design, GlobalStrata)
            if probe:
                sampler = sampler.with_design(IID())
            elif comb:  # this call's share of one stratified draw over the world and the cycle
                sampler = sampler.with_design(cycle.design(world, rows, self.calls))
            draws = draw_inner(R, K, x.shape[1:], sampler=sampler,
                               antithetic=cfg.antithetic and not probe, generator=gen,
                               device=x.device, dtype=x.dtype)
            given = dict(condition=condition, uncond=uncond, **conditions)
            est = estimate_from_draws(self.objective, x, draws, diagnostics=self.proposal.adaptive,
                                      **{k: v for k, v in given.items() if v is not None})
            inner_done = acc.marker()  # the probe's VJPs are not teacher cost
            control = table.table[cells].to(x.dtype) if probe and table is not None else None  # phi_{c_r}
            probed, u = self._probe(x, est, params, R, replicates, control) if probe else (None, None)
            g2 = sq_norm_of_mean(u) if probed is not None and u is not None and replicates == 1 else None
            if table is not None:  # its correction, and (R >= 2) the per-view refresh values
                cv_term, delta = correction_term(table, cells, params)
                if R >= 2 and u is None:
                    u = per_view_gradients(x, est.grad.to(x.dtype), params)
            if self._last_stop is not None:
                acc.interval("upstream", self._last_stop, encoded, n=R)
            acc.interval("inner", encoded, inner_done, n=R * K)
            decision = None
            if probed is not None and world.size > 1:
                sb, sw, costs = reduce_probe(probed.sigma_b2, probed.sigma_w2, R, (acc.c_u, acc.c_d), world)
            elif probed is not None:
                sb, sw = torch.stack([probed.sigma_b2, probed.sigma_w2]).tolist()  # one read
                costs = None
            if probed is not None:
                acc.observe(sb, sw)
                if last and (self.probes + 1) % (cfg.decide_every * cycle.steps) == 0:
                    decision = acc.decide(self.calls, costs=costs)
            if self.proposal.adaptive and last:  # the next cycle's q is fixed before its draws
                t_all = torch.cat([*cycle.t, est.t.reshape(-1)])
                sq_all = torch.cat([*cycle.sq_norm, est.sq_norm.reshape(-1)])
                self.proposal.update(t_all, sq_all, **({"world": world} if world.size > 1 else {}))
            if table is not None and R >= 2:  # last: all-or-nothing, after everything that can fail
                table.refresh(u, cells, self.calls)
        except BaseException:
            gen.set_state(gen_state)  # a failed call consumes no random numbers
            self._single.state = saved_single
            acc.rollback(saved_acc)
            self.proposal.load_state_dict(saved_proposal)
            self.__dict__["_tables"] = saved_tables
            raise
        finally:
            for t, size in saved_batch:
                t.max_batch_size = size
        # Only plain assignments below: the call has succeeded.
        cycle.rows = rows
        held = self.proposal.adaptive and not last
        cycle.t = (*cycle.t, est.t.detach().reshape(-1)) if held else ()
        cycle.sq_norm = (*cycle.sq_norm, est.sq_norm.detach().reshape(-1)) if held else ()
        if self.proposal.adaptive and last:
            key_, _, p_ = self._tables  # q is stale; the integer range and p are not
            self.__dict__["_tables"] = (key_, None, p_)
        # Per-call state is plain data: written to __dict__ (no nn.Module.__setattr__ work).
        lo, hi = key
        self.__dict__.update(calls=self.calls + 1, probes=self.probes + (probed is not None),
                             last=GuidanceStep(est, K, lo, hi, probed, decision, g2),
                             _last_stop=acc.marker())
        loss = est.loss if table is None else est.loss + cv_term
        loss = loss if world.size == 1 else loss * row_weight(world, rows)
        if table is not None and R == 1:  # the refresh reads the gradient this step's backward makes
            self.__dict__["_cv_hook"] = refresh_after_backward(table, cells, params, delta, self.calls - 1)
        # A share of strata (a comb) or a designed batch has rows that are not i.i.d.: no variance estimate.
        variance = torch.full_like(est.variance, float("nan")) if comb or replicates > 1 else est.variance
        return {f"loss_{self.objective.name}": loss, "grad_norm": est.grad_norm,
                "variance": variance, "min_step": lo, "max_step": hi, "K": K}

    # ------------------------------------------------------------------ checkpoints

    def get_extra_state(self) -> dict:
        """The checkpoint (format, T, config, counters, proposal, probe window, accountant,
        generator: :mod:`carv_torch.checkpoints`), in ``state_dict()``."""
        return checkpoint(self)

    def set_extra_state(self, state: dict) -> None:
        """Restore :meth:`get_extra_state` output (via ``load_state_dict``): all or nothing.

        Every field is validated first (:func:`carv_torch.checkpoints.validated_state`); a bad
        checkpoint raises naming the field and leaves this module exactly as it was.
        """
        new = validated_state(self, state)
        # Each part loaded into a twin above: these loads cannot fail.
        self.proposal.load_state_dict(new.proposal)
        if new.single_render is not None:
            self._single.load_state_dict(new.single_render)
        if new.cycle is not None:
            self._cycle.load_state_dict(new.cycle)
        self.accountant.load_state_dict(new.accountant)
        self.generator.set_state(new.generator)
        self.__dict__.update(calls=new.calls, probes=new.probes, global_step=new.global_step,
                             _tables=None, _last_stop=None)
