"""The home page's "What we measured" table, generated from the committed results.

A mkdocs hook (``hooks:`` in ``mkdocs.yml``): at build time it replaces the marker
``<!-- measured-results -->`` in ``docs/index.md`` with a table computed from

- ``benchmarks/text_to_3d/results/study.json`` (``python -m benchmarks.text_to_3d.study``),
- ``benchmarks/results/overhead.json`` (``python -m benchmarks.overhead``),
- ``benchmarks/dmd/results/study.json`` (``python -m benchmarks.dmd.study``).

Nothing on the page is typed by hand, so it cannot drift from the JSON: rerun a
benchmark, rebuild the site, and the home page changes with it. ``render()`` is
also what ``tests/docs/test_home_measured.py`` compares the built page against.
"""

from __future__ import annotations

import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
MARKER = "<!-- measured-results -->"
STUDY = ROOT / "benchmarks" / "text_to_3d" / "results" / "study.json"
OVERHEAD = ROOT / "benchmarks" / "results" / "overhead.json"
DMD = ROOT / "benchmarks" / "dmd" / "results" / "study.json"
SOURCES = (STUDY, OVERHEAD, DMD)


def _pct(x: float) -> str:
    return f"{x * 100:+.0f} %"


def _rows(study: dict, overhead: dict) -> list[tuple[str, str, str]]:
    """(quantity, paper, measured here) rows."""
    ckpts = study["summary"]["per_checkpoint"]
    costs = study["costs"]
    rows = []
    reuse = ", ".join(f"{c['label']} {c['best_reuse']['ecm']:.2f}×" for c in ckpts)
    rows.append(("effective compute multiplier, reuse alone (best \\(K\\))", "about 2.6× at \\(K = 8\\)",
                 f"{reuse} ({', '.join(c['best_reuse']['name'] for c in ckpts)})"))
    best = ", ".join(f"{c['label']} {c['best']['ecm']:.2f} ± {c['best']['ecm_se']:.2f}×" for c in ckpts)
    rows.append(("best effective compute multiplier, any configuration", "about 3.3× (IS + stratification)", best))
    gains = [g["gain"] for c in ckpts for g in c["is_strat_gain_over_reuse"]]
    rows.append(("gain of IS + stratification over reuse at the same \\(K\\)", "about +25–31 %",
                 f"{_pct(min(gains))} to {_pct(max(gains))} over {len(gains)} (checkpoint, \\(K\\)) pairs"))
    auto = ", ".join(f"{c['label']} {c['auto']['vs_best_fixed']:.2f} (mean \\(K\\) {c['auto']['mean_K']:.1f})"
                     for c in ckpts)
    rows.append(("`K=\"auto\"` ECM / best fixed \\(K\\)", "(not reported)", auto))
    rows.append(("cost of render + encode, in teacher calls \\(c_u/c_d\\)", "about 6–9",
                 f"{costs['ratio']:.1f} (\\(c_u\\) = {costs['c_u'] * 1e3:.1f} ms, "
                 f"\\(c_d\\) = {costs['c_d'] * 1e3:.2f} ms)"))
    e2e = study["summary"]["e2e"]
    sz = study["size"]
    quality = []
    for key, name in (("psnr", "PSNR"), ("iou", "IoU"), ("prob", "classifier p(prompt)")):
        f = e2e[key]["fraction"]
        quality.append(f"{name}: {'not reached' if f is None else f'{f:.2f} of the time'}")
    rows.append(("time for CARV to reach the baseline's final quality", "about half the iterations (CLIP score)",
                 "; ".join(quality) + f" ({sz['e2e_seconds']:.0f} s runs, {len(sz['e2e_prompts'])} prompts "
                 f"× {len(sz['e2e_seeds'])} seeds)"))
    worst = max(overhead["rows"], key=lambda r: r["ratio"])
    ks = sorted({r["K"] for r in overhead["rows"]})
    rows.append(("library overhead per SDS step vs a hand-written loop", "(not reported)",
                 f"CARV / baseline {min(r['ratio'] for r in overhead['rows']):.3f}–{worst['ratio']:.3f} "
                 f"at \\(R = 2\\), \\(K \\in \\{{{', '.join(map(str, ks))}\\}}\\)"))
    return rows


def _dmd_rows(dmd: dict) -> list[tuple[str, str, str]]:
    exact = dmd["teachers"]["exact"]

    def ratio(c, name):
        a = next(a for a in c["arms"] if a["name"] == name)
        return f"{a['variance_ratio']:.1f} ± {a['variance_ratio_se']:.1f}×"

    cells = "; ".join(f"step {c['step']}: {ratio(c, '(8, 16) iid')} reuse, {ratio(c, '(8, 16) stratified')} "
                      "+ stratification" for c in exact["checkpoints"])
    fid = exact["end_to_end"]["summary"]["(8, 16) stratified"]["fid"]
    return [("DMD generator-gradient variance, (8, 1) over (8, 16)", "982 / 59.9 = 16× reuse, 982 / 30.7 = 32× "
             "+ stratification", cells + " ([DMD page](benchmarks/dmd.md))"),
            ("DMD sample quality, (8, 16) stratified vs (8, 1) at equal compute", "no FID gain",
             f"classifier-feature FID Δ {fid['diff']:+.3g} [{fid['diff_lo']:+.3g}, {fid['diff_hi']:+.3g}] "
             f"(95 % paired interval over {fid['n']} seeds)")]


def render(study_path: pathlib.Path = STUDY, overhead_path: pathlib.Path = OVERHEAD,
           dmd_path: pathlib.Path = DMD) -> str:
    """The markdown that replaces the marker."""
    study = json.loads(study_path.read_text())
    overhead = json.loads(overhead_path.read_text())
    dmd = _dmd_rows(json.loads(dmd_path.read_text())) if dmd_path.is_file() else []
    m = study["machine"]
    lines = [
        "| quantity | paper (SD 2.1 + NeRF) | measured here |",
        "|---|---|---|",
        *(f"| {a} | {b} | {c} |" for a, b, c in _rows(study, overhead) + dmd),
        "",
        f"Measured on the project's own text-to-3D pipeline (64³ NeRF grid, the tiny latent teacher "
        f"shipped in `benchmarks/text_to_3d/`, prompt \"{study['prompt']}\", checkpoints of a baseline run "
        f"at steps {', '.join(str(s) for s in study['size']['ckpt_steps'])}), on {m['cpu_count']} CPU cores "
        f"with torch {m['torch']}; ECM is against the baseline \\((R, K) = (2, 1)\\) with uniform \\(t\\). "
        f"Generated at build time from `benchmarks/text_to_3d/results/study.json` and "
        f"`benchmarks/results/overhead.json`; details on the [text-to-3D results page](benchmarks/text-to-3d.md). "
        f"The DMD rows: a known-density DMD on the digits with the exact real score (`benchmarks/dmd/results/study.json`).",
    ]
    return "\n".join(lines)


def on_page_markdown(markdown: str, page, config, files) -> str:  # mkdocs hook
    if MARKER in markdown:
        return markdown.replace(MARKER, render())
    return markdown


def on_serve(server, config, builder):  # rebuild on `mkdocs serve` when a result changes
    for path in SOURCES:
        server.watch(str(path))
    return server


if __name__ == "__main__":
    print(render())
