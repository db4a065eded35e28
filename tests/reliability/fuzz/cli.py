"""Fuzz catalogue of the public API on bad and edge input (design.md §4, *Contracts*).

The command line: runs the catalogue under a memory limit, prints the counts per category
(clear / obscure / silent / hang / too-large / ok; :mod:`fuzz.classify`) and the non-clear
cases, and writes them with the run's metadata as JSON (``--json``); ``--known`` prints the
``KNOWN`` dict of ``test_fuzz.py``. The entry point is ``tests/reliability/fuzz_catalogue.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from .classify import CATEGORIES, DEFAULT_TIMEOUT, NON_CLEAR
from .limits import _set_memory_limit
from .runner import build_catalogue, known_literal, run_catalogue, summarise

DEFAULT_MEM_GIB = 4.0
REPO_ROOT = Path(__file__).resolve().parents[3]


def _git(*args) -> str:
    try:
        out = subprocess.run(["git", "--no-optional-locks", "-C", str(REPO_ROOT), *args], capture_output=True,
                             text=True, timeout=20)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def _library_info() -> dict:
    info = {}
    for name in ("carv_core", "carv_torch", "numpy", "scipy", "torch"):
        try:
            mod = __import__(name)
            info[name] = {"file": getattr(mod, "__file__", None), "version": getattr(mod, "__version__", None)}
        except ImportError as err:
            info[name] = {"error": repr(err)}
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write counts, metadata and every result here")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per case (default 5)")
    ap.add_argument("--mem-gib", type=float, default=DEFAULT_MEM_GIB,
                    help="address-space limit of this process in GiB (0: none; default 4)")
    ap.add_argument("--filter", help="run only cases whose id contains this")
    ap.add_argument("--label", default="", help="a label stored in the JSON (e.g. before/after)")
    ap.add_argument("--commit", default=None, help="the commit measured (default: git HEAD of this checkout)")
    ap.add_argument("--verbose", action="store_true", help="print every case as it runs")
    ap.add_argument("--known", action="store_true", help="print a KNOWN dict literal for test_fuzz.py")
    ap.add_argument("--list", action="store_true", help="list the case ids and exit")
    ap.add_argument("--full", action="store_true", help="store every result's detail in the JSON (default: "
                                                        "details of the non-clear cases only)")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mem = _set_memory_limit(args.mem_gib)
    t0 = time.perf_counter()
    cases = build_catalogue()
    if args.list:
        for c in cases:
            print(c.id)
        return 0
    results = run_catalogue(cases, timeout=args.timeout, filter=args.filter, verbose=args.verbose)
    runtime = time.perf_counter() - t0
    summary = summarise(results)
    info = _library_info()
    print(f"carv_core from {info['carv_core'].get('file')}")
    print(f"carv_torch from {info['carv_torch'].get('file')}")
    print(f"{summary['total']} cases in {runtime:.1f} s ({mem}, {args.timeout:g} s per case)")
    print("counts: " + ", ".join(f"{c} {n}" for c, n in summary["counts"].items()))
    print(f"{'module':12s}" + "".join(f"{c:>10s}" for c in CATEGORIES))
    for m, v in summary["by_module"].items():
        print(f"{m:12s}" + "".join(f"{v[c]:10d}" for c in CATEGORIES))
    bad = [r for r in results if r.category in NON_CLEAR]
    print(f"\nnon-clear cases ({len(bad)}):")
    for r in sorted(bad, key=lambda r: (r.module, r.func, r.id)):
        print(f"  [{r.category}] {r.id}: {r.detail}")
    if args.known:
        print("\n" + known_literal(results))
    if args.json:
        commit = args.commit if args.commit is not None else _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no") if args.commit is None else ""
        env = " ".join(f"{k}={os.environ[k]}" for k in ("PYTHONPATH", "OMP_NUM_THREADS") if os.environ.get(k))
        payload = {
            "label": args.label,
            "command": " ".join(filter(None, [env, shlex.join([sys.executable, *sys.argv])])),
            "cwd": os.getcwd(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": commit + (" (working tree has uncommitted changes)" if dirty else ""),
            "python": sys.version.split()[0],
            "libraries": info,
            "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "timeout_s": args.timeout,
            "memory_limit": mem,
            "runtime_s": round(runtime, 2),
            **summary,
            "non_clear": {r.id: f"{r.category}: {r.detail}" for r in bad},
            "categories": {r.id: r.category for r in results},
        }
        if args.full:
            payload["results"] = [dataclasses.asdict(r) for r in results]
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=1, default=str) + "\n")
        print(f"\nwrote {args.json}")
    return 0
