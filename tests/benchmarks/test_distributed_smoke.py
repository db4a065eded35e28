"""Smoke test of ``benchmarks/distributed.py``: 2 gloo ranks, 2 steps, a well-formed json.

No timing is asserted (a shared machine makes any bound flaky). The byte counts are exact,
so they are checked exactly: the row-count all-gather (one int64 per rank), the adaptive
proposal's 2 x 20 float64 statistics, the probe's 5 float64 numbers (step 0 is a probe),
and DDP's gradient bytes = parameter count x 4. The benchmark runs in a subprocess (it
spawns its ranks and sets thread counts).
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


def test_two_ranks_two_steps_write_the_traffic_ratio(tmp_path):
    out = tmp_path / "distributed.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.distributed", "--world-sizes", "2",
                           "--steps", "2", "--warmup", "0", "--replay-repeats", "3",
                           "--replay-warmup", "1", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "CARV bytes / DDP gradient bytes per step" in proc.stdout

    res = json.loads(out.read_text())
    assert res["target_ratio"] == 0.01
    (row,) = res["rows"]
    assert row["world_size"] == 2
    ddp, carv = row["ddp"], row["carv"]
    assert ddp["bytes_per_step_analytic"] == ddp["n_params"] * ddp["element_size"] == 4 * ddp["n_params"]
    assert ddp["bytes_per_step_measured"] == ddp["bytes_per_step_analytic"] and ddp["analytic_matches_hook"]
    assert sum(ddp["buckets_numel"]) == ddp["n_params"]

    kinds = carv["collectives"]
    assert set(kinds) == {"rows", "proposal", "probe"}
    assert (kinds["rows"]["op"], kinds["rows"]["payload_bytes"]) == ("all_gather", 2 * 8)
    assert (kinds["proposal"]["op"], kinds["proposal"]["payload_bytes"]) == ("all_reduce", 2 * 20 * 8)
    assert (kinds["probe"]["op"], kinds["probe"]["payload_bytes"]) == ("all_reduce", 5 * 8)
    assert kinds["rows"]["calls_per_step"] == kinds["proposal"]["calls_per_step"] == 1
    assert row["probe_steps"] == [0]
    assert carv["bytes_probe_step"] == carv["bytes_per_step_max"] == 16 + 320 + 40
    assert carv["bytes_plain_step"] == 16 + 320
    assert carv["other_python_collectives_bytes"] == 0

    ratio = row["ratio_bytes"]
    assert math.isfinite(ratio) and 0 < ratio == carv["bytes_per_step_max"] / ddp["bytes_per_step_measured"]
    assert row["meets_target"] == (ratio < 0.01)
    assert 0 < row["ratio_bytes_mean"] <= ratio
    assert row["K_identical_on_ranks"] and row["q_identical_on_ranks"]
    assert row["params_identical_on_ranks"] and row["streams_differ"]

    rep = row["replay"]
    for name in ("carv_step", "carv_probe_step", "carv_step_world_rows", "ddp_gradients"):
        assert rep[name]["n"] == 3 and rep[name]["median_s"] > 0
    assert math.isfinite(rep["time_ratio_carv_probe_step"]["ratio"])
    for key in ("time_in_loop_s",):
        assert carv[key]["n"] >= 1 and ddp[key]["n"] >= 1
    machine = res["machine"]
    assert machine["torch"] and machine["cpu"] and machine["backend"] == "gloo"
