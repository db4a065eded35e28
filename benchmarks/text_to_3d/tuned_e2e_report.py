"""The tuned end-to-end protocol's report: two figures and a page, every number read from the record.

:func:`write_report` takes the record of :func:`.tuned_e2e.run_protocol` (or the JSON reloaded by
``--report-only``, its statistics recomputed from the curves by :func:`.tuned_e2e.finish`) and
writes ``tuned-e2e-sweep.png`` (the tuning criterion against the rate), ``tuned-e2e-curves.png``
(mean quality against the fraction of the baseline's wall-clock, 95 % bands) and the page
``text-to-3d-tuned.md``: into ``docs/benchmarks`` for the full protocol, next to the JSON otherwise.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..figures import figure
from .report import DOCS_FIGS, REPO
from .scenes import PROMPTS
from .tuned_e2e_stats import CRITERIA, LEVELS, METRICS, TARGET_FRACTION

__all__ = ["DOCS_PAGE", "FIGURES", "make_figures", "render_page", "write_report"]

DOCS_PAGE = REPO / "docs" / "benchmarks" / "text-to-3d-tuned.md"
FIGURES = ("tuned-e2e-sweep.png", "tuned-e2e-curves.png")
_LABEL = {"psnr": "PSNR (dB)", "iou": "mask IoU"}
_STAT = {"final": "final", "time_average": "time average"}


def _f(x, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "never" if x > 0 else "-inf"
    return f"{x:.{digits}f}"


def _ci(e: dict, digits: int = 2, key: str = "mean") -> str:
    return f"{_f(e[key], digits)} [{_f(e['lo'], digits)}, {_f(e['hi'], digits)}]"


def _tau(e: dict) -> str:
    return f"{_ci(e, 2, 'median')} ({e['reached']}/{e['n']})"


def make_figures(rec: dict, folder: Path) -> list[Path]:
    """The sweep and the quality curves (module docstring) in ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [m["name"] for m in rec["methods"]]
    tuning, summary = rec["tuning"], rec["summary"]
    metric, stat = CRITERIA[tuning["criterion"]]
    paths = [folder / n for n in FIGURES]
    with figure(paths[0], figsize=(6, 4)) as ax:
        for i, m in enumerate(names):
            by = tuning["scores"][m]
            fs = sorted(by, key=float)
            ax.plot([float(f) for f in fs], [by[f]["mean"] for f in fs], "o-", color=f"C{i}", label=m)
            for f in fs:
                ax.plot([float(f)] * len(by[f]["per_seed"]), by[f]["per_seed"], ".", color=f"C{i}", alpha=0.5)
            best = str(tuning["chosen"][m]["factor"])
            ax.plot([float(best)], [by[best]["mean"]], "*", ms=14, color=f"C{i}", mec="k")
        ax.set_xscale("log", base=2)
        ticks = sorted(float(f) for f in tuning["scores"][names[0]])
        ax.set_xticks(ticks, [f"{f:g}" for f in ticks])
        ax.minorticks_off()
        ax.set_xlabel(f"Adam learning rate / {rec['settings']['lr']:g}")
        ax.set_ylabel(f"{_STAT[stat]} {_LABEL[metric]}, tuning runs")
        ax.set_title("Tuning: criterion per rate (dots: seeds, star: frozen)", fontsize=9)
        ax.legend(fontsize=7)
    with figure(paths[1], figsize=(10, 6.5), nrows=2, ncols=len(METRICS), sharex=True, squeeze=False) as axes:
        for j, metric in enumerate(METRICS):
            for row, key in enumerate(("mean", "diff")):
                ax = axes[row, j]
                for i, m in enumerate(names[row:], start=row):
                    c = summary["curves"][metric][m]
                    x = 100 * np.asarray(c["fraction"])
                    ax.plot(x, c[key]["mean"], color=f"C{i}", label=m)
                    ax.fill_between(x, c[key]["lo"], c[key]["hi"], color=f"C{i}", alpha=0.2, lw=0)
                level = summary["metrics"][metric][names[0]]["final"]["mean"] if row == 0 else 0.0
                ax.axhline(level, color="k", ls=":", lw=1,
                           label="baseline's final (mean)" if row == 0 else "baseline")
                ax.axvline(100 * TARGET_FRACTION, color="grey", ls="--", lw=1)
                ax.set_ylabel(_LABEL[metric] if row == 0 else f"{_LABEL[metric]} − baseline")
            axes[1, j].set_xlabel(f"training wall-clock, % of the baseline's "
                                  f"({summary['budget_seconds']['mean']:.0f} s)")
        axes[0, 0].legend(fontsize=7)
        axes[0, 0].set_title("mean over evaluation pairs, 95 % t-band; below: paired differences", fontsize=9,
                             loc="left")
    return paths


