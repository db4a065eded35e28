"""The noise-scale diagnostic's validation on the text-to-3D study: its inputs, its measured speed-ups, its table."""

import math

import pytest

import carv_core
from benchmarks.text_to_3d import diagnostic_check as dc


def _curve(rate, T=100.0, n=11):
    # PSNR-like metric rising linearly at ``rate`` per second from 10, sampled every T/(n-1) s.
    return [(T * i / (n - 1), i, 10.0 + rate * T * i / (n - 1), 0.5, 0.5) for i in range(n)]


def _study(components, carv_components):
    ckpt = {"label": "early", "step": 1, "reference": {"grad_norm2": 2.5, "var_ref": 0.5},
            "cost_fit": {"overhead": 0.0, "c_u": 8.0, "c_d": 1.0},
            "components": components, "components_is_strat": carv_components}
    runs = []
    for seed in range(3):
        runs.append({"method": "base", "prompt": 0, "seed": seed, "curve": _curve(0.05)})
        runs.append({"method": "carv", "prompt": 0, "seed": seed, "curve": _curve(0.1)})
    return {"checkpoints": [ckpt], "e2e": {"carv_method": {"name": "carv", "R": 1, "K": 8},
                                           "runs": runs, "summary": {"methods": ["base", "carv"]}}}


def test_prediction_is_the_core_model():
    comp = {"sigma_b2": 1.0, "sigma_w2": 8.0}
    p, = dc.predictions(_study(comp, comp))
    core = carv_core.predicted_speedup(2, 1, 1, 8, sigma_b2=1.0, sigma_w2=8.0, grad_sq_norm=2.0, c_u=8.0, c_d=1.0)
    assert p["grad_sq_norm"] == 2.0                       # the reference's own variance subtracted
    assert p["speedup"] == pytest.approx(core.speedup) and p["ecm_limit"] == pytest.approx(core.ecm)
    assert p["noise_scale"] == pytest.approx(4.5 / 2.0)


def test_measured_speedup_of_a_twice_as_fast_curve():
    comp = {"sigma_b2": 1.0, "sigma_w2": 8.0}
    m = dc.measured_speedups(_study(comp, comp))
    # CARV rises twice as fast: it reaches every level in half the time. The iou/prob columns are flat.
    for f in dc.FRACTIONS:
        assert m["psnr"][str(f)]["median"] == pytest.approx(2.0) and m["psnr"][str(f)]["n"] == 3
        assert m["iou"][str(f)]["n"] == 0 and math.isnan(m["iou"][str(f)]["median"])


def test_committed_table_is_generated_from_the_committed_study():
    rec = dc.run(out=None, table_path=None)
    assert dc.TABLE.read_text() == dc.table(rec)
    assert [p["label"] for p in rec["predicted"]] == ["early", "middle", "late"]
