"""Cases and how specs make them: :class:`Case`, :class:`Catalogue` (``add``/``sweep``), :class:`Lazy`, ``mut``.

Each case is one call of a public function, class or method with one argument mutated from a
valid base call. A spec is a base call plus per-argument mutation lists
(:meth:`Catalogue.sweep`; the lists come from :mod:`fuzz.mutations`), or one case written out
(:meth:`Catalogue.add`). Every case says what it expects:

* ``error``  -- bad input: must raise ``ValueError``/``TypeError`` naming one of ``names``;
* ``warn``   -- valid but unwise: must warn (or raise ``ValueError``/``TypeError``) naming one of ``names``;
* ``ok``     -- valid edge input (numpy scalars where floats are expected, float32 pmfs, K=1, ...):
  must return a finite result (``allow_inf``: inf is the honest answer, e.g. a cost of 1e308 + 1e308);
* ``either`` -- extreme but legal (huge sizes, 1e308 residuals): a finite result or a clear error.

A case whose call is asked for a huge result may declare ``output_bytes``, the size in bytes of
the output it requests (for a sweep: a function of the call's arguments, e.g.
``output_bytes=lambda R, K, **_: array_bytes((R, K))`` for an ``(R, K)`` float64 result);
:mod:`fuzz.classify` uses it to tell a request that cannot fit (``too-large``) from a hidden
blow-up (``hang``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from typing import Any, Callable

import numpy as np

from .values import snapshot


@dataclasses.dataclass
class Case:
    """One call and what it should do (see the module docstring)."""

    id: str
    module: str                      # "carv_core" or "carv_torch"
    func: str                        # e.g. "AdaptiveProposal.update"
    run: Callable[["Ctx"], Any]
    expect: str                      # "error" | "warn" | "ok" | "either"
    names: tuple = ()
    allow_inf: bool = False
    finite: bool = True              # check an ok result for NaN/inf
    check: Callable[[Any], str | None] | None = None   # extra check of an ok result
    exc_types: tuple = (ValueError, TypeError)
    limit: float | None = None       # seconds; None: the catalogue's timeout
    output_bytes: int | Callable[[], Any] | None = None  # bytes of the requested output (see fuzz.classify)
    note: str = ""


@dataclasses.dataclass
class Result:
    """The outcome of one :class:`Case`."""

    id: str
    module: str
    func: str
    category: str
    detail: str
    expect: str
    seconds: float


class Ctx:
    """Handed to a case's ``run``: ``watch`` registers state that a failed call must leave unchanged."""

    def __init__(self):
        self.watches: list = []

    def watch(self, getter: Callable[[], Any], what: str = "state") -> None:
        self.watches.append((what, getter, snapshot(getter())))


class Lazy:
    """A value built when the case runs (fresh tensors and fixtures per case)."""

    def __init__(self, fn: Callable[[], Any], label: str = ""):
        self.fn, self.label = fn, label

    def __call__(self):
        return self.fn()


@dataclasses.dataclass
class M:
    """One mutation of one argument: a label, the value, the expectation and case options."""

    label: str
    value: Any
    expect: str
    kw: dict = dataclasses.field(default_factory=dict)


def mut(label, value, expect, **kw) -> M:
    return M(label, value, expect, kw)


def resolve(value):
    if isinstance(value, Lazy):
        return value()
    if isinstance(value, np.ndarray):
        return value.copy()
    mod = type(value).__module__ or ""
    if mod.startswith("torch") and hasattr(value, "clone") and hasattr(value, "device"):
        return value if value.device.type == "meta" else value.clone()
    if isinstance(value, list):
        return [resolve(v) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v) for k, v in value.items()}
    return value


class Catalogue:
    """Collects the cases; :meth:`sweep` makes one case per (argument, mutation) of a base call."""

    def __init__(self):
        self.cases: list[Case] = []
        self._ids: set[str] = set()

    def add(self, module: str, func: str, label: str, run, expect: str, names=(), **kw) -> None:
        """One case; ``output_bytes`` (if given) is a number or a callable of no arguments."""
        short = {"carv_core": "core", "carv_torch": "torch"}[module]
        cid = f"{short}.{func}/{label}"
        if cid in self._ids:
            raise AssertionError(f"duplicate case id {cid}")
        self._ids.add(cid)
        names = (names,) if isinstance(names, str) else tuple(names)
        self.cases.append(Case(cid, module, func, run, expect, names, **kw))

    def set_run(self, cid: str, run) -> None:
        """Give the case ``cid`` (made by :meth:`sweep`) a call of its own (e.g. two arguments at once)."""
        (case,) = [c for c in self.cases if c.id == cid]
        case.run = run

    def sweep(self, module: str, func: str, call, base: dict, muts: dict, *, base_kw=None,
              base_case: bool = True, names: dict | None = None, output_bytes=None, **common) -> None:
        """``call(ctx, **kwargs)``; ``muts``: {argument: [M, ...]}; ``names``: {argument: names} override.

        ``output_bytes(**kwargs)``: the bytes of the output that a call with these arguments
        requests (evaluated by the classifier, only after a ``MemoryError``).
        """
        if base_case:
            self.add(module, func, "base", _bound(call, base), "ok", (),
                     **{**_sized(output_bytes, base), **common, **(base_kw or {})})
        for arg, ms in muts.items():
            for m in ms:
                kwargs = dict(base)
                kwargs[arg] = m.value
                want = (names or {}).get(arg, (arg,))
                kw = {**_sized(output_bytes, kwargs), **common, **m.kw}
                want = kw.pop("names", want)
                self.add(module, func, f"{arg}={m.label}", _bound(call, kwargs), m.expect, want, **kw)


def _bound(call, kwargs):
    def run(ctx):
        return call(ctx, **{k: resolve(v) for k, v in kwargs.items()})
    return run


def _sized(output_bytes, kwargs) -> dict:
    """The ``output_bytes`` option of one case of a sweep: the spec's formula at these arguments."""
    if output_bytes is None:
        return {}
    return {"output_bytes": functools.partial(output_bytes, **kwargs)}


def array_bytes(shape, itemsize: int = 8) -> int:
    """The bytes of an array of ``shape`` (integer sizes only; anything else raises ``TypeError``)."""
    return math.prod(operator.index(n) for n in shape) * operator.index(itemsize)


def call(f):
    """``call(ctx, **kwargs)`` for a plain function."""
    return lambda ctx, **kw: f(**kw)


def close_to(expected, tol=1e-9):
    """A ``check`` that the result equals ``expected`` (numbers or arrays) within ``tol``."""
    def check(value):
        got = np.asarray(_to_numpy(value), dtype=np.float64)
        want = np.asarray(expected, dtype=np.float64)
        if got.shape != want.shape or not np.allclose(got, want, rtol=tol, atol=tol):
            return f"expected {np.round(want, 6).tolist()}, got {np.round(got, 6).tolist()}"
        return None
    return check


def _to_numpy(value):
    mod = type(value).__module__ or ""
    if mod.startswith("torch") and hasattr(value, "detach"):
        return value.detach().cpu().double().numpy()
    return value


@functools.lru_cache(maxsize=None)
def _torch():
    import torch
    return torch
