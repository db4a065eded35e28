r"""Is variance the bottleneck of *this* run? The noise scale $\mathcal B = V/\lVert G\rVert^2$ and the predicted speed-up.

The maths is :mod:`carv_core.diagnostics` (scalar host-side maths: the names
:func:`noise_scale`, :func:`speedup`, :func:`predicted_speedup`, :func:`best_speedup` *are* the core's).
What only tensors need:

- :func:`gradient_sq_norm` — the unbiased $\lVert G\rVert^2$ from $R \ge 2$ i.i.d. estimates on the device;
- :class:`ProbeNormMonitor` — $\lVert G\rVert^2$ from the guidance's own probes: a probe call's
  $R \ge 2$ i.i.d. rows $u_r = J_r^\top\bar Y_r$ at one $\theta$ give the unbiased
  :attr:`GuidanceStep.grad_sq_norm <carv_torch.guidance.GuidanceStep>`, averaged over the last
  probes (no extra compute; one host read per probe call);
- :class:`GradientMonitor` — $\lVert G\rVert^2$ across steps from the step's own parameter
  gradient: consecutive estimates are independent, so $\hat G_s\cdot\hat G_{s-1}$ is unbiased
  for $G_s\cdot G_{s-1} \approx \lVert G\rVert^2$ while $G$ moves slowly (memory: one float64
  copy of the gradient, $8P$ bytes). It fails where the objective itself moves between steps:
  in DMD the fake score is updated in between, and on the DMD benchmark the lag-1 product is
  negative; use :class:`ProbeNormMonitor` there;
- :func:`diagnose` — from a guidance (or its accountant): $\sigma_B^2$, $\sigma_W^2$ of the
  parameter gradient (its probes, ``K="auto"``), the measured $c_u$, $c_d$, the run's
  $(R, K)$ and $\lVert G\rVert^2$, the noise scale now and the $(R', K')$ of largest
  predicted speed-up.

Assumptions (docs: maths/not-the-bottleneck): plain SGD with a tuned step on a loss whose
gradient is $G$. Under Adam, for SDS (not a gradient) or DMD (a learned fake score), the
prediction is an upper estimate at best; the benchmarks measure how it fares.
"""

from __future__ import annotations

import math
from collections import deque
from typing import NamedTuple

import torch

from carv_core.diagnostics import SpeedupPrediction, best_speedup, noise_scale, predicted_speedup, speedup

from ._validation import as_int
from .allocation import predicted_variance
from .probes import sq_norm_of_mean

__all__ = ["SpeedupPrediction", "gradient_sq_norm", "noise_scale", "speedup", "predicted_speedup", "best_speedup",
           "GradientMonitor", "ProbeNormMonitor", "Diagnosis", "diagnose"]


def gradient_sq_norm(rows) -> float:
    r"""Unbiased $\lVert G\rVert^2 = \frac{\lVert\sum_r u_r\rVert^2 - \sum_r\lVert u_r\rVert^2}{R(R-1)}$ from ``rows`` ``(R, P)`` (float64 on their device; one host read)."""
    if not isinstance(rows, torch.Tensor):
        rows = torch.as_tensor(rows)
    if rows.ndim != 2 or rows.shape[0] < 2:
        raise ValueError(f"rows must have shape (R, P) with R >= 2, got shape {tuple(rows.shape)}")
    value = float(sq_norm_of_mean(rows))
    if not math.isfinite(value):
        raise ValueError("rows must be finite")
    return value


