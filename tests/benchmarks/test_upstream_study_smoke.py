"""Smoke test of the upstream study (issue 15) at tiny sizes, and one check that can fail.

A randomly initialised teacher of the benchmark's architecture, a 16³ NeRF rendered at
32×32 with 16 samples per ray. The run checks the JSON's structure and the page; the
statistical check: a control-variate table of cell means built at the same NeRF shrinks the
spread of the per-view gradient over cameras (and a table whose cells are shuffled does not).
"""

import json
import math
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("matplotlib")

from benchmarks.text_to_3d import upstream_measure as um  # noqa: E402
from benchmarks.text_to_3d import upstream_study  # noqa: E402
from benchmarks.text_to_3d.nerf import flat_grad, make_nerf  # noqa: E402
from benchmarks.text_to_3d.pipeline import Method, TrainSettings, gradient_step, make_guidance  # noqa: E402
from benchmarks.text_to_3d.upstream_report import FIGURES  # noqa: E402
from benchmarks.text_to_3d.teacher import load_teacher, null_condition, teacher_condition  # noqa: E402
from carv_torch.control_variates import cell_index  # noqa: E402

TINY = dict(grid_size=16, image_size=32, n_samples=16)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # "no trained teacher": intended here
        return load_teacher(tmp_path_factory.mktemp("no_weights"))


def test_designs_share_the_camera_law_and_bad_configs_raise():
    um.check_camera_law()
    g = torch.Generator().manual_seed(3)
    for up in ("iid", "strat", "antipodal", "sobol", "sequence"):
        cfg = um.Config("x", Method("m", 4, 1), up, period=2 if up == "sequence" else 1)
        u, cams = um.step_cameras(cfg, g, step=1, seed=7)
        assert u.shape == (4, 2) and bool(((u >= 0) & (u < 1)).all())
        assert torch.allclose(cams.origins.norm(dim=1), torch.full((4,), 2.5), atol=1e-5)
    with pytest.raises(ValueError, match="upstream must be one of"):
        um.Config("x", Method("m", 2, 1), "halton")
    with pytest.raises(ValueError, match="period"):
        um.Config("x", Method("m", 2, 1), "iid", period=3)
    with pytest.raises(ValueError, match="split must be False"):
        um.Config("x", Method("m", 2, 1), "cv")


def test_fresh_cell_table_shrinks_the_per_view_spread(teacher):
    # Per-view means mu(xi) from 32 stratified draws at n random cameras; a cell-mean table built
    # at the same NeRF (4 other cameras per cell) must explain part of their spread over cameras.
    s = TrainSettings(**TINY)
    nerf = make_nerf(**TINY)
    dense = Method("dense", 1, 32, "uniform", "stratified")
    g = torch.Generator().manual_seed(0)
    pool = um.cell_pool(nerf.state_dict(), teacher, dense, 0, per_cell=4, guidance_scale=5.0, generator=g,
                        settings=s)
    table = um.cell_tables(pool, 0, 0, 0)[-1].table           # the cell-mean table
    shuffled = um.cell_tables(pool[:, torch.randperm(32, generator=g)], 0, 0, 0)[-1].table
    guid = make_guidance(teacher, dense, seed=1)
    cond, unc = teacher_condition(0), null_condition()
    iid = um.Config("x", Method("m", 1, 32), "iid")
    plain, fresh, wrong = [], [], []
    for _ in range(40):
        u, cams = um.step_cameras(iid, g)
        gradient_step(nerf, guid, cams, cond, unc)
        mu, cells = flat_grad(nerf), cell_index(u, um.CELLS)
        plain.append(mu.double())
        fresh.append(table.corrected(mu, cells).double())
        wrong.append(shuffled.corrected(mu, cells).double())

    def spread(xs):
        x = torch.stack(xs)
        return float(((x - x.mean(0)) ** 2).sum(1).mean())

    assert spread(fresh) < 0.8 * spread(plain), (spread(fresh), spread(plain))
    assert spread(wrong) > spread(plain)   # the wrong cells add variance


