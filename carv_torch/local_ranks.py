r"""Run a function on $W$ local CPU ranks (real processes, ``gloo``): tests, benchmarks and guides.

:func:`run_local` spawns ``world_size`` processes (``torch.multiprocessing``, *spawn*), joins
them into one process group through a file store in a fresh temporary directory (no ports),
sets one thread per rank, calls ``fn(rank, world_size, *args)`` in each and returns the
ranks' return values in rank order. A rank that raises makes :func:`run_local` raise with
that rank's traceback; a rank that does not finish within ``timeout`` seconds is killed.
``fn`` must be importable by name (a module-level function), as *spawn* requires.
"""

from __future__ import annotations

import os
import queue
import tempfile
import time
import traceback

import torch

__all__ = ["run_local"]


def _entry(rank: int, world_size: int, store: str, fn, args, results) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                                             world_size=world_size)
        try:
            results.put((rank, True, fn(rank, world_size, *args)))
        finally:
            torch.distributed.destroy_process_group()
    except BaseException:  # reported to the parent, which raises
        results.put((rank, False, traceback.format_exc()))


def run_local(fn, world_size: int, *args, timeout: float = 300.0) -> list:
    """``[fn(0, W, *args), ..., fn(W - 1, W, *args)]``, each run in its own process of one group."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an integer >= 1, got {world_size!r}")
    ctx = torch.multiprocessing.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        procs = [ctx.Process(target=_entry, args=(r, world_size, store, fn, args, results))
                 for r in range(world_size)]
        for p in procs:
            p.start()
        out, failures = {}, []
        deadline = time.monotonic() + timeout
        try:
            while len(out) < world_size and not failures:
                try:
                    rank, ok, value = results.get(timeout=0.5)
                except queue.Empty:
                    # A rank that died without reporting (abort, segfault, a spawn bootstrap error).
                    dead = [r for r, p in enumerate(procs) if r not in out and p.exitcode not in (None, 0)]
                    if dead:
                        failures.append((dead[0], f"the process exited with code {procs[dead[0]].exitcode} "
                                                  "without reporting (see its stderr)"))
                    elif time.monotonic() > deadline:
                        failures.append((-1, f"a rank did not finish within {timeout} s"))
                    continue
                (out.__setitem__(rank, value) if ok else failures.append((rank, value)))
        finally:
            for p in procs:
                p.join(timeout=5 if failures else timeout)
                if p.is_alive():
                    p.kill()
    if failures:
        rank, tb = failures[0]
        raise RuntimeError(f"rank {rank} of {world_size} failed:\n{tb}")
    return [out[r] for r in range(world_size)]
