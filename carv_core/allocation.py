r"""Compute-aware allocation: cost model, optimal $K$, ECM and RE.

Cost of one estimate with $R$ upstream samples and $K$ inner draws each:
$C = R\,(c_u + K c_d)$. Its variance: $V = (\sigma_B^2 + \sigma_W^2/K)/R$.
The product $V C = (\sigma_B^2 + \sigma_W^2/K)(c_u + K c_d)$ does not depend on
$R$ and is convex in $K$, minimised over the reals at
$K^\star = \sqrt{(c_u/c_d)\,\sigma_W^2/\sigma_B^2}$; the best integer is
$\lfloor K^\star\rfloor$ or $\lceil K^\star\rceil$ (clipped to $[1, K_{\max}]$).

Figures of merit:
$\mathrm{ECM} = (V C)_{\rm base}/(V C)_{\rm method}$, $\mathrm{RE} = V_{\rm uniform}/V_{\rm method}$.
As $c_d/c_u \to 0$ and $K \to \infty$, $\mathrm{ECM} \to (\sigma_B^2 + \sigma_W^2/K_0)/\sigma_B^2$: the reuse ceiling.
"""

from __future__ import annotations

import math
import sys
from typing import NamedTuple

import numpy as np

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
    v = (sb + sw / K) / R
    return v if v < math.inf else sb / R + sw / K / R  # the sum overflowed; V itself may not


def k_star(c_u: float, c_d: float, sigma_b2: float, sigma_w2: float) -> float:
    r"""The real minimiser $K^\star = \sqrt{(c_u/c_d)\,\sigma_W^2/\sigma_B^2}$ (``inf`` when $\sigma_B^2 = 0$).

    Computed in logarithms when $c_u/c_d \cdot \sigma_W^2/\sigma_B^2$ over- or underflows, so
    a representable $K^\star$ is returned as such.

    Example:
        >>> k_star(c_u=8.0, c_d=1.0, sigma_b2=1.0, sigma_w2=8.0)
        8.0
    """
    c_u, c_d = _costs(c_u, c_d)
    sb, sw = _components(sigma_b2, sigma_w2)
    if sb == 0.0:
        return math.inf if sw > 0 else 0.0
    ratio = c_u / c_d * sw / sb
    if ratio == 0.0 and sw == 0.0 or sys.float_info.min <= ratio < math.inf:
        return math.sqrt(ratio)
    # An intermediate over- or underflowed: the same product in logarithms (inf only when
    # K* itself exceeds float64).
    try:
        return math.exp(0.5 * (math.log(c_u) - math.log(c_d) + math.log(sw) - math.log(sb)))
    except OverflowError:
        return math.inf


def _var_cost(K: int, c_u: float, c_d: float, sb: float, sw: float) -> float:
    # Scaled by powers of two (exact, the same order as unscaled) so the product cannot overflow.
    e_c, e_v = math.frexp(max(c_u, c_d))[1], math.frexp(max(sb, sw))[1]
    sb, sw = math.ldexp(sb, -e_v), math.ldexp(sw, -e_v)
    c_u, c_d = math.ldexp(c_u, -e_c), math.ldexp(c_d, -e_c)
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
            if sb == 0.0:
                raise ValueError("sigma_b2 = 0 makes K* unbounded; pass k_max to cap K")
            raise ValueError(f"K* = sqrt(c_u/c_d * sigma_w2/sigma_b2) exceeds float64 (c_u = {c_u}, "
                             f"c_d = {c_d}, sigma_b2 = {sb}, sigma_w2 = {sw}); pass k_max to cap K")
        return k_max
    hi_cap = k_max if k_max is not None else max(1, math.ceil(ks))
    candidates = sorted({min(max(1, math.floor(ks)), hi_cap), min(max(1, math.ceil(ks)), hi_cap)})
    # Compare at unit scale: a power-of-two rescaling of (sigma_b2, sigma_w2) and of (c_u, c_d) is
    # exact and leaves the argmin unchanged, and keeps subnormal inputs from rounding the products.
    es, ec = math.frexp(max(sb, sw))[1], math.frexp(max(c_u, c_d))[1]
    sb_, sw_ = math.ldexp(sb, -es), math.ldexp(sw, -es)
    cu_, cd_ = math.ldexp(c_u, -ec), math.ldexp(c_d, -ec)
    return min(candidates, key=lambda K: (_var_cost(K, cu_, cd_, sb_, sw_), K))


