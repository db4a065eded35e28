"""The limits a case runs under: a per-case time limit (``SIGALRM``) and the process's address space.

The memory limit is ``resource.setrlimit(RLIMIT_AS)``, set only by the CLI (a dedicated process:
``test_fuzz.py`` runs the CLI in a subprocess), so that a case that would allocate more gets
``MemoryError`` (or torch's "can't allocate memory" ``RuntimeError``) instead of swapping the
machine. The time limit is in-process, ``signal.setitimer``/``SIGALRM``.
"""

from __future__ import annotations

import contextlib
import resource
import signal


class _Timeout(BaseException):
    """Raised by SIGALRM; a BaseException so that ``except Exception`` in the library lets it through."""


@contextlib.contextmanager
def _time_limit(seconds: float):
    if seconds is None or seconds <= 0 or not hasattr(signal, "setitimer"):
        yield
        return

    def handler(signum, frame):
        raise _Timeout()

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _is_oom(err: BaseException) -> bool:
    if isinstance(err, MemoryError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("can't allocate memory" in text
                                              or "not enough memory" in text
                                              or "DefaultCPUAllocator" in text)


def _set_memory_limit(gib: float) -> str:
    if gib <= 0:
        return "none"
    limit = int(gib * 2**30)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return f"RLIMIT_AS = {limit / 2**30:.2f} GiB"


def memory_limit_bytes() -> int | None:
    """The address-space limit this process runs under (``RLIMIT_AS``, soft), or ``None`` if unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else int(soft)
