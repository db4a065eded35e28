"""Smoke test of the attribution benchmark: the digits data, the study and the report at tiny sizes.

A randomly initialised UNet of the benchmark's architecture (the shipped weights are not
needed). Checks that can fail: the data are what they claim, every record has the documented fields with
iid's ECM exactly 1, and the page is generated from the numbers in the file.
"""

import json
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("sklearn")
pytest.importorskip("trak")
pytest.importorskip("matplotlib")

from benchmarks import digits
from benchmarks.attribution import pipeline, report, study

pytestmark = pytest.mark.usefixtures("one_thread")


def test_digits_two_class_subset_and_split():
    data = digits.load_digits(classes=(0, 1))
    assert data.images.shape[1:] == (1, 8, 8) and data.images.dtype == torch.float32
    assert float(data.images.min()) == -1.0 and float(data.images.max()) == 1.0
    assert set(data.labels.tolist()) == {0, 1} and len(data.labels) == 360
    full = digits.load_digits()
    assert torch.equal(full.images[data.index], data.images)
    train, held = digits.split(data, n_heldout=40, seed=0)
    assert len(held.labels) == 40 and len(train.labels) == 320
    assert not set(train.index.tolist()) & set(held.index.tolist())
    again, _ = digits.split(data, n_heldout=40, seed=0)
    assert torch.equal(again.index, train.index)
    with pytest.raises(ValueError, match="classes must be distinct digits"):
        digits.load_digits(classes=(1, 1))
    with pytest.raises(ValueError, match="n_heldout"):
        digits.split(data, n_heldout=0)


def test_study_and_report_at_tiny_sizes(tmp_path, monkeypatch):
    s = study.Settings(n_train=6, n_heldout=2, n_generated=2, budgets=(1, 2, 4), replicates=3, ref_k=8,
                       proj_dim=16, is_draws=2, is_bins=4, threads=1, weights_dir=str(tmp_path / "none"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # "randomly initialised": intended here
        rec = study.run(s, progress=False)
    names = {c.name for c in pipeline.configs(torch.full((1000,), 1e-3, dtype=torch.float64))}
    assert {r["design"] for r in rec["records"]} == names
    assert len(rec["records"]) == len(names) * 3
    for r in rec["records"]:
        for key in ("design", "budget", "ecm", "ecm_se", "spearman", "spearman_ci95", "mse", "seconds_per_eval"):
            assert key in r
        assert np.isfinite(r["ecm"]) and r["seconds_per_eval"] > 0 and -1 <= r["spearman"] <= 1
        if r["design"] == "iid":
            assert r["ecm"] == 1.0
    assert {(b["design"], b["budget"]) for b in rec["grid_bias"]} == {(d, k) for d in ("grid", "grid+crn")
                                                                     for k in (1, 2, 4)}
    assert rec["n_points"] == 10 and rec["n_queries"] == 4
    monkeypatch.setattr(report, "DOCS_PAGE", tmp_path / "attribution.md")
    monkeypatch.setattr(report, "DOCS_FIGS", tmp_path / "figs")
    out = report.write_report(json.loads(json.dumps(rec)), tmp_path / "results")
    page = (tmp_path / "attribution.md").read_text()
    r4 = next(r for r in out["records"] if r["design"] == "stratified" and r["budget"] == 4)
    assert f"{r4['ecm']:.2f} ± {r4['ecm_se']:.2f}" in page
    assert all((tmp_path / "figs" / f"attribution-{n}.png").exists() for n in out["figures"])
    assert json.loads((tmp_path / "results" / "study.json").read_text())["records"] == out["records"]


def test_reduced_lds_code_path(tmp_path, monkeypatch):
    pytest.importorskip("dattri")
    from benchmarks.attribution import lds, model

    def random_teacher(**kw):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return model.load_teacher(tmp_path / "none")

    monkeypatch.setattr(lds, "load_teacher", random_teacher)
    out = lds.run(subsets=3, steps=2, budgets=(1,), designs=("iid", "grid+crn"), n_queries=2, proj_dim=8,
                  threads=1)
    assert out["computed"] and out["reduced"] and out["subsets"] == 3 and out["n_train"] == 320
    assert [(r["design"], r["budget"]) for r in out["rows"]] == [("iid", 1), ("grid+crn", 1)]
    assert all(-1 <= r["lds"] <= 1 for r in out["rows"])
    # The model output is minus the denoising loss at fixed draws: the same model gives the same value.
    unet = random_teacher().unet
    q = torch.zeros(2, 1, 8, 8)
    assert torch.equal(lds.model_outputs(unet, q), lds.model_outputs(unet, q))
    assert float(lds.model_outputs(unet, q).max()) < 0