def _verdict(rec: dict) -> list[str]:
    s, names = rec["summary"], [m["name"] for m in rec["methods"]]
    L = [f"Target: a CARV configuration reaches the baseline's final quality in at most "
         f"{100 * TARGET_FRACTION:.0f} % of the baseline's wall-clock, on PSNR and on IoU. Measured per "
         f"(prompt, seed) pair over {len(s['pairs'])} evaluation pairs: the median fraction (never reached = "
         "infinite) with its bootstrap 95 % interval.", "",
         "| method | PSNR: fraction of the baseline's wall-clock | IoU: fraction | target |", "|---|---|---|---|"]
    met = []
    for m in names[1:]:
        t = s["target"][m]
        cells = []
        for metric in METRICS:
            e = s["metrics"][metric][m]["reach"]["1.0"]
            cells.append(_tau(e))
        decided = all(t[metric]["decided"] for metric in METRICS)
        word = {True: "met", False: "not met", None: "no level (the baseline did not improve)"}[t["met"]]
        L.append(f"| {m} | " + " | ".join(cells) + f" | {word}{'' if decided else ' (interval spans 0.5)'} |")
        if t["met"]:
            met.append(m)
    L.append("")
    if met:
        L.append(f"**Met** by: {', '.join(met)}.")
    else:
        miss = []
        for m in names[1:]:
            for metric in METRICS:
                e = s["metrics"][metric][m]
                miss.append(f"{m} on {metric}: {e['reach']['1.0']['reached']}/{e['reach']['1.0']['n']} pairs "
                            f"reach the baseline's final value within its wall-clock, final "
                            f"{_f(e['final']['diff']['mean'], 3)} [{_f(e['final']['diff']['lo'], 3)}, "
                            f"{_f(e['final']['diff']['hi'], 3)}] against the baseline")
        L.append("**Not met** by any configuration. " + "; ".join(miss) + ".")
    L += ["", "Area under the quality-vs-time curve (time average), method − baseline, paired: " + "; ".join(
        f"{m} {metric} {_ci(s['metrics'][metric][m]['time_average']['diff'], 3)}"
        for m in names[1:] for metric in METRICS) + "."]
    return L


