r"""Compute-aware allocation: cost model, optimal $K$, ECM and RE.

Cost of one estimate with $R$ upstream samples and $K$ inner draws each:
$C = R\,(c_u + K c_d)$. Its variance: $V = (\sigma_B^2 + \sigma_W^2/K)/R$.
The product $V C = (\sigma_B^2 + \sigma_W^2/K)(c_u + K c_d)$ does not depend on
$R$ and is convex in $K$, minimised over the reals at
$K^\star = \sqrt{(c_u/c_d)\,\sigma_W^2/\sigma_B^2}$; the best integer is
$\lfloor K^\star\rfloor$ or $\lceil K^\star\rceil$ (clipped to $[1, K_{\max}]$).

Figures of merit (design.md §3):
$\mathrm{ECM} = (V C)_{\rm base}/(V C)_{\rm method}$, $\mathrm{RE} = V_{\rm uniform}/V_{\rm method}$.
As $c_d/c_u \to 0$ and $K \to \infty$, $\mathrm{ECM} \to (\sigma_B^2 + \sigma_W^2/K_0)/\sigma_B^2$: the reuse ceiling.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from ._validation import as_int, as_real

__all__ = [
    "Allocation",
    "Prediction",
    "cost",
    "predicted_variance",
    "k_star",
    "optimal_k",
    "best_allocation",
    "predict",
    "ecm",
    "relative_efficiency",
    "reuse_ceiling",
]


class Allocation(NamedTuple):
    """A choice of ``R`` and ``K`` with its predicted variance and cost."""

    R: int
    K: int
    variance: float
    cost: float


class Prediction(NamedTuple):
    """Predicted variance, cost and ECM of ``(R, K)`` against a baseline."""

    variance: float
    cost: float
    ecm: float


def _costs(c_u, c_d):
    return as_real("c_u", c_u, positive=True), as_real("c_d", c_d, positive=True)


def _components(sigma_b2, sigma_w2):
    return (as_real("sigma_b2", sigma_b2, nonnegative=True),
            as_real("sigma_w2", sigma_w2, nonnegative=True))


def cost(R: int, K: int, c_u: float, c_d: float) -> float:
    r"""$C = R\,(c_u + K c_d)$.

    Example:
        >>> cost(2, 4, c_u=8.0, c_d=1.0)
        24.0
    """
    R, K = as_int("R", R, minimum=1), as_int("K", K, minimum=1)
    c_u, c_d = _costs(c_u, c_d)
    return R * (c_u + K * c_d)


def predicted_variance(R: int, K: int, sigma_b2: float, sigma_w2: float) -> float:
    r"""$V = (\sigma_B^2 + \sigma_W^2/K)/R$.

    Example:
        >>> predicted_variance(2, 4, sigma_b2=1.0, sigma_w2=8.0)
        1.5
    """
    R, K = as_int("R", R, minimum=1), as_int("K", K, minimum=1)
    sb, sw = _components(sigma_b2, sigma_w2)
    return (sb + sw / K) / R


def k_star(c_u: float, c_d: float, sigma_b2: float, sigma_w2: float) -> float:
    r"""The real minimiser $K^\star = \sqrt{(c_u/c_d)\,\sigma_W^2/\sigma_B^2}$ (``inf`` when $\sigma_B^2 = 0$).

    Example:
        >>> k_star(c_u=8.0, c_d=1.0, sigma_b2=1.0, sigma_w2=8.0)
        8.0
    """
    c_u, c_d = _costs(c_u, c_d)
    sb, sw = _components(sigma_b2, sigma_w2)
    if sb == 0.0:
        return math.inf if sw > 0 else 0.0
    return math.sqrt(c_u / c_d * sw / sb)


def _var_cost(K: int, c_u: float, c_d: float, sb: float, sw: float) -> float:
    return (sb + sw / K) * (c_u + K * c_d)


def optimal_k(c_u: float, c_d: float, sigma_b2: float, sigma_w2: float, k_max: int | None = None) -> int:
    r"""The integer $K \ge 1$ minimising $(\sigma_B^2 + \sigma_W^2/K)(c_u + K c_d)$.

    By convexity only $\lfloor K^\star\rfloor$ and $\lceil K^\star\rceil$ (clipped to
    $[1, K_{\max}]$) need comparing; ties go to the smaller $K$.

    Example:
        >>> optimal_k(c_u=8.0, c_d=1.0, sigma_b2=1.0, sigma_w2=5.0)
        6
    """
    c_u, c_d = _costs(c_u, c_d)
    sb, sw = _components(sigma_b2, sigma_w2)
    if k_max is not None:
        k_max = as_int("k_max", k_max, minimum=1)
    ks = k_star(c_u, c_d, sb, sw)
    if math.isinf(ks):
        if k_max is None:
            raise ValueError("sigma_b2 = 0 makes K* unbounded; pass k_max to cap K")
        return k_max
    hi_cap = k_max if k_max is not None else max(1, math.ceil(ks))
    candidates = sorted({min(max(1, math.floor(ks)), hi_cap), min(max(1, math.ceil(ks)), hi_cap)})
    return min(candidates, key=lambda K: (_var_cost(K, c_u, c_d, sb, sw), K))


def best_allocation(budget: float, c_u: float, c_d: float, sigma_b2: float, sigma_w2: float,
                    k_max: int = 64) -> Allocation:
    r"""The $(R, K)$ of least variance with $R(c_u + K c_d) \le$ ``budget``, $1 \le K \le K_{\max}$.

    For each $K$ the largest affordable $R = \lfloor \text{budget}/(c_u + K c_d)\rfloor$ is used.

    Example:
        >>> best_allocation(32.0, c_u=8.0, c_d=1.0, sigma_b2=1.0, sigma_w2=8.0, k_max=16)
        Allocation(R=2, K=8, variance=1.0, cost=32.0)
    """
    budget = as_real("budget", budget, positive=True)
    c_u, c_d = _costs(c_u, c_d)
    sb, sw = _components(sigma_b2, sigma_w2)
    k_max = as_int("k_max", k_max, minimum=1)
    if budget < c_u + c_d:
        raise ValueError(f"budget = {budget} cannot pay for one upstream sample and one draw "
                         f"(c_u + c_d = {c_u + c_d})")
    best = None
    for K in range(1, k_max + 1):
        R = int(budget // (c_u + K * c_d))
        if R < 1:
            break
        cand = Allocation(R, K, (sb + sw / K) / R, R * (c_u + K * c_d))
        if best is None or (cand.variance, cand.cost) < (best.variance, best.cost):
            best = cand
    return best


def ecm(var_base: float, cost_base: float, var_method: float, cost_method: float) -> float:
    r"""Effective compute multiplier $(V C)_{\rm base}/(V C)_{\rm method}$.

    Example:
        >>> ecm(var_base=4.0, cost_base=1.0, var_method=1.0, cost_method=2.0)
        2.0
    """
    vb = as_real("var_base", var_base, positive=True)
    cb = as_real("cost_base", cost_base, positive=True)
    vm = as_real("var_method", var_method, positive=True)
    cm = as_real("cost_method", cost_method, positive=True)
    return (vb * cb) / (vm * cm)


def relative_efficiency(var_uniform: float, var_method: float) -> float:
    r"""$\mathrm{RE} = V_{\rm uniform}/V_{\rm method}$ at the same $(R, K)$."""
    return as_real("var_uniform", var_uniform, positive=True) / as_real(
        "var_method", var_method, positive=True)


def predict(R: int, K: int, c_u: float, c_d: float, sigma_b2: float, sigma_w2: float,
            R0: int = 2, K0: int = 1) -> Prediction:
    r"""Predicted variance, cost and ECM of $(R, K)$ against the baseline $(R_0, K_0)$.

    Example:
        >>> predict(1, 8, c_u=8.0, c_d=1.0, sigma_b2=1.0, sigma_w2=8.0).ecm
        2.53125
    """
    v = predicted_variance(R, K, sigma_b2, sigma_w2)
    c = cost(R, K, c_u, c_d)
    v0 = predicted_variance(R0, K0, sigma_b2, sigma_w2)
    c0 = cost(R0, K0, c_u, c_d)
    if v == 0.0:
        return Prediction(v, c, math.inf if v0 > 0 else 1.0)
    return Prediction(v, c, (v0 * c0) / (v * c))


def reuse_ceiling(sigma_b2: float, sigma_w2: float, K0: int = 1) -> float:
    r"""$\lim \mathrm{ECM} = (\sigma_B^2 + \sigma_W^2/K_0)/\sigma_B^2$ as $c_d/c_u \to 0$, $K \to \infty$.

    Example:
        >>> reuse_ceiling(sigma_b2=1.0, sigma_w2=8.0)
        9.0
    """
    sb, sw = _components(sigma_b2, sigma_w2)
    K0 = as_int("K0", K0, minimum=1)
    if sb == 0.0:
        return math.inf
    return (sb + sw / K0) / sb