def best_allocation(budget: float, c_u: float, c_d: float, sigma_b2: float, sigma_w2: float,
                    k_max: int = 64) -> Allocation:
    r"""The $(R, K)$ of least variance with $R(c_u + K c_d) \le$ ``budget``, $1 \le K \le K_{\max}$.

    For each $K$ the largest affordable $R(K) = \lfloor \text{budget}/(c_u + K c_d)\rfloor$ is
    used, and the result minimises $(V, C, K)$ lexicographically over
    $K = 1, \dots, K_{\max}$ with $V = (\sigma_B^2 + \sigma_W^2/K)/R(K)$, $C = R(K)(c_u + K c_d)$,
    exactly as a loop over every $K$ would, but without the loop:

    1. $V(K) \ge g(K) = (\sigma_B^2 + \sigma_W^2/K)(c_u + K c_d)/\text{budget}$, which is
       convex in $K$ and least at $K^\star$ (:func:`k_star`). An incumbent near $K^\star$
       bounds the optimum, so only the interval of $K$ where $g(K) \le V_{\rm incumbent}$
       (found by bisection) can hold it.
    2. On that interval $R(K)$ is a non-increasing step function. Within one step
       $V$ falls and $C$ grows with $K$, so each step's best is the smallest $K$ with the
       step's least $V$. The interval is searched step by step or, when its steps are
       short, $K$ by $K$ (vectorised), whichever is shorter.

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
    if math.isinf(budget // (c_u + c_d)):
        raise ValueError(f"budget = {budget} buys more than 1.8e308 upstream samples at "
                         f"c_u + c_d = {c_u + c_d}; rescale budget, c_u and c_d")
    s = _Search(budget, c_u, c_d, sb, sw)
    # The last affordable K (R(K) is non-increasing in K).
    k_top = k_max if s.R(k_max) >= 1 else _last(lambda K: s.R(K) >= 1, 1, k_max)
    if k_top > _K_EXACT:
        raise ValueError(f"k_max = {k_max} lets K reach {k_top} > 2**53, beyond which K is not "
                         "exact in float64; pass k_max <= 2**53")
    # 1. Incumbent: the steps of R around floor(K*) and ceil(K*) (clipped to [1, k_top]).
    ks = k_star(c_u, c_d, sb, sw)
    near = {min(max(1, f(ks) if math.isfinite(ks) else k_top), k_top) for f in (math.floor, math.ceil)}
    steps = {r for k in near for r in (s.R(k), s.R(k) + 1) if r <= s.R(1)}
    best = min((s.step_best(_last(lambda K, r=r: s.R(K) >= r, 1, k_top), 1) for r in steps), key=_order)
    # 2. Only K with g(K) <= V_incumbent can do better (the slack covers float rounding) ...
    thr = best.variance * (1 + 1e-9) + 1e-300
    lo = _first(lambda K: s.g(K) <= thr, 1, best.K)
    hi = _last(lambda K: s.g(K) <= thr, best.K, k_top)
    # ... and only steps r of R with h(r) <= V_incumbent, h(r) <= the step's least V, convex in r.
    r_inc = s.R(best.K)
    r_lo = _first(lambda r: s.h(r, hi) <= thr, s.R(hi), r_inc)
    r_hi = _last(lambda r: s.h(r, hi) <= thr, r_inc, s.R(lo))
    lo = max(lo, _first(lambda K: s.R(K) <= r_hi, lo, hi))
    hi = min(hi, _last(lambda K: s.R(K) >= r_lo, lo, hi))
    # 3. Search [lo, hi] step by step or K by K, whichever is fewer evaluations.
    if (r_hi - r_lo + 1) * 1000 < hi - lo + 1:  # a step costs ~30 evaluations in Python
        K = hi
        while K >= lo:
            best = min(best, s.step_best(K, lo), key=_order)
            K = s.step_start - 1
    else:
        best = min(best, s.scan(lo, hi), key=_order)
    return best


_K_EXACT = 2**53


def _order(a: Allocation):
    return (a.variance, a.cost, a.K)


def _first(pred, lo: int, hi: int) -> int:
    """Smallest K in [lo, hi] with pred(K), for pred false-then-true and pred(hi) true."""
    while lo < hi:
        mid = (lo + hi) // 2
        if pred(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _last(pred, lo: int, hi: int) -> int:
    """Largest K in [lo, hi] with pred(K), for pred true-then-false and pred(lo) true."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if pred(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _first_near(pred, lo: int, hi: int) -> int:
    """:func:`_first`, galloping down from ``hi``: O(log(hi - result)) evaluations."""
    step = 1
    while hi - step >= lo and pred(hi - step):
        step *= 2
    return _first(pred, max(lo, hi - step + 1), hi)