def test_tiny_study_json_and_page(tmp_path, teacher, monkeypatch):
    monkeypatch.setattr(upstream_study, "load_teacher", lambda *a, **k: teacher)
    size = upstream_study.QUICK.replace(mode="smoke", ckpt_steps=(3,), staleness=(0, 2), ref_renders=8, ref_K=4,
                                        cfg_ref_renders=8, design_Rs=(2,), reps=3, cfg_reps=2, per_cell=2,
                                        n_boot=50, **TINY)
    carv = Method("carv", 2, 2, "weight", "stratified")
    rec = upstream_study.run(size, tmp_path, allow_random=True, progress=False, carv=carv,
                             threads=torch.get_num_threads(), command="smoke")
    data = json.loads((tmp_path / "upstream.json").read_text())
    assert data["mode"] == "smoke" and data["command"] == "smoke" and data["seconds_total"] > 0
    assert data["estimate_seconds"] > 0 and data["camera_law"]["radius"] == 2.5
    (ck,) = data["checkpoints"]
    recs = ck["analysis"]["records"]
    fields = {"checkpoint", "inner", "upstream", "R", "V", "V_se", "sigma_b2", "sigma_b2_ci", "sigma_b2_reduction",
              "sigma_b2_reduction_ci", "cost_s", "ecm", "ecm_se"}
    assert all(fields <= set(r) for r in recs)
    kinds = {(r["inner"], r["upstream"], r["R"]) for r in recs}
    for inner in ("baseline", "carv"):
        assert {(inner, up, 2) for up in ("iid", "strat", "antipodal", "sobol", "cv")} <= kinds
        assert (inner, "cv", 1) in kinds and (inner, "iid", 1) in kinds
    assert ("carv", "sequence", 2) in kinds
    cv = [r for r in recs if r["upstream"] == "cv"]
    # Per (inner, R): staleness 0 and 2, each as 2 saga tables (pooled) and their mean.
    assert len(cv) == 2 * 2 * 2 * 2 and {r["table"] for r in cv} == {"saga", "mean2"}
    assert all(r["cost_s"] > 0 and r["V"] > 0 and math.isfinite(r["ecm"]) for r in recs)
    assert all(r["cost_batched_vjp_s"] > 0 for r in cv if r["R"] == 2)      # per_view_gradients timed too
    base = next(r for r in recs if (r["inner"], r["upstream"], r["R"]) == ("baseline", "iid", 2))
    assert base["ecm"] == pytest.approx(1.0)
    assert [c["scale"] for c in ck["cfg"]] == [5.0, 25.0]
    assert all(c["sigma_w2"] > 0 and "ecm" in c for c in ck["cfg"])
    assert [(s["checkpoint"], s["step"]) for s in data["summary"]] == [("checkpoint 1", 3)]
    # The post-hoc control variate with table 0 and the timed step with the same table agree in law:
    # both MSEs are finite and positive (their agreement within SE is a full-study check).
    chk = [r["online_check"] for r in cv if "online_check" in r]
    assert chk and all(c["mse_online_step"] > 0 and c["mse_posthoc_table0"] > 0 for c in chk)
    page = upstream_study.write_report(data, tmp_path, docs=False)
    text = page.read_text()
    assert "## Targets" in text and "baseline iid R=2" in text and "## CFG scale" in text
    for name in FIGURES:
        assert (tmp_path / name).stat().st_size > 1000
    assert len(rec["checkpoints"]) == 1


def test_records_recover_a_halved_between_variance():
    # Synthetic replicates: the i.i.d. rows' cross products give sigma_B^2 = 2 (x = 1 at R = 2, plus
    # V_ref), sigma_W^2 = 3 from d = 6/R; the stratified row's give sigma_B^2 = 1. The reduction is then 1/2 exactly, and its interval is 1/2.
    from benchmarks.text_to_3d.upstream_analysis import records

    def row(upstream, R, x, mse, cost):
        return dict(name=f"{upstream} {R}", inner="baseline", upstream=upstream, R=R, K=1, period=1, reps=4,
                    mse=mse, bias_ratio=1.0, err=[mse * f for f in (0.5, 1.5, 0.5, 1.5)], cross=[x + 0.1] * 4,
                    dab=[6.0 / R] * 4, cost=cost, cost_q1=cost, cost_q3=cost, posthoc=[])

    rows = [row("iid", 2, 1.0, 2.0, 0.2), row("iid", 1, 2.0, 4.0, 0.1), row("strat", 2, 0.5, 1.5, 0.2)]
    out = records(rows, var_ref=0.1, c_u=0.1, c_d=0.01, rng=np.random.default_rng(0), n_boot=20)
    assert out["sigma_b2_iid"] == pytest.approx(2.0) and out["sigma_w2"]["baseline"] == pytest.approx(3.0)
    strat = next(r for r in out["records"] if r["upstream"] == "strat")
    assert strat["sigma_b2"] == pytest.approx(1.0) and strat["sigma_b2_reduction"] == pytest.approx(0.5)
    assert strat["sigma_b2_reduction_ci"] == pytest.approx([0.5, 0.5])
    assert strat["ecm"] == pytest.approx(2.0 / 1.5)     # same cost, V 2.0 -> 1.5
    assert strat["sigma_b2_from_V"] == pytest.approx(2 * (1.5 - 0.1) - 3.0)
