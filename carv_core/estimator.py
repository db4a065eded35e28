r"""The hierarchical estimator and its variance estimates.

With $R$ upstream samples and $K$ inner draws each, $Y_{rk} = \tilde w_{rk}\, f(x_r, t_{rk}, \epsilon_{rk})$,

$$ \hat G = \frac1R \sum_r \bar Y_r, \qquad \bar Y_r = \frac1K \sum_k Y_{rk}, $$

and $\operatorname{Var}\hat G = (\sigma_B^2 + \sigma_W^2/K)/R$ with
$\sigma_B^2 = \operatorname{tr}\operatorname{Cov}_\xi(\mu(\xi))$,
$\sigma_W^2 = \mathbb E_\xi \operatorname{tr}\operatorname{Cov}(Y\mid\xi)$.
Traces are taken over all trailing (parameter) dimensions.

Variance estimates:

- the $R$ row means are i.i.d., so $\widehat{\operatorname{Var}}\hat G = \frac{1}{R(R-1)}\sum_r\lVert\bar Y_r - \hat G\rVert^2$
  is unbiased under *any* inner scheme;
- ANOVA: $\mathrm{MS}_W = \frac{1}{R(K-1)}\sum_{r,k}\lVert Y_{rk}-\bar Y_r\rVert^2$ and
  $\mathrm{MS}_B = \frac{K}{R-1}\sum_r\lVert\bar Y_r-\hat G\rVert^2$ give
  $\hat\sigma_W^2 = \mathrm{MS}_W$, $\hat\sigma_B^2 = (\mathrm{MS}_B - \mathrm{MS}_W)/K$,
  unbiased for i.i.d. inner draws. Under stratification $\mathrm{MS}_W$ also
  counts the spread *between* strata, so $\hat\sigma_W^2$ over-states the
  stratified within-variance (conservative) and $\hat\sigma_B^2$ under-states $\sigma_B^2$.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._validation import as_float_array, as_int, as_real, reject_foreign_arrays

__all__ = ["HierarchicalEstimate", "VarianceComponents", "hierarchical_estimate",
           "variance_components", "Welford"]


class HierarchicalEstimate(NamedTuple):
    r"""$\hat G$, the row means $\bar Y_r$, and the unbiased $\widehat{\operatorname{Var}}\hat G$ (``nan`` when $R = 1$)."""

    mean: np.ndarray
    row_means: np.ndarray
    variance: float


class VarianceComponents(NamedTuple):
    r"""ANOVA estimates $\hat\sigma_B^2$, $\hat\sigma_W^2$ and the mean squares they come from."""

    sigma_b2: float
    sigma_w2: float
    ms_between: float
    ms_within: float


def _pow2_scaled(a: np.ndarray) -> tuple[np.ndarray, int]:
    # a = scaled * 2**e with max|scaled| in [1/2, 1): exact, and nothing below can overflow.
    e = int(np.frexp(float(np.max(np.abs(a))))[1])
    return np.ldexp(a, -e), e


def _weighted_values(values, weights) -> tuple[np.ndarray, int]:
    """$Y = \tilde w f$ as ``(Y / 2**e, e)``: a power-of-two scale (exact) keeps sums finite."""
    Y, e = _pow2_scaled(as_float_array("values", values, min_ndim=2))
    if weights is None:
        return Y, e
    w = as_float_array("weights", weights, ndim=2)
    if w.shape != Y.shape[:2]:
        raise ValueError(f"weights must have shape (R, K) = {Y.shape[:2]} like values, got {w.shape}")
    w, e_w = _pow2_scaled(w)
    return Y * w.reshape(w.shape + (1,) * (Y.ndim - 2)), e + e_w


def _unscaled(name: str, x, e: int):
    with np.errstate(over="ignore"):
        out = np.ldexp(x, e)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"values (times weights) are too large: {name} overflows float64; "
                         "rescale values")
    return out


def hierarchical_estimate(values, weights=None) -> HierarchicalEstimate:
    r"""$\hat G = \frac{1}{RK}\sum_{r,k}\tilde w_{rk} f_{rk}$ and its unbiased variance estimate.

    Args:
        values: $f(x_r, t_{rk}, \epsilon_{rk})$, shape ``(R, K, *D)``.
        weights: importance weights $\tilde w_{rk}$, shape ``(R, K)``; ``None`` for ones.

    Example:
        >>> est = hierarchical_estimate([[1.0, 3.0], [5.0, 7.0]])
        >>> float(est.mean), est.variance
        (4.0, 4.0)
    """
    Y, e = _weighted_values(values, weights)
    R = Y.shape[0]
    row_means = Y.mean(axis=1)
    mean = row_means.mean(axis=0)
    variance = float(_unscaled("the variance", np.sum((row_means - mean) ** 2) / (R * (R - 1)), 2 * e)
                     ) if R > 1 else float("nan")
    return HierarchicalEstimate(_unscaled("the mean", mean, e), _unscaled("a row mean", row_means, e),
                                variance)


def variance_components(values, weights=None) -> VarianceComponents:
    r"""ANOVA estimates of $\sigma_B^2$ and $\sigma_W^2$ (traces) from ``(R, K, *D)`` values.

    Needs $R \ge 2$ and $K \ge 2$. $\hat\sigma_B^2$ may be negative (it is unbiased, not clipped).

    Example:
        >>> vc = variance_components([[1.0, 3.0], [5.0, 7.0]])
        >>> vc.sigma_w2, vc.sigma_b2
        (2.0, 7.0)
    """
    Y, e = _weighted_values(values, weights)
    R, K = Y.shape[:2]
    if R < 2 or K < 2:
        raise ValueError(f"variance_components needs R >= 2 and K >= 2, got values of shape {Y.shape}")
    row_means = Y.mean(axis=1)
    grand = row_means.mean(axis=0)
    ms_within = float(np.sum((Y - row_means[:, None]) ** 2) / (R * (K - 1)))
    ms_between = float(K * np.sum((row_means - grand) ** 2) / (R - 1))
    sb2, w, b = (float(_unscaled(n, x, 2 * e)) for n, x in (
        ("sigma_b2", (ms_between - ms_within) / K), ("MS_W", ms_within), ("MS_B", ms_between)))
    return VarianceComponents(sb2, w, b, w)


class Welford:
    r"""Streaming mean and $\operatorname{tr}\operatorname{Cov}$ of vectors in $O(D)$ memory.

    Keeps $n$, $\bar x$ and $M_2 = \sum_i \lVert x_i - \bar x\rVert^2$; batches are
    merged with Chan et al.'s parallel update. The mean squared error to a fixed
    reference follows exactly from
    $\frac1n\sum_i\lVert x_i - g\rVert^2 = \frac{M_2}{n} + \lVert\bar x - g\rVert^2$.

    Example:
        >>> acc = Welford()
        >>> acc.update([[1.0, 0.0], [3.0, 0.0]])
        >>> acc.count, acc.mean.tolist(), acc.trace_cov
        (2, [2.0, 0.0], 2.0)
    """

    def __init__(self):
        self.count = 0
        self.mean: np.ndarray | None = None
        self.m2 = 0.0

    def update(self, x) -> None:
        """Add one vector (shape ``(D,)``) or a batch (shape ``(N, D)``).

        Raises ``ValueError`` (and changes nothing) if the mean or $M_2$ would overflow float64.
        """
        x = as_float_array("x", x, min_ndim=1)
        batch = x[None, :] if x.ndim == 1 else x.reshape(x.shape[0], -1)
        if self.mean is not None and batch.shape[1] != self.mean.shape[0]:
            raise ValueError(f"x has dimension {batch.shape[1]}, the accumulator has {self.mean.shape[0]}")
        n_b = batch.shape[0]
        # Batch moments on a power-of-two rescaling (exact), so huge entries do not overflow.
        scaled, e = _pow2_scaled(batch)
        mean_s = scaled.mean(axis=0)
        with np.errstate(over="ignore"):
            mean_b = np.ldexp(mean_s, e)
            m2_b = float(np.ldexp(np.sum((scaled - mean_s) ** 2), 2 * e))
            if self.mean is None:
                count, mean, m2 = n_b, mean_b, m2_b
            else:
                count = self.count + n_b
                delta = mean_b - self.mean
                mean = self.mean + delta * (n_b / count)
                m2 = self.m2 + m2_b + float(delta @ delta) * self.count * n_b / count
        if not (np.all(np.isfinite(mean)) and np.isfinite(m2)):
            raise ValueError("x is too large: the accumulated mean or M2 would overflow float64; "
                             "rescale x (the accumulator is unchanged)")
        self.count, self.mean, self.m2 = count, mean, m2

    @property
    def trace_cov(self) -> float:
        r"""Unbiased $\operatorname{tr}\widehat{\operatorname{Cov}} = M_2/(n-1)$ (``nan`` when $n < 2$)."""
        return self.m2 / (self.count - 1) if self.count > 1 else float("nan")

    def mse(self, reference) -> float:
        r"""$\frac1n\sum_i \lVert x_i - g\rVert^2$ for a reference $g$ of shape ``(D,)``."""
        if self.mean is None:
            raise ValueError("mse needs at least one update")
        reject_foreign_arrays("reference", reference)
        g = as_float_array("reference", reference).ravel()
        if g.shape != self.mean.shape:
            raise ValueError(f"reference must have {self.mean.size} entries, got {g.size}")
        return self.m2 / self.count + float(np.sum((self.mean - g) ** 2))

    def state_dict(self) -> dict:
        """Serialisable state."""
        return {"count": self.count, "mean": None if self.mean is None else self.mean.tolist(),
                "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        r"""Restore from :meth:`state_dict`; the whole state is validated first (a failed load changes nothing).

        ``state['count']`` is an int $\ge 0$, ``state['mean']`` is ``None`` exactly when the
        count is 0 and otherwise a finite 1-D array, ``state['m2']`` is finite, $\ge 0$,
        and 0 when the count is 0.
        """
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from Welford.state_dict(), got {type(state).__name__}")
        missing = [k for k in ("count", "mean", "m2") if k not in state]
        if missing:
            raise ValueError(f"state lacks the field(s) {missing}; it is not a Welford.state_dict()")
        count = as_int("state['count']", state["count"], minimum=0)
        mean = state["mean"]
        if mean is not None:
            mean = as_float_array("state['mean']", mean, ndim=1).copy()
        m2 = as_real("state['m2']", state["m2"], nonnegative=True)
        if (count == 0) != (mean is None):
            raise ValueError(f"state['mean'] must be None exactly when state['count'] is 0, got "
                             f"count {count} and mean {'None' if mean is None else 'an array'}")
        if count == 0 and m2 != 0:
            raise ValueError(f"state['m2'] must be 0 when state['count'] is 0, got {m2}")
        self.count, self.mean, self.m2 = count, mean, m2
