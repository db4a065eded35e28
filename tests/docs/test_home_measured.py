"""The home page's "What we measured" table is generated from the committed results, never typed.

``docs/scripts/measured.py`` (a mkdocs hook) replaces a marker in ``docs/index.md``
at build time; these checks make sure the page shows what the JSON holds and
changes when it changes.
"""

from __future__ import annotations

import html
import importlib.util
import json
import re

import yaml


def _load_measured(repo_root):
    spec = importlib.util.spec_from_file_location("carv_docs_measured", repo_root / "docs" / "scripts" / "measured.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _section_text(page_html: str, anchor: str) -> str:
    start = page_html.index(f'id="{anchor}"')
    end = page_html.find("<h2", start)
    text = re.sub(r"<[^>]+>", " ", page_html[start:end if end > 0 else None])
    return " ".join(html.unescape(text).split())


def test_hook_is_registered_and_the_page_has_the_marker(repo_root):
    measured = _load_measured(repo_root)
    config = yaml.load((repo_root / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    assert "docs/scripts/measured.py" in config["hooks"]
    source = (repo_root / "docs" / "index.md").read_text()
    assert source.count(measured.MARKER) == 1
    assert "## What we measured" in source


def test_built_home_page_shows_the_committed_results(built_site, repo_root):
    measured = _load_measured(repo_root)
    study = json.loads(measured.STUDY.read_text())
    overhead = json.loads(measured.OVERHEAD.read_text())
    text = _section_text((built_site / "index.html").read_text(), "what-we-measured")
    assert measured.MARKER not in text
    for ckpt in study["summary"]["per_checkpoint"]:
        assert f"{ckpt['label']} {ckpt['best']['ecm']:.2f} ± {ckpt['best']['ecm_se']:.2f}×" in text
        assert f"{ckpt['auto']['vs_best_fixed']:.2f}" in text
    assert f"{study['costs']['ratio']:.1f}" in text
    assert f"{max(r['ratio'] for r in overhead['rows']):.3f}" in text
    assert "paper" in text and "measured here" in text
    dmd = json.loads(measured.DMD.read_text())["teachers"]["exact"]
    for c in dmd["checkpoints"]:
        a = next(a for a in c["arms"] if a["name"] == "(8, 16) stratified")
        assert f"step {c['step']}:" in text and f"{a['variance_ratio']:.1f} ± {a['variance_ratio_se']:.1f}×" in text
    fid = dmd["end_to_end"]["summary"]["(8, 16) stratified"]["fid"]
    assert f"FID Δ {fid['diff']:+.3g} [{fid['diff_lo']:+.3g}, {fid['diff_hi']:+.3g}]" in text


def test_table_follows_the_json(tmp_path, repo_root):
    measured = _load_measured(repo_root)
    study = json.loads(measured.STUDY.read_text())
    study["costs"]["ratio"] = 123.4
    study["summary"]["per_checkpoint"][0]["best"]["ecm"] = 9.87
    changed = tmp_path / "study.json"
    changed.write_text(json.dumps(study))
    out = measured.render(changed, measured.OVERHEAD)
    assert "123.4" in out and "9.87" in out
    dmd = json.loads(measured.DMD.read_text())
    dmd["teachers"]["exact"]["checkpoints"][0]["arms"][2]["variance_ratio"] = 77.7
    changed_dmd = tmp_path / "dmd.json"
    changed_dmd.write_text(json.dumps(dmd))
    assert "77.7" in measured.render(measured.STUDY, measured.OVERHEAD, changed_dmd)
    assert out != measured.render()