def _protocol(rec: dict) -> list[str]:
    p, s, names = rec["protocol"], rec["summary"], [m["name"] for m in rec["methods"]]
    mach = rec["machine"]
    total = rec.get("seconds_total")
    return [
        "- Methods: " + "; ".join(f"`{m}`" for m in names) + ". The baseline is threestudio's estimator "
        "(the study's end-to-end baseline); CARV is the study's end-to-end configuration, $K$ from the measured "
        f"$c_u/c_d$ = {rec['probe']['c_u'] / rec['probe']['c_d']:.1f}; the control variate is a table of per-view "
        f"gradients over {p['cv_cells'][0]} azimuth × {p['cv_cells'][1]} elevation cells of the camera law, "
        "refreshed from each step's own backward ($R = 1$).",
        f"- Tuning set: prompt \"{PROMPTS[p['tune_prompt']]}\" × seeds {list(p['tune_seeds'])}; Adam at "
        f"{', '.join(f'{f:g}' for f in p['lr_factors'])} × {rec['settings']['lr']:g}; per seed the baseline at "
        f"× 1 trains {p['baseline_steps']} steps and its measured wall-clock is every other run's budget. "
        f"Criterion: the largest mean over the tuning seeds of the {_STAT[CRITERIA[p['criterion']][1]]} "
        f"{_LABEL[CRITERIA[p['criterion']][0]]} (`{p['criterion']}`); the rate is then frozen.",
        f"- Evaluation set: prompts {', '.join(repr(PROMPTS[k]) for k in p['eval_prompts'])} × seeds "
        f"{list(p['eval_seeds'])} (no tuning seed"
        + (f"; the benchmark has {len(PROMPTS)} prompts, so the tuning prompt recurs with other seeds"
           if p["tune_prompt"] in p["eval_prompts"] else "")
        + f"). Per pair the baseline trains {p['baseline_steps']} steps at its frozen rate; the "
        f"others train for its measured wall-clock: {_ci(s['budget_seconds'], 1)} s (mean [95 % CI]); "
        "evaluation time excluded. Steps per run: " + "; ".join(
            f"{m} {s['steps'][m]['mean']:.0f} (median step {1e3 * s['step_seconds'][m]:.0f} ms)" for m in names) + ".",
        "- How far the budget goes: the baseline's mean " + ", ".join(_rise(s, metric, names[0]) for metric in METRICS)
        + f"; a later plateau is not measured here (`--baseline-steps` sets the budget, {p['baseline_steps']} here).",
        f"- Quality at {p['n_evals']} evaluation points per run: PSNR and mask IoU at 8 held-out views. "
        "Definitions (`benchmarks/text_to_3d/tuned_e2e_stats.py`): final = value at the budget $T$; time "
        "average = area under the quality-vs-time curve / $T$; time to a level as a fraction of $T$, levels "
        "$q_B(0) + f\\,(q_B(T) - q_B(0))$ of the pair's baseline run ($f = 1$: its final value; $f = 0.9$: 90 % of "
        "its gain). Means with Student-$t$ 95 % intervals; differences paired by (prompt, seed); fractions as "
        "medians with bootstrap intervals.",
        f"- Machine: {mach['cpu']}, {mach['threads']} torch threads, torch {mach['torch']}; "
        f"wall-clock {_f(None if total is None else total / 60, 1)} min (estimated at the start: "
        f"{rec['estimate_seconds'] / 60:.1f} min). Teacher weights: "
        f"{'shipped' if rec['teacher_weights'] else 'random (development run)'}.",
    ]


def _rise(s: dict, metric: str, base: str) -> str:
    # The baseline's mean gain over its whole budget and over the last 20 % of it.
    c = s["curves"][metric][base]
    y = np.asarray(c["mean"]["mean"])
    last = float(y[-1] - np.interp(0.8, c["fraction"], y))
    return f"{_LABEL[metric]} rose {last:.3f} in the last 20 % of its wall-clock (of {float(y[-1] - y[0]):.3f} in all)"


def _tuning(rec: dict) -> list[str]:
    t, names = rec["tuning"], [m["name"] for m in rec["methods"]]
    fs = sorted(t["scores"][names[0]], key=float)
    L = ["| method | " + " | ".join(f"lr × {float(f):g}" for f in fs) + " | frozen |",
         "|---|" + "---|" * (len(fs) + 1)]
    for m in names:
        by = t["scores"][m]
        cells = [f"{by[f]['mean']:.3f} ({', '.join(f'{v:.3f}' for v in by[f]['per_seed'])})" for f in fs]
        f = t["chosen"][m]["factor"]
        edge = " at the sweep's edge" if len(fs) > 1 and f in (float(fs[0]), float(fs[-1])) else ""
        L.append(f"| {m} | " + " | ".join(cells) + f" | × {f:g} (lr {t['chosen'][m]['lr']:g}){edge} |")
    L += ["", "Cells: the criterion's mean over the tuning seeds (per seed in brackets)."]
    return L


