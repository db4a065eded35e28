"""Fault injection for CARVGuidance: a real diffusers UNet teacher that fails on cue, a short
training run, and an exact comparison of module states.

A *fault* is ``(site, occurrence, error)``: the ``occurrence``-th time (0-based, counted over
the whole run) that ``site`` is reached, ``error`` is raised there, once. Sites:

- ``"chunk"``: a UNet forward, i.e. one chunk of a chunked teacher batch;
- ``"nan"``: a UNet forward returns NaN for its first input (the teacher's check raises);
- ``"update"``: the proposal's update, after the draw and the teacher (an interrupt between
  the draw and the update);
- ``"observe"``: the accountant folding in a probe's variance components;
- ``"vjp"``: the probe's vector-Jacobian products (``K="auto"`` with ``params``);
- ``"interval"``: the accountant recording a timing.

The ``cv`` configurations also pass a per-view control variate, whose table must be unchanged
by a failed call (at $R = 3$ it is refreshed last in the call, after the proposal's update).

:func:`run` trains a tiny parameter ``theta`` (the "renders" are ``theta * images``) for a few
steps and retries a step that raised; it returns every step's outputs and the final state, which
must equal the fault-free run's bit for bit.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import carv_torch.guidance as guidance_module
import torch
from carv_torch.control_variates import CellTable
from carv_torch.guidance import CARVGuidance, GuidanceConfig
from carv_torch.teachers import DiffusersTeacher
from diffusers import DDPMScheduler, UNet2DModel

DT = torch.float64
T = 50
SITES = ("chunk", "nan", "update", "observe", "vjp", "interval")
ERRORS = {"runtime": RuntimeError, "oom": torch.OutOfMemoryError, "interrupt": KeyboardInterrupt}


class Faults:
    """Counts visits to each site and raises at the armed ones (each fires once)."""

    def __init__(self, faults=()):
        self.armed = {(site, n): err for site, n, err in faults}
        self.seen = dict.fromkeys(SITES, 0)
        self.fired = []

    def visit(self, site: str) -> None:
        n = self.seen[site]
        self.seen[site] = n + 1
        if (site, n) in self.armed:
            err = self.armed.pop((site, n))
            self.fired.append((site, n))
            if site == "nan":
                raise _NaN()
            raise ERRORS[err](f"injected {err} at {site} #{n}")


class _NaN(Exception):
    pass


class FaultyUNet(torch.nn.Module):
    """A real tiny UNet2DModel whose forward passes are fault sites."""

    def __init__(self, faults: Faults):
        super().__init__()
        torch.manual_seed(0)
        self.unet = UNet2DModel(sample_size=4, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                down_block_types=("DownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1,
                                norm_num_groups=4).to(DT).eval().requires_grad_(False)
        self.faults = faults

    def forward(self, x, t, class_labels=None):
        out = self.unet(x, t, class_labels=class_labels)
        try:
            self.faults.visit("nan")
        except _NaN:
            sample = out.sample.clone()
            sample[0] = math.nan
            out = type(out)(sample=sample)
        self.faults.visit("chunk")
        return out


def teacher(faults: Faults, max_batch_size: int = 4) -> DiffusersTeacher:
    """A pixel-space diffusers teacher (T = 50) over the faulty UNet, chunked in fours."""
    return DiffusersTeacher(FaultyUNet(faults), DDPMScheduler(num_train_timesteps=T),
                            max_batch_size=max_batch_size)


CONFIGS = {
    "fixed": dict(K=4, proposal="uniform", sampler="stratified"),
    "adaptive": dict(K=4, proposal="adaptive", adaptive_bins=5, sampler="stratified"),
    "weight-antithetic": dict(K=4, proposal="weight", sampler="global", antithetic=True),
    "auto": dict(K="auto", k_init=2, k_min=2, k_max=8, probe_every=2, fixed_costs=(4.0, 1.0),
                 proposal="adaptive", adaptive_bins=5),
    "auto-single": dict(K="auto", k_init=2, k_min=2, k_max=8, probe_every=4, fixed_costs=(4.0, 1.0)),
    # a per-view control variate (carv_torch.CellTable) over 3 camera cells: refreshed at the
    # end of a call (R = 3) or by the step's backward (R = 1); its table is part of the state.
    "cv": dict(K=4, proposal="adaptive", adaptive_bins=5, sampler="stratified"),
    "cv-single": dict(K=4, proposal="adaptive", adaptive_bins=5),
}
ROWS = {"auto-single": 1, "cv-single": 1}
CONTROL_VARIATE = ("cv", "cv-single")


def build(config: str, faults: Faults) -> tuple[CARVGuidance, torch.Tensor]:
    """The guidance under test and its trained parameter."""
    g = CARVGuidance(teacher(faults), GuidanceConfig(seed=7, max_batch_size=4, **CONFIGS[config]))
    _wrap(g, faults)
    if config in CONTROL_VARIATE:
        g.cv_table = CellTable(3, 3, dtype=DT)
    return g, torch.ones(3, 1, 1, dtype=DT, requires_grad=True)


def _wrap(g: CARVGuidance, faults: Faults) -> None:
    prop, acc = g.proposal, g.accountant
    if prop.adaptive:
        update = prop.update
        prop.update = lambda *a, **k: (faults.visit("update"), update(*a, **k))[1]
    observe, interval = acc.observe, acc.interval
    acc.observe = lambda *a, **k: (faults.visit("observe"), observe(*a, **k))[1]
    acc.interval = lambda *a, **k: (faults.visit("interval"), interval(*a, **k))[1]


@contextmanager
def faulty_vjps(faults: Faults):
    """Make the probes' VJPs (both the R >= 2 and the R = 1 path) a fault site."""
    psc, single = guidance_module.row_vjps, guidance_module.SingleRenderProbe.observe
    guidance_module.row_vjps = lambda *a, **k: (faults.visit("vjp"), psc(*a, **k))[1]
    guidance_module.SingleRenderProbe.observe = lambda self, *a, **k: (faults.visit("vjp"),
                                                                       single(self, *a, **k))[1]
    try:
        yield
    finally:
        guidance_module.row_vjps = psc
        guidance_module.SingleRenderProbe.observe = single


