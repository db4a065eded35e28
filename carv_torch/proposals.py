r"""Timestep proposals $q(t)$ and importance weights $\tilde w = p/q$ on tensors.

$\mathbb E_q[\tilde w f] = \mathbb E_p[f]$ whenever $q > 0$ wherever $p > 0$
(see :mod:`carv_core.proposals` for the maths). The per-step lookup
:func:`importance_weights` runs on the device of its inputs; the proposals that
are built once per run (:func:`weight_heuristic`, :func:`oracle_proposal`) and the
small per-bin state of :class:`AdaptiveProposal` are computed on the host by
:mod:`carv_core.proposals` and moved to the device.
"""

from __future__ import annotations

import inspect

import carv_core
import carv_core._validation
import numpy as np
import torch
from carv_core._validation import as_real

from ._validation import (
    as_device,
    as_dtype,
    as_tensor,
    check_pmf,
    check_same_shape,
    check_support,
    from_host,
    host_pmf,
    to_numpy,
)

__all__ = [
    "importance_weights",
    "defensive_mixture",
    "weight_heuristic",
    "oracle_proposal",
    "AdaptiveProposal",
    "Proposal",
    "UniformProposal",
    "WeightHeuristicProposal",
    "FixedProposal",
    "OracleProposal",
    "OnlineProposal",
    "PROPOSALS",
    "as_proposal",
]


def _anchor(*values) -> torch.device | None:
    """The device of the first tensor among ``values`` (the one the others must share)."""
    for value in values:
        if isinstance(value, torch.Tensor):
            return value.device
    return None


def pmf_pair(p_name: str, p, q_name: str, q, *, device: torch.device | None = None,
             other: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 1-D pmfs of equal shape on one device (value checks gated by validation)."""
    device = device or _anchor(p, q)
    p = as_tensor(p_name, p, ndim=1, device=device, other=other or p_name)
    q = as_tensor(q_name, q, ndim=1, device=p.device, other=other or p_name)
    check_same_shape(p_name, p, q_name, q)
    check_pmf(p_name, p)
    check_pmf(q_name, q)
    return p, q


def ratio(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """$p/q$ in float64, zero where $p = 0$ (inputs already checked)."""
    p64, q64 = p.to(torch.float64), q.to(torch.float64)
    return torch.where(p64 > 0, p64 / q64, torch.zeros_like(p64))


def importance_weights(p, q) -> torch.Tensor:
    r"""$\tilde w(t) = p(t)/q(t)$, shape ``(T,)``; zero where $p(t) = 0$.

    Computed in float64 on the device of the inputs and returned in their
    promoted dtype. With validation on, raises ``ValueError`` naming the first
    index where $q = 0 < p$ (a sync); shape, dtype and device checks always run.

    Example:
        >>> importance_weights(torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75])).tolist()
        [2.0, 0.6666666865348816]
    """
    p, q = pmf_pair("p", p, "q", q)
    check_support(p, q)
    return ratio(p, q).to(torch.promote_types(p.dtype, q.dtype))


def defensive_mixture(q_hat, p, delta: float) -> torch.Tensor:
    r"""$q = (1 - \delta)\,\hat q + \delta\,p$, so that $p/q \le 1/\delta$, on the inputs' device.

    Example:
        >>> q_hat, p = torch.tensor([1.0, 0.0]).double(), torch.tensor([0.5, 0.5]).double()
        >>> defensive_mixture(q_hat, p, 0.2).tolist()
        [0.9, 0.1]
    """
    q_hat, p = pmf_pair("q_hat", q_hat, "p", p)
    delta = as_real("delta", delta, nonnegative=True, upper=1.0)
    return (1.0 - delta) * q_hat + delta * p


def _on_host(fn, p, factor_name: str, factor, delta):
    """Run a carv_core proposal builder and return its result where ``p`` lives."""
    device = _anchor(p, factor)
    p_t = as_tensor("p", p, ndim=1, device=device, other="p")
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
        if isinstance(t, torch.Tensor):
            if t.is_complex():
                raise TypeError(f"t must hold integer timesteps, got complex dtype {t.dtype}")
            t = t.detach().to("cpu", torch.float64).numpy()
        if isinstance(sq_norm, torch.Tensor):
            sq_norm = to_numpy("sq_norm", sq_norm)
        super().update(t, sq_norm)

    @classmethod
    def from_state_dict(cls, state: dict, *, device=None,
                        dtype: torch.dtype = torch.float64) -> "AdaptiveProposal":
        """Build a proposal from a snapshot (of either backend)."""
        out = cls(state["p"], n_bins=int(state["n_bins"]), decay=state["decay"],
                  delta=state["delta"], device=device, dtype=dtype)
        out.load_state_dict(state)
        return out


# --------------------------------------------------------------------------- proposal objects


class Proposal:
    r"""A rule that gives the proposal $q$ for a target $p$; what :class:`~carv_torch.guidance.CARVGuidance` runs.

    :meth:`pmf` maps the current $p$ and the objective's weight table $w(t)$ (numpy
    float64 arrays of shape ``(T,)``: host-side maths calls :mod:`carv_core`, and a
    table of $T$ numbers never forces a device read) to $q$. The guidance calls it
    only when $p$ changes or after :meth:`update` changed the rule (``adaptive``).
    :meth:`update` is fed each step's draws *after* the estimate, so the next step's
    $q$ is fixed before its draw (which keeps every step unbiased). Implement
    :meth:`pmf` (and, for a learning rule, ``adaptive = True``, :meth:`update`,
    :meth:`state_dict`, :meth:`load_state_dict`) for a new rule.
    """

    adaptive = False

    def pmf(self, p: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """$q$, shape ``(T,)``, positive wherever ``p`` is."""
        raise NotImplementedError(f"{type(self).__name__} must implement pmf(p, weights)")

    def update(self, t: torch.Tensor, sq_norm: torch.Tensor) -> None:
        r"""Fold a step's $t$ and $\lVert f\rVert^2$ in (static rules ignore it)."""

    def state_dict(self) -> dict:
        """Checkpointable state (empty for static rules)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output."""
        if state:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state)}")

    def _settings(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self._settings().items())})"

    def __eq__(self, other) -> bool:
        if type(self) is not type(other):
            return False
        a, b = self._settings(), other._settings()
        return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    __hash__ = None


