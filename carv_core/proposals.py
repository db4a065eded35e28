r"""Timestep proposals $q(t)$ and importance weights $\tilde w = p/q$.

Drawing $t \sim q$ and weighting by $\tilde w(t) = p(t)/q(t)$ keeps the estimator
unbiased, $\mathbb E_q[\tilde w f] = \mathbb E_p[f]$, whenever $q > 0$ wherever
$p > 0$. Its second moment $\sum_t p(t)^2 m(t)/q(t)$, with
$m(t) = \mathbb E\lVert f\rVert^2 \mid t$, is minimised by the oracle
$q^\star \propto p\sqrt{m}$ (Cauchy-Schwarz). The weight heuristic replaces
$\sqrt m$ by the teacher's own weight, $q \propto p\,w_{\rm SDS}$. A defensive
mixture $q = (1-\delta)\hat q + \delta p$ bounds every weight by $1/\delta$.
"""

from __future__ import annotations

import numpy as np

from ._validation import as_float_array, as_int, as_pmf, as_real, check_support

__all__ = [
    "importance_weights",
    "defensive_mixture",
    "weight_heuristic",
    "oracle_proposal",
    "AdaptiveProposal",
]


def _normalise(name: str, mass: np.ndarray) -> np.ndarray:
    total = float(mass.sum())
    if not total > 0:
        raise ValueError(f"{name} has no mass: the product with p is zero everywhere")
    return mass / total


def importance_weights(p, q) -> np.ndarray:
    r"""$\tilde w(t) = p(t)/q(t)$, shape ``(T,)``; zero where $p(t) = 0$.

    Raises ``ValueError`` naming the first index where $q = 0 < p$.

    Example:
        >>> importance_weights([0.5, 0.5], [0.25, 0.75]).tolist()
        [2.0, 0.6666666666666666]
    """
    p, q = as_pmf("p", p), as_pmf("q", q)
    check_support(p, q)
    out = np.zeros_like(p)
    np.divide(p, q, out=out, where=p > 0)
    return out


def defensive_mixture(q_hat, p, delta: float) -> np.ndarray:
    r"""$q = (1 - \delta)\,\hat q + \delta\,p$, so that $p/q \le 1/\delta$.

    Example:
        >>> defensive_mixture([1.0, 0.0], [0.5, 0.5], 0.2).tolist()
        [0.9, 0.1]
    """
    q_hat, p = as_pmf("q_hat", q_hat), as_pmf("p", p)
    if q_hat.shape != p.shape:
        raise ValueError(f"q_hat and p must have the same shape, got {q_hat.shape} and {p.shape}")
    delta = as_real("delta", delta, nonnegative=True, upper=1.0)
    return (1.0 - delta) * q_hat + delta * p


def _proposal_from_factor(p: np.ndarray, factor: np.ndarray, factor_name: str, delta: float) -> np.ndarray:
    if factor.shape != p.shape:
        raise ValueError(f"{factor_name} must have shape {p.shape} like p, got {factor.shape}")
    if np.any(factor < 0):
        j = int(np.argmax(factor < 0))
        raise ValueError(f"{factor_name} must be non-negative, got {factor_name}[{j}] = {factor[j]}")
    q = _normalise(factor_name, p * factor)
    delta = as_real("delta", delta, nonnegative=True, upper=1.0)
    if delta > 0:
        q = (1.0 - delta) * q + delta * p
    check_support(p, q, q_name=f"q (from {factor_name})")
    return q


def weight_heuristic(p, w_sds, delta: float = 0.0) -> np.ndarray:
    r"""The weight-heuristic proposal $q \propto p\,w_{\rm SDS}$, optionally mixed with $p$.

    Args:
        p: target pmf, shape ``(T,)``.
        w_sds: the factor multiplying the residual (:func:`carv_core.sds_weight`), shape ``(T,)``.
        delta: defensive-mixture fraction $\delta \in [0, 1]$.

    Example:
        >>> weight_heuristic([0.5, 0.5], [1.0, 3.0]).tolist()
        [0.25, 0.75]
    """
    p = as_pmf("p", p)
    return _proposal_from_factor(p, as_float_array("w_sds", w_sds, ndim=1), "w_sds", delta)


