r"""Proposal *rules*: objects that give $q$ for the current target $p$, what the guidance runs.

A rule maps $p$ and the objective's weight table $w(t)$ to $q$ (host-side maths in
:mod:`carv_core`); a learning rule (``adaptive = True``) is fed each step's draws after the
estimate, so the next step's $q$ is fixed before its draw. The functions on tensors
(:func:`~carv_torch.proposals.importance_weights`, ...) are in :mod:`carv_torch.proposals`.
"""

from __future__ import annotations

import inspect

import carv_core
import carv_core._validation
import numpy as np
import torch
from carv_core._validation import as_float_array, as_real

from ._validation import as_int, check_adaptive_state, host_pmf, to_numpy
from .proposals import _check_dict, _check_update

__all__ = ["Proposal", "UniformProposal", "WeightHeuristicProposal", "FixedProposal",
           "OracleProposal", "OnlineProposal", "PROPOSALS", "as_proposal"]


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

    def update(self, t: torch.Tensor, sq_norm: torch.Tensor, world=None) -> None:
        r"""Fold a step's $t$ and $\lVert f\rVert^2$ in (static rules ignore it). A learning rule
        run on several ranks gets their :class:`~carv_torch.distributed.World` and must reduce
        its statistics over it, so that every rank keeps the same $q$."""

    def state_dict(self) -> dict:
        """Checkpointable state (empty for static rules)."""
        return {}

    def validate_state(self, state: dict, T: int | None = None) -> None:
        """Raise unless :meth:`load_state_dict` would accept ``state`` for a target with ``T``
        timesteps; changes nothing (a checkpoint can be checked before anything is loaded)."""
        _check_dict(state)
        if state:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state)}")

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output (validated first by :meth:`validate_state`)."""
        self.validate_state(state)

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
        # Checked now (1-D, finite, >= 0, positive mass), not at the first pmf call in a run.
        q = as_float_array("q", host_pmf("q", q), ndim=1)
        if np.any(q < 0):
            j = int(np.argmax(q < 0))
            raise ValueError(f"q must be non-negative, got q[{j}] = {q[j]}")
        if not q.sum() > 0:
            raise ValueError("q must have positive mass, got all zeros")
        self.q = q
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
        # Checked now (finite, 1-D, >= 0), not at the first pmf call deep inside a run.
        m = as_float_array("second_moment", to_numpy("second_moment", second_moment), ndim=1)
        if np.any(m < 0):
            j = int(np.argmax(m < 0))
            raise ValueError(f"second_moment must be non-negative, got second_moment[{j}] = {m[j]}")
        self.second_moment = m
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
        n_bins = as_int("n_bins", n_bins, minimum=1)
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

    def update(self, t, sq_norm, world=None):
        r"""Fold this step's $\lVert f\rVert^2$ at ``t`` into the bins (one host read).

        With a ``world`` of several ranks (:class:`carv_torch.distributed.World`) the bin counts
        $n_b$ and sums $\sum\lVert f\rVert^2$ are summed over the ranks first (one all-reduce of
        $2\times$ ``n_bins`` float64 numbers, on the device), so every rank folds in the same
        numbers and keeps a bit-identical $q$.
        """
        if self._state is None:
            raise RuntimeError("OnlineProposal.update before pmf: no proposal to update yet")
        if not isinstance(t, torch.Tensor) or not isinstance(sq_norm, torch.Tensor):
            raise TypeError(f"t and sq_norm must be tensors, got {type(t).__name__} and "
                            f"{type(sq_norm).__name__}")
        _check_update(t, sq_norm)
        if world is not None and world.size > 1:
            self._update_across(t, sq_norm, world)
            return
        both = torch.stack([t.detach().reshape(-1).to(torch.float64),
                            sq_norm.detach().reshape(-1).to(torch.float64)])
        host = both.numpy(force=True)  # the one host read (one transfer)
        self._state.update(host[0], host[1])

    def _update_across(self, t, sq_norm, world) -> None:
        from .distributed import all_reduce_sum

        state, nb = self._state, self._state.n_bins
        index = torch.as_tensor(state.bin_index, device=t.device)
        bins = index[t.detach().reshape(-1).long()]
        sq = sq_norm.detach().reshape(-1).to(torch.float64)
        stats = torch.cat([torch.bincount(bins, minlength=nb).to(torch.float64),
                           torch.bincount(bins, weights=sq, minlength=nb)])
        host = all_reduce_sum(stats, world).numpy(force=True)  # the one host read
        n = host[:nb].round().astype(np.int64)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            mean = np.where(n > 0, host[nb:] / np.maximum(n, 1), 0.0)
        state.update_bins(n, mean)

    def state_dict(self):
        return {} if self._state is None else self._state.state_dict()

    def validate_state(self, state, T=None):
        """Raise unless ``state`` is empty or a valid adaptive snapshot whose ``p`` has ``T``
        timesteps (default: those of the proposal learnt so far, if any); changes nothing."""
        _check_dict(state)
        if state:
            check_adaptive_state(state, self._state.p.size if T is None and self._state else T)

    def load_state_dict(self, state):
        """Restore :meth:`state_dict` output; validated in full first, so a failed load changes nothing."""
        self.validate_state(state)
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
    raise ValueError(f"proposal must be a carv_torch.Proposal or one of {PROPOSALS}, "
                     f"got {proposal!r}")
