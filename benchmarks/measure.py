r"""Statistics the benchmarks share: the ECM of a measured configuration, ratio standard errors, intervals.

The effective compute multiplier of a method over a baseline at equal variance is
$\mathrm{ECM} = (V C)_{\rm base}/(V C)_{\rm method}$ (:func:`carv_core.ecm`, called here, not
re-derived). With independent variance estimates of relative standard errors
$r_b = \mathrm{se}_b/V_b$, $r_m = \mathrm{se}_m/V_m$ and costs treated as known (medians of many
timed steps), the delta method gives $\mathrm{se}(\mathrm{ECM}) = \mathrm{ECM}\sqrt{r_b^2 + r_m^2}$.

Intervals: the mean's standard error and $t$-interval, percentile bootstraps (of any statistic
of resampled arrays, of a censored median, and a two-level one for a mean over seeds whose
values carry their own bootstrap replicates).
"""

from __future__ import annotations

import math

import numpy as np
from carv_core import ecm
from scipy import stats

__all__ = ["ecm_estimate", "ratio_se", "mean_se", "mean_interval", "bootstrap_ci", "median_interval",
           "two_level_interval"]


def ecm_estimate(var_base: float, se_base: float, cost_base: float,
                 var_method: float, se_method: float, cost_method: float) -> tuple[float, float]:
    """``(ECM, its standard error)`` from independent variance estimates (the module docstring)."""
    value = ecm(var_base, cost_base, var_method, cost_method)
    return value, value * math.hypot(se_base / var_base, se_method / var_method)


def ratio_se(num, den) -> tuple[float, float]:
    r"""$\bar a/\bar b$ and its delta-method standard error over i.i.d. *pairs* $(a_i, b_i)$.

    $\operatorname{se}^2 = \frac{(\bar a/\bar b)^2}{n}\big(s_a^2/\bar a^2 + s_b^2/\bar b^2 - 2 s_{ab}/(\bar a\bar b)\big)$
    (the covariance term is what pairing, e.g. common inputs per replicate, buys).
    """
    a, b = np.asarray(num, float), np.asarray(den, float)
    n, ma, mb = a.size, a.mean(), b.mean()
    r = ma / mb
    if n < 2:
        return float(r), float("nan")
    c = np.cov(a, b)
    var = r**2 / n * (c[0, 0] / ma**2 + c[1, 1] / mb**2 - 2 * c[0, 1] / (ma * mb))
    return float(r), float(math.sqrt(max(var, 0.0)))


def mean_se(x) -> tuple[float, float]:
    """Mean and standard error $s/\\sqrt n$ of a sample (SE ``nan`` for $n < 2$)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        raise ValueError("mean_se needs a non-empty sample")
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else float("nan")


def mean_interval(x, level: float = 0.95) -> dict:
    r"""``{mean, lo, hi, n}``: $\bar x \pm t_{(1+\mathrm{level})/2,\,n-1}\,s/\sqrt n$ (``nan`` ends for $n < 2$)."""
    x = np.asarray(x, float)
    if x.size == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    half = float(stats.t.ppf((1 + level) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)) \
        if x.size > 1 else math.nan
    return {"mean": float(x.mean()), "lo": float(x.mean() - half), "hi": float(x.mean() + half), "n": int(x.size)}


def bootstrap_ci(samples, stat, *, rng: np.random.Generator, n_boot: int = 2000, level: float = 0.95):
    r"""Percentile interval of ``stat(*resampled)``; each array of ``samples`` is resampled along axis 0 on its own."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    arrays = [np.asarray(s, dtype=np.float64) for s in samples]
    vals = np.array([stat(*(a[rng.integers(0, len(a), len(a))] for a in arrays)) for _ in range(n_boot)])
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return [float("nan"), float("nan")]
    return [float(np.quantile(vals, (1 - level) / 2)), float(np.quantile(vals, (1 + level) / 2))]


def median_interval(x, rng: np.random.Generator, *, level: float = 0.95, resamples: int = 2000) -> dict:
    """``{median, lo, hi, n, reached}`` of censored fractions (``inf`` = never; ``nan`` = no level, dropped)."""
    x = np.asarray(x, float)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return {"median": math.nan, "lo": math.nan, "hi": math.nan, "n": 0, "reached": 0}
    meds = np.median(rng.choice(x, size=(resamples, x.size), replace=True), axis=1)
    lo, hi = np.quantile(meds, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    return {"median": float(np.median(x)), "lo": float(lo), "hi": float(hi), "n": int(x.size),
            "reached": int(np.isfinite(x).sum())}


def two_level_interval(boots: list, rng: np.random.Generator, level: float = 0.95,
                       draws: int = 4000) -> tuple[float, float]:
    r"""Percentile interval of the mean over seeds: resample seeds, then one replicate of each chosen seed.

    ``boots``: per seed, that seed's bootstrap replicates of its final value.
    """
    B = np.array(boots, dtype=float)                       # (seeds, replicates)
    n, m = B.shape
    means = B[rng.integers(0, n, (draws, n)), rng.integers(0, m, (draws, n))].mean(1)
    return float(np.percentile(means, 50 * (1 - level))), float(np.percentile(means, 50 * (1 + level)))
