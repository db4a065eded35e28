r"""Certify a sampler: exact bias against the integrand's scale, a float64 rounding bound, a verdict.

:func:`check_sampler` computes $\mathbb E\hat G$ exactly (:func:`~carv_core.testing.exact_law`,
:func:`~carv_core.testing.exact_moments`) and compares it with $G = \mathbb E_p f$.
The bias is judged against the size of the integrand,

$$ \lVert f\rVert_{p,\pi} = \Big(\sum_\xi \pi_\xi \sum_t p(t)\,\lVert f(\xi, t)\rVert^2\Big)^{1/2} $$

(:func:`~carv_core.testing.integrand_scale`), never against an absolute 1, so the
verdict is the same for $f$ and $10^{k} f$, and it is not 0 when $G$ is; and
against a bound on what float64 rounding alone can produce, so a large importance
weight does not turn rounding into a "bias".
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._validation import as_pmf, as_real
from ..sampling import MonotoneSampler
from .law import SamplerLaw, exact_law
from .moments import _marginals, _table, exact_moments, integrand_scale, target_mean

__all__ = ["VERDICTS", "BiasReport", "check_sampler", "rounding_bound"]

#: The verdicts of :func:`check_sampler`, from best to worst.
VERDICTS = ("unbiased", "rounding-level", "biased")

_EPS = float(np.finfo(np.float64).eps)
_TINY = float(np.finfo(np.float64).smallest_subnormal)
#: ulps a cut may be off by: the bisection (1), the transform's own arithmetic (1), the
#: kit's map from the cut to a probability (1).
CUT_ULPS = 3
#: ulps of the offset $o$ by which a slot's jitter can misplace a cut: the kit's map
#: $\xi = s(d\,c - o)$ (1) and the design's float $u = (o + s\xi)/d$ (1).
JITTER_ULPS = 2


class BiasReport(NamedTuple):
    r"""What :func:`check_sampler` found.

    Attributes:
        expectation: $\mathbb E\hat G$, shape ``(D,)``.
        target: $G = \sum_\xi\pi_\xi\sum_t p(t) f(\xi, t)$, shape ``(D,)``.
        bias: $\lVert\mathbb E\hat G - G\rVert$.
        relative_bias: ``bias / scale``.
        variance: $\operatorname{tr}\operatorname{Cov}\hat G$.
        unbiased: ``verdict != "biased"``.
        scale: $\lVert f\rVert_{p,\pi}$, the RMS of $f$ under $p$ and the row law.
        rounding_bound: the largest $\lVert\mathbb E\hat G - G\rVert$ float64 rounding can
            explain (:func:`rounding_bound`).
        verdict: ``"unbiased"`` (bias $\le$ ``rtol * scale``), ``"rounding-level"``
            (above that, within ``rounding_bound``: a float64 effect, not a modelling
            error) or ``"biased"``.
        unproved: the properties the exact law rests on that were only checked, not
            proved (empty for a :class:`~carv_core.MonotoneSampler`).
        resolution: the smallest relative bias this check reports as ``"biased"``,
            $\max(\text{rtol}, \text{rounding\_bound}/\text{scale})$.
    """

    expectation: np.ndarray
    target: np.ndarray
    bias: float
    relative_bias: float
    variance: float
    unbiased: bool
    scale: float = float("nan")
    rounding_bound: float = 0.0
    verdict: str = ""
    unproved: tuple = ()
    resolution: float = float("nan")

    @property
    def certified(self) -> bool:
        """Unbiased (to rounding) and nothing the law rests on left unproved."""
        return bool(self.unbiased) and not self.unproved


def _norms(x: np.ndarray) -> np.ndarray:
    # Norms along the last axis, each vector scaled by its largest entry: no overflow or
    # underflow of the squares at any float64 magnitude.
    big = np.abs(x).max(axis=-1, keepdims=True)
    safe = np.where(big > 0, big, 1.0)
    return big[..., 0] * np.sqrt(np.sum((x / safe) ** 2, axis=-1))


def rounding_bound(law: SamplerLaw, table, p, row_probs=None) -> float:
    r"""A bound on $\lVert\mathbb E\hat G - G\rVert$ that float64 rounding alone can produce.

    $$ \frac{1}{RK}\sum_{\text{slots}} \Big[\sum_{c_j \in [a, b]} \big(3d\,\mathrm{ulp}(c_j) + 2\,\mathrm{ulp}(o)\big)
       \big(|w_{j-1}|\lVert\bar f_{j-1}\rVert + |w_j|\lVert\bar f_j\rVert\big)
       + d\sum_{e \in \{a, b\}} \mathrm{ulp}(e)\,|w_{t(e)}|\lVert\bar f_{t(e)}\rVert\Big]
       + \gamma_n\Big(\frac{1}{RK}\sum_{s,t}|A_{st}|\,\overline{\lVert f\rVert}_t
       + \sum_\xi\pi_\xi\sum_t p(t)\lVert f(\xi,t)\rVert\Big) $$

    1. A slot uniform on $[a, b)$, $b - a = 1/d$, lands on $j$ with probability
       $d\,\lvert[a,b)\cap[c_j,c_{j+1})\rvert$; a cut off by $\delta$ moves $d\,\delta$ of it
       between $t = j-1$ and $t = j$. Each cut is correct to ``CUT_ULPS`` $= 3$ ulps (the
       bisection finds the float where $t$ steps; the transform's own arithmetic, e.g. a
       cumulative sum, puts that step within an ulp of the exact $F_q$; the kit's map
       from cut to probability), each slot end to 1; and the slot's jitter places it
       to ``JITTER_ULPS`` $= 2$ ulps of the offset $o$ in $\xi$ (the kit's
       $\xi = s(d\,c - o)$ and the design's float $u = (o + s\xi)/d$: a mirrored slot
       $u = 1 - \xi$ cannot resolve a cut near 0 finer than $\mathrm{ulp}(1)$).
    2. Every other operation (probabilities, products, the sums over scenarios, $t$,
       slots and $\xi$, and the target) has relative error $\gamma_n = n\epsilon$, $n$ the
       longest chain of additions, on the sum of absolute terms ($A_{st}$ = slot $s$'s
       $\sum P\,\tilde w$ at $t$, $\overline{\lVert f\rVert}_t = \sum_\xi\pi_\xi\lVert f(\xi, t)\rVert$).

    With weights of order 1 this is $\sim 10^{-14}$ of the integrand; a weight of $10^8$
    on a cell of width $10^{-9}$ makes it $\sim 10^{-8}$: a real float64 effect of the
    inverse CDF, not a modelling error.

    Example:
        >>> from carv_core import InverseCDFSampler
        >>> from carv_core.testing import exact_law
        >>> p = np.full(4, .25)
        >>> law = exact_law(InverseCDFSampler(p, p, "stratified"), 1, 2, 4)
        >>> bool(rounding_bound(law, [[1.0, 2.0, 3.0, 4.0]], p) < 1e-13)  # of a scale of 2.7
        True
    """
    if law.cuts is None or law.design is None:
        raise ValueError("law must come from exact_law (it records the cuts, weights and design)")
    f, pi = _table(table, row_probs)
    p = as_pmf("p", p)
    cuts, w = law.cuts, np.abs(law.weights)
    T = cuts.size - 1
    f_norm = _norms(f)                                    # ||f(xi, t)||, (X, T)
    g = w * _norms(np.einsum("x,xtd->td", pi, f))         # |w_j| ||fbar_j||, (T,)

    # 1. Cut and slot-end errors, once per distinct slot interval.
    layout = law.design.checked_layout(law.R, law.K)
    lo, hi = (a.ravel() for a in layout.interval())
    d, o = (getattr(layout, n).ravel().astype(np.float64) for n in ("denom", "offset"))
    slots, count = np.unique(np.stack([lo, hi, d, o], axis=1), axis=0, return_counts=True)
    inner = cuts[1:-1]
    g_cut = g[:-1] + g[1:]
    total = 0.0
    for (a, b, dd, oo), n in zip(slots, count):
        inside = (inner >= a) & (inner <= b)
        # A cut's ulps, plus the jitter's granularity at the offset: u = (o + s xi) / d
        # cannot resolve a cut finer than ulp(o) / d (a mirrored slot near u = 0).
        per_cut = dd * CUT_ULPS * np.spacing(inner[inside]) + JITTER_ULPS * np.spacing(oo)
        ends = g[np.minimum(np.searchsorted(inner, [a, np.nextafter(b, 0.0)], side="right"), T - 1)]
        total += n * (per_cut @ g_cut[inside] + dd * (np.spacing(a) * ends[0] + np.spacing(b) * ends[1]))
    cut_term = total / (law.R * law.K)

    # 2. Relative rounding of everything else, on the sums of absolute terms.
    A = _marginals(law, T)[0]
    fabs = pi @ f_norm
    longest = max(b.probs.size for b in law.blocks) + T + law.R * law.K + f.shape[0] + 8
    gamma = longest * _EPS
    absolute = np.abs(A).sum(axis=0) @ fabs / (law.R * law.K) + float(np.einsum("x,t,xt->", pi, p, f_norm))
    underflow = 4 * longest * _TINY * (1.0 + float(w.max(initial=0.0)))
    return float(cut_term + gamma * absolute + underflow)


def check_sampler(sampler, p, table, R: int = 1, K: int = 4, row_probs=None,
                  rtol: float = 1e-10) -> BiasReport:
    r"""Exact bias and variance of ``sampler`` for target ``p`` and integrand ``table``, and a verdict.

    $$ \text{relative bias} = \frac{\lVert\mathbb E\hat G - G\rVert}{\lVert f\rVert_{p,\pi}},\qquad
       \text{verdict} = \begin{cases}\text{unbiased} & \text{bias} \le \text{rtol}\cdot\lVert f\rVert_{p,\pi}\\
       \text{rounding-level} & \text{bias} \le \text{rounding\_bound}\\ \text{biased} & \text{otherwise}\end{cases} $$

    The smallest relative bias reported as biased is ``report.resolution``: ``rtol``
    ($10^{-10}$) at every scale of $f$, unless the weights are so extreme that
    rounding can explain more (see the guide *Property-testing a sampler*). Any sampler
    that is not a :class:`~carv_core.MonotoneSampler` has its monotonicity checked at
    probes, not proved: ``report.unproved`` says so and ``report.certified`` is false;
    ``carv_core.tabulate(sampler, T)`` has exactly the law computed here and is
    monotone by construction.

    Args:
        sampler: a ``design`` (any affine :class:`~carv_core.Design` or shorthand) and a
            pure, elementwise ``transform(u) -> TimestepDraw``.
        p: target pmf, shape ``(T,)``.
        table: $f(\xi, t)$, shape ``(X, T)`` or ``(X, T, *D)``.
        R, K: upstream samples and inner draws per upstream sample.
        row_probs: $\pi_\xi$, shape ``(X,)``; uniform when ``None``.
        rtol: relative bias at or below which the verdict is ``"unbiased"``.

    Raises:
        ValueError / TypeError: the design is not affine, or the sampler breaks the
            protocol; the message names the rule.

    Example:
        >>> from carv_core import InverseCDFSampler
        >>> p = np.full(4, .25)
        >>> report = check_sampler(InverseCDFSampler(p, p, "stratified"), p, [[0., 1., 2., 3.]], K=2)
        >>> report.verdict, report.certified
        ('unbiased', True)
    """
    p = as_pmf("p", p)
    rtol = as_real("rtol", rtol, nonnegative=True)
    law = exact_law(sampler, R, K, p.size)
    mom = exact_moments(law, table, row_probs)
    G = target_mean(table, p, row_probs)
    scale = integrand_scale(table, p, row_probs)
    bias = float(_norms(mom.mean - G))
    bound = rounding_bound(law, table, p, row_probs)
    if scale > 0:
        relative, resolution = bias / scale, max(rtol, bound / scale)
    else:  # f = 0 wherever p pi > 0: any bias is infinitely large relative to it
        relative, resolution = (0.0 if bias == 0 else float("inf")), (0.0 if bound == 0 else float("inf"))
    if bias <= rtol * scale:
        verdict = "unbiased"
    elif bias <= bound:
        verdict = "rounding-level"
    else:
        verdict = "biased"
    unproved = () if isinstance(sampler, MonotoneSampler) else (
        f"monotone in u: checked at {law.probes} probes, not proved (nor that w depends on t "
        f"alone); carv_core.tabulate(sampler, {p.size}) has exactly the law computed here and is "
        "monotone by construction",)
    return BiasReport(mom.mean, G, bias, relative, mom.variance, verdict != "biased", scale, bound,
                      verdict, unproved, resolution)