def _evaluation(rec: dict) -> list[str]:
    s, names = rec["summary"], [m["name"] for m in rec["methods"]]
    L = []
    for metric in METRICS:
        L += [f"### {_LABEL[metric]}", "",
              "| method | final | final − baseline | time average | time average − baseline | "
              + " | ".join(f"time to {100 * f:.0f} % (fraction)" for f in LEVELS) + " |",
              "|---|---|---|---|---|" + "---|" * len(LEVELS)]
        for m in names:
            e = s["metrics"][metric][m]
            diff = [("—" if m == names[0] else _ci(e[k]["diff"], 3)) for k in ("final", "time_average")]
            L.append(f"| {m} | {_ci(e['final'], 3)} | {diff[0]} | {_ci(e['time_average'], 3)} | {diff[1]} | "
                     + " | ".join(_tau(e["reach"][str(f)]) for f in LEVELS) + " |")
        L.append("")
    cv = [r["control_variate"] for r in rec["runs"] if r["stage"] == "eval" and r.get("control_variate")]
    if cv:
        ref = [r["step_seconds"] for r in rec["runs"] if r["stage"] == "eval" and r["method"] == names[1]]
        mine = [r["step_seconds"] for r in rec["runs"] if r["stage"] == "eval" and r["method"] == names[2]]
        refreshed = [c["cells_refreshed"] for c in cv]
        L += [f"The control variate: {cv[0]['n_cells']} cells, {cv[0]['table_megabytes']:.0f} MB (float32); "
              f"cells refreshed per evaluation run {min(refreshed)}–{max(refreshed)} of {cv[0]['n_cells']}, median "
              f"staleness at the end {_f(float(np.median([c['median_staleness_at_end'] for c in cv])), 0)} steps; "
              f"median step {1e3 * float(np.median(mine)):.0f} ms against {1e3 * float(np.median(ref)):.0f} ms "
              "without it (the table's correction and refresh).", ""]
    return L


def render_page(rec: dict, fig_prefix: str = "") -> str:
    """The page's markdown (module docstring); figures linked as ``fig_prefix + name``."""
    L = ["# Text-to-3D end to end, each method at its tuned learning rate", "",
         "<!-- generated by `python -m benchmarks.text_to_3d.tuned_e2e`; do not edit by hand -->", "",
         f"Each method at its own tuned learning rate, at equal wall-clock"
         f"{' (quick run: sizes too small to conclude anything)' if rec['mode'] != 'full' else ''}.",
         "", "## Summary", "", *_verdict(rec), "", "## Protocol", "", *_protocol(rec), "",
         "## Tuning", "", *_tuning(rec), "", "## Evaluation", "", *_evaluation(rec), "## Figures", ""]
    L += [f"![{n[:-4]}]({fig_prefix}{n})" + "\n" for n in FIGURES]
    command = rec.get("command") or "python -m benchmarks.text_to_3d.tuned_e2e --out benchmarks/text_to_3d/results"
    where = "benchmarks/text_to_3d/results/" + ("" if rec["mode"] == "full" else "quick/")
    L += ["## Reproduce", "", "```", f"OMP_WAIT_POLICY=PASSIVE {command}", f"{command} --report-only", "```", "",
          f"Results: `{where}tuned_e2e.json` (settings, command, every run's curve, the sweep's scores, the "
          "summaries).", ""]
    return "\n".join(L)


def write_report(rec: dict, out: Path, docs: bool) -> Path:
    """Figures and page: into ``docs/benchmarks`` when ``docs``, else into ``out``; returns the page's path."""
    if "summary" not in rec or "tuning" not in rec:
        raise ValueError(f"rec has no evaluation runs yet (status {rec.get('status')!r}): finish the protocol "
                         "before writing its report")
    if docs:
        make_figures(rec, DOCS_FIGS)
        DOCS_PAGE.write_text(render_page(rec, "figures/"))
        return DOCS_PAGE
    make_figures(rec, Path(out))
    page = Path(out) / DOCS_PAGE.name
    page.write_text(render_page(rec, ""))
    return page
