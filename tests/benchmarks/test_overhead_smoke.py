"""Smoke test of ``benchmarks/overhead.py``: the ``--quick`` mode runs and writes a well-formed json.

No timing is asserted (a shared machine makes any bound flaky); only that every
configuration has a finite, positive ratio and that the same-gradient check ran.
The benchmark runs in a subprocess: it sets torch's thread count and the global
validation flag, which must not leak into the rest of the session.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parents[2]


def test_quick_mode_writes_a_ratio_per_configuration(tmp_path):
    out = tmp_path / "overhead.json"
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.overhead", "--quick", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "ratio" in proc.stdout  # the printed table

    res = json.loads(out.read_text())
    rows = res["rows"]
    configs = {(r["proposal"], r["design"], r["K"]) for r in rows}
    assert configs == {(p, d, K) for p, d in (("uniform", "iid"), ("weight", "stratified"))
                       for K in (1, 8)}
    for r in rows:
        for key in ("ratio", "ratio_validated", "ratio_paired_median"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r)
        lo, hi = r["ratio_ci95"]
        assert 0 < lo <= hi and math.isfinite(hi)
        for side in ("baseline", "carv", "carv_validated"):
            s = r[side]
            assert s["n"] >= 1 and s["median_s"] > 0 and s["iqr_s"] >= 0
        assert r["R"] == 2
    assert {c["proposal"] for c in res["same_gradient_checks"]} == {"uniform", "weight"}
    machine = res["machine"]
    assert machine["torch"] and machine["threads"] >= 1 and machine["cpu"]
