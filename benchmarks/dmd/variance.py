r"""The generator gradient's variance per arm, $\operatorname{tr}\operatorname{Cov}(\nabla_\theta)$, at fixed parameters.

At a checkpoint ($\theta$ of the generator, $\phi$ of the fake score, both frozen) each arm
draws ``reps`` independent estimates $\hat G_i = \nabla_\theta L$ (fresh $z$, $t$, $\epsilon$);
a Welford accumulator gives $\operatorname{tr}\widehat{\operatorname{Cov}}$ (unbiased, $n - 1$) and its
standard error from the squared deviations. Also the variance of the score difference
itself (the $x$-space $g_r$), and the median seconds per estimate. Arms run interleaved
(each sweep visits every arm once, in a random order) so that machine noise hits all alike.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from carv_core import Welford

from .distill import Arm, generator_gradient

__all__ = ["measure_arms", "pilot_second_moment"]


def _flat_grad(model) -> np.ndarray:
    return torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1)
                      for p in model.parameters()]).double().numpy()


def pilot_second_moment(gen_model, real, fake, sampler, *, n: int, generator: torch.Generator):
    r"""Draws of $(t, \lVert f\rVert^2)$ under uniform i.i.d. $t$, for $q^\star \propto p\sqrt{m(t)}$."""
    arm = Arm("pilot", R=8, K=16)
    ts, sq = [], []
    for _ in range(n):
        gen_model.zero_grad(set_to_none=True)
        est = generator_gradient(gen_model, real, fake, arm, sampler, generator=generator)
        ts.append(est.t.reshape(-1))
        sq.append(est.sq_norm.reshape(-1))
    gen_model.zero_grad(set_to_none=True)
    return torch.cat(ts), torch.cat(sq)


def measure_arms(gen_model, real, fake, arms, samplers, *, reps: int, warmup: int = 1,
                 generator: torch.Generator, progress=None) -> list[dict]:
    """Per arm: ``trace_cov`` (± ``trace_cov_se``) of $\\nabla_\\theta$, ``x_trace_cov`` of $\\bar g$, ``seconds``."""
    fake.unet.requires_grad_(False)
    acc = {a.name: Welford() for a in arms}
    acc_x = {a.name: Welford() for a in arms}
    dev = {a.name: [] for a in arms}
    secs = {a.name: [] for a in arms}
    order_gen = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    sweeps = reps + warmup
    for s in range(sweeps):
        for i in order_gen.permutation(len(arms)):
            arm = arms[i]
            gen_model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            est = generator_gradient(gen_model, real, fake, arm, samplers[arm.name], generator=generator)
            g = _flat_grad(gen_model)
            dt = time.perf_counter() - t0
            if s >= warmup:
                acc[arm.name].update(g[None])
                acc_x[arm.name].update(est.grad.mean(0).reshape(1, -1).double().numpy())
                dev[arm.name].append(g)
                secs[arm.name].append(dt)
        if progress is not None:
            progress(s + 1)
    gen_model.zero_grad(set_to_none=True)
    rows = []
    for arm in arms:
        a = acc[arm.name]
        G = np.stack(dev[arm.name])
        sq = ((G - a.mean) ** 2).sum(1) * reps / (reps - 1)      # E sq = tr Cov
        rows.append({"name": arm.name, "R": arm.R, "K": arm.K, "design": arm.design, "proposal": arm.proposal,
                     "reps": reps, "trace_cov": a.trace_cov, "trace_cov_se": float(sq.std(ddof=1) / math.sqrt(reps)),
                     "grad_sq_norm_of_mean": float(a.mean @ a.mean), "x_trace_cov": acc_x[arm.name].trace_cov,
                     "seconds": float(np.median(secs[arm.name]))})
    return rows
