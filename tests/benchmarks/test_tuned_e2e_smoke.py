"""Smoke test of the tuned end-to-end protocol (``benchmarks.text_to_3d.tuned_e2e``) at tiny sizes.

A randomly initialised teacher (no classifier), a 16³ NeRF at 32×32. Checks what can go wrong
beyond the structure: the frozen rate is the one the stated criterion picks from the recorded
sweep (recomputed here with an independent trapezoid rule), every run trains for its pair's
measured baseline wall-clock, the control-variate runs refreshed exactly the cells of the
cameras they drew, the cameras drawn through uniforms have the law of ``scenes.sample_cameras``,
the metrics on curves with known answers, and a page rebuilt from the JSON alone.
"""

import json
import math
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("matplotlib")
from scipy import stats  # noqa: E402

from benchmarks.text_to_3d import pipeline, tuned_e2e, tuned_e2e_stats as ts  # noqa: E402
from benchmarks.text_to_3d.scenes import ELEVATION_RANGE, RADIUS, sample_cameras  # noqa: E402
from carv_torch.cameras import cameras_from_uniforms, orbit_from_parameters  # noqa: E402
from carv_torch.control_variates import cell_index  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = tuned_e2e.Protocol(mode="tiny", tune_seeds=(10,), eval_prompts=(1, 2), eval_seeds=(0,),
                          lr_factors=(1.0, 2.0), baseline_steps=3, n_evals=3, K=2,
                          grid_size=16, image_size=32, n_samples=16)


@pytest.fixture(scope="module")
def protocol_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tuned")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # "no trained teacher": intended here
        rec = tuned_e2e.run_protocol(TINY, out, weights_dir=out / "no_weights", allow_random=True, threads=1,
                                     progress=False, log=lambda line: None)
    from benchmarks.text_to_3d.tuned_e2e_report import write_report
    page = write_report(rec, out, docs=False)
    return rec, out, page


def test_camera_law_through_uniforms_is_sample_cameras_law():
    # The same uniforms through the pipeline's transform give sample_cameras' cameras ...
    assert pipeline.CAMERA_LOW == (0.0, ELEVATION_RANGE[0])
    assert pipeline.CAMERA_HIGH == (2 * math.pi, ELEVATION_RANGE[1])
    g = torch.Generator().manual_seed(3)
    twin = torch.Generator().set_state(g.get_state())
    u = torch.rand(2, 256, generator=twin).T.contiguous()   # what sample_cameras draws
    cams = sample_cameras(256, g)
    mine = orbit_from_parameters(cameras_from_uniforms(u, pipeline.CAMERA_LOW, pipeline.CAMERA_HIGH), RADIUS)
    assert torch.allclose(mine.origins, cams.origins, atol=1e-5, rtol=0)
    assert torch.allclose(mine.rotations, cams.rotations, atol=1e-5, rtol=0)
    # ... and the uniforms draw_uniform_cameras draws are i.i.d. U[0, 1)^2 at radius RADIUS.
    draw = pipeline.draw_uniform_cameras(4000, torch.Generator().manual_seed(4))
    for j in range(2):
        assert stats.kstest(draw.uniforms[:, j].double().numpy(), "uniform").pvalue > 1e-3
    assert abs(float(np.corrcoef(draw.uniforms.double().numpy().T)[0, 1])) < 4 / math.sqrt(4000)
    assert torch.allclose(draw.cameras.origins.norm(dim=1), torch.full((4000,), RADIUS), atol=1e-5)
    lo, hi = ELEVATION_RANGE
    assert float(draw.parameters[:, 1].min()) >= lo and float(draw.parameters[:, 1].max()) <= hi
    assert float(draw.parameters[:, 0].min()) >= 0 and float(draw.parameters[:, 0].max()) < 2 * math.pi


def test_metrics_on_known_curves():
    curve = [(0.0, 0, 10.0, 0.3), (5.0, 10, 12.0, 0.5), (10.0, 20, 14.0, 0.7)]
    assert ts.final_value(curve, 2, 10.0) == 14.0 and ts.final_value(curve, 2, 7.5) == 13.0
    assert ts.time_average(curve, 2, 10.0) == pytest.approx(12.0)
    assert ts.reach_fraction(curve, 2, 10.0, 13.0) == pytest.approx(0.75)
    assert ts.reach_fraction(curve, 2, 7.5, 13.5) == math.inf            # reached only after the budget
    assert math.isnan(ts.reach_fraction(curve, 2, 10.0, math.nan))
    # The level is 90 % of the baseline's gain: 10 + 0.9 * 4 = 13.6, reached at 9 s = 0.9 of T.
    m = ts.run_metrics(curve, curve, 10.0)
    assert m["psnr"]["reach"]["0.9"] == pytest.approx(0.9) and m["psnr"]["reach"]["1.0"] == 1.0
    med = ts.median_interval([0.2, math.inf, math.inf, math.nan], np.random.default_rng(0))
    assert med["median"] == math.inf and med["reached"] == 1 and med["n"] == 3 and med["hi"] == math.inf
    ci = ts.mean_interval([1.0, 2.0, 3.0])
    assert ci["mean"] == 2.0 and ci["hi"] - 2.0 == pytest.approx(stats.t.ppf(0.975, 2) / math.sqrt(3))


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="lr_factors"):
        TINY.replace(lr_factors=(0.5, 2.0))
    with pytest.raises(ValueError, match="eval_seeds"):
        TINY.replace(eval_seeds=(10, 0))
    with pytest.raises(ValueError, match="criterion"):
        TINY.replace(criterion="best")
    with pytest.raises(ValueError, match="cv_cells"):
        pipeline.Method("m", R=1, cv_cells=(16, 0))
    with pytest.raises(ValueError, match="cv_cells needs R = 1"):
        pipeline.train(None, 0, pipeline.Method("m", R=2, cv_cells=(4, 2)), seed=0, steps=1)


