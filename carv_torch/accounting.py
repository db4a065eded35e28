r"""Online compute-aware accounting: measured costs, running variance components, online $K$.

One estimate with $R$ upstream samples and $K$ inner draws costs $R(c_u + K c_d)$
and has variance $(\sigma_B^2 + \sigma_W^2/K)/R$; their product is minimised by
$K^\star = \sqrt{(c_u/c_d)\,\sigma_W^2/\sigma_B^2}$ (:func:`carv_torch.allocation.optimal_k`).
In a training loop none of the four numbers is known in advance and all of them
drift, so the :class:`Accountant`

1. measures $c_u$ (per upstream sample, forward and backward) and $c_d$ (per
   teacher draw) with CUDA events on a GPU (read back lazily, no sync in the
   loop) and ``time.perf_counter`` elsewhere (after a device synchronisation),
   drops the first ``warmup`` measurements of each kind and keeps running
   medians over the last ``window`` measurements;
2. keeps exponential moving averages of the ANOVA estimates $\hat\sigma_B^2$, $\hat\sigma_W^2$;
3. re-chooses $K \in [K_{\min}, K_{\max}]$ from them on :meth:`Accountant.decide`,
   recording every decision (:class:`KDecision`) in :attr:`Accountant.history`.

Costs can be injected (:meth:`Accountant.record` or ``fixed_costs``) for tests and
for reproducible runs: with measured wall-clock costs the chosen $K$ depends on
timing noise, so a run is bit-reproducible only with a fixed $K$ or injected costs.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import statistics
import time
from collections import deque
from typing import NamedTuple

import torch

from ._validation import as_device
from .allocation import k_star as _k_star
from .allocation import optimal_k

__all__ = ["KIND_NAMES", "KDecision", "Accountant"]

KIND_NAMES = ("upstream", "inner")


class KDecision(NamedTuple):
    r"""One choice of $K$ and the numbers it was made from (``nan`` where unknown)."""

    step: int
    K: int
    k_star: float
    c_u: float
    c_d: float
    sigma_b2: float
    sigma_w2: float
    reason: str


class _Marker(NamedTuple):
    # A point in time: a CUDA event, or a perf_counter reading.
    event: object
    seconds: float


def _sync(device: torch.device) -> None:
    if device.type == "mps":
        torch.mps.synchronize()
    elif device.type == "xpu":
        torch.xpu.synchronize()


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_marker(name: str, marker) -> None:
    if not isinstance(marker, _Marker):
        raise TypeError(f"{name} must be a marker from Accountant.marker(), got {type(marker).__name__}")


class Accountant:
    r"""Running $c_u$, $c_d$, $\sigma_B^2$, $\sigma_W^2$ and the $K$ they imply.

    Args:
        K: the starting $K$.
        k_min, k_max: bounds on $K$ (``k_min >= 2`` keeps $\sigma_W^2$ estimable, since
            the ANOVA needs two draws per upstream sample).
        warmup: measurements of each kind dropped before any is used.
        window: running-median window of each cost.
        decay: EMA factor $\beta$ of the variance components, $\hat s \leftarrow \beta\hat s + (1-\beta)s$.
        device: where the timed work runs (CUDA: events; otherwise ``perf_counter``).
        fixed_costs: ``(c_u, c_d)`` to use instead of measurements (tests, reproducible runs).

    Example:
        >>> acc = Accountant(K=2, k_min=1, k_max=64, fixed_costs=(8.0, 1.0))
        >>> acc.observe(sigma_b2=1.0, sigma_w2=8.0)
        >>> acc.decide(step=0).K
        8
    """

    def __init__(self, K: int = 4, *, k_min: int = 2, k_max: int = 32, warmup: int = 2,
                 window: int = 25, decay: float = 0.9, device=None, fixed_costs=None):
        self.k_min = _check_int("k_min", k_min, 1)
        self.k_max = _check_int("k_max", k_max, self.k_min)
        self.K = _check_int("K", K, 1)
        if not self.k_min <= self.K <= self.k_max:
            raise ValueError(f"K must lie in [k_min, k_max] = [{k_min}, {k_max}], got {K}")
        self.warmup = _check_int("warmup", warmup, 0)
        self.window = _check_int("window", window, 1)
        if not 0.0 <= _finite("decay", decay) < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.device = as_device("device", device) or torch.device("cpu")
        if fixed_costs is not None:
            if isinstance(fixed_costs, (str, bytes)) or not hasattr(fixed_costs, "__len__") \
                    or len(fixed_costs) != 2:
                raise TypeError(f"fixed_costs must be None or a pair (c_u, c_d) of seconds, got {fixed_costs!r}")
            fixed_costs = tuple(_finite(f"fixed_costs[{i}]", c) for i, c in enumerate(fixed_costs))
            if min(fixed_costs) <= 0:
                raise ValueError(f"fixed_costs must be (c_u, c_d) with both > 0, got {fixed_costs!r}")
        self.fixed_costs = fixed_costs
        self._samples = {k: deque(maxlen=self.window) for k in KIND_NAMES}
        self._seen = {k: 0 for k in KIND_NAMES}
        self._pending: list = []
        self.sigma_b2 = float("nan")
        self.sigma_w2 = float("nan")
        self.history: list[KDecision] = []

    # ------------------------------------------------------------------ timing

    def marker(self) -> _Marker:
        """A point in time on :attr:`device` (a recorded CUDA event, or a synchronised clock)."""
        if self.device.type == "cuda":
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return _Marker(ev, float("nan"))
        _sync(self.device)
        return _Marker(None, time.perf_counter())

    def interval(self, kind: str, start: _Marker, stop: _Marker, n: int = 1) -> None:
        """Record the time from ``start`` to ``stop`` as ``n`` units of ``kind`` (cost per unit)."""
        if kind not in KIND_NAMES:
            raise ValueError(f"kind must be one of {KIND_NAMES}, got {kind!r}")
        n = _check_int("n", n, 1)
        _check_marker("start", start)
        _check_marker("stop", stop)
        if start.event is not None:
            self._pending.append((kind, start.event, stop.event, n))  # resolved lazily
        else:
            self._add(kind, (stop.seconds - start.seconds) / n)

    @contextlib.contextmanager
    def measure(self, kind: str, n: int = 1):
        """Time the ``with`` block as ``n`` units of ``kind`` (``"upstream"`` or ``"inner"``)."""
        start = self.marker()
        yield
        self.interval(kind, start, self.marker(), n)

    def record(self, kind: str, seconds: float) -> None:
        """Inject a measured cost per unit (seconds), as if timed; subject to warm-up."""
        if kind not in KIND_NAMES:
            raise ValueError(f"kind must be one of {KIND_NAMES}, got {kind!r}")
        seconds = _finite("seconds", seconds)
        if not seconds >= 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        self._add(kind, seconds)

    def _add(self, kind: str, seconds: float) -> None:
        self._seen[kind] += 1
        if self._seen[kind] > self.warmup:
            self._samples[kind].append(seconds)

    def _resolve(self) -> None:
        for kind, a, b, n in self._pending:
            b.synchronize()
            self._add(kind, a.elapsed_time(b) / 1000.0 / n)
        self._pending.clear()

    def _median(self, kind: str) -> float:
        self._resolve()
        s = self._samples[kind]
        return statistics.median(s) if s else float("nan")

    @property
    def c_u(self) -> float:
        """Running median cost per upstream sample (seconds), or the fixed one."""
        return self.fixed_costs[0] if self.fixed_costs else self._median("upstream")

    @property
    def c_d(self) -> float:
        """Running median cost per teacher draw (seconds), or the fixed one."""
        return self.fixed_costs[1] if self.fixed_costs else self._median("inner")

    # ------------------------------------------------------------------ variance

    def observe(self, sigma_b2: float, sigma_w2: float) -> None:
        r"""Fold one step's ANOVA estimates into the EMAs (first observation replaces)."""
        sb, sw = _finite("sigma_b2", sigma_b2), _finite("sigma_w2", sigma_w2)
        if self.sigma_b2 != self.sigma_b2:
            self.sigma_b2, self.sigma_w2 = sb, sw
        else:
            self.sigma_b2 = self.decay * self.sigma_b2 + (1 - self.decay) * sb
            self.sigma_w2 = self.decay * self.sigma_w2 + (1 - self.decay) * sw

    # ------------------------------------------------------------------ decisions

    def decide(self, step: int, costs=None) -> KDecision:
        r"""Re-choose $K = \operatorname{clip}(\arg\min_K (\sigma_B^2 + \sigma_W^2/K)(c_u + K c_d), K_{\min}, K_{\max})$.

        Keeps the current $K$ while any input is unknown. A negative running
        $\hat\sigma_B^2$ (it is unbiased, not clipped) counts as 0, i.e. $K = K_{\max}$.
        ``costs``: $(c_u, c_d)$ to use instead of this accountant's own (e.g. averaged over
        the ranks of a data-parallel run, :mod:`carv_torch.distributed`).
        """
        step = _check_int("step", step, 0)
        c_u, c_d = (self.c_u, self.c_d) if costs is None else \
            (_finite("costs[0]", costs[0], nan_ok=True), _finite("costs[1]", costs[1], nan_ok=True))
        sb, sw = self.sigma_b2, self.sigma_w2
        missing = [n for n, v in (("c_u", c_u), ("c_d", c_d), ("sigma_b2", sb), ("sigma_w2", sw))
                   if v != v]
        if missing:
            dec = KDecision(step, self.K, float("nan"), c_u, c_d, sb, sw,
                            "kept: no estimate yet of " + ", ".join(missing))
        elif c_u <= 0 or c_d <= 0:
            dec = KDecision(step, self.K, float("nan"), c_u, c_d, sb, sw,
                            "kept: a measured cost is zero")
        else:
            sb0, sw0 = max(sb, 0.0), max(sw, 0.0)
            ks = _k_star(c_u, c_d, sb0, sw0)
            K = min(max(optimal_k(c_u, c_d, sb0, sw0, k_max=self.k_max), self.k_min), self.k_max)
            dec = KDecision(step, K, ks, c_u, c_d, sb, sw,
                            "changed" if K != self.K else "unchanged")
            self.K = K
        self.history.append(dec)
        return dec

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        """Plain-Python state; :meth:`load_state_dict` restores it exactly (pending CUDA timings are read first)."""
        self._resolve()
        return {
            "K": self.K, "k_min": self.k_min, "k_max": self.k_max, "warmup": self.warmup,
            "window": self.window, "decay": self.decay, "fixed_costs": self.fixed_costs,
            "samples": {k: list(v) for k, v in self._samples.items()},
            "seen": dict(self._seen), "sigma_b2": self.sigma_b2, "sigma_w2": self.sigma_w2,
            "history": [d._asdict() for d in self.history],
        }

    def load_state_dict(self, state: dict) -> None:
        r"""Restore :meth:`state_dict` output into an accountant built with the same settings.

        The whole state is validated first (settings equal to this accountant's, $K$ in
        $[K_{\min}, K_{\max}]$, finite non-negative costs, counts, EMAs, decisions); a bad
        field raises naming it (``state['K']``, ...) and changes nothing.
        """
        new = _validated_state(self, state)
        self._samples = {k: deque(new["samples"][k], maxlen=self.window) for k in KIND_NAMES}
        self._seen, self._pending = new["seen"], []
        self.K, self.sigma_b2, self.sigma_w2 = new["K"], new["sigma_b2"], new["sigma_w2"]
        self.history = new["history"]

    def snapshot(self):
        """An O(window) copy of the mutable state, for :meth:`rollback` (a failed step's undo)."""
        return (self.K, self.sigma_b2, self.sigma_w2, {k: list(v) for k, v in self._samples.items()},
                dict(self._seen), len(self._pending), len(self.history))

    def rollback(self, snap) -> None:
        """Undo every change since :meth:`snapshot` returned ``snap``."""
        self.K, self.sigma_b2, self.sigma_w2, samples, seen, n_pending, n_history = snap
        self._samples = {k: deque(v, maxlen=self.window) for k, v in samples.items()}
        self._seen = dict(seen)
        del self._pending[n_pending:]
        del self.history[n_history:]


