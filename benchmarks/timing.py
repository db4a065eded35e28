"""Wall-clock measurement shared by the benchmarks: interleaved timing, medians, ratios.

Machines here are noisy, so a comparison is timed *interleaved* (contestants called
in turn, the order rotated each round, so load hits all of them), summarised by
medians and interquartile ranges, and a ratio gets a bootstrap interval that
resamples whole rounds (the pairs stay paired). :func:`machine_info` records what
the timings depend on.
"""

from __future__ import annotations

import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Callable, NamedTuple

import torch

__all__ = ["Contestant", "median_seconds", "summary", "ratio_ci", "compare", "interleaved", "machine_info"]


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median wall-clock of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


class Contestant(NamedTuple):
    name: str
    setup: Callable[[], None]   # untimed: flags, zeroed grad
    step: Callable[[], object]  # timed: one full step including backward


def _quantile(xs, q: float) -> float:
    s = sorted(xs)
    pos = q * (len(s) - 1)
    i = int(pos)
    return s[i] + (s[min(i + 1, len(s) - 1)] - s[i]) * (pos - i)


def summary(times) -> dict:
    """Median, IQR (seconds) and n of a list of timings."""
    return {"median_s": statistics.median(times),
            "iqr_s": _quantile(times, 0.75) - _quantile(times, 0.25), "n": len(times)}


def ratio_ci(num, den, *, level: float = 0.95, resamples: int = 1000, seed: int = 0) -> list[float]:
    """Bootstrap interval of median(num)/median(den), resampling whole rounds (the pairs stay paired)."""
    rng, n = random.Random(seed), len(num)
    ratios = []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        ratios.append(statistics.median(num[i] for i in idx) / statistics.median(den[i] for i in idx))
    return [_quantile(ratios, (1 - level) / 2), _quantile(ratios, (1 + level) / 2)]


def compare(num, den, target: float) -> dict:
    """``ratio`` = median(num)/median(den) with its bootstrap 95% interval, the paired (per-round)
    median ratio, the difference of medians in microseconds, and the verdict against ``target``:
    ``meets_target``, and ``target_decided`` when the interval lies on one side of it."""
    ratio = statistics.median(num) / statistics.median(den)
    ci = ratio_ci(num, den)
    return {"ratio": ratio, "ratio_ci95": ci,
            "ratio_paired_median": statistics.median(a / b for a, b in zip(num, den)),
            "overhead_us": 1e6 * (statistics.median(num) - statistics.median(den)),
            "meets_target": ratio <= target, "target_decided": ci[1] <= target or ci[0] > target}


def interleaved(contestants, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each contestant, called in turn (order rotated each round)."""
    times = {c.name: [] for c in contestants}
    n = len(contestants)
    for i in range(warmup + repeats):
        for j in range(n):
            c = contestants[(i + j) % n]
            c.setup()
            t0 = time.perf_counter()
            c.step()
            dt = time.perf_counter() - t0
            if i >= warmup:
                times[c.name].append(dt)
    return times


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int) -> dict:
    """What the timings depend on: library versions, threads, CPU, load."""
    return {
        "torch": torch.__version__, "python": platform.python_version(),
        "threads": torch.get_num_threads(), "threads_requested": threads,
        "interop_threads": torch.get_num_interop_threads(),
        "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def results(description: str, target: float, rows: list[dict], settings: dict, machine: dict,
            **extra) -> dict:
    """The results document of a benchmark: what is measured, the target, whether every row
    meets it, the settings, the machine (with the load at the end) and the rows."""
    machine = dict(machine, loadavg_end=list(os.getloadavg()) if hasattr(os, "getloadavg") else None)
    return {"description": description, "target_ratio": target,
            "all_meet_target": all(r["meets_target"] for r in rows), "settings": settings,
            **extra, "machine": machine, "rows": rows}


def argument_parser(prog: str, doc: str):
    """An ``argparse`` parser for ``python -m <prog>``, described by the first line of ``doc``,
    and its ``add_argument``."""
    import argparse

    parser = argparse.ArgumentParser(prog=f"python -m {prog}", description=doc.split("\n")[0])
    return parser, parser.add_argument
