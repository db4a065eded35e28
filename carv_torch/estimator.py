r"""The hierarchical estimator and its variance estimates, on tensors.

With $R$ upstream samples and $K$ inner draws each, $Y_{rk} = \tilde w_{rk}\, f(x_r, t_{rk}, \epsilon_{rk})$,

$$ \hat G = \frac1R \sum_r \bar Y_r, \qquad \bar Y_r = \frac1K \sum_k Y_{rk}, $$

with the unbiased $\widehat{\operatorname{Var}}\hat G = \frac{1}{R(R-1)}\sum_r\lVert\bar Y_r - \hat G\rVert^2$
and the ANOVA components of :mod:`carv_core.estimator` (whose docstring has the
derivations and the caveat for stratified inner draws).

Everything here stays on the device of ``values``: scalar results are 0-dim
tensors, not Python floats, so no function forces a host sync (call
``.item()`` when a number is needed). The only syncs are the optional value
checks (non-finite entries), switched off with :func:`carv_torch.set_validate_args`,
and :meth:`Welford.state_dict`, which writes plain numbers.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from carv_core._validation import as_float_array, as_real

from ._validation import as_device, as_dtype, as_int, as_tensor, check_finite, is_validating

__all__ = ["HierarchicalEstimate", "VarianceComponents", "hierarchical_estimate",
           "variance_components", "split_half_components", "Welford"]


class HierarchicalEstimate(NamedTuple):
    r"""$\hat G$ (shape ``D``), the row means $\bar Y_r$ (shape ``(R, *D)``) and $\widehat{\operatorname{Var}}\hat G$.

    ``variance`` is a 0-dim tensor on the device of ``mean`` (``nan`` when $R = 1$).
    """

    mean: torch.Tensor
    row_means: torch.Tensor
    variance: torch.Tensor


class VarianceComponents(NamedTuple):
    r"""ANOVA estimates $\hat\sigma_B^2$, $\hat\sigma_W^2$ and their mean squares, as 0-dim tensors."""

    sigma_b2: torch.Tensor
    sigma_w2: torch.Tensor
    ms_between: torch.Tensor
    ms_within: torch.Tensor


# (mantissa bits, exponent bias, integer dtype of the same width) of each floating dtype.
_BITS = {torch.float64: (52, 1023, torch.int64), torch.float32: (23, 127, torch.int32),
         torch.float16: (10, 15, torch.int16), torch.bfloat16: (7, 127, torch.int16)}


def _times_pow2(a: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    r"""$a\,2^e$ for an integer 0-dim tensor ``e`` (a frexp exponent of ``a``'s dtype), exact
    unless the result leaves the normal range: two factors $2^h$, $2^{e - h}$ with
    $h = \lfloor e/2 \rfloor$, each a normal number built from its bits (no host read)."""
    mant, bias, idtype = _BITS[a.dtype]
    half = torch.div(e, 2, rounding_mode="floor")
    out = a
    for k in (half, e - half):
        out = out * ((k.to(idtype) + bias) << mant).view(a.dtype)
    return out


def _pow2_exponent(a: torch.Tensor) -> torch.Tensor:
    # e with max|a| = m 2^e, m in [1/2, 1) (0 for an empty or all-zero a; a is detached).
    if a.numel() == 0:
        return torch.zeros((), dtype=torch.int32, device=a.device)
    return torch.frexp(a.detach().abs().amax())[1]


def _weighted_values(values, weights):
    r"""$Y = \tilde w f$ as ``(Y 2^{-e}, e, values, weights)``, as in :mod:`carv_core.estimator`:
    a power-of-two rescaling of ``values`` and ``weights`` (exact; no host read) keeps every
    sum finite. The value checks are the caller's (:func:`_check_scaled`, one read)."""
    Y = as_tensor("values", values, min_ndim=2)
    w = None
    if weights is not None:
        w = as_tensor("weights", weights, ndim=2, device=Y.device, other="values")
        if w.shape != Y.shape[:2]:
            raise ValueError(
                f"weights must have shape (R, K) = {tuple(Y.shape[:2])} like values, got {tuple(w.shape)}"
            )
        w = w.to(Y.dtype)
    e = _pow2_exponent(Y)
    Ys = _times_pow2(Y, -e)
    if w is not None:
        e_w = _pow2_exponent(w)
        Ys = Ys * _times_pow2(w, -e_w).reshape(w.shape + (1,) * (Y.ndim - 2))
        e = e + e_w
    return Ys, e, Y, w


def _check_scaled(Y, w, results) -> None:
    # The value checks of a scaled estimate in one host read: finite inputs (else named by
    # check_finite) and finite results (else the rescaled sums overflowed, as in carv_core).
    if not is_validating() or Y.device.type == "meta":
        return
    facts = [torch.isfinite(Y).all(), torch.ones((), dtype=torch.bool, device=Y.device)
             if w is None else torch.isfinite(w).all()]
    facts.append(torch.stack([torch.isfinite(r).all() for _, r in results]).all())
    ok_y, ok_w, ok_out = torch.stack(facts).tolist()
    if not ok_y:
        check_finite("values", Y)
    if not ok_w:
        check_finite("weights", w)
    if not ok_out:
        bad = next(name for name, r in results if not bool(torch.isfinite(r).all()))
        raise ValueError(f"values (times weights) are too large: {bad} overflows {Y.dtype}; "
                         "rescale values")


def hierarchical_estimate(values, weights=None) -> HierarchicalEstimate:
    r"""$\hat G = \frac{1}{RK}\sum_{r,k}\tilde w_{rk} f_{rk}$ and its unbiased variance estimate.

    Computed in the dtype and on the device of ``values``, on a power-of-two rescaling of
    ``values`` and ``weights`` (exact, as :func:`carv_core.hierarchical_estimate`), so huge
    entries do not overflow the sums. With validation on, one host read checks that the
    inputs and the results are finite (a result beyond the dtype's range raises ``ValueError``).

    Args:
        values: $f(x_r, t_{rk}, \epsilon_{rk})$, floating tensor of shape ``(R, K, *D)``.
        weights: importance weights $\tilde w_{rk}$, shape ``(R, K)``, same device; ``None`` for ones.

    Example:
        >>> est = hierarchical_estimate(torch.tensor([[1.0, 3.0], [5.0, 7.0]]))
        >>> est.mean.item(), est.variance.item()
        (4.0, 4.0)
    """
    Ys, e, Y, w = _weighted_values(values, weights)
    mean_s, row_s, var_s = _hierarchical(Ys)
    out = HierarchicalEstimate(_times_pow2(mean_s, e), _times_pow2(row_s, e),
                               _times_pow2(_times_pow2(var_s, e), e))
    _check_scaled(Y, w, [("the mean", out.mean), ("a row mean", out.row_means),
                         ("the variance", out.variance if Y.shape[0] > 1 else out.mean)])
    return out


def _between(Y: torch.Tensor):
    # Ybar_r, G and S_B = sum_r ||Ybar_r - G||^2 (None when R = 1): what both
    # estimates read, so a caller that needs both computes them once.
    row_means = Y.mean(dim=1)
    mean = row_means.mean(dim=0)
    s_b = torch.sum((row_means - mean) ** 2) if Y.shape[0] > 1 else None
    return row_means, mean, s_b


def _hierarchical(Y: torch.Tensor, parts=None) -> HierarchicalEstimate:
    # The maths of hierarchical_estimate on already-weighted, already-checked Y
    # (``parts``: _between(Y), when the caller has it).
    R = Y.shape[0]
    row_means, mean, s_b = _between(Y) if parts is None else parts
    if s_b is not None:
        variance = s_b / (R * (R - 1))
    else:
        variance = torch.full((), float("nan"), dtype=Y.dtype, device=Y.device)
    return HierarchicalEstimate(mean, row_means, variance)


def variance_components(values, weights=None) -> VarianceComponents:
    r"""ANOVA estimates of $\sigma_B^2$ and $\sigma_W^2$ (traces) from ``(R, K, *D)`` values.

    $\mathrm{MS}_W = \frac{1}{R(K-1)}\sum_{r,k}\lVert Y_{rk}-\bar Y_r\rVert^2$,
    $\mathrm{MS}_B = \frac{K}{R-1}\sum_r\lVert\bar Y_r-\hat G\rVert^2$,
    $\hat\sigma_W^2 = \mathrm{MS}_W$, $\hat\sigma_B^2 = (\mathrm{MS}_B - \mathrm{MS}_W)/K$ (not clipped).
    Needs $R \ge 2$ and $K \ge 2$; rescaled and checked (one read) as :func:`hierarchical_estimate`.

    Example:
        >>> vc = variance_components(torch.tensor([[1.0, 3.0], [5.0, 7.0]]))
        >>> vc.sigma_w2.item(), vc.sigma_b2.item()
        (2.0, 7.0)
    """
    Ys, e, Y, w = _weighted_values(values, weights)
    R, K = Y.shape[:2]
    if R < 2 or K < 2:
        raise ValueError(
            f"variance_components needs R >= 2 and K >= 2, got values of shape {tuple(Y.shape)}"
        )
    out = VarianceComponents(*(_times_pow2(_times_pow2(v, e), e) for v in _anova(Ys)))
    _check_scaled(Y, w, [("sigma_b2", out.sigma_b2), ("MS_W", out.ms_within), ("MS_B", out.ms_between)])
    return out


def _anova(Y: torch.Tensor, parts=None) -> VarianceComponents:
    # The maths of variance_components on already-weighted, already-checked Y (R, K >= 2;
    # ``parts``: _between(Y), when the caller has it).
    R, K = Y.shape[:2]
    row_means, _, s_b = _between(Y) if parts is None else parts
    ms_within = torch.sum((Y - row_means[:, None]) ** 2) / (R * (K - 1))
    ms_between = K * s_b / (R - 1)
    return VarianceComponents((ms_between - ms_within) / K, ms_within, ms_between, ms_within)


def split_half_components(half_a, half_b, row_means, h: int) -> VarianceComponents:
    r"""$\sigma_B^2$, $\sigma_W^2$ of a derived quantity from split halves of i.i.d. inner draws.

    The components of :func:`variance_components` live in the space of $Y$; what an
    allocation needs is the variance of a *linear image* of it (a parameter gradient
    $J_r^\top Y_{rk}$), which a few vector-Jacobian products give without forming
    every draw's image. Split each row's first $2h$ draws into halves $A$, $B$ of $h$,
    and pass, already mapped into the space of interest,

    * ``half_a`` $= V_A = \frac1R\sum_r J_r^\top \bar Y_{rA}$ and ``half_b`` $= V_B$ likewise,
    * ``row_means`` $u_r = J_r^\top \bar Y_{r}$ (mean of the $2h$ draws), shape ``(R, *D)``.

    With i.i.d. inner draws, $\operatorname{Var}(V_A - V_B) = 2\sigma_W^2/(Rh)$ and
    $\mathbb E\,S^2 = \sigma_B^2 + \sigma_W^2/(2h)$ for $S^2 = \frac1{R-1}\sum_r\lVert u_r - \bar u\rVert^2$, so

    $$ \hat\sigma_W^2 = \tfrac{Rh}{2}\lVert V_A - V_B\rVert^2, \qquad
       \hat\sigma_B^2 = S^2 - \hat\sigma_W^2/(2h) $$

    are unbiased (traces; $\hat\sigma_B^2$ is not clipped). Returned as
    :class:`VarianceComponents` with $\mathrm{MS}_B = 2h\,S^2$, $\mathrm{MS}_W = \hat\sigma_W^2$.
    Needs $R \ge 2$; no host sync.

    Example:
        >>> vc = split_half_components(torch.tensor([1.0]), torch.tensor([0.0]),
        ...                            torch.tensor([[0.0], [2.0]]), h=1)
        >>> vc.sigma_w2.item(), vc.sigma_b2.item()
        (1.0, 1.5)
    """
    h = as_int("h", h, minimum=1)
    u = as_tensor("row_means", row_means, min_ndim=1)
    a = as_tensor("half_a", half_a, device=u.device, other="row_means")
    b = as_tensor("half_b", half_b, device=u.device, other="row_means")
    R = u.shape[0]
    if R < 2:
        raise ValueError(f"split_half_components needs R >= 2 rows in row_means, got shape {tuple(u.shape)}")
    if a.shape != u.shape[1:] or b.shape != u.shape[1:]:
        raise ValueError(
            f"half_a and half_b must have shape {tuple(u.shape[1:])} like one row of row_means, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    for name, v in (("half_a", a), ("half_b", b), ("row_means", u)):
        check_finite(name, v)
    return _split_half(a, b, u, h)


def _split_half(a: torch.Tensor, b: torch.Tensor, u: torch.Tensor, h: int) -> VarianceComponents:
    # The maths of split_half_components on checked inputs.
    R = u.shape[0]
    sigma_w2 = 0.5 * R * h * torch.sum((a - b) ** 2)
    s2 = torch.sum((u - u.mean(dim=0)) ** 2) / (R - 1)
    return VarianceComponents(s2 - sigma_w2 / (2 * h), sigma_w2, 2 * h * s2, sigma_w2)


class Welford:
    r"""Streaming mean and $\operatorname{tr}\operatorname{Cov}$ of vectors, accumulated on device.

    Keeps $n$ (a Python int: batch sizes are known on the host), $\bar x$ and
    $M_2 = \sum_i \lVert x_i - \bar x\rVert^2$ as tensors in ``dtype`` (float64 by
    default, whatever the dtype of the inputs); batches merge with Chan et al.'s
    update. $\frac1n\sum_i\lVert x_i - g\rVert^2 = \frac{M_2}{n} + \lVert\bar x - g\rVert^2$.

    Args:
        device: where to accumulate (default: the device of the first batch).
        dtype: accumulation dtype.

    Example:
        >>> acc = Welford()
        >>> acc.update(torch.tensor([[1.0, 0.0], [3.0, 0.0]]))
        >>> acc.count, acc.mean.tolist(), acc.trace_cov.item()
        (2, [2.0, 0.0], 2.0)
    """

    def __init__(self, *, device=None, dtype: torch.dtype = torch.float64):
        self.device = as_device("device", device)
        self.dtype = as_dtype("dtype", dtype)
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2 = torch.zeros((), dtype=self.dtype, device=self.device)

    def update(self, x) -> None:
        """Add one vector (shape ``(D,)``) or a batch (shape ``(N, *D)``, flattened to ``(N, D)``)."""
        x = as_tensor("x", x, min_ndim=1, device=self.device, other="the accumulator")
        x = x.detach()  # statistics only: keeping x's graph would grow memory every update
        check_finite("x", x)
        if self.device is None:
            self.device = x.device
            self.m2 = self.m2.to(self.device)
        batch = (x[None, :] if x.ndim == 1 else x.reshape(x.shape[0], -1)).to(self.dtype)
        if self.mean is not None and batch.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"x has dimension {batch.shape[1]}, the accumulator has {self.mean.shape[0]}"
            )
        n_b = batch.shape[0]
        mean_b = batch.mean(dim=0)
        m2_b = torch.sum((batch - mean_b) ** 2)
        if self.mean is None:
            self.count, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + torch.dot(delta, delta) * (self.count * n_b / n)
        self.count = n

    @property
    def trace_cov(self) -> torch.Tensor:
        r"""Unbiased $\operatorname{tr}\widehat{\operatorname{Cov}} = M_2/(n-1)$, 0-dim (``nan`` when $n < 2$)."""
        if self.count > 1:
            return self.m2 / (self.count - 1)
        return torch.full((), float("nan"), dtype=self.dtype, device=self.m2.device)

    def mse(self, reference) -> torch.Tensor:
        r"""$\frac1n\sum_i \lVert x_i - g\rVert^2$ for a reference $g$ with $D$ entries, 0-dim."""
        if self.mean is None:
            raise ValueError("mse needs at least one update")
        g = as_tensor("reference", reference, device=self.mean.device, other="the accumulator")
        check_finite("reference", g)
        g = g.reshape(-1).to(self.dtype)
        if g.shape != self.mean.shape:
            raise ValueError(f"reference must have {self.mean.numel()} entries, got {g.numel()}")
        return self.m2 / self.count + torch.sum((self.mean - g) ** 2)

    def state_dict(self) -> dict:
        """Plain numbers in :meth:`carv_core.Welford.state_dict`'s format (syncs)."""
        return {"count": self.count,
                "mean": None if self.mean is None else self.mean.tolist(),
                "m2": float(self.m2)}

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict` of either backend, onto :attr:`device` (CPU if unset).

        The whole state is validated first (``count`` an integer >= 0, ``mean`` ``None`` or
        finite and 1-D, of the accumulator's dimension when it has one, and ``None`` exactly
        when ``count`` is 0, ``m2`` finite and >= 0); a failed load leaves the accumulator unchanged.
        """
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict (Welford.state_dict()), got {type(state).__name__}")
        missing = sorted({"count", "mean", "m2"} - set(state))
        if missing:
            raise ValueError(f"state lacks key(s) {missing} (expected count, mean, m2)")
        count = as_int("state['count']", state["count"], minimum=0)
        mean = None
        if state["mean"] is not None:
            mean = as_float_array("state['mean']", state["mean"], ndim=1)
            if self.mean is not None and mean.shape != tuple(self.mean.shape):
                raise ValueError(f"state['mean'] has {mean.size} entries, but this accumulator has "
                                 f"dimension {self.mean.shape[0]} (from its updates)")
        if (mean is None) != (count == 0):
            raise ValueError(f"state['mean'] must be None exactly when state['count'] is 0, got "
                             f"count {count} and {'no mean' if mean is None else 'a mean'}")
        m2 = as_real("state['m2']", state["m2"], nonnegative=True)
        device = self.device if self.device is not None else torch.device("cpu")
        self.count = count
        self.mean = None if mean is None else torch.as_tensor(mean, dtype=self.dtype, device=device)
        self.m2 = torch.as_tensor(m2, dtype=self.dtype, device=device)
        self.device = device

