"""Smoke test of the text-to-3D benchmark: the SDS pipeline and the study's code paths at tiny sizes.

A randomly initialised teacher of the benchmark's architecture (the shipped weights are
not needed), a 16³ NeRF rendered at 32×32 with 16 samples per ray. The statistical
check: over a few replicates, each estimator's mean sits within a few standard errors
of an independent reference gradient (all the estimators are unbiased for the same $G$).
"""

import json
import math
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("matplotlib")

from benchmarks.text_to_3d import pipeline, study  # noqa: E402
from benchmarks.text_to_3d.nerf import make_nerf, measure_costs, opacity  # noqa: E402
from benchmarks.text_to_3d.scenes import sample_cameras  # noqa: E402
from benchmarks.text_to_3d.teacher import load_teacher, null_condition, teacher_condition  # noqa: E402

TINY = dict(grid_size=16, image_size=32, n_samples=16)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # "no trained teacher": intended here
        return load_teacher(tmp_path_factory.mktemp("no_weights"))


@pytest.fixture(scope="module")
def settings():
    return pipeline.TrainSettings(**TINY)


def test_upstream_and_costs(teacher):
    nerf = make_nerf(**TINY)
    cams = sample_cameras(2, torch.Generator().manual_seed(0))
    img = nerf(cams)
    assert img.shape == (2, 3, 32, 32)
    z = teacher.encode(img)
    assert z.shape == (2, 4, 8, 8) and bool(torch.isfinite(z).all())
    occ = opacity(nerf, cams)
    assert occ.shape == (2, 32, 32) and float(occ.min()) >= 0 and float(occ.max()) <= 1
    # The blob initialisation: opaque at the centre of the image, clear at the corners.
    assert float(occ[:, 16, 16].min()) > 0.9 and float(occ[:, 0, 0].max()) < 0.1
    c = measure_costs(nerf, teacher, teacher_condition(0), null_condition(), guidance_scale=5.0,
                      R=2, n_draws=4, repeats=2)
    assert c.c_u > 0 and c.c_d > 0


def test_train_and_evaluate(teacher, settings):
    ref = pipeline.eval_reference(1, **TINY)
    assert ref.images.shape == (8, 3, 32, 32) and ref.masks.dtype == torch.bool
    assert 0 < float(ref.masks.float().mean()) < 1
    carv = pipeline.Method("carv", R=1, K=4, proposal="weight", sampler="stratified")
    for method in (pipeline.BASELINE, carv):
        run = pipeline.train(teacher, 1, method, seed=0, settings=settings, steps=4, ref=ref,
                             eval_steps=(2,), checkpoint_steps=(0, 2), progress=False)
        assert run.steps == 4 and [c[1] for c in run.curve] == [0, 2, 4]
        assert all(math.isfinite(v) for c in run.curve for v in c[:4])
        assert set(run.checkpoints) == {0, 2} and run.mean_K == method.K
        # Training moved the grid away from the checkpoint at step 0.
        assert not torch.equal(run.checkpoints[0]["colour"], run.nerf.colour.detach())