class UniformProposal(Proposal):
    """$q = p$ (no importance sampling; all weights 1)."""

    def pmf(self, p, weights):
        return p


class WeightHeuristicProposal(Proposal):
    r"""$q \propto p\,w$ (the objective's own weight), mixed with $p$: $q = (1-\delta)\hat q + \delta p$."""

    def __init__(self, delta: float = 0.1):
        self.delta = as_real("delta", delta, nonnegative=True, upper=1.0)

    def pmf(self, p, weights):
        return carv_core.weight_heuristic(p, weights, self.delta)


class FixedProposal(Proposal):
    r"""A given table $q$ (e.g. an oracle $q^\star$ measured offline), mixed with $p$: $(1-\delta)q + \delta p$.

    Args:
        q: shape ``(T,)`` (array or tensor).
        delta: defensive fraction; with ``delta = 0`` ``q`` must cover every $p$ it meets.
    """

    def __init__(self, q, delta: float = 0.0):
        self.q = host_pmf("q", q)
        self.delta = as_real("delta", delta, nonnegative=True, upper=1.0)

    def pmf(self, p, weights):
        if self.q.shape != p.shape:
            raise ValueError(f"FixedProposal.q has {self.q.size} timesteps, p has {p.size}")
        q = carv_core.defensive_mixture(self.q, p, self.delta) if self.delta > 0 else self.q
        carv_core._validation.check_support(p, q, q_name="FixedProposal.q")
        return q


class OracleProposal(Proposal):
    r"""$q^\star \propto p\sqrt{m}$ from a measured table $m(t) = \mathbb E[\lVert f\rVert^2 \mid t]$, mixed with $p$."""

    def __init__(self, second_moment, delta: float = 0.1):
        self.second_moment = to_numpy("second_moment", second_moment) \
            if isinstance(second_moment, torch.Tensor) else np.asarray(second_moment, dtype=np.float64)
        self.delta = as_real("delta", delta, nonnegative=True, upper=1.0)

    def pmf(self, p, weights):
        return carv_core.oracle_proposal(p, self.second_moment, self.delta)


class OnlineProposal(Proposal):
    r"""The adaptive estimate of $q^\star$ (:class:`carv_core.AdaptiveProposal`), kept across changes of $p$.

    Bins depend on $T$ only, so when the t range (and so $p$) moves the learnt
    second moments are kept. :meth:`update` copies the step's $t$ and
    $\lVert f\rVert^2$ to the host in **one** transfer (the step's one host read).
    """

    adaptive = True

    def __init__(self, n_bins: int = 20, decay: float = 0.9, delta: float = 0.1):
        self.n_bins, self.decay, self.delta = n_bins, decay, delta
        carv_core.AdaptiveProposal(np.full(n_bins, 1.0 / n_bins), n_bins, decay, delta)  # validate
        self._state: carv_core.AdaptiveProposal | None = None

    def pmf(self, p, weights):
        if self._state is None:
            self._state = carv_core.AdaptiveProposal(p, n_bins=min(self.n_bins, p.size),
                                                     decay=self.decay, delta=self.delta)
        elif self._state.p.shape != p.shape:
            raise ValueError(f"p has {p.size} timesteps, the learnt proposal {self._state.p.size}")
        else:
            self._state.p = np.array(p, dtype=np.float64)
        return self._state.proposal()

    def update(self, t, sq_norm):
        if self._state is None:
            raise RuntimeError("OnlineProposal.update before pmf: no proposal to update yet")
        both = torch.stack([t.detach().reshape(-1).to(torch.float64),
                            sq_norm.detach().reshape(-1).to(torch.float64)])
        host = both.numpy(force=True)  # the one host read (one transfer)
        self._state.update(host[0], host[1])

    def state_dict(self):
        return {} if self._state is None else self._state.state_dict()

    def load_state_dict(self, state):
        self._state = None if not state else carv_core.AdaptiveProposal.from_state_dict(state)


_PROPOSAL_SHORTHANDS = {"uniform": UniformProposal, "weight": WeightHeuristicProposal,
                        "adaptive": OnlineProposal}

#: Shorthand names of proposal rules (``"weight"`` and ``"adaptive"`` take ``delta`` etc. from a config).
PROPOSALS = tuple(_PROPOSAL_SHORTHANDS)


def as_proposal(proposal, **settings) -> Proposal:
    """A :class:`Proposal` from an object or a shorthand in :data:`PROPOSALS` (built with the ``settings`` it takes)."""
    if isinstance(proposal, Proposal):
        return proposal
    if isinstance(proposal, str) and proposal in _PROPOSAL_SHORTHANDS:
        cls = _PROPOSAL_SHORTHANDS[proposal]
        names = inspect.signature(cls.__init__).parameters
        return cls(**{k: v for k, v in settings.items() if k in names})
    raise ValueError(f"proposal must be a carv_torch.proposals.Proposal or one of {PROPOSALS}, "
                     f"got {proposal!r}")
