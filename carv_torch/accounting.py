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
import statistics
import time
from collections import deque
from typing import NamedTuple

import torch

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
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


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
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"decay must lie in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if fixed_costs is not None:
            fixed_costs = tuple(float(c) for c in fixed_costs)
            if len(fixed_costs) != 2 or min(fixed_costs) <= 0:
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
        seconds = float(seconds)
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
        sb, sw = float(sigma_b2), float(sigma_w2)
        if not (sb == sb and sw == sw) or abs(sb) == float("inf") or abs(sw) == float("inf"):
            raise ValueError(f"sigma_b2 and sigma_w2 must be finite, got {sb}, {sw}")
        if self.sigma_b2 != self.sigma_b2:
            self.sigma_b2, self.sigma_w2 = sb, sw
        else:
            self.sigma_b2 = self.decay * self.sigma_b2 + (1 - self.decay) * sb
            self.sigma_w2 = self.decay * self.sigma_w2 + (1 - self.decay) * sw

    # ------------------------------------------------------------------ decisions

    def decide(self, step: int) -> KDecision:
        r"""Re-choose $K = \operatorname{clip}(\arg\min_K (\sigma_B^2 + \sigma_W^2/K)(c_u + K c_d), K_{\min}, K_{\max})$.

        Keeps the current $K$ while any input is unknown. A negative running
        $\hat\sigma_B^2$ (it is unbiased, not clipped) counts as 0, i.e. $K = K_{\max}$.
        """
        c_u, c_d = self.c_u, self.c_d
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
        """Restore :meth:`state_dict` output."""
        self.k_min, self.k_max = int(state["k_min"]), int(state["k_max"])
        self.K, self.warmup, self.window = int(state["K"]), int(state["warmup"]), int(state["window"])
        self.decay = float(state["decay"])
        fc = state["fixed_costs"]
        self.fixed_costs = None if fc is None else tuple(float(c) for c in fc)
        self._samples = {k: deque(state["samples"][k], maxlen=self.window) for k in KIND_NAMES}
        self._seen = {k: int(state["seen"][k]) for k in KIND_NAMES}
        self._pending = []
        self.sigma_b2, self.sigma_w2 = float(state["sigma_b2"]), float(state["sigma_w2"])
        self.history = [KDecision(**d) for d in state["history"]]