def images(step: int, R: int) -> torch.Tensor:
    return torch.rand(R, 3, 4, 4, generator=torch.Generator().manual_seed(1000 + step), dtype=DT)


def run(config: str, steps: int, faults=(), *, check_unchanged: bool = True):
    """Train ``steps`` steps, retrying any step that raised. Returns (outputs, final state, faults).

    With ``check_unchanged``, the module's state after every failed call is compared with its
    state before the call (they must be equal).
    """
    f = Faults(faults)
    g, theta = build(config, f)
    opt = torch.optim.SGD([theta], lr=0.1)
    R, outs, failures = ROWS.get(config, 3), [], []
    with faulty_vjps(f):
        for step in range(steps):
            g.update_step(0, step)
            while True:
                before = state(g) if check_unchanged else None
                x = theta * images(step, R)
                try:
                    cv = {} if config not in CONTROL_VARIATE else dict(
                        control_variate=g.cv_table, cells=(torch.arange(R) + step) % 3)
                    out = g(x, params=[theta], **cv)
                except (RuntimeError, KeyboardInterrupt, FloatingPointError, ValueError) as err:
                    if len(failures) >= len(faults):
                        raise  # not an injected fault: a real failure
                    failures.append((step, type(err).__name__, unchanged(before, state(g))
                                     if check_unchanged else None))
                    continue
                break
            opt.zero_grad()
            out[f"loss_{g.objective.name}"].backward()
            opt.step()
            est = g.last.estimate
            outs.append((est.t.clone(), est.w.clone(), theta.detach().clone(), out["K"]))
    return outs, state(g, timings=False), f, failures


def state(g: CARVGuidance, *, timings: bool = True):
    """Everything a call may change, as plain data (the checkpoint: counters, proposal, probe
    window, accountant, generator). ``timings=False`` drops the measured wall-clock samples
    (they differ between any two runs; with ``fixed_costs`` they are unused)."""
    out = g.state_dict()["_extra_state"]
    if hasattr(g, "cv_table"):
        out["cv_table"] = g.cv_table.state_dict()
    if not timings:
        out["accountant"]["samples"] = None
    return out


def unchanged(a, b) -> bool:
    """Exact equality of nested checkpoint data (tensors bit for bit, nan equal to nan)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape \
            and a.dtype == b.dtype and torch.equal(torch.nan_to_num(a, 7.25), torch.nan_to_num(b, 7.25)) \
            and torch.equal(a.isnan(), b.isnan())
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(unchanged(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(unchanged(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return type(a) is type(b) and a == b


def same_outputs(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(t1, t2) and torch.equal(w1, w2) and torch.equal(p1, p2) and k1 == k2
        for (t1, w1, p1, k1), (t2, w2, p2, k2) in zip(a, b))
