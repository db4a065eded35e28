r"""The upstream study's report: figures (PNG) and the page, generated from ``upstream.json``.

:func:`write_report` writes the page and its figures: with ``docs=True`` to
``docs/benchmarks/text-to-3d-upstream.md`` and ``docs/benchmarks/figures/upstream-*.png``,
otherwise next to the results. :func:`render_page` is the page's markdown; every number on it
comes from the record.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..figures import figure
from .upstream_measure import CELLS

__all__ = ["DOCS_PAGE", "DOCS_FIGS", "FIGURES", "make_figures", "render_page", "write_report"]

REPO = Path(__file__).resolve().parents[2]
DOCS_PAGE = REPO / "docs" / "benchmarks" / "text-to-3d-upstream.md"
DOCS_FIGS = REPO / "docs" / "benchmarks" / "figures"
FIGURES = ("upstream-sigma_b2_reduction.png", "upstream-cv_staleness.png", "upstream-ecm_vs_ratio_cfg.png")
DESIGN_ORDER = ("strat", "antipodal", "sobol", "sequence")


def _ok(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def _num(x) -> float:
    return float(x) if _ok(x) else float("nan")


def _f(x, spec: str = ".2f") -> str:
    return format(x, spec) if _ok(x) else "n/a"


def _ci(ci, spec: str = ".2f", pct: bool = False) -> str:
    if not ci or not all(_ok(v) for v in ci):
        return "n/a"
    k = 100 if pct else 1
    return f"[{format(k * ci[0], spec)}, {format(k * ci[1], spec)}]"


def _pct(x) -> str:
    return f"{100 * x:+.0f} %" if _ok(x) else "n/a"


def make_figures(rec: dict, folder: Path) -> list[str]:
    """The three figures of :data:`FIGURES` in ``folder``; returns the names written."""
    folder.mkdir(parents=True, exist_ok=True)
    cks = rec.get("checkpoints", [])
    if not cks:
        return []
    n = len(cks)
    with figure(folder / FIGURES[0], figsize=(4.4 * n, 4.2), ncols=n, squeeze=False) as axes:
        for ax, ck in zip(axes[0], cks):
            recs = [r for r in ck["analysis"]["records"] if r["upstream"] in DESIGN_ORDER]
            recs.sort(key=lambda r: (DESIGN_ORDER.index(r["upstream"]), r["R"], r["inner"]))
            y = np.arange(len(recs))
            red = [100 * _num(r["sigma_b2_reduction"]) for r in recs]
            lo = [100 * _num(r["sigma_b2_reduction_ci"][0]) for r in recs]
            hi = [100 * _num(r["sigma_b2_reduction_ci"][1]) for r in recs]
            err = np.abs(np.array([np.subtract(red, lo), np.subtract(hi, red)]))
            colours = ["C0" if r["inner"] == "baseline" else "C1" for r in recs]
            ax.errorbar(red, y, xerr=err, fmt="none", ecolor=colours, lw=1)
            ax.scatter(red, y, c=colours, s=14, zorder=3)
            ax.axvline(30, color="k", ls="--", lw=0.8)
            ax.axvline(0, color="grey", lw=0.6)
            ax.set_yticks(y, [r["name"] for r in recs], fontsize=6)
            ax.set(xlabel="σ_B² reduction vs i.i.d. cameras (%)", title=f"{ck['label']} (step {ck['step']})")
    with figure(folder / FIGURES[1], figsize=(4.2 * n, 3.6), ncols=n, squeeze=False) as axes:
        for ax, ck in zip(axes[0], cks):
            cv = [r for r in ck["analysis"]["records"] if r["upstream"] == "cv"]
            for key in sorted({(r["inner"], r["R"], r["table"]) for r in cv}):
                rs = sorted((r for r in cv if (r["inner"], r["R"], r["table"]) == key),
                            key=lambda r: r["staleness_effective"])
                x = [r["staleness_effective"] for r in rs]
                ratio = [1 - _num(r["sigma_b2_reduction"]) for r in rs]
                yerr = np.abs(np.array([[ra - (1 - _num(r["sigma_b2_reduction_ci"][1])) for ra, r in zip(ratio, rs)],
                                        [(1 - _num(r["sigma_b2_reduction_ci"][0])) - ra for ra, r in zip(ratio, rs)]]))
                ax.errorbar(x, ratio, yerr=yerr, marker="o" if key[2] == "saga" else "s", ms=3, capsize=2, lw=1,
                            ls="-" if key[1] == 1 else "--", label=f"{key[0]} R={key[1]} {key[2]}")
            ax.axhline(1, color="grey", lw=0.6)
            ax.axhline(0.7, color="k", ls="--", lw=0.8)
            ax.set(xlabel="table age s (steps)", ylabel="σ_B²(cv) / σ_B²(iid)", yscale="log",
                   title=f"{ck['label']} (step {ck['step']})")
            ax.legend(fontsize=5)
    with figure(folder / FIGURES[2], figsize=(4.2 * n, 3.6), ncols=n, squeeze=False) as axes:
        ratio = rec["costs"]["c_u"] / rec["costs"]["c_d"]
        for ax, ck in zip(axes[0], cks):
            for i, c in enumerate(ck["cfg"]):
                curve = c.get("ecm_vs_ratio")
                if not curve:
                    continue
                ax.plot(curve["ratio"], curve["uniform"], color=f"C{i}",
                        label=f"CFG {c['scale']:g}: predict, R=1, best K")
                ax.errorbar([ratio], [_num(c["ecm"])], yerr=[[_num(c["ecm_se"])]], color=f"C{i}", marker="o", ms=4,
                            capsize=2, label=f"CFG {c['scale']:g}: measured (R=2, K={c['K_carv']})")
                ax.scatter([ratio], [_num(c.get("ecm_predicted"))], color=f"C{i}", marker="x", s=30,
                           label=f"CFG {c['scale']:g}: predict (R=2, K={c['K_carv']})")
            ax.axvline(ratio, color="grey", lw=0.6)
            ax.set(xscale="log", xlabel="c_u / c_d", ylabel="ECM over (R=2, K=1)", title=f"{ck['label']}")
            ax.legend(fontsize=5)
    return list(FIGURES)


def _records_table(recs: list[dict]) -> list[str]:
    out = ["| record | R | K | cost (ms) | V | ± SE | $\\sigma_B^2$ [95 % CI] | reduction [95 % CI] | ECM | ± SE "
           "| $K^\\star$ |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        out.append(f"| {r['name']} | {r['R']} | {r['K']} | {_f(1e3 * r['cost_s'], '.0f')} | {_f(r['V'], '.3e')} | "
                   f"{_f(r['V_se'], '.1e')} | {_f(r['sigma_b2'], '.2e')} {_ci(r['sigma_b2_ci'], '.1e')} | "
                   f"{_pct(r['sigma_b2_reduction'])} {_ci(r['sigma_b2_reduction_ci'], '.0f', True)} | "
                   f"{_f(r['ecm'])} | {_f(r['ecm_se'])} | {_f(r.get('k_star'), '.1f')} |")
    return out


def _targets(rec: dict) -> list[str]:
    summ = rec.get("summary", [])
    out = ["| target | " + " | ".join(f"{s['checkpoint']} (step {s['step']})" for s in summ) + " |",
           "|---|" + "---|" * len(summ)]
    out.append("| best ECM over (R=2, K=1) (≥ 3.3×) | " + " | ".join(
        f"{_f(s['best_ecm']['ecm'])} ± {_f(s['best_ecm']['ecm_se'])} ({s['best_ecm']['name']})" for s in summ) + " |")
    keys = sorted({(r["family"], r["R"]) for s in summ for r in s["reductions"]})
    for fam, R in keys:
        cells = []
        for s in summ:
            r = next((x for x in s["reductions"] if (x["family"], x["R"]) == (fam, R)), None)
            cells.append("n/a" if r is None else
                         f"{_pct(r['reduction'])} {_ci(r['ci'], '.0f', True)} ({r['name']})")
        out.append(f"| best $\\sigma_B^2$ reduction, {fam}, R={R} (≥ 30 %) | " + " | ".join(cells) + " |")
    out += ["", "Only estimators that can run online count here: every camera design, and the control "
            "variate as the one-sample (`saga`) table `CellTable` holds, at least as old as a SAGA table's "
            f"mean age $\\min(C/R, N)$ ($C$ = {CELLS[0] * CELLS[1]} cells, $N$ the checkpoint's step). The fresh (`s=0`) and "
            "3-view (`mean3`) tables below measure what a better table would give; over all records, "
            "including those, the best ECM is " + ", ".join(
                f"{s['checkpoint']} {_f(s['best_ecm_any']['ecm'])} ({s['best_ecm_any']['name']})" for s in summ)
            + "."]
    return out


def _findings(rec: dict) -> list[str]:
    lines = []
    for s in rec.get("summary", []):
        b = s["best_ecm"]
        gap = "met" if s["ecm_target_met"] else f"missed ({_f(100 * b['ecm'] / 3.3, '.0f')} % of it)"
        red = "; ".join(f"{r['family']} R={r['R']}: {_pct(r['reduction'])} "
                        f"({'met' if r['met'] else 'missed by ' + _f(100 * (0.3 - r['reduction']), '.0f') + ' points'})"
                        for r in s["reductions"])
        lines.append(f"- **{s['checkpoint']}**: best ECM {_f(b['ecm'])}× ({b['name']}), target 3.3× {gap}. "
                     f"Best $\\sigma_B^2$ reductions: {red}.")
    lines += ["", "**Why, from the data.**", ""]
    for ck in rec.get("checkpoints", []):
        a = ck["analysis"]
        top = max(a.get("bounds", []), key=lambda x: x["ecm_if_sigma_b2_zero"], default=None)
        if top is not None:
            lines.append(f"- {ck['label']}: with $\\sigma_B^2$ removed entirely, the best inner row here "
                         f"({top['inner']}, R={top['R']}, K={top['K']}) would reach ECM "
                         f"{_f(top['ecm_if_sigma_b2_zero'])}× (its within part $\\sigma_W^2/(RK)$ and its cost "
                         "stay); no camera design or control variate on these inner rows can exceed that.")
        anti = [r for r in a["records"] if r["upstream"] == "antipodal" and r["R"] == 2]
        if anti:
            rho = ", ".join(f"{r['inner']} {_f(-_num(r['sigma_b2_reduction']))}" for r in anti)
            lines.append(f"- {ck['label']}: antipodal pairs, $\\sigma_B^2(\\text{{anti}}) = \\sigma_B^2(1 + \\rho)$ "
                         f"with measured $\\rho$ = {rho} (a gain needs $\\rho < 0$: opposite views pushing the grid "
                         "in opposite directions).")
        for d in a.get("cv_decomposition", []):
            drift = ", ".join(f"s={k}: {_f(v)}" for k, v in sorted(d["drift"].items(), key=lambda kv: int(kv[0])))
            lines.append(f"- {ck['label']}, control variate ({d['inner']}, R={d['R']}, K={d['K']}), in units of "
                         f"$\\sigma_B^2$: a fresh SAGA table leaves {_f(d['r_saga'])}, the mean of {d['M']} leaves "
                         f"{_f(d['r_mean'])}; so the within-cell floor $F$ = {_f(d['floor'])} and one entry's error "
                         f"$E$ = {_f(d['entry_error'])}, of which the entry's own inner noise "
                         f"$\\sigma_W^2/(K\\sigma_B^2)$ = {_f(d['inner_noise'])}; staleness adds {drift or 'n/a'}.")
    return lines


def _cv_costs(recs: list[dict]) -> list[str]:
    seen, parts = set(), []
    for r in recs:
        if r["upstream"] == "cv" and (r["inner"], r["R"]) not in seen:
            seen.add((r["inner"], r["R"]))
            vjp = r.get("cost_batched_vjp_s")
            parts.append(f"{r['inner']} R={r['R']}: {_f(1e3 * r['cost_s'], '.0f')} ms "
                         f"({_f(1e3 * r['cv_extra_cost_s'], '+.0f')} ms over the i.i.d. step"
                         + (f"; {_f(1e3 * vjp, '.0f')} ms with `per_view_gradients` through the batched render"
                            if _ok(vjp) else "") + ")")
    return [("Control-variate step (per-view gradients from one render graph per view, `CellTable.corrected`, "
             "`CellTable.refresh`): " + "; ".join(parts) + ".")] if parts else []


def _cfg_table(rec: dict) -> list[str]:
    out = ["| checkpoint | CFG | $\\sigma_B^2$ [95 % CI] | $\\sigma_W^2$ | within share | inner-only ceiling | "
           "ECM carv (measured) | ECM (predict) | $K^\\star$ |", "|---|---|---|---|---|---|---|---|---|"]
    for ck in rec.get("checkpoints", []):
        for c in ck["cfg"]:
            out.append(f"| {ck['label']} | {c['scale']:g} | {_f(c['sigma_b2'], '.2e')} "
                       f"{_ci(c['sigma_b2_ci'], '.1e')} | "
                       f"{_f(c['sigma_w2'], '.2e')} | {_f(c.get('within_share'))} | {_f(c.get('ceiling'))}× | "
                       f"{_f(c['ecm'])} ± {_f(c['ecm_se'])} | {_f(c.get('ecm_predicted'))} | "
                       f"{_f(c.get('k_star'), '.1f')} |")
    return out


def render_page(rec: dict, fig_prefix: str) -> str:
    """The page's markdown; figures linked as ``fig_prefix + name``."""
    size, costs, inner = rec["size"], rec["costs"], rec["inner"]
    carv = inner["carv"]
    ch = rec.get("carv_choice", {})
    P = [
        "# Text-to-3D: upstream variance (camera designs and per-view control variates)", "",
        "<!-- generated by `python -m benchmarks.text_to_3d.upstream_study`; do not edit by hand -->", "",
        "## Setup", "",
        f"- Pipeline as in the [text-to-3D study](text-to-3d.md): {size['grid_size']}³ grid NeRF, "
        f"{size['image_size']}×{size['image_size']} renders, {size['n_samples']} samples per ray, the tiny latent "
        f"teacher; prompt \"{rec['prompt']}\"; checkpoints of one baseline run at steps "
        f"{', '.join(str(c['step']) for c in rec['checkpoints'])}.",
        f"- Inner configurations: **baseline** (K = 1, uniform $t$, i.i.d.) and **carv** (K = {carv['K']}, "
        f"{carv['proposal']} proposal, {carv['sampler']} design; {ch.get('rule', '')}"
        + (f": `{ch['row']}`, mean ECM {_f(ch.get('mean_ecm'))}" if ch.get("row") else "") + ").",
        "- Camera law $p(\\xi)$: azimuth $U[0, 2\\pi)$, elevation "
        f"$U[{rec['camera_law']['elevation'][0]}, {rec['camera_law']['elevation'][1]}]$, radius "
        f"{rec['camera_law']['radius']}; every design maps its uniforms by the same transform, checked against "
        "`scenes.sample_cameras` on the same uniforms before the run.",
        "- Upstream methods: `iid` (`scenes.sample_cameras`); `strat` (azimuth in $R$ permuted strata per step); "
        "`antipodal` (pairs $\\varphi$, $\\varphi + \\pi$); `sobol` (scrambled Sobol over azimuth × elevation, one "
        f"scramble per step); `sequence` (stratified azimuth across a period of {size['period']} steps, carv, R = 2: "
        "the replicate is the period's mean at a fixed NeRF, reported per step); `cv` (per-view control variate, "
        "16 azimuth × 2 elevation cells).",
        f"- Control-variate tables at the NeRF of step $N - s$, $s \\in$ {{{', '.join(map(str, size['staleness']))}}} "
        f"($s$ = 0: independent draws at the checkpoint; at step $N < s$ the table is from step 0, age $N$): "
        f"{size['per_cell']} per-view gradients per cell with the row's own inner configuration give "
        f"{size['per_cell']} `saga` tables (one gradient per cell, as `CellTable.refresh` holds)"
        + (f" and their cell mean `mean{size['per_cell']}`" if size["per_cell"] > 1 else "")
        + ". Each table is applied "
        "to the replicates of the i.i.d. row at the same R (the correction is linear), so each control-variate "
        "row is paired with its i.i.d. row; its cost is a timed control-variate step (per-view VJPs at R = 2, "
        "`CellTable.corrected`, `CellTable.refresh`).",
        f"- {size['reps']} replicates per configuration after {size['warmup']} warm-up sweeps, configurations "
        f"interleaved; reference {size['ref_renders']} renders × {size['ref_K']} stratified draws "
        f"({size['cfg_ref_renders']} renders at the other CFG scales). Costs: median step wall-clock.",
        f"- $c_u$ = {_f(1e3 * costs['c_u'], '.1f')} ms, $c_d$ = {_f(1e3 * costs['c_d'], '.2f')} ms "
        f"(16 draws per call), $c_u/c_d$ = {_f(costs['c_u'] / costs['c_d'], '.1f')}. Machine: "
        f"{rec['machine'].get('cpu', '')}, {rec['machine'].get('threads')} torch threads. "
        f"Wall-clock {_f(rec.get('seconds_total', float('nan')) / 60, '.1f')} min.", "",
        "**Estimators.** Each replicate computes the step's estimate $A$ and, untimed, $B$: the same estimator "
        "with independent inner draws on the same renders. $V$ is the MSE of $A$ to the reference "
        "(`carv_core.Welford`, including the reference's own variance, as in the study). "
        "$\\hat\\sigma_B^2 = R\\,(\\overline{\\langle A - \\hat G_{\\rm ref}, B - \\hat G_{\\rm ref}\\rangle}"
        " - V_{\\rm ref})$ "
        "(the split-inner cross product: unbiased under every design with marginals $p$; neither the "
        "uniform-grid fit nor `replicated_components`, because the cross product needs no model and cancels the "
        "within noise); $\\hat\\sigma_W^2 = RK\\,\\overline{\\lVert A - B\\rVert^2}/2$. Reductions: camera designs "
        "against the i.i.d. $\\hat\\sigma_B^2$ pooled over all i.i.d. rows of the checkpoint (percentile bootstrap, "
        "independent replicates), control variates against their own i.i.d. row (paired bootstrap). ECM "
        "$= (VC)_{\\rm base}/(VC)$ (`carv_core.ecm`) over baseline i.i.d. R = 2; its SE covers the two $V$ only. "
        "$K^\\star$ = `carv_core.k_star` with the row's $\\hat\\sigma_B^2$.", "",
        "## Targets", "", *_targets(rec), "", *_findings(rec), "",
    ]
    for ck in rec.get("checkpoints", []):
        a = ck["analysis"]
        P += [f"## {ck['label'].capitalize()} (step {ck['step']})", "",
              f"i.i.d. $\\hat\\sigma_B^2$ (pooled) = {_f(a['sigma_b2_iid'], '.3e')} "
              f"{_ci(a['sigma_b2_iid_ci'], '.2e')}; "
              + ", ".join(f"$\\hat\\sigma_W^2$ ({k}) = {_f(v, '.3e')}" for k, v in a["sigma_w2"].items())
              + f"; $V_{{\\rm ref}}$ = {_f(ck['reference']['var_ref'], '.2e')}. For an i.i.d. row the reduction "
              "column compares the row's own estimate with the pooled value (0 up to noise).", "",
              *_records_table(a["records"]), "", *_cv_costs(a["records"]), ""]
    P += ["## CFG scale", "",
          "The NeRF checkpoints (trained at CFG 5) and the teacher are unchanged; only the guidance scale of the "
          "measured estimators and of the reference changes. Within share "
          "$\\sigma_W^2/(\\sigma_B^2 + \\sigma_W^2)$ and "
          "ceiling $(\\sigma_B^2 + \\sigma_W^2)/\\sigma_B^2$ (`carv_core.reuse_ceiling`) with the baseline's "
          f"$\\sigma_W^2$; ECM of carv (R = 2, K = {carv['K']}) over the baseline; predicted by `carv_core.predict` "
          "at the measured $c_u/c_d$ (no per-call overhead in that model). At every scale the components come from "
          "the i.i.d. R = 2 rows alone (so at CFG 5 they differ from the values pooled over all rows above by "
          "sampling noise only).", "", *_cfg_table(rec), "",
          "## Figures", ""]
    P += [f"![{name}]({fig_prefix}{name})\n" for name in FIGURES]
    P += ["## Reproduce", "", "```", rec.get("command") or "python -m benchmarks.text_to_3d.upstream_study "
          "--out benchmarks/text_to_3d/results", "```", "",
          "Results: `benchmarks/text_to_3d/results/upstream.json`; this page: `--report-only`.", ""]
    return "\n".join(P)


def write_report(rec: dict, out: Path, *, docs: bool) -> Path:
    """Figures and page: into the docs (``docs=True``) or ``out``; returns the page's path."""
    if docs:
        make_figures(rec, DOCS_FIGS)
        DOCS_PAGE.write_text(render_page(rec, "figures/"))
        return DOCS_PAGE
    out = Path(out)
    make_figures(rec, out)
    page = out / "text-to-3d-upstream.md"
    page.write_text(render_page(rec, ""))
    return page
