r"""Timestep proposals $q(t)$ and importance weights $\tilde w = p/q$ on tensors.

$\mathbb E_q[\tilde w f] = \mathbb E_p[f]$ whenever $q > 0$ wherever $p > 0$
(see :mod:`carv_core.proposals` for the maths). The per-step lookup
:func:`importance_weights` runs on the device of its inputs; the proposals that
are built once per run (:func:`weight_heuristic`, :func:`oracle_proposal`) and the
small per-bin state of :class:`AdaptiveProposal` are computed on the host by
:mod:`carv_core.proposals` and moved to the device.
"""

from __future__ import annotations

import carv_core
import carv_core._validation
import numpy as np
import torch
from carv_core._validation import as_real

from ._validation import (as_device, as_dtype, as_pmf64, as_tensor, check_adaptive_state,
                          check_not_meta, check_same_shape, check_support, from_host, host_pmf,
                          low_precision, to_numpy)

__all__ = [
    "importance_weights", "defensive_mixture", "weight_heuristic", "oracle_proposal",
    "AdaptiveProposal",
]


def _anchor(*values) -> torch.device | None:
    """The device of the first tensor among ``values`` (the one the others must share)."""
    for value in values:
        if isinstance(value, torch.Tensor):
            return value.device
    return None


def pmf_pair(p_name: str, p, q_name: str, q, *, device: torch.device | None = None,
             other: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
    """Two 1-D pmfs of equal shape on one device, as float64 (:func:`~carv_torch._validation.as_pmf64`:
    each checked at its own dtype's tolerance, gated by validation, and a lower-precision one
    renormalised in float64), and the promoted dtype of the inputs (the dtype results are returned in)."""
    p, q = low_precision(p), low_precision(q)
    device = device or _anchor(p, q)
    p = as_tensor(p_name, p, ndim=1, device=device, other=other or p_name)
    q = as_tensor(q_name, q, ndim=1, device=p.device, other=other or p_name)
    check_same_shape(p_name, p, q_name, q)
    dtype = torch.promote_types(p.dtype, q.dtype)
    return as_pmf64(p_name, p), as_pmf64(q_name, q), dtype


def ratio(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """$p/q$ in float64, zero where $p = 0$ (inputs already checked)."""
    p64, q64 = p.to(torch.float64), q.to(torch.float64)
    return torch.where(p64 > 0, p64 / q64, torch.zeros_like(p64))


def importance_weights(p, q) -> torch.Tensor:
    r"""$\tilde w(t) = p(t)/q(t)$, shape ``(T,)``; zero where $p(t) = 0$.

    Computed in float64 on the device of the inputs (a lower-precision pmf is checked at
    its own dtype's tolerance and renormalised in float64 first, so a float16 uniform
    $p = q$ gives weights of exactly 1) and returned in their promoted dtype. With
    validation on, raises ``ValueError`` naming the first index where $q = 0 < p$ (a
    sync); shape, dtype and device checks always run.

    Example:
        >>> importance_weights(torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75])).tolist()
        [2.0, 0.6666666865348816]
    """
    p, q, dtype = pmf_pair("p", p, "q", q)
    check_support(p, q)
    return ratio(p, q).to(dtype)


def defensive_mixture(q_hat, p, delta: float) -> torch.Tensor:
    r"""$q = (1 - \delta)\,\hat q + \delta\,p$, so that $p/q \le 1/\delta$, on the inputs' device.

    Example:
        >>> q_hat, p = torch.tensor([1.0, 0.0]).double(), torch.tensor([0.5, 0.5]).double()
        >>> defensive_mixture(q_hat, p, 0.2).tolist()
        [0.9, 0.1]
    """
    q_hat, p, dtype = pmf_pair("q_hat", q_hat, "p", p)
    delta = as_real("delta", delta, nonnegative=True, upper=1.0)
    return ((1.0 - delta) * q_hat + delta * p).to(dtype)


def _on_host(fn, p, factor_name: str, factor, delta):
    """Run a carv_core proposal builder and return its result where ``p`` lives."""
    device = _anchor(p, factor)
    p_t = as_tensor("p", low_precision(p), ndim=1, device=device, other="p")
    factor_t = as_tensor(factor_name, factor, device=p_t.device, other="p")
    q = fn(host_pmf("p", p_t), to_numpy(factor_name, factor_t), delta)
    return from_host(q, device=p_t.device, dtype=p_t.dtype)


def weight_heuristic(p, w_sds, delta: float = 0.0) -> torch.Tensor:
    r"""The weight-heuristic proposal $q \propto p\,w_{\rm SDS}$, optionally mixed with $p$.

    Built once per run on the host (:func:`carv_core.weight_heuristic`), returned
    on the device and dtype of ``p``.

    Args:
        p: target pmf, shape ``(T,)``.
        w_sds: the factor multiplying the residual (:func:`carv_torch.sds_weight`), shape ``(T,)``.
        delta: defensive-mixture fraction $\delta \in [0, 1]$.

    Example:
        >>> weight_heuristic(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 3.0])).tolist()
        [0.25, 0.75]
    """
    return _on_host(carv_core.weight_heuristic, p, "w_sds", w_sds, delta)


def oracle_proposal(p, second_moment, delta: float = 0.0) -> torch.Tensor:
    r"""The variance-optimal proposal $q^\star \propto p\sqrt{m}$ from $m(t) = \mathbb E[\lVert f\rVert^2 \mid t]$.

    Built on the host (:func:`carv_core.oracle_proposal`), returned on the device and dtype of ``p``.

    Example:
        >>> oracle_proposal(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 9.0])).tolist()
        [0.25, 0.75]
    """
    return _on_host(carv_core.oracle_proposal, p, "second_moment", second_moment, delta)


def _check_dict(state) -> None:
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict (a proposal's state_dict()), got {type(state).__name__}")


def _check_update(t, sq_norm) -> None:
    # Structural checks (metadata only): equal shapes (a transposed sq_norm would pair norms
    # with the wrong timesteps) and integer-valued t that is no bool (True would be step 1);
    # no meta tensors (their values are copied to the host).
    for name, value in (("t", t), ("sq_norm", sq_norm)):
        if isinstance(value, torch.Tensor):
            check_not_meta(name, value)
    dtype = t.dtype if isinstance(t, torch.Tensor) else np.asarray(t).dtype
    if (isinstance(dtype, torch.dtype) and dtype.is_complex) or getattr(dtype, "kind", "") == "c":
        raise TypeError(f"t must hold integer timesteps, got complex dtype {dtype}")
    if dtype == torch.bool or getattr(dtype, "kind", "") == "b":
        raise TypeError(f"t must hold integer timesteps, got dtype {dtype}")
    shape_t, shape_s = tuple(np.shape(t)), tuple(np.shape(sq_norm))
    size_t, size_s = int(np.prod(shape_t)), int(np.prod(shape_s))
    if size_t != size_s:  # the core's message
        raise ValueError(f"t and sq_norm must have the same size, got {size_t} and {size_s}")
    if shape_t != shape_s:
        raise ValueError(f"t and sq_norm must have the same shape, got {shape_t} and {shape_s}")


class AdaptiveProposal(carv_core.AdaptiveProposal):
    r""":class:`carv_core.AdaptiveProposal` fed with tensors, returning $q$ as a tensor.

    $q = (1-\delta)\,\mathrm{normalise}(p\sqrt{\hat m_{b(t)}}) + \delta p$, with $\hat m_b$ an
    exponential moving average of $\lVert f\rVert^2$ per bin of timesteps. The state is
    the core's (``n_bins`` floats on the host), so :meth:`state_dict` has exactly the
    core's format and checkpoints move freely between the two backends.
    :meth:`update` copies its ``R*K`` inputs to the host (one small sync per step).

    Args:
        p: target pmf, shape ``(T,)`` (tensor or array).
        n_bins, decay, delta: as in :class:`carv_core.AdaptiveProposal`.
        device: where :meth:`proposal` returns $q$ (default: the device of ``p``, else CPU).
        dtype: dtype of the returned $q$.

    Example:
        >>> ap = AdaptiveProposal(torch.full((4,), 0.25), n_bins=2, decay=0.0, delta=0.5)
        >>> ap.update(torch.tensor([0, 3]), torch.tensor([1.0, 9.0]))
        >>> ap.proposal().tolist()
        [0.1875, 0.1875, 0.3125, 0.3125]
    """

    def __init__(self, p, n_bins: int | None = None, decay: float = 0.9, delta: float = 0.1, *,
                 device=None, dtype: torch.dtype = torch.float64):
        device = as_device("device", device)
        if device is None and isinstance(p, torch.Tensor):
            device = p.device
        super().__init__(host_pmf("p", p), n_bins=n_bins, decay=decay, delta=delta)
        self.device = device if device is not None else torch.device("cpu")
        self.dtype = as_dtype("dtype", dtype)

    def proposal(self) -> torch.Tensor:
        r"""The current $q$, shape ``(T,)``, on :attr:`device` in :attr:`dtype`."""
        return from_host(super().proposal(), device=self.device, dtype=self.dtype)

    def update(self, t, sq_norm) -> None:
        r"""Fold observed $\lVert f(x, t, \epsilon)\rVert^2$ at integer timesteps ``t`` into $\hat m$.

        ``t`` may be an integer tensor (as :func:`carv_torch.timesteps_from_uniforms`
        returns); ``sq_norm`` a floating tensor of the same size. Both are copied to
        the host.
        """
        _check_update(t, sq_norm)
        if isinstance(t, torch.Tensor):
            t = t.detach().to("cpu", torch.float64).numpy()
        if isinstance(sq_norm, torch.Tensor):
            sq_norm = to_numpy("sq_norm", sq_norm)
        super().update(t, sq_norm)

    def load_state_dict(self, state: dict) -> None:
        """Restore a snapshot (of either backend): every field is validated first (same ``p``
        and ``n_bins``), so a failed load leaves the proposal unchanged."""
        checked = check_adaptive_state(state, self.p.size)
        if not np.array_equal(checked["p"], self.p):
            raise ValueError("state['p'] differs from this proposal's p")
        if checked["n_bins"] != self.n_bins:
            raise ValueError(f"state['n_bins'] = {checked['n_bins']} differs from n_bins = {self.n_bins}")
        super().load_state_dict(state)

    @classmethod
    def from_state_dict(cls, state: dict, *, device=None,
                        dtype: torch.dtype = torch.float64) -> "AdaptiveProposal":
        """Build a proposal from a snapshot (of either backend)."""
        out = cls(state["p"], n_bins=int(state["n_bins"]), decay=state["decay"],
                  delta=state["delta"], device=device, dtype=dtype)
        out.load_state_dict(state)
        return out
