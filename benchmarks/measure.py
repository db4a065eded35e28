r"""Statistics the benchmarks share: the ECM of a measured configuration and ratio standard errors.

The effective compute multiplier of a method over a baseline at equal variance is
$\mathrm{ECM} = (V C)_{\rm base}/(V C)_{\rm method}$ (:func:`carv_core.ecm`, called here, not
re-derived). With independent variance estimates of relative standard errors
$r_b = \mathrm{se}_b/V_b$, $r_m = \mathrm{se}_m/V_m$ and costs treated as known (medians of many
timed steps), the delta method gives $\mathrm{se}(\mathrm{ECM}) = \mathrm{ECM}\sqrt{r_b^2 + r_m^2}$.
"""

from __future__ import annotations

import math

import numpy as np
from carv_core import ecm

__all__ = ["ecm_estimate", "ratio_se"]


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