def _time_average(curve, T):
    # Independent of tuned_e2e_stats: trapezoids over the points before T and the value at T.
    s = np.array([c[0] for c in curve])
    q = np.array([c[2] for c in curve])
    x = np.append(s[s < T], T)
    y = np.append(q[s < T], np.interp(T, s, q))
    return float(np.trapezoid(y, x) / T)


def test_frozen_rate_is_the_criterion_s_choice(protocol_run):
    rec, _, _ = protocol_run
    assert rec["tuning"]["criterion"] == "auc_psnr" and rec["status"] == "done"
    tune = [r for r in rec["runs"] if r["stage"] == "tune"]
    assert len(tune) == TINY.n_tune
    for m in (x["name"] for x in rec["methods"]):
        by = {}
        for r in (r for r in tune if r["method"] == m):
            by.setdefault(r["lr_factor"], []).append(_time_average(r["curve"], r["budget_seconds"]))
        assert sorted(by) == sorted(TINY.lr_factors)
        recorded = rec["tuning"]["scores"][m]
        for f, v in by.items():
            assert recorded[str(f)]["mean"] == pytest.approx(np.mean(v), rel=1e-12)
        best = max(by, key=lambda f: np.mean(by[f]))
        assert rec["tuning"]["chosen"][m]["factor"] == best
        ev = [r for r in rec["runs"] if r["stage"] == "eval" and r["method"] == m]
        assert {r["lr_factor"] for r in ev} == {best}
        assert all(r["lr"] == pytest.approx(best * pipeline.TrainSettings().lr) for r in ev)


def test_equal_budgets_and_held_out_seeds(protocol_run):
    rec, _, _ = protocol_run
    runs = rec["runs"]
    assert len(runs) == TINY.n_tune + TINY.n_eval
    base = rec["methods"][0]["name"]
    for r in runs:
        ref = [b for b in runs if b["sets_budget"] and (b["stage"], b["prompt"], b["seed"]) ==
               (r["stage"], r["prompt"], r["seed"])]
        assert len(ref) == 1 and ref[0]["method"] == base and ref[0]["steps"] == TINY.baseline_steps
        assert r["budget_seconds"] == ref[0]["train_seconds"]
        assert r["train_seconds"] >= r["budget_seconds"] and r["curve"][0][0] == 0.0
    assert {r["seed"] for r in runs if r["stage"] == "eval"}.isdisjoint(TINY.tune_seeds)
    assert rec["summary"]["pairs"] == [[1, 0], [2, 0]]
    assert rec["estimate_seconds"] > 0 and rec["command"] is None


def test_control_variate_refreshed_the_cells_it_drew(protocol_run):
    rec, _, _ = protocol_run
    cv_name = rec["methods"][2]["name"]
    assert rec["methods"][2]["cv_cells"] == [16, 2] or rec["methods"][2]["cv_cells"] == (16, 2)
    for r in rec["runs"]:
        if r["method"] != cv_name:
            assert r["control_variate"] is None
            continue
        # Replay the run's camera stream (pipeline.train: the root generator's first draw seeds it).
        root = torch.Generator().manual_seed(r["seed"])
        g = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (2,), generator=root)[0]))
        seen = set()
        for _ in range(r["steps"]):
            seen |= set(cell_index(pipeline.draw_uniform_cameras(1, g).uniforms, (16, 2)).tolist())
        assert r["control_variate"]["refreshed_cells"] == sorted(seen)
        assert r["control_variate"]["cells_refreshed"] == len(seen) >= 1


def test_json_and_page_from_the_record(protocol_run):
    rec, out, page = protocol_run
    text = (out / "tuned_e2e.json").read_text()

    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    saved = json.loads(text, parse_constant=no_constants)
    assert set(saved) >= {"protocol", "settings", "command", "machine", "probe", "methods", "runs", "tuning",
                          "summary", "seconds_total"}
    md = page.read_text()
    for m, v in saved["tuning"]["chosen"].items():
        assert f"| × {v['factor']:g} (lr {v['lr']:g})" in md
    verdict = saved["summary"]["target"][saved["methods"][1]["name"]]["met"]
    assert {True: "| met", False: "| not met", None: "no level"}[verdict] in md
    assert all((out / n).stat().st_size > 0 for n in ("tuned-e2e-sweep.png", "tuned-e2e-curves.png"))
    # --report-only rebuilds the same page from the JSON alone.
    page.unlink()
    tuned_e2e.main(["--out", str(out), "--report-only", "--no-docs"])
    assert page.read_text() == md
