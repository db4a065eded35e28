"""Smoke test of ``make demo``'s code path at tiny sizes, and its summary sentence.

A randomly initialised teacher (no classifier: p(prompt) is nan), a 16³ NeRF at 32×32.
Checks the demo's contract: the baseline is budgeted in steps, CARV in the baseline's
measured training time, every stage has an expected and a measured time, and the
summary opens with the sentence on what the user should see.
"""

import json
import math
import warnings
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("matplotlib")

from benchmarks.text_to_3d import demo, demo_report, pipeline  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_run_demo_tiny(tmp_path):
    settings = pipeline.TrainSettings(grid_size=16, image_size=32, n_samples=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # "no trained teacher": intended here
        out = demo.run_demo(0, 3, tmp_path, reps=2, ref_renders=4, ref_K=2, weights_dir=tmp_path / "none",
                            allow_random=True, threads=1, settings=settings, n_evals=2)
    rec = json.loads((out / "ecm_table.json").read_text())
    base, carv = rec["runs"][pipeline.BASELINE.name], [v for k, v in rec["runs"].items()
                                                      if k != pipeline.BASELINE.name][0]
    assert base["steps"] == 3
    assert carv["train_seconds"] >= base["train_seconds"]          # CARV ran for the baseline's time
    assert carv["train_seconds"] - base["train_seconds"] < 2 * max(carv["step_seconds"], 1e-3) + 1.0
    assert set(rec["expected_seconds"]) == set(rec["measured_seconds"]) == {"probe", "baseline", "carv",
                                                                           "ecm", "report"}
    assert all(v > 0 for v in rec["expected_seconds"].values())
    summary = (out / "summary.md").read_text().splitlines()
    assert summary[2].startswith("The baseline did NOT reach")     # no classifier: p is nan
    for f in ("renders_final.png", "quality_vs_wallclock.png", "variance_vs_compute.png"):
        assert (out / f).stat().st_size > 1000


def test_run_demo_rejects_bad_budgets(tmp_path):
    with pytest.raises(ValueError, match="baseline_steps"):
        demo.run_demo(0, 0, tmp_path)
    with pytest.raises(ValueError, match="n_evals"):
        demo.run_demo(0, 10, tmp_path, n_evals=1)


def _run(steps, seconds, probs):
    # curve rows: (train_seconds, step, psnr, iou, prob) at evenly spaced times.
    n = len(probs)
    return SimpleNamespace(steps=steps, train_seconds=seconds,
                           curve=[(seconds * i / (n - 1), 0, 0.0, 0.0, p) for i, p in enumerate(probs)])


def test_sentence_reports_the_measured_runs():
    runs = {pipeline.BASELINE.name: _run(360, 80.0, [0.0, 0.5, 0.95]),
            "CARV": _run(400, 80.0, [0.0, 0.9, 0.99])}
    s = demo_report.what_you_should_see(0, runs, "CARV", {"ecm": 1.91, "ecm_se": 0.2}, 0.9)
    assert s.startswith("What you should see: after its 360 steps (80 s here)")
    assert "ended at p(prompt) = 0.990" in s and "1.91 ± 0.20" in s
    # CARV reaches 0.9 exactly at the middle evaluation (40 s); the baseline between 40 s and
    # 80 s, linearly: 40 + 40 (0.9 - 0.5)/(0.95 - 0.5) = 75.6 s.
    assert "at 40 s against the baseline's 76 s" in s
    runs[pipeline.BASELINE.name] = _run(360, 80.0, [0.0, 0.5, 0.6])
    s = demo_report.what_you_should_see(0, runs, "CARV", {"ecm": 1.0, "ecm_se": 0.1}, 0.9)
    assert s.startswith("The baseline did NOT reach p(prompt) ≥ 0.9 in its 360 steps (p = 0.600)")
    assert math.isnan(demo_report.first_reach(runs[pipeline.BASELINE.name].curve, 0.9))


def test_expected_ecm_time_is_the_linear_cost_model():
    methods = [pipeline.BASELINE, pipeline.Method("a", 1, 8), pipeline.Method("b", 2, "auto")]
    c_u, c_d = 0.1, 0.01
    # sweeps: 2 (0.1 + 0.01) + (0.1 + 0.08) + 2 (0.1 + 4 * 0.01) = 0.68; reference: 4 (0.1 + 0.02)
    got = demo._ecm_seconds(methods, c_u, c_d, reps=3, warmup=1, ref_renders=4, ref_K=2, K_auto=4)
    assert got == pytest.approx(4 * 0.68 + 4 * 0.12)