class _Search:
    """The old loop's arithmetic, term for term, so that every value compares bit-identically."""

    def __init__(self, budget, c_u, c_d, sb, sw):
        self.budget, self.c_u, self.c_d, self.sb, self.sw = budget, c_u, c_d, sb, sw
        self.step_start = 0

    def R(self, K: int) -> int:
        return int(self.budget // (self.c_u + K * self.c_d))

    def g(self, K: int) -> float:
        # The lower bound (sb + sw/K) c(K) / budget of V(K), without overflow (budget >= c(K)).
        return (self.sb + self.sw / K) / (self.budget / (self.c_u + K * self.c_d))

    def h(self, r: int, k_cap: int) -> float:
        # (sb + sw/x)/r with x >= the last K of step r (x from c(K) <= budget/r, rounded up,
        # and at most k_cap): a lower bound of the step's least V, convex in r.
        x = (self.budget / r - self.c_u) / self.c_d
        x += (self.budget / r + self.c_u) / self.c_d * 1e-12
        return (self.sb + self.sw / min(x, k_cap)) / r

    def alloc(self, K: int) -> Allocation:
        R = self.R(K)
        return Allocation(R, K, (self.sb + self.sw / K) / R, R * (self.c_u + K * self.c_d))

    def step_best(self, K_hi: int, lo: int) -> Allocation:
        """Best of the step of R(K_hi) within [lo, K_hi], K_hi the step's last K; sets step_start."""
        r = self.R(K_hi)
        self.step_start = _first_near(lambda K: self.R(K) <= r, lo, K_hi)
        v = (self.sb + self.sw / K_hi) / r
        return self.alloc(_first_near(lambda K: (self.sb + self.sw / K) / r <= v, self.step_start, K_hi))

    def scan(self, lo: int, hi: int, chunk: int = 1 << 16) -> Allocation:
        """Best K in [lo, hi] by evaluating every K (vectorised, the same float64 operations)."""
        best = None
        for start in range(lo, hi + 1, chunk):
            K = np.arange(start, min(hi, start + chunk - 1) + 1, dtype=np.float64)
            with np.errstate(over="ignore"):
                c = self.c_u + K * self.c_d
                R = np.floor_divide(self.budget, c)
                V = (self.sb + self.sw / K) / R
                C = R * c
            at = V == V.min()
            i = int(np.flatnonzero(at & (C == C[at].min()))[0])
            cand = self.alloc(int(K[i]))
            best = cand if best is None else min(best, cand, key=_order)
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
    return _ratio_of_products(vb, cb, vm, cm)


def _ratio_of_products(a: float, b: float, c: float, d: float) -> float:
    # (a b)/(c d) for positive floats; in logarithms if a product leaves the normal range
    # (inf or 0 then means the ratio itself is out of range, never inf/inf = nan).
    num, den = a * b, c * d
    if sys.float_info.min <= num < math.inf and sys.float_info.min <= den < math.inf:
        return num / den
    try:
        return math.exp(math.log(a) + math.log(b) - math.log(c) - math.log(d))
    except OverflowError:
        return math.inf


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
    R0, K0 = as_int("R0", R0, minimum=1), as_int("K0", K0, minimum=1)
    v = predicted_variance(R, K, sigma_b2, sigma_w2)
    c = cost(R, K, c_u, c_d)
    v0 = predicted_variance(R0, K0, sigma_b2, sigma_w2)
    c0 = cost(R0, K0, c_u, c_d)
    sb, sw = _components(sigma_b2, sigma_w2)
    if sb == 0.0 and sw == 0.0:  # no variance to reduce
        return Prediction(v, c, 1.0)
    if all(sys.float_info.min <= x < math.inf for x in (v, c, v0, c0)):
        return Prediction(v, c, _ratio_of_products(v0, c0, v, c))
    # V or C left the float64 range: the ratios of their scaled forms (scales cancel) are moderate.
    c_s, v_s = max(c_u, c_d), max(sb, sw)
    cost_ratio = R0 * (c_u / c_s + K0 * (c_d / c_s)) / (R * (c_u / c_s + K * (c_d / c_s)))
    var_ratio = R * (sb / v_s + sw / v_s / K0) / (R0 * (sb / v_s + sw / v_s / K))
    return Prediction(v, c, var_ratio * cost_ratio)


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
    total = sb + sw / K0
    return total / sb if total < math.inf else 1.0 + sw / K0 / sb