class GradientMonitor:
    r"""$\widehat{\lVert G\rVert^2}$ = the mean of $\hat G_s\cdot\hat G_{s-1}$ over the last ``window`` steps.

    Call :meth:`update` after each step's backward (before ``optimizer.zero_grad``): it reads
    ``p.grad`` of ``params``. Parameters without a gradient count as zero.

    Args:
        params: the parameters whose gradient $\hat G$ is (e.g. ``nerf.parameters()``).
        window: how many cross-step products to average.
    """

    def __init__(self, params, window: int = 16):
        if isinstance(params, torch.Tensor):
            params = [params]
        try:
            self.params = list(params)
        except TypeError:
            raise TypeError(f"params must be an iterable of tensors, got {type(params).__name__}") from None
        if not self.params or not all(isinstance(p, torch.Tensor) for p in self.params):
            raise ValueError("params must be a non-empty iterable of tensors (e.g. model.parameters())")
        self.window = as_int("window", window, minimum=1)
        self._previous: torch.Tensor | None = None
        self._products: deque = deque(maxlen=self.window)
        self._sq_norms: deque = deque(maxlen=self.window)

    def _flat(self) -> torch.Tensor:
        return torch.cat([(torch.zeros_like(p, dtype=torch.float64) if p.grad is None
                           else p.grad.detach().to(torch.float64)).reshape(-1) for p in self.params])

    def update(self) -> float:
        r"""Record this step's $\hat G$; returns $\hat G_s\cdot\hat G_{s-1}$ (``nan`` on the first call)."""
        g = self._flat()
        # One host sync: |g|^2 (finite iff every entry is, in float64) and g . g_prev together.
        terms = [g @ g] if self._previous is None else [g @ g, g @ self._previous]
        sq_norm, product = (torch.stack(terms).tolist() + [float("nan")])[:2]
        if not math.isfinite(sq_norm):
            raise ValueError("the parameters' gradients are not finite; GradientMonitor.update was not applied")
        self._sq_norms.append(sq_norm)
        if product == product:
            self._products.append(product)
        self._previous = g
        return product

    @property
    def grad_sq_norm(self) -> float:
        r"""The window's mean of $\hat G_s\cdot\hat G_{s-1}$ (unbiased for $\lVert G\rVert^2$ without drift; ``nan`` before two updates)."""
        return sum(self._products) / len(self._products) if self._products else float("nan")

    @property
    def estimate_sq_norm(self) -> float:
        r"""The window's mean of $\lVert\hat G_s\rVert^2$ ($= \lVert G\rVert^2 + V$ in expectation)."""
        return sum(self._sq_norms) / len(self._sq_norms) if self._sq_norms else float("nan")


class ProbeNormMonitor:
    r"""$\widehat{\lVert G\rVert^2}$ = the mean of the last ``window`` probes' unbiased values.

    Call :meth:`update` with the guidance after each call (it reads only probe calls'
    :attr:`~carv_torch.guidance.GuidanceStep.grad_sq_norm`, which needs ``K="auto"``,
    ``params=...`` and $B \ge 2$ i.i.d. rows). Each value is measured at that call's own
    parameters (and fake score), so no assumption on how they move between steps enters;
    the window trades noise against lag.
    """

    def __init__(self, window: int = 8):
        self.window = as_int("window", window, minimum=1)
        self._values: deque = deque(maxlen=self.window)

    def update(self, guidance) -> float:
        """Record the last call's value if it was a probe; returns it (``nan`` otherwise)."""
        last = getattr(guidance, "last", None)
        if last is None and not hasattr(guidance, "last"):
            raise TypeError(f"guidance must be a CARVGuidance, got {type(guidance).__name__}")
        if last is None or last.grad_sq_norm is None:
            return float("nan")
        value = float(last.grad_sq_norm)
        if not math.isfinite(value):
            raise ValueError("the probe's grad_sq_norm is not finite; ProbeNormMonitor.update was not applied")
        self._values.append(value)
        return value

    @property
    def grad_sq_norm(self) -> float:
        r"""The window's mean (unbiased for $\lVert G\rVert^2$ if $G$ is constant over it; ``nan`` before a probe)."""
        return sum(self._values) / len(self._values) if self._values else float("nan")

    @property
    def count(self) -> int:
        """How many probe values the window holds."""
        return len(self._values)