def test_estimators_unbiased_and_ecm_table(teacher, settings):
    nerf = make_nerf(**TINY)
    g = torch.Generator().manual_seed(1)
    ref = study.reference_gradient(nerf, teacher, 0, n_renders=48, K=8, batch=4, guidance_scale=5.0,
                                   generator=g, progress=False)
    assert ref.grad.shape == (4 * 16**3,) and np.isfinite(ref.grad).all() and ref.var_ref > 0
    assert ref.n_draws == 48 * 8
    q, m = pipeline.oracle_from_draws(ref.t, ref.sq_norm, 1000)
    assert abs(float(q.sum()) - 1) < 1e-9 and float(q[:20].sum()) == 0 and float(q[981:].sum()) == 0
    methods = [pipeline.BASELINE,
               pipeline.Method("uniform R=1 K=4", 1, 4),
               pipeline.Method("IS+strat R=1 K=4", 1, 4, "weight", "stratified"),
               pipeline.Method("oracle R=1 K=4", 1, 4, "oracle", "iid"),
               pipeline.Method("antithetic+IS+strat R=1 K=4", 1, 4, "weight", "stratified", antithetic=True),
               pipeline.Method("K=auto R=2 IS+strat", 2, "auto", "weight", "stratified")]
    rows = study.ecm_table(study.measure_configs(
        nerf, teacher, 0, methods, ref, reps=8, warmup=1, guidance_scale=5.0, oracle_q=q,
        fixed_costs=(8.0, 1.0), generator=g, progress=False))
    assert [r["name"] for r in rows] == [m.name for m in methods]
    for r in rows:
        assert r["reps"] == 8 and r["mse"] > 0 and r["cost"] > 0 and math.isfinite(r["ecm"])
        # ||mean - G||^2 against its expectation tr Cov / n + V_ref: about 1 when unbiased.
        assert 0.3 < r["bias_ratio"] < 2.5, r
    assert rows[0]["ecm"] == pytest.approx(1.0) and rows[0]["re"] == pytest.approx(1.0)
    assert math.isnan(rows[-1]["re"]) and rows[-1]["mean_K"] >= 2
    comps = study.fit_components(rows, ["baseline (R=2, K=1, uniform)", "uniform R=1 K=4"])
    assert comps["sigma_b2"] >= 0 and comps["sigma_w2"] >= 0
    curve = study.ecm_vs_ratio(comps, comps, ratios=[1.0, 10.0, 100.0])
    assert len(curve["uniform"]) == 3 and curve["uniform"][2] >= curve["uniform"][0] - 1e-12


def test_run_study_and_report(tmp_path, teacher):
    size = study.QUICK.replace(mode="smoke", ckpt_steps=(1, 2), ref_renders=8, ref_K=4, reps=3, warmup=1,
                               Ks=(1, 2), k_variants=2, e2e_prompts=(0,), e2e_seeds=(0,), e2e_seconds=1.0,
                               e2e_eval_every=0.5, cost_draws=(4,), cost_repeats=2, **TINY)
    methods = [pipeline.BASELINE, pipeline.Method("uniform R=1 K=2", 1, 2),
               pipeline.Method("IS+strat R=1 K=1", 1, 1, "weight", "stratified"),
               pipeline.Method("IS+strat R=1 K=2", 1, 2, "weight", "stratified"),
               pipeline.Method("K=auto R=2 IS+strat", 2, "auto", "weight", "stratified")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rec = study.run_study(size, tmp_path, allow_random=True, progress=False, methods=methods,
                              threads=torch.get_num_threads())
    assert len(rec["checkpoints"]) == 2
    names = [r["name"] for r in rec["checkpoints"][0]["configs"]]
    assert names == [m.name for m in methods]
    assert {"early", "middle", "late"}.isdisjoint(rec["checkpoint_run"]["checkpoints"])  # two checkpoints
    assert set(rec["e2e"]["summary"]["metrics"]) == {"psnr", "iou", "prob"}
    assert len(rec["e2e"]["runs"]) == 2 and rec["full_estimate_seconds"] > 0
    study.write_report(rec, tmp_path, docs=False)
    page = (tmp_path / "text-to-3d.md").read_text()
    for name in names:
        assert name in page
    for fig in ("variance_vs_compute.png", "ecm_vs_k.png", "ecm_vs_ratio.png", "quality_vs_wallclock.png"):
        assert (tmp_path / fig).stat().st_size > 1000
    assert json.loads((tmp_path / "study.json").read_text())["mode"] == "smoke"

    # The equal-wall-clock comparison of a costlier (R, K) against the study's own baseline runs.
    extra = study.extra_end_to_end(rec, teacher, None, pipeline.Method("IS+strat (R=2, K=2)", 2, 2, "weight",
                                                                       "stratified"),
                                   [0], settings=pipeline.TrainSettings(**TINY), progress=False)
    assert len(extra["runs"]) == 1 and extra["runs"][0]["steps"] > 0
    assert set(extra["metrics"]) == {"psnr", "iou", "prob"}
    assert extra["metrics"]["psnr"]["baseline_final"] == pytest.approx(
        rec["e2e"]["summary"]["metrics"]["psnr"]["baseline_final"])   # one run each: same curve end
    rec["e2e_extra"] = extra
    assert "The best-ECM configuration at equal wall-clock" in study.render_page(rec, "")
    with pytest.raises(ValueError, match="no baseline run for prompt 0, seed 5"):
        study.extra_end_to_end(rec, teacher, None, pipeline.BASELINE, [5],
                               settings=pipeline.TrainSettings(**TINY), progress=False)
