r"""Is variance the bottleneck? The gradient noise scale and the speed-up it predicts.

One SGD step $\theta' = \theta - \eta\hat G$ on an $L$-smooth loss with $\mathbb E\hat G = G = \nabla\mathcal L$
and $\operatorname{tr}\operatorname{Cov}\hat G = V$ decreases the loss in expectation by at least
$\eta\lVert G\rVert^2 - \tfrac{L\eta^2}{2}(\lVert G\rVert^2 + V)$ (docs: maths/not-the-bottleneck). The
best step $\eta^\star = \lVert G\rVert^2 / (L(\lVert G\rVert^2 + V))$ guarantees

$$\Delta = \frac{\lVert G\rVert^2}{2L}\,\frac{1}{1 + \mathcal B}, \qquad \mathcal B = \frac{V}{\lVert G\rVert^2},$$

the *noise scale* of the estimator. Per second of compute $C$ the guaranteed progress is
$\Delta/C$, so moving from $(R, K)$ to $(R', K')$ changes it by

$$S = \frac{(\lVert G\rVert^2 + V)\,C}{(\lVert G\rVert^2 + V')\,C'},$$

with $V = (\sigma_B^2 + \sigma_W^2/K)/R$ and $C = c_0 + R(c_u + K c_d)$ ($c_0$: a fixed
per-step overhead). When both noise scales are large, $S$ tends to the ECM
$V C/(V' C')$; when $\mathcal B \ll 1$ it tends to $C/C'$ and variance reduction buys
nothing. $S$ is a prediction of *this model*: it assumes plain SGD with a tuned step,
$G = \nabla\mathcal L$ for the tracked loss, and $\theta$ moving slowly against the
estimates. Adam, SDS (not a gradient) and DMD's learned fake score break one or more
of these; the benchmarks measure where it holds.

$\lVert G\rVert^2$ is estimated without bias from two independent estimates,
$\hat G_a\cdot\hat G_b$, or from $R \ge 2$ i.i.d. row means $u_r$ as
$\big(\lVert\sum_r u_r\rVert^2 - \sum_r\lVert u_r\rVert^2\big)/(R(R-1))$. Either can be
$\le 0$ when the signal is below the noise; :func:`noise_scale` then returns ``inf``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ._validation import as_int, as_real
from .allocation import cost, predicted_variance

__all__ = ["SpeedupPrediction", "gradient_sq_norm", "noise_scale", "speedup", "predicted_speedup", "best_speedup"]


class SpeedupPrediction(NamedTuple):
    r"""The predicted speed-up $S$ of ``(R, K)`` over the current configuration.

    Attributes:
        R, K: the configuration predicted.
        speedup: $S$, guaranteed progress per second relative to the current configuration.
        ecm: $VC/(V'C')$, the variance-only figure ($S$ when both noise scales are large).
        noise_scale: $\mathcal B' = V'/\lVert G\rVert^2$ at ``(R, K)``.
    """

    R: int
    K: int
    speedup: float
    ecm: float
    noise_scale: float


def gradient_sq_norm(rows) -> float:
    r"""Unbiased $\lVert G\rVert^2$ from $R \ge 2$ i.i.d. estimates ``rows`` ``(R, P)``: $\frac{\lVert\sum_r u_r\rVert^2 - \sum_r\lVert u_r\rVert^2}{R(R-1)}$.

    With two rows this is $u_1\cdot u_2$. Example:
        >>> gradient_sq_norm([[1.0, 2.0], [3.0, 0.0]])
        3.0
    """
    u = np.asarray(rows, dtype=np.float64)
    if u.ndim != 2 or u.shape[0] < 2:
        raise ValueError(f"rows must have shape (R, P) with R >= 2, got shape {u.shape}")
    if not np.isfinite(u).all():
        raise ValueError("rows must be finite")
    total = u.sum(0)
    return float((total @ total - np.einsum("rp,rp->", u, u)) / (u.shape[0] * (u.shape[0] - 1)))


def noise_scale(variance: float, grad_sq_norm: float) -> float:
    r"""$\mathcal B = V/\lVert G\rVert^2$; ``inf`` when the estimate of $\lVert G\rVert^2$ is $\le 0$.

    Example:
        >>> noise_scale(3.0, 1.5)
        2.0
    """
    v = as_real("variance", variance, nonnegative=True)
    g = as_real("grad_sq_norm", grad_sq_norm)
    return math.inf if g <= 0 else v / g


def speedup(variance: float, cost: float, variance_new: float, cost_new: float, grad_sq_norm: float) -> float:
    r"""$S = (\lVert G\rVert^2 + V)\,C / \big((\lVert G\rVert^2 + V')\,C'\big)$ for measured $V$, $C$ ($\lVert G\rVert^2 \le 0$ taken as 0).

    Example:
        >>> speedup(4.0, 1.0, 1.0, 2.0, grad_sq_norm=0.0)   # the ECM when the noise dominates
        2.0
    """
    v0, v1 = (as_real(n, v, nonnegative=True) for n, v in (("variance", variance), ("variance_new", variance_new)))
    c0, c1 = (as_real(n, v, positive=True) for n, v in (("cost", cost), ("cost_new", cost_new)))
    g = max(as_real("grad_sq_norm", grad_sq_norm), 0.0)
    if v1 == 0 and g == 0:
        raise ValueError("variance_new and grad_sq_norm are both 0: nothing to predict")
    return (g + v0) * c0 / ((g + v1) * c1)


def _rate_terms(R, K, sigma_b2, sigma_w2, c_u, c_d, overhead):
    return predicted_variance(R, K, sigma_b2, sigma_w2), overhead + cost(R, K, c_u, c_d)


def predicted_speedup(R: int, K: int, R_new: int, K_new: int, *, sigma_b2: float, sigma_w2: float,
                      grad_sq_norm: float, c_u: float, c_d: float, overhead: float = 0.0) -> SpeedupPrediction:
    r"""$S$ of ``(R_new, K_new)`` over ``(R, K)`` (module docstring); $\lVert G\rVert^2 \le 0$ is taken as 0.

    Example: noise-dominated ($\lVert G\rVert^2 \approx 0$), $S$ is the ECM:
        >>> p = predicted_speedup(2, 1, 1, 8, sigma_b2=1.0, sigma_w2=8.0, grad_sq_norm=0.0, c_u=8.0, c_d=1.0)
        >>> p.speedup == p.ecm == (4.5 * 18) / (2.0 * 16)   # V C = 4.5 * 18 at (2, 1), 2 * 16 at (1, 8)
        True
    """
    overhead = as_real("overhead", overhead, nonnegative=True)
    g = max(as_real("grad_sq_norm", grad_sq_norm), 0.0)
    v0, c0 = _rate_terms(R, K, sigma_b2, sigma_w2, c_u, c_d, overhead)
    v1, c1 = _rate_terms(R_new, K_new, sigma_b2, sigma_w2, c_u, c_d, overhead)
    if v1 == 0 and g == 0:
        raise ValueError("sigma_b2, sigma_w2 and grad_sq_norm are all 0: nothing to predict")
    ecm = v0 * c0 / (v1 * c1) if v1 > 0 else math.inf
    return SpeedupPrediction(int(R_new), int(K_new), speedup(v0, c0, v1, c1, g), float(ecm),
                             math.inf if g == 0 else v1 / g)


def best_speedup(R: int, K: int, *, sigma_b2: float, sigma_w2: float, grad_sq_norm: float, c_u: float,
                 c_d: float, overhead: float = 0.0, R_max: int = 64, K_max: int = 64) -> SpeedupPrediction:
    r"""The $(R', K')$, $1 \le R' \le R_{\max}$, $1 \le K' \le K_{\max}$, of largest predicted $S$ over ``(R, K)``.

    Without an overhead $S$ falls with $R'$ whenever $\lVert G\rVert^2 > 0$ (more, smaller steps),
    so the search is over $K'$ in effect; an overhead $c_0$ makes larger batches pay.

    Example: with a large noise scale reuse pays ($K' = K^\star = 8$); with a small one only
    the cheaper step does:
        >>> best_speedup(2, 1, sigma_b2=1.0, sigma_w2=8.0, grad_sq_norm=0.01, c_u=8.0, c_d=1.0)[:2]
        (1, 8)
        >>> best_speedup(2, 1, sigma_b2=1.0, sigma_w2=8.0, grad_sq_norm=100.0, c_u=8.0, c_d=1.0)[:2]
        (1, 1)
    """
    R_max, K_max = as_int("R_max", R_max, minimum=1), as_int("K_max", K_max, minimum=1)
    overhead = as_real("overhead", overhead, nonnegative=True)
    g = max(as_real("grad_sq_norm", grad_sq_norm), 0.0)
    sb, sw = as_real("sigma_b2", sigma_b2, nonnegative=True), as_real("sigma_w2", sigma_w2, nonnegative=True)
    c_u, c_d = as_real("c_u", c_u, positive=True), as_real("c_d", c_d, positive=True)
    Rs, Ks = np.arange(1, R_max + 1, dtype=np.float64)[:, None], np.arange(1, K_max + 1, dtype=np.float64)[None]
    # 1/S up to a constant: (|G|^2 + V(R, K)) C(R, K) on the grid; ties go to the smaller R, then K.
    objective = (g + (sb + sw / Ks) / Rs) * (overhead + Rs * (c_u + Ks * c_d))
    r, k = np.unravel_index(int(np.argmin(objective)), objective.shape)
    return predicted_speedup(R, K, int(r) + 1, int(k) + 1, sigma_b2=sb, sigma_w2=sw, grad_sq_norm=g,
                             c_u=c_u, c_d=c_d, overhead=overhead)