def _field(state: dict, key: str):
    if key not in state:
        raise ValueError(f"state is missing {key!r} (not an Accountant.state_dict())")
    return state[key]


def _finite(name: str, value, *, nan_ok: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if not (math.isfinite(v) or (nan_ok and v != v)):
        raise ValueError(f"{name} must be finite{' or nan' if nan_ok else ''}, got {v}")
    return v


def _validated_state(acc: Accountant, state) -> dict:
    # Every field of a state_dict checked against `acc`; nothing of `acc` is changed.
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict from Accountant.state_dict(), got {type(state).__name__}")
    for key in ("k_min", "k_max", "warmup", "window", "decay", "fixed_costs"):
        got, mine = _field(state, key), getattr(acc, key)
        if key == "fixed_costs" and got is not None:
            got = tuple(got)
        if got != mine:
            raise ValueError(f"state[{key!r}] = {got!r} differs from this accountant's {key} = "
                             f"{mine!r} (the checkpoint was written with other settings)")
    K = _field(state, "K")
    if isinstance(K, bool) or not isinstance(K, numbers.Integral) or not acc.k_min <= K <= acc.k_max:
        raise ValueError(f"state['K'] must be an integer in [k_min, k_max] = [{acc.k_min}, {acc.k_max}], "
                         f"got {K!r}")
    samples, seen = _field(state, "samples"), _field(state, "seen")
    if not isinstance(samples, dict) or set(samples) != set(KIND_NAMES) or \
            not isinstance(seen, dict) or set(seen) != set(KIND_NAMES):
        raise ValueError(f"state['samples'] and state['seen'] must be dicts with keys {KIND_NAMES}")
    out_samples, out_seen = {}, {}
    for k in KIND_NAMES:
        vals = [_finite(f"state['samples'][{k!r}][{i}]", v) for i, v in enumerate(samples[k])]
        if any(v < 0 for v in vals) or len(vals) > acc.window:
            raise ValueError(f"state['samples'][{k!r}] must hold at most window = {acc.window} "
                             f"costs >= 0, got {len(vals)} with minimum {min(vals, default=0.0)}")
        n = seen[k]
        # A cost is kept only after `warmup` were dropped: len(samples) <= max(0, seen - warmup).
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0 \
                or len(vals) > max(0, n - acc.warmup):
            raise ValueError(f"state['seen'][{k!r}] must be an integer >= 0 with at least warmup + "
                             f"{len(vals)} (the costs kept) measurements, got {n!r}")
        out_samples[k], out_seen[k] = vals, int(n)
    sb = _finite("state['sigma_b2']", _field(state, "sigma_b2"), nan_ok=True)
    sw = _finite("state['sigma_w2']", _field(state, "sigma_w2"), nan_ok=True)
    if (sb != sb) != (sw != sw) or sw < 0:
        raise ValueError(f"state['sigma_b2'], state['sigma_w2'] must both be nan (no estimate) or both "
                         f"finite with sigma_w2 >= 0, got {sb}, {sw}")
    history = _field(state, "history")
    try:
        history = [KDecision(**d) for d in history]
    except TypeError as err:
        raise ValueError(f"state['history'] must be a list of KDecision fields ({err})") from None
    return {"K": int(K), "samples": out_samples, "seen": out_seen, "sigma_b2": sb, "sigma_w2": sw,
            "history": history}
