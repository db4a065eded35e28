r"""The DMD2-style loop: the generator's distribution-matching gradient through the hierarchical estimator.

Generator step (``R`` samples $x_r = G_\theta(z_r)$, ``K`` re-noisings each, one backward):
$g_r = \frac1K\sum_k \tilde w_{rk}\,(\hat\epsilon_{\rm real} - \hat\epsilon_{\rm fake})(\alpha_{t_{rk}} x_r + \sigma_{t_{rk}}\epsilon_{rk}, t_{rk})$
(:func:`carv_torch.dmd`, ``weighting="uniform"``), applied through the surrogate
$L = \frac{1}{2R}\lVert x - \mathrm{sg}(x - g)\rVert^2$, so $\nabla_\theta L = \frac1R\sum_r J_r^\top g_r$.
$\hat\epsilon_{\rm real}$ is the exact $p^\star$ teacher; $\hat\epsilon_{\rm fake}$ the online
fake score, updated ``fake_ratio`` times per generator step on detached generator
samples (DMD2's two time-scale rule) with the denoising loss over the full $t$ range.

Conventions against DMD2: DMD2 normalises the score difference per sample by
$\operatorname{mean}\lvert x - \hat x_{0,\rm real}\rvert$ and takes an MSE surrogate with
``reduction="mean"``; in $\epsilon$ units that normaliser is about constant in $t$, which is
what ``weighting="uniform"`` keeps, and the surrogate here sums over coordinates and
averages over the $R$ samples (a constant factor, absorbed by Adam).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from carv_torch import InverseCDFSampler, dmd, uniform_timesteps

from .networks import fake_update

__all__ = ["Arm", "sampler_for", "generator_gradient", "DistillSettings", "distill"]


@dataclass(frozen=True)
class Arm:
    """One estimator: ``R`` generator samples, ``K`` re-noisings, a proposal ``q`` (``None``: $q = p$) and a design."""

    name: str
    R: int
    K: int
    design: str = "iid"
    proposal: str = "uniform"      # "uniform" or "oracle" (q ∝ p √m(t) from a pilot)


def sampler_for(arm: Arm, T: int, q_oracle: torch.Tensor | None = None) -> InverseCDFSampler:
    p = uniform_timesteps(T)
    q = p if arm.proposal == "uniform" else q_oracle
    if q is None:
        raise ValueError(f"arm {arm.name!r} needs q_oracle (a pilot's q ∝ p √m(t))")
    return InverseCDFSampler(p, q, design=arm.design)


def generator_gradient(gen_model, real, fake, arm: Arm, sampler, *, generator: torch.Generator):
    """One estimate: draws $z$, runs the estimator, backpropagates; returns the :class:`~carv_torch.GradientEstimate`."""
    z = torch.randn(arm.R, 1, 8, 8, generator=generator)
    x = gen_model(z)
    est = dmd(real, fake, x, K=arm.K, sampler=sampler, generator=generator)
    est.loss.backward()
    return est


@dataclass
class DistillSettings:
    """Generator and fake-score optimisation (Adam), the two time-scale ratio and the fake batch."""

    gen_lr: float = 2e-4
    fake_lr: float = 5e-4
    fake_ratio: int = 5
    fake_batch: int = 64
    betas: tuple = (0.0, 0.99)
    checkpoints: tuple = field(default_factory=tuple)


def distill(gen_model, real, fake, arm: Arm, sampler, *, settings: DistillSettings, steps: int | None = None,
            seconds: float | None = None, seed: int = 0, on_checkpoint=None, eval_every_s: float | None = None,
            on_eval=None, progress=None) -> dict:
    """Generator steps until ``steps`` steps or ``seconds`` of training time (evaluation excluded).

    Calls ``on_checkpoint(step)`` at ``settings.checkpoints`` and ``on_eval(step, clock)`` at the
    start, every ``eval_every_s`` seconds of training time and at the end (both before the step).
    """
    if steps is None and seconds is None:
        raise ValueError("give steps or seconds (the training budget), got neither")
    gen = torch.Generator().manual_seed(seed)
    g_fake = torch.Generator().manual_seed(seed + 1)
    opt_g = torch.optim.Adam(gen_model.parameters(), lr=settings.gen_lr, betas=settings.betas)
    opt_f = torch.optim.Adam(fake.unet.parameters(), lr=settings.fake_lr, betas=settings.betas)
    times, fake_losses = [], []
    step, clock, next_eval = 0, 0.0, 0.0
    while True:
        done = (steps is not None and step >= steps) or (seconds is not None and clock >= seconds)
        if step in settings.checkpoints and on_checkpoint is not None:
            on_checkpoint(step)
        if on_eval is not None and (done or clock >= next_eval):
            on_eval(step, clock)
            next_eval = clock + eval_every_s if eval_every_s else float("inf")
        if done:
            break
        t0 = time.perf_counter()
        fake.unet.requires_grad_(False)
        opt_g.zero_grad(set_to_none=True)
        generator_gradient(gen_model, real, fake, arm, sampler, generator=gen)
        opt_g.step()
        fake.unet.requires_grad_(True)
        for _ in range(settings.fake_ratio):
            with torch.no_grad():
                x0 = gen_model(torch.randn(settings.fake_batch, 1, 8, 8, generator=g_fake))
            fake_losses.append(fake_update(fake, opt_f, x0, g_fake))
        dt = time.perf_counter() - t0
        times.append(dt)
        clock += dt
        step += 1
        if progress is not None:
            progress(step if steps is not None else clock, fake_losses[-1])
    fake.unet.requires_grad_(False)
    return {"steps": step, "train_seconds": clock,
            "step_seconds": sorted(times)[len(times) // 2] if times else float("nan"), "fake_loss": fake_losses}