def oracle_proposal(p, second_moment, delta: float = 0.0) -> np.ndarray:
    r"""The variance-optimal proposal $q^\star \propto p\sqrt{m}$ from $m(t) = \mathbb E[\lVert f\rVert^2 \mid t]$.

    Example:
        >>> oracle_proposal([0.5, 0.5], [1.0, 9.0]).tolist()
        [0.25, 0.75]
    """
    p = as_pmf("p", p)
    m = as_float_array("second_moment", second_moment, ndim=1)
    if np.any(m < 0):
        j = int(np.argmax(m < 0))
        raise ValueError(f"second_moment must be non-negative, got second_moment[{j}] = {m[j]}")
    return _proposal_from_factor(p, np.sqrt(m), "sqrt(second_moment)", delta)


def _check_decay(name: str, decay) -> float:
    decay = as_real(name, decay, nonnegative=True)
    if decay >= 1:
        raise ValueError(f"{name} must be < 1, got {decay}")
    return decay


class AdaptiveProposal:
    r"""An online estimate of the oracle proposal with a defensive mixture.

    The timesteps are split into ``n_bins`` contiguous bins. Each bin keeps an
    exponential moving average $\hat m_b$ of $\lVert f\rVert^2$ observed at its
    timesteps; the proposal is
    $q = (1-\delta)\,\mathrm{normalise}(p\sqrt{\hat m_{b(t)}}) + \delta p$, so weights
    never exceed $1/\delta$. Draws stay unbiased as long as each draw uses the
    proposal fixed *before* the draw (update after estimating, never in between).

    Args:
        p: target pmf, shape ``(T,)``.
        n_bins: number of bins, at most ``len(p)``; ``None`` for ``min(20, len(p))``.
        decay: EMA factor $\beta \in [0, 1)$: $\hat m_b \leftarrow \beta \hat m_b + (1-\beta)\bar m_b$.
        delta: defensive fraction $\delta \in (0, 1]$.

    Example:
        >>> ap = AdaptiveProposal([0.25] * 4, n_bins=2, decay=0.0, delta=0.5)
        >>> ap.update([0, 3], [1.0, 9.0])
        >>> ap.proposal().tolist()
        [0.1875, 0.1875, 0.3125, 0.3125]
    """

    def __init__(self, p, n_bins: int | None = None, decay: float = 0.9, delta: float = 0.1):
        self.p = as_pmf("p", p).copy()
        T = self.p.size
        self.n_bins = min(20, T) if n_bins is None else as_int("n_bins", n_bins, minimum=1)
        if self.n_bins > T:
            raise ValueError(f"n_bins must be <= len(p) = {T}, got {self.n_bins}")
        self.decay = _check_decay("decay", decay)
        self.delta = as_real("delta", delta, positive=True, upper=1.0)
        # Bin b holds timesteps [edges[b], edges[b+1]).
        self.edges = np.linspace(0, T, self.n_bins + 1).round().astype(np.int64)
        self.bin_index = np.searchsorted(self.edges, np.arange(T), side="right") - 1
        self.second_moment = np.ones(self.n_bins)
        self.counts = np.zeros(self.n_bins, dtype=np.int64)

    def proposal(self) -> np.ndarray:
        r"""The current $q$, shape ``(T,)``."""
        q_hat = _normalise("p * sqrt(m_hat)", self.p * np.sqrt(self.second_moment[self.bin_index]))
        return (1.0 - self.delta) * q_hat + self.delta * self.p

    def update(self, t, sq_norm) -> None:
        r"""Fold observed $\lVert f(x, t, \epsilon)\rVert^2$ at integer timesteps ``t`` into $\hat m$.

        With $\bar m_b$ the mean of ``sq_norm`` over the entries of ``t`` in bin $b$,
        $\hat m_b \leftarrow \beta\,\hat m_b + (1-\beta)\,\bar m_b$; a bin's first observation
        replaces the prior $\hat m_b = 1$. ``t`` and ``sq_norm`` have the same shape (entry
        $i$ of one pairs with entry $i$ of the other). $\bar m_b$ is summed on values
        scaled by a power of two near the bin's largest value, so it never overflows (it
        is at most that value) and $q$ stays a valid pmf for any finite input.
        Validates everything before changing any state.
        """
        # 1. Validate: same shape, integer timesteps in range, finite non-negative norms.
        t = as_float_array("t", t, allow_empty=True, bool_means="integer timesteps")
        sq = as_float_array("sq_norm", sq_norm, allow_empty=True)
        if t.shape != sq.shape:
            raise ValueError(f"t and sq_norm must have the same shape, got {t.shape} and {sq.shape}")
        t, sq = t.ravel(), sq.ravel()
        if np.any(t != np.round(t)) or (t.size and (t.min() < 0 or t.max() >= self.p.size)):
            raise ValueError(f"t must hold integer timesteps in [0, {self.p.size}), got {t[:5]}...")
        if np.any(sq < 0):
            j = int(np.argmax(sq < 0))
            raise ValueError(f"sq_norm must be non-negative, got sq_norm[{j}] = {sq[j]}")
        n, mean = self._bin_means(t.astype(np.int64), sq)
        self.update_bins(n, mean)

    def _bin_means(self, t: np.ndarray, sq: np.ndarray):
        # Per-bin means of sq scaled by a power of two (exact) at or above the bin's
        # largest value, so the sums cannot overflow; a mean never exceeds that largest value.
        bins = self.bin_index[t]
        n = np.bincount(bins, minlength=self.n_bins)
        top = np.zeros(self.n_bins)
        np.maximum.at(top, bins, sq)
        e = np.frexp(top)[1]
        s = np.bincount(bins, weights=np.ldexp(sq, -e[bins]), minlength=self.n_bins)
        with np.errstate(over="ignore"):
            mean = np.minimum(np.ldexp(np.divide(s, n, out=np.zeros(self.n_bins), where=n > 0), e), top)
        return n, mean

    def update_bins(self, n, mean) -> None:
        r"""Fold per-bin counts $n_b$ and means $\bar m_b$ into $\hat m$ (what :meth:`update` computes
        from $t$ and $\lVert f\rVert^2$; across processes, the all-reduced ones).

        $\hat m_b \leftarrow \beta\,\hat m_b + (1-\beta)\,\bar m_b$ where $n_b > 0$ (a bin's
        first observation replaces the prior); means are capped at the largest float64.
        """
        n = np.asarray(n)
        if n.shape != (self.n_bins,) or n.dtype.kind not in "iu" or np.any(n < 0):
            raise ValueError(f"n must hold {self.n_bins} non-negative integer bin counts, got {n!r}")
        with np.errstate(invalid="ignore"):  # +inf (an overflowed sum) becomes the largest float
            mean = np.minimum(np.asarray(mean, dtype=np.float64), np.finfo(np.float64).max)
        mean = as_float_array("mean", mean, ndim=1)
        if mean.shape != (self.n_bins,) or np.any(mean < 0):
            raise ValueError(f"mean must hold {self.n_bins} non-negative bin means, got {mean!r}")
        seen = n > 0
        with np.errstate(over="ignore"):
            # EMA, clipped to [min, max] of its two terms (where it lies in exact arithmetic).
            old = self.second_moment
            ema = np.clip(self.decay * old + (1 - self.decay) * mean,
                          np.minimum(old, mean), np.maximum(old, mean))
        m = np.where(seen & (self.counts > 0), ema, np.where(seen, mean, old))
        # An all-zero bin would starve; keep it at the smallest positive level (> 0 in float64).
        positive = m[m > 0]
        floor = max(positive.min() * 1e-6, np.finfo(np.float64).tiny) if positive.size else 1.0
        self.second_moment = np.maximum(m, floor)
        self.counts = self.counts + n

    def state_dict(self) -> dict:
        """A JSON-serialisable snapshot that :meth:`load_state_dict` restores exactly."""
        return {
            "p": self.p.tolist(),
            "n_bins": self.n_bins,
            "decay": self.decay,
            "delta": self.delta,
            "second_moment": self.second_moment.tolist(),
            "counts": self.counts.tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a snapshot from :meth:`state_dict` (same ``p`` and ``n_bins``).

        The whole snapshot is validated first, each error naming its field; a failed
        load leaves the proposal unchanged.
        """
        decay, delta, m, counts = self._checked_state(state)
        self.decay, self.delta = decay, delta
        self.second_moment, self.counts = m, counts

    def _checked_state(self, state):
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from state_dict(), got {type(state).__name__}")
        missing = [k for k in ("p", "n_bins", "decay", "delta", "second_moment", "counts")
                   if k not in state]
        if missing:
            raise ValueError(f"state lacks the field(s) {missing}; it is not an AdaptiveProposal.state_dict()")
        p = as_float_array("state['p']", state["p"], ndim=1)
        if p.shape != self.p.shape:
            raise ValueError(f"state['p']: the checkpoint's p has {p.size} entries, "
                             f"this proposal's has {self.p.size}")
        if not np.array_equal(p, self.p):
            j = int(np.argmax(p != self.p))
            raise ValueError(f"state['p'] differs from this proposal's p (first at index {j}: "
                             f"{p[j]} vs {self.p[j]})")
        n_bins = as_int("state['n_bins']", state["n_bins"], minimum=1)
        if n_bins != self.n_bins:
            raise ValueError(f"state['n_bins'] = {n_bins} differs from n_bins = {self.n_bins}")
        decay = _check_decay("state['decay']", state["decay"])
        delta = as_real("state['delta']", state["delta"], positive=True, upper=1.0)
        m = as_float_array("state['second_moment']", state["second_moment"], ndim=1)
        if m.shape != (self.n_bins,):
            raise ValueError(f"state['second_moment'] must have {self.n_bins} entries (one per bin), "
                             f"got {m.size}")
        if np.any(m <= 0):
            j = int(np.argmax(m <= 0))
            raise ValueError(f"state['second_moment'] must be positive, got "
                             f"state['second_moment'][{j}] = {m[j]}")
        counts = np.asarray(state["counts"])
        if counts.dtype == bool or not np.issubdtype(counts.dtype, np.integer):
            raise TypeError(f"state['counts'] must hold integers, got dtype {counts.dtype}")
        if counts.shape != (self.n_bins,):
            raise ValueError(f"state['counts'] must have shape ({self.n_bins},) (one per bin), "
                             f"got {counts.shape}")
        if np.any(counts < 0):
            j = int(np.argmax(counts < 0))
            raise ValueError(f"state['counts'] must be >= 0, got state['counts'][{j}] = {counts[j]}")
        return decay, delta, m.copy(), counts.astype(np.int64)

    @classmethod
    def from_state_dict(cls, state: dict) -> "AdaptiveProposal":
        """Build a proposal from a snapshot."""
        if not isinstance(state, dict) or "p" not in state or "n_bins" not in state:
            raise ValueError("state must be a dict from AdaptiveProposal.state_dict() (with 'p' and 'n_bins')")
        p = as_pmf("state['p']", state["p"])
        n_bins = as_int("state['n_bins']", state["n_bins"], minimum=1)
        if n_bins > p.size:
            raise ValueError(f"state['n_bins'] = {n_bins} exceeds len(state['p']) = {p.size}")
        out = cls(p, n_bins=n_bins)
        out.load_state_dict(state)
        return out
