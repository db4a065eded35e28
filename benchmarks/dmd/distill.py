r"""The DMD2-style loop: the generator's distribution-matching gradient through the hierarchical estimator.

Generator step (``R`` samples $x_r = G_\theta(z_r)$, ``K`` re-noisings each, one backward):
$g_r = \frac1K\sum_k \tilde w_{rk}\,(\hat\epsilon_{\rm real} - \hat\epsilon_{\rm fake})(\alpha_{t_{rk}} x_r + \sigma_{t_{rk}}\epsilon_{rk}, t_{rk})$
(:func:`carv_torch.dmd`, ``weighting="uniform"``), applied through the surrogate
$L = \frac{1}{2R}\lVert x - \mathrm{sg}(x - g)\rVert^2$, so $\nabla_\theta L = \frac1R\sum_r J_r^\top g_r$.
$\hat\epsilon_{\rm real}$ is the exact $p^\star$ teacher or the frozen trained denoiser;
$\hat\epsilon_{\rm fake}$ the online fake score, updated ``fake_ratio`` times per generator
step on detached generator samples (DMD2's two time-scale rule) with the denoising loss
over the full $t$ range. An arm with ``K="auto"`` runs the same estimator through
:class:`carv_torch.CARVGuidance` (stratified, $q = p$), whose accountant chooses $K$ online
from its parameter-space probes and the costs it times (the fake updates count as
upstream work: they happen between two guidance calls).

Conventions against DMD2: DMD2 normalises the score difference per sample by
$\operatorname{mean}\lvert x - \hat x_{0,\rm real}\rvert$ and takes an MSE surrogate with
``reduction="mean"``; in $\epsilon$ units that normaliser is about constant in $t$, which is
what ``weighting="uniform"`` keeps, and the surrogate here sums over coordinates and
averages over the $R$ samples (a constant factor, absorbed by Adam).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from carv_torch import DMD, CARVGuidance, GuidanceConfig, InverseCDFSampler, dmd, uniform_timesteps
from carv_torch.diagnostics import GradientMonitor, ProbeNormMonitor, diagnose, predicted_speedup

from .networks import fake_update

__all__ = ["Arm", "sampler_for", "generator_gradient", "AutoK", "DistillSettings", "distill"]


@dataclass(frozen=True)
class Arm:
    """One estimator: ``R`` generator samples, ``K`` re-noisings (or ``"auto"``), a proposal and a design."""

    name: str
    R: int
    K: int | str
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


class AutoK:
    r"""The ``K="auto"`` arm: one :class:`~carv_torch.CARVGuidance` for the whole run.

    Per step: $R$ samples $x = G_\theta(z)$, the guidance's DMD loss (stratified $t$, $q = p$ on
    the same $t$ range as :func:`~carv_torch.uniform_timesteps`), ``backward``; a probe call
    (one in ``probe_every``) gives the parameter-space $\sigma_B^2, \sigma_W^2$ from $R + 1$
    VJPs, and the accountant re-chooses $K \in [k_{\min}, k_{\max}]$ from them and the timed costs.

    Every ``diagnose_every`` steps (once the probes have components) it also records the
    library's own noise-scale diagnostic (:func:`carv_torch.diagnostics.diagnose`, $\lVert G\rVert^2$
    from the probes' rows, :class:`~carv_torch.diagnostics.ProbeNormMonitor`): the noise scale of
    $(R, 1)$, the predicted speed-up $S$ of the $K$ it runs over $K = 1$, and the best $(R', K')$;
    and, for comparison, the cross-step estimate of :class:`~carv_torch.diagnostics.GradientMonitor`
    (``lag1_grad_sq_norm``), which assumes $G$ barely moves between steps. The guidance's $c_u$
    spans a whole step outside its own draws, the fake-score updates included: their measured
    time $c_0$ per step is passed as the overhead and taken out of $c_u$ ($c_u - c_0/R$).
    """

    def __init__(self, real, fake, gen_model, arm: Arm, *, seed: int, k_max: int = 64, probe_every: int = 10,
                 diagnose_every: int = 25):
        cfg = GuidanceConfig(K="auto", sampler=arm.design, proposal="uniform", k_max=k_max, k_init=4,
                             probe_every=probe_every, max_batch_size=4096, seed=seed, distributed="off")
        self.guidance = CARVGuidance(DMD(real, fake), cfg)
        self.params = list(gen_model.parameters())
        self.monitor, self.lag1 = ProbeNormMonitor(window=4), GradientMonitor(self.params)
        self.R, self.every, self.steps, self.diagnoses, self.overheads = arm.R, int(diagnose_every), 0, [], []

    def __call__(self, gen_model, generator: torch.Generator) -> int:
        """One step's gradient into ``.grad``; returns the $K$ it used."""
        x = gen_model(torch.randn(self.R, 1, 8, 8, generator=generator))
        out = self.guidance(x, params=self.params)
        out["loss_dmd"].backward()
        self.monitor.update(self.guidance)
        self.lag1.update()
        self.steps += 1
        if self.steps % self.every == 0:
            self._record(int(out["K"]))
        return int(out["K"])

    def _record(self, K: int) -> None:
        acc = self.guidance.accountant
        g = self.monitor.grad_sq_norm
        if not all(map(math.isfinite, (acc.sigma_b2, acc.sigma_w2, acc.c_u, acc.c_d, g))) or not self.overheads:
            return          # before the first probe
        c0 = sorted(self.overheads)[len(self.overheads) // 2]
        d = diagnose(self.guidance, g, R=self.R, K=1, overhead=c0, c_u=max(acc.c_u - c0 / self.R, 1e-9))
        own = predicted_speedup(self.R, 1, self.R, K, sigma_b2=d.sigma_b2, sigma_w2=d.sigma_w2, grad_sq_norm=g,
                                c_u=d.c_u, c_d=d.c_d, overhead=c0)
        self.diagnoses.append({"step": self.steps, "K": K, "noise_scale": d.noise_scale, "grad_sq_norm": g,
                               "lag1_grad_sq_norm": self.lag1.grad_sq_norm,
                               "sigma_b2": d.sigma_b2, "sigma_w2": d.sigma_w2, "c_u": d.c_u, "c_d": d.c_d, "overhead": c0,
                               "speedup_own_K": own.speedup, "ecm_own_K": own.ecm, "best_R": d.best.R,
                               "best_K": d.best.K, "best_speedup": d.best.speedup})


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
    if arm.K == "auto":
        estimate = AutoK(real, fake, gen_model, arm, seed=seed)
    else:
        def estimate(model, generator):
            generator_gradient(model, real, fake, arm, sampler, generator=generator)
            return arm.K
    opt_g = torch.optim.Adam(gen_model.parameters(), lr=settings.gen_lr, betas=settings.betas)
    opt_f = torch.optim.Adam(fake.unet.parameters(), lr=settings.fake_lr, betas=settings.betas)
    times, fake_losses, ks = [], [], []
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
        ks.append(estimate(gen_model, gen))
        opt_g.step()
        fake.unet.requires_grad_(True)
        t1 = time.perf_counter()
        for _ in range(settings.fake_ratio):
            with torch.no_grad():
                x0 = gen_model(torch.randn(settings.fake_batch, 1, 8, 8, generator=g_fake))
            fake_losses.append(fake_update(fake, opt_f, x0, g_fake))
        t2 = time.perf_counter()
        if isinstance(estimate, AutoK):
            estimate.overheads.append(t2 - t1)
        dt = t2 - t0
        times.append(dt)
        clock += dt
        step += 1
        if progress is not None:
            progress(step if steps is not None else clock, fake_losses[-1])
    fake.unet.requires_grad_(False)
    extra = {"diagnoses": estimate.diagnoses} if isinstance(estimate, AutoK) else {}
    return {**extra, "steps": step, "train_seconds": clock,
            "step_seconds": sorted(times)[len(times) // 2] if times else float("nan"), "fake_loss": fake_losses,
            "K": ks}