class Diagnosis(NamedTuple):
    r"""The noise scale of the run now and the predicted best configuration.

    Attributes:
        R, K: the run's configuration.
        grad_sq_norm: $\widehat{\lVert G\rVert^2}$ used. variance: $V = (\sigma_B^2 + \sigma_W^2/K)/R$.
        noise_scale: $\mathcal B = V/\lVert G\rVert^2$ (``inf`` if $\widehat{\lVert G\rVert^2} \le 0$).
        sigma_b2, sigma_w2, c_u, c_d, overhead: the inputs, from the accountant (a negative running
            $\hat\sigma_B^2$ or $\hat\sigma_W^2$, which an unbiased estimate can be, counted as 0).
        best: the :class:`SpeedupPrediction` of largest predicted speed-up $S$.
    """

    R: int
    K: int
    grad_sq_norm: float
    variance: float
    noise_scale: float
    sigma_b2: float
    sigma_w2: float
    c_u: float
    c_d: float
    overhead: float
    best: SpeedupPrediction

    def scalars(self) -> dict:
        """A flat dict of floats for a training loop's logger."""
        return {"noise_scale": self.noise_scale, "grad_sq_norm": self.grad_sq_norm, "variance": self.variance,
                "best_R": float(self.best.R), "best_K": float(self.best.K),
                "predicted_speedup": self.best.speedup, "predicted_ecm": self.best.ecm}


def _accountant_and_shape(source, R, K):
    accountant = getattr(source, "accountant", source)
    if not all(hasattr(accountant, a) for a in ("sigma_b2", "sigma_w2", "c_u", "c_d")):
        raise TypeError(f"source must be a CARVGuidance or an Accountant, got {type(source).__name__}")
    last = getattr(source, "last", None)
    if R is None or K is None:
        if last is None:
            raise ValueError("R and K: pass them, or a guidance that has run a step (source.last is None)")
        R = int(last.estimate.values.shape[0]) if R is None else R
        K = int(last.K) if K is None else K
    return accountant, as_int("R", R, minimum=1), as_int("K", K, minimum=1)


def diagnose(source, grad_sq_norm: float, *, R: int | None = None, K: int | None = None,
             overhead: float = 0.0, c_u: float | None = None, R_max: int = 64, K_max: int = 64) -> Diagnosis:
    r"""The run's noise scale and the $(R', K')$ of largest predicted speed-up $S$ (:func:`best_speedup`).

    Args:
        source: a :class:`~carv_torch.guidance.CARVGuidance` (its accountant; ``R``, ``K`` default
            to its last call's) or an :class:`~carv_torch.accounting.Accountant`.
        grad_sq_norm: $\widehat{\lVert G\rVert^2}$ in the same (parameter) space as the probes'
            components, e.g. :attr:`ProbeNormMonitor.grad_sq_norm` (or :attr:`GradientMonitor.grad_sq_norm`).
        overhead: a fixed per-step cost $c_0$ (seconds) outside $R(c_u + K c_d)$.
        c_u: the per-sample upstream cost to use instead of the accountant's. The guidance times
            $c_u$ between calls, so a fixed per-step cost there (DMD's fake-score updates) is in it
            as $c_0/R$: pass ``c_u=acc.c_u - overhead / R`` with ``overhead`` to split the two.
    """
    accountant, R, K = _accountant_and_shape(source, R, K)
    sb, sw = float(accountant.sigma_b2), float(accountant.sigma_w2)
    if not (math.isfinite(sb) and math.isfinite(sw)):
        raise ValueError("the accountant has no variance components yet: they come from the guidance's "
                         "probes (K='auto' with params=...), after its warm-up")
    sb, sw = max(sb, 0.0), max(sw, 0.0)  # unbiased running estimates can fall below 0: as the K choice, count 0
    c_u, c_d = float(accountant.c_u if c_u is None else c_u), float(accountant.c_d)
    if not (math.isfinite(c_u) and math.isfinite(c_d)):
        raise ValueError("the accountant has no measured costs yet (c_u, c_d are nan): run a few steps first")
    g = float(grad_sq_norm)
    if not math.isfinite(g):
        raise ValueError(f"grad_sq_norm must be finite, got {grad_sq_norm!r} (GradientMonitor needs two updates)")
    v = predicted_variance(R, K, sb, sw)
    best = best_speedup(R, K, sigma_b2=sb, sigma_w2=sw, grad_sq_norm=g, c_u=c_u, c_d=c_d, overhead=overhead,
                        R_max=R_max, K_max=K_max)
    return Diagnosis(R, K, g, v, noise_scale(v, g), sb, sw, c_u, c_d, float(overhead), best)
