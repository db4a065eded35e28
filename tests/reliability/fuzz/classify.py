"""Running one case and classing its outcome.

Each outcome is one category (a case's ``expect`` is described in :mod:`fuzz.cases`):

* ``clear``     -- raised ``ValueError``/``TypeError`` (or warned, for ``warn``) with a message that
  names the argument (word match on any of the case's ``names``);
* ``obscure``   -- raised, but another exception type (``IndexError``, ``AttributeError``, a torch
  ``RuntimeError`` ...) or a message that does not name the argument; or an ``ok`` case raised
  (a wrong rejection);
* ``silent``    -- an ``error``/``warn`` case returned normally, or an ``ok``/``either`` case returned
  NaN/inf (or a wrong value, per the case's ``check``); also any case whose failed call left the
  object's state changed (the failure-atomic contract: a failed call or load changes nothing);
* ``hang``      -- exceeded the time limit (``--timeout`` seconds, default 5, per case), or ran out
  of memory (``MemoryError``, or torch's "can't allocate memory" ``RuntimeError``, under the
  ``--mem-gib`` address-space limit, default 4 GiB; see :mod:`fuzz.limits`) while the output the
  case asks for is small, or of a size its spec does not declare: the memory went into a hidden
  intermediate, a blow-up the caller could not foresee;
* ``too-large`` -- a prompt ``MemoryError`` (raised within the time limit) where the requested
  output *itself* exceeds the memory limit: ``draw_uniforms(R=10**9, K=4)`` asks for a
  ``(10**9, 4)`` float64 array, 29.8 GiB, which no 4 GiB process can return. A case qualifies
  only if its spec declares ``output_bytes``, the bytes of that output computed from the call's
  arguments (:meth:`fuzz.cases.Catalogue.sweep`), and the classifier checks that it exceeds the
  limit the process runs under (``RLIMIT_AS``); a declaration that is missing, cannot be
  evaluated or is within the limit leaves the case ``hang``, and without a memory limit
  (``--mem-gib 0``) no case is ``too-large``. Running out of memory is an honest answer to such
  a request, but not a clear one (a ``ValueError`` naming the argument, up front, would be), so
  ``too-large`` counts as non-clear and its cases stay listed in ``test_fuzz.py``'s ``KNOWN``;
* ``ok``        -- an ``ok``/``either`` case returned a finite (and, per ``check``, right) result.
"""

from __future__ import annotations

import math
import numbers
import time
import warnings

from .cases import Case, Ctx, Result
from .limits import _is_oom, _time_limit, _Timeout, memory_limit_bytes
from .values import _describe_exc, _describe_value, _short, names_match, nonfinite, snapshot

CATEGORIES = ("clear", "obscure", "silent", "hang", "too-large", "ok")
NON_CLEAR = ("obscure", "silent", "hang", "too-large")
DEFAULT_TIMEOUT = 5.0


def declared_output_bytes(case: Case) -> int | None:
    """The bytes of the output ``case`` requests, as its spec declares them; ``None``: not declared."""
    value = case.output_bytes
    if value is None:
        return None
    try:
        value = value() if callable(value) else value
    except Exception:  # noqa: BLE001 - a formula that does not apply to these arguments declares nothing
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        return None
    return int(value)


def _size(n: int) -> str:
    """``n`` bytes in the largest binary unit that keeps the number >= 1 (B, KiB, MiB, GiB, TiB)."""
    unit = next(u for u in range(4, -1, -1) if n >= 1024**u or u == 0)
    return f"{n / 1024**unit:.3g} {('B', 'KiB', 'MiB', 'GiB', 'TiB')[unit]}"


def _out_of_memory(case: Case, err: BaseException) -> tuple[str, str]:
    """``too-large`` if the declared output exceeds the process's memory limit, else ``hang``."""
    need, limit = declared_output_bytes(case), memory_limit_bytes()
    if need is not None and limit is not None and need > limit:
        return "too-large", (f"the requested output is {_size(need)}, over the {_size(limit)} memory limit "
                             f"({_describe_exc(err)})")
    detail = f"needed excessive memory ({_describe_exc(err)})"
    if need is not None:
        detail += f"; the requested output is only {_size(need)}"
    return "hang", detail


def run_case(case: Case, timeout: float = DEFAULT_TIMEOUT) -> Result:
    """Run one case and classify its outcome."""
    ctx = Ctx()
    limit = case.limit if case.limit is not None else timeout
    value, err, caught = None, None, []
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with _time_limit(limit):
                value = case.run(ctx)
        except _Timeout:
            err = _Timeout()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # noqa: BLE001 - classifying is the point
            err = e
    seconds = time.perf_counter() - t0
    warned = [f"{w.category.__name__}: {w.message}" for w in caught]

    def result(category, detail):
        if warned and category != "clear":
            detail += " [warned: " + _short("; ".join(warned), 160) + "]"
        return Result(case.id, case.module, case.func, category, _short(detail, 600), case.expect,
                      round(seconds, 4))

    if isinstance(err, _Timeout):
        return result("hang", f"exceeded the time limit of {limit:g} s")
    if err is not None and _is_oom(err):
        return result(*_out_of_memory(case, err))
    # Failure-atomic: a call that raised must leave the watched state as it was.
    if err is not None and ctx.watches:
        changed = []
        for what, getter, before in ctx.watches:
            try:
                after = snapshot(getter())
            except Exception as e:  # noqa: BLE001
                changed.append(f"{what} unreadable afterwards ({_describe_exc(e)})")
                continue
            if after != before:
                changed.append(what)
        if changed:
            return result("silent", f"raised {_describe_exc(err)} but left {', '.join(changed)} "
                                    "changed (not failure-atomic)")
    if err is not None:
        if not isinstance(err, case.exc_types):
            return result("obscure", f"{_describe_exc(err)} (expected "
                                     f"{'/'.join(t.__name__ for t in case.exc_types)}"
                                     + (f" naming {'/'.join(case.names)}" if case.names else "") + ")")
        if case.expect == "ok":
            return result("obscure", f"wrong rejection of valid input: {_describe_exc(err)}")
        if not names_match(str(err), case.names):
            return result("obscure", f"message does not name {'/'.join(case.names)}: {_describe_exc(err)}")
        return result("clear", _describe_exc(err))
    # Returned normally.
    if case.expect == "error":
        bad = nonfinite(value, case.allow_inf)
        return result("silent", "returned " + _describe_value(value) + (f" ({bad})" if bad else ""))
    if case.expect == "warn":
        for w in caught:
            if names_match(str(w.message), case.names):
                return result("clear", f"{w.category.__name__}: {_short(str(w.message))}")
        return result("silent", f"returned {_describe_value(value)} without a warning naming "
                                f"{'/'.join(case.names)}")
    if case.finite:
        bad = nonfinite(value, case.allow_inf)
        if bad:
            return result("silent", f"returned a non-finite result ({bad})")
    if case.check is not None:
        try:
            problem = case.check(value)
        except Exception as e:  # noqa: BLE001
            problem = f"check failed: {_describe_exc(e)}"
        if problem:
            return result("silent", f"returned a wrong result: {problem}")
    return result("ok", "returned " + _describe_value(value))
