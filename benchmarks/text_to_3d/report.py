r"""The text-to-3D study's report: figures (PNG) and the docs page, from a ``study.json`` record.

:func:`write_report` writes ``study.json``, the figures and (``docs=True``) the page
``docs/benchmarks/text-to-3d.md`` with its figures; :func:`render_page` is the page's markdown.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch

from ..figures import image_strips, pyplot  # noqa: F401 (image_strips re-exported)
from .pipeline import BASELINE
from .scenes import PROMPTS

REPO = Path(__file__).resolve().parents[2]
DOCS_PAGE = REPO / "docs" / "benchmarks" / "text-to-3d.md"
DOCS_FIGS = REPO / "docs" / "benchmarks" / "figures"


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None if x != x else (1e308 if x > 0 else -1e308)
    return x


# --------------------------------------------------------------------------- figures and page


def _render_grid(renders: dict, names: list[str], path: Path, views=(0, 2, 4, 6)):
    rows, titles = [], []
    for k, d in renders.items():
        for label, key in [("ground truth", "gt")] + [(n, n) for n in names]:
            if key in d:
                titles.append(f"{PROMPTS[k]}: {label}")
                rows.append(d[key][list(views)])
    image_strips(rows, path, titles, fontsize=7, width_per_image=1.3)


def make_figures(rec: dict, out: Path) -> list[str]:
    """Variance vs compute, ECM vs K, ECM vs c_u/c_d, quality vs wall-clock; returns file names."""
    plt = pyplot()
    names = []
    cks = rec.get("checkpoints", [])
    if cks:
        # Variance vs compute (log-log) with the baseline's iso-(V C) line.
        fig, axes = plt.subplots(1, len(cks), figsize=(4.2 * len(cks), 3.6), squeeze=False)
        for ax, ck in zip(axes[0], cks):
            rows = ck["configs"]
            b = rows[0]
            groups = {"uniform": [], "IS+strat": [], "variants": [], "auto": []}
            for r in rows:
                key = ("auto" if r["K"] == "auto" else "uniform" if r["name"].startswith("uniform")
                       or r is b else "IS+strat" if r["name"].startswith("IS+strat") else "variants")
                groups[key].append(r)
            for (key, rs), mk in zip(groups.items(), "osd*"):
                if rs:
                    ax.scatter([1e3 * r["cost"] for r in rs], [r["mse"] for r in rs], marker=mk, label=key)
            c = np.geomspace(min(r["cost"] for r in rows) * 0.8, max(r["cost"] for r in rows) * 1.2, 20)
            for e, ls in ((1, "-"), (2, "--"), (4, ":")):
                ax.plot(1e3 * c, b["mse"] * b["cost"] / (e * c), "k", ls=ls, lw=0.7, label=f"ECM = {e}")
            ax.scatter([1e3 * b["cost"]], [b["mse"]], c="k", marker="x", s=60, zorder=5, label="baseline")
            ax.set(xscale="log", yscale="log", xlabel="cost per step (ms)", ylabel="MSE to reference",
                   title=f"{ck['label']} (step {ck['step']})")
            ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / "variance_vs_compute.png", dpi=110)
        plt.close(fig)
        names.append("variance_vs_compute.png")

        # ECM vs K.
        fig, axes = plt.subplots(1, len(cks), figsize=(4.2 * len(cks), 3.4), squeeze=False)
        for ax, ck in zip(axes[0], cks):
            rows = {r["name"]: r for r in ck["configs"]}
            Ks = rec["size"]["Ks"]
            for label, fmt in (("uniform R=1", "uniform R=1 K={}"), ("uniform R=2", "uniform R=2 K={}"),
                               ("IS+strat R=1", "IS+strat R=1 K={}")):
                pts = [(K, rows[fmt.format(K)]) for K in Ks if fmt.format(K) in rows]
                if label == "uniform R=2":
                    pts = [(1, ck["configs"][0])] + pts
                ax.errorbar([k for k, _ in pts], [r["ecm"] for _, r in pts],
                            yerr=[r["ecm_se"] for _, r in pts], marker="o", ms=3, capsize=2, label=label)
            auto = next((r for r in ck["configs"] if r["K"] == "auto"), None)
            if auto:
                ax.errorbar([auto["mean_K"]], [auto["ecm"]], yerr=[auto["ecm_se"]], marker="*", ms=9,
                            ls="none", label="K=auto (mean K)")
            ax.axhline(1, c="k", lw=0.6)
            ax.set(xscale="log", xlabel="K", ylabel="ECM vs (R=2, K=1) uniform",
                   title=f"{ck['label']} (step {ck['step']})")
            ax.set_xticks(Ks)
            ax.set_xticklabels([str(k) for k in Ks])
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "ecm_vs_k.png", dpi=110)
        plt.close(fig)
        names.append("ecm_vs_k.png")

        # ECM vs cost ratio.
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for ck in cks:
            curve = ck["ecm_vs_ratio"]
            line, = ax.plot(curve["ratio"], curve["uniform"], label=f"reuse, {ck['label']}")
            if curve["carv"]:
                ax.plot(curve["ratio"], curve["carv"], ls="--", c=line.get_color(),
                        label=f"IS+strat, {ck['label']}")
        ax.axvline(rec["costs"]["ratio"], c="k", lw=0.8, ls=":", label="measured $c_u/c_d$")
        ax.set(xscale="log", xlabel="$c_u/c_d$", ylabel="predicted best-K ECM",
               title="ECM vs cost ratio (measured $\\sigma_B^2, \\sigma_W^2$)")
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / "ecm_vs_ratio.png", dpi=110)
        plt.close(fig)
        names.append("ecm_vs_ratio.png")
    if "e2e" in rec:
        summ = rec["e2e"]["summary"]
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))
        for ax, metric, ylabel in zip(axes, ("psnr", "iou", "prob"),
                                      ("PSNR (dB)", "mask IoU", "classifier p(prompt)")):
            m = summ["metrics"][metric]
            for name, curve in m["mean_curves"].items():
                ax.plot(summ["times"], curve, label=name)
            t = m["carv_time_to_baseline_final"]
            if t is not None and t == t:
                ax.axvline(t, c="k", lw=0.6, ls=":")
            ax.set(xlabel="training wall-clock (s)", ylabel=ylabel)
            ax.legend(fontsize=6)
        fig.suptitle("quality vs wall-clock (mean over prompts and seeds)", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "quality_vs_wallclock.png", dpi=110)
        plt.close(fig)
        names.append("quality_vs_wallclock.png")
        if (out / "e2e_renders.png").exists():
            names.append("e2e_renders.png")
    return names


def _f(x, nd=2):
    return "n/a" if x is None or (isinstance(x, float) and x != x) else f"{x:.{nd}f}"


def _reach(seconds, fraction) -> tuple[str, str]:
    # Time-to-reach cells: "not reached" rather than a bare n/a.
    if seconds is None or seconds != seconds:
        return "not reached", "not reached"
    return f"{seconds:.1f} s", _f(fraction)


def _quality_table(metrics: dict, final: str, reach: str, header: tuple) -> list[str]:
    # Rows "metric | baseline final | <final> | <time to reach> | fraction" of an end-to-end table.
    rows = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for k, v in metrics.items():
        rows.append(f"| {k} | {_f(v['baseline_final'], 3)} | {_f(v[final], 3)} | "
                    + " | ".join(_reach(v[reach], v['fraction'])) + " |")
    return rows


def _mean_steps(runs: list, method: str, seeds=None) -> float:
    return float(np.mean([r["steps"] for r in runs
                          if r["method"] == method and (seeds is None or r["seed"] in seeds)]))


def _ceiling_paragraph(rec: dict) -> str:
    # What the fitted components allow: any method that changes only the inner draws
    # (t, eps, K) at R = 2 costs at least the baseline and keeps sigma_B^2 / 2, so its
    # ECM is at most (sigma_B^2 + sigma_W^2) / sigma_B^2.
    parts = []
    for ck in rec.get("checkpoints", []):
        c = ck["components"]
        if c["sigma_b2"] > 0:
            parts.append(f"{ck['label']}: within share {_f(c['within_share'])}, ceiling "
                         f"{(c['sigma_b2'] + c['sigma_w2']) / c['sigma_b2']:.2f}×")
    if not parts:
        return ""
    return ("**What the variance components allow.** A method that changes only the inner draws "
            "($t$, $\\epsilon$, $K$) at $R = 2$ costs at least the baseline per step and leaves the "
            "between-render part $\\sigma_B^2/2$ of the variance untouched, so its ECM over the baseline "
            "is at most $(\\sigma_B^2 + \\sigma_W^2)/\\sigma_B^2 = 1/(1 - \\text{within share})$, "
            "whatever the sampler, and at any $R$ (under the linear cost model; only a fixed per-step overhead lowers it at $R = 1$). With the components fitted "
            "to the uniform grid (parameter space): " + "; ".join(parts) + ". By the same bound, the paper's 2.6× "
            "from reuse alone at $K = 8$ requires a within share of at least 0.70 (the ceiling alone gives only 0.62).\n")


def render_page(rec: dict, fig_prefix: str) -> str:
    """The docs page (markdown) for a study record; figures linked as ``fig_prefix + name``."""
    L = []
    quick = rec["mode"] != "full"
    L.append("# Text-to-3D: CARV on NeRF + latent-teacher SDS\n")
    L.append("<!-- generated by `python -m benchmarks.text_to_3d.study`; do not edit by hand -->\n")
    if quick:
        L.append("!!! warning \"Quick run\"\n    These numbers come from `--quick` (few replicates, small "
                 "reference, short runs): a check that the study runs, not the measurement. The full "
                 "study is `python -m benchmarks.text_to_3d.study --out benchmarks/text_to_3d/results`.\n")
    if not rec.get("teacher_weights", True):
        L.append("!!! warning \"Random teacher\"\n    The teacher weights were missing: a randomly "
                 "initialised teacher was used.\n")
    sz, st, c = rec["size"], rec["settings"], rec["costs"]
    L.append("## Setup\n")
    L.append(f"- NeRF: {sz['grid_size']}³ density + colour grid, {sz['image_size']}×{sz['image_size']} renders, "
             f"{sz['n_samples']} samples per ray; upstream = render + VAE encode (forward and backward).")
    L.append(f"- Teacher: the project's tiny latent diffusion model (`benchmarks/text_to_3d/teacher.py`), "
             f"CFG scale {st['guidance_scale']}, $T = 1000$, $p$ uniform on steps 20..980, `sds` weighting times $\\alpha_t$.")
    L.append(f"- Measurement prompt: \"{rec['prompt']}\"; checkpoints of a baseline run at steps "
             f"{', '.join(f'{k} ({v})' for k, v in rec['checkpoint_run']['checkpoints'].items())}.")
    L.append(f"- Variance: MSE to a reference gradient over {sz['reps']} replicates per configuration "
             f"(after {sz['warmup']} warm-up sweeps), on the flattened gradient of all "
             f"{4 * sz['grid_size'] ** 3:,} grid parameters; reference: {sz['ref_renders']} renders × "
             f"{sz['ref_K']} draws. Cost: median wall-clock per gradient step, configurations interleaved.")
    L.append(f"- Machine: {rec['machine']['cpu_count']} CPU cores, {rec['machine']['threads']} torch threads, "
             f"torch {rec['machine']['torch']}. Total study time {rec.get('seconds_total', float('nan')) / 60:.1f} min.\n")
    L.append("## Measured costs\n")
    L.append("| quantity | value |\n|---|---|")
    L.append(f"| $c_u$ (render + encode, fwd + bwd, per render) | {1e3 * c['c_u']:.1f} ms |")
    L.append(f"| of which render fwd + bwd / encode fwd + bwd | {1e3 * c['render_fwd_bwd']:.1f} / "
             f"{1e3 * c['encode_fwd_bwd']:.1f} ms |")
    L.append(f"| $c_d$ (one CFG teacher draw, 16 per call) | {1e3 * c['c_d']:.2f} ms |")
    L.append(f"| $c_u/c_d$ | {c['ratio']:.1f} |")
    cd = c["c_d_by_draws_per_call"]
    L.append("| $c_d$ by draws per call | " + ", ".join(f"{k}: {1e3 * v:.1f} ms" for k, v in cd.items()) + " |")
    for ck in rec.get("checkpoints", [])[-1:]:
        f = ck["cost_fit"]
        L.append(f"| fit $a + R c_u + RK c_d$ to the step medians ({ck['label']}) | $c_u$ = {1e3 * f['c_u']:.1f} ms, "
                 f"$c_d$ = {1e3 * f['c_d']:.2f} ms, ratio {f['ratio']:.1f}, overhead {1e3 * f['overhead']:.1f} ms |")
    L.append("")
    summ = rec.get("summary", {})
    if summ.get("per_checkpoint"):
        L.append("## Targets\n")
        L.append("| target | " + " | ".join(p["label"] for p in summ["per_checkpoint"]) + " |")
        L.append("|---|" + "---|" * len(summ["per_checkpoint"]))
        L.append("| best ECM (≥ 3.3×) | " + " | ".join(
            f"{_f(p['best']['ecm'])} ± {_f(p['best']['ecm_se'])} ({p['best']['name']})"
            for p in summ["per_checkpoint"]) + " |")
        L.append("| best reuse-only ECM (paper ≈ 2.6×) | " + " | ".join(
            f"{_f(p['best_reuse']['ecm'])} ({p['best_reuse']['name']})" for p in summ["per_checkpoint"]) + " |")
        L.append("| IS+strat gain over reuse at the same K (≥ +25%) | " + " | ".join(
            ", ".join(f"K={g['K']}: {100 * g['gain']:+.0f}%" for g in p["is_strat_gain_over_reuse"])
            for p in summ["per_checkpoint"]) + " |")
        L.append("| K=auto ECM / best fixed (≥ 0.9) | " + " | ".join(
            "n/a" if p["auto"] is None else f"{_f(p['auto']['vs_best_fixed'])} (mean K {p['auto']['mean_K']:.1f})"
            for p in summ["per_checkpoint"]) + " |")
        if "e2e" in summ:
            e = summ["e2e"]
            L.append("| CARV time to baseline's final quality / baseline time (≤ 0.5) | " + "; ".join(
                f"{k}: {_reach(v['carv_time_to_baseline_final'], v['fraction'])[1]}" for k, v in e.items()) + " |" + " |" * (len(summ['per_checkpoint']) - 1))
        L.append("")
        L.append(_ceiling_paragraph(rec))
    for ck in rec.get("checkpoints", []):
        L.append(f"## ECM and RE, {ck['label']} checkpoint (step {ck['step']})\n")
        r0 = ck["reference"]
        comp = ck["components"]
        L.append(f"Reference: {r0['n_draws']} draws over {r0['n_renders']} renders; its own variance is "
                 f"{100 * r0['var_ref_over_baseline_mse']:.2f}% of the baseline's MSE (included in every MSE). "
                 f"Fitted components (uniform grid): $\\sigma_B^2$ = {comp['sigma_b2']:.3e}, "
                 f"$\\sigma_W^2$ = {comp['sigma_w2']:.3e} (within share {_f(comp['within_share'])}).\n")
        L.append("| configuration | R | K | cost (ms) | MSE | ECM | ± SE | RE | bias ratio |")
        L.append("|---|---|---|---|---|---|---|---|---|")
        for r in ck["configs"]:
            k = f"auto ({r['mean_K']:.1f})" if r["K"] == "auto" else str(r["K"])
            L.append(f"| {r['name']} | {r['R']} | {k} | {1e3 * r['cost']:.0f} | {r['mse']:.3e} | "
                     f"{_f(r['ecm'])} | {_f(r['ecm_se'])} | {_f(r['re'])} | {_f(r['bias_ratio'])} |")
        L.append("")
    L.append("ECM $= (V C)_{\\rm base}/(V C)_{\\rm method}$ with $V$ the MSE and $C$ the median step time; "
             "its SE covers the variance estimates only. RE $= V_{\\rm uniform}/V_{\\rm method}$ at the same "
             "$(R, K)$. Bias ratio $= \\lVert\\bar G - G\\rVert^2/(\\operatorname{tr}\\widehat{\\operatorname{Cov}}/n + V_{\\rm ref})$, "
             "about 1 for an unbiased estimator.\n")
    if "e2e" in rec:
        e = rec["e2e"]
        summ_e = e["summary"]
        n_runs = len(e["runs"])
        L.append("## End to end\n")
        L.append(f"{n_runs} runs: prompts × seeds × {{baseline, {e['carv_method']['name']}}}, "
                 f"{sz['e2e_seconds']:.0f} s of training wall-clock each (evaluation excluded), Adam lr {st['lr']}.\n")
        L += _quality_table(summ_e["metrics"], "carv_final", "carv_time_to_baseline_final",
                            ("metric", "baseline final", "CARV final", "CARV time to baseline final",
                             "fraction of baseline time"))
        steps = {}
        for r in e["runs"]:
            steps.setdefault(r["method"], []).append((r["steps"], r["step_seconds"]))
        L.append("")
        for name, v in steps.items():
            L.append(f"- {name}: {np.mean([a for a, _ in v]):.0f} steps per run, median step "
                     f"{1e3 * np.median([b for _, b in v]):.0f} ms.")
        L.append("")
    if "e2e_extra" in rec:
        x = rec["e2e_extra"]
        L.append("### The best-ECM configuration at equal wall-clock\n")
        L.append(f"`{x['method']['name']}` against the baseline runs above with the same prompt and seed "
                 f"(seeds {x['seeds']}, {len(x['runs'])} runs), same {sz['e2e_seconds']:.0f} s of training; "
                 f"it costs more per step, so it takes fewer steps "
                 f"({np.mean([r['steps'] for r in x['runs']]):.0f} per run, median step "
                 f"{1e3 * np.median([r['step_seconds'] for r in x['runs']]):.0f} ms).\n")
        L += _quality_table(x["metrics"], "method_final", "time_to_baseline_final",
                            ("metric", "baseline final", "method final", "time to baseline final", "fraction"))
        runs = rec["e2e"]["runs"]
        base_steps = _mean_steps(runs, BASELINE.name, x["seeds"])
        twin = f"uniform R={x['method']['R']} K={x['method']['K']}"
        ecms = [r["ecm"] for ck in rec.get("checkpoints", []) for r in ck["configs"] if r["name"] == twin]
        if ecms and min(ecms) > 1 and x["metrics"]["psnr"]["method_final"] < x["metrics"]["psnr"]["baseline_final"]:
            e2m = rec["e2e"]["summary"]["metrics"]["psnr"]
            carv_name = rec["e2e"]["carv_method"]["name"]
            r1_clause = ("; the equal-per-step-compute CARV run above also ended lower, with *more* steps "
                         "than the baseline" if e2m["carv_final"] < e2m["baseline_final"]
                         and _mean_steps(runs, carv_name) > _mean_steps(runs, BASELINE.name) else "")
            noise = ", ".join(f"{ck['label']} {ck['configs'][0]['mse'] / ck['reference']['grad_norm2']:.1f}"
                              for ck in rec.get("checkpoints", []))
            L.append(f"\nAt this $(R, K)$ the gradient's ECM exceeds 1 at every checkpoint ({twin}: "
                     + ", ".join(_f(e) for e in ecms) + f"), yet the run ends below the baseline in PSNR, "
                     f"with {np.mean([r['steps'] for r in x['runs']]):.0f} steps to the baseline's "
                     f"{base_steps:.0f}" + r1_clause + ". On this pipeline a lower gradient MSE per second did not turn into "
                     "quality, although the baseline's noise scale $\\mathcal B = V/\\lVert G\\rVert^2$ is "
                     f"above 1 ({noise}), where the SGD bound of [when variance is not the bottleneck]"
                     "(../maths/not-the-bottleneck.md) says variance should matter. These runs use Adam, "
                     "whose per-coordinate normalisation that bound does not cover; which mechanism "
                     "decides here is not measured.")
        L.append("\nReproduce: `python -m benchmarks.text_to_3d.study --out benchmarks/text_to_3d/results "
                 f"--e2e-extra {x['method']['R']} {x['method']['K']} --e2e-extra-seeds "
                 f"{' '.join(str(v) for v in x['seeds'])}` (after the study).\n")
    L.append("## Figures\n")
    for name in rec.get("figures", []):
        L.append(f"![{name}]({fig_prefix}{name})\n")
    L.append("## Reproduce\n")
    L.append("```\npython -m benchmarks.text_to_3d.study --out benchmarks/text_to_3d/results"
             + (" --quick" if quick else "") + "\n```\n")
    L.append(f"Results: `benchmarks/text_to_3d/results/{'quick/' if quick else ''}study.json`.")
    return "\n".join(L) + "\n"


def write_report(rec: dict, out: Path, docs: bool) -> Path | None:
    """Figures into ``out``; the page into ``out/text-to-3d.md`` and, with ``docs``, the docs site."""
    rec["figures"] = make_figures(rec, out)
    (out / "study.json").write_text(json.dumps(_jsonable(rec), indent=1) + "\n")
    (out / "text-to-3d.md").write_text(render_page(rec, ""))
    if not docs:
        return None
    DOCS_FIGS.mkdir(parents=True, exist_ok=True)
    for name in rec["figures"]:
        shutil.copyfile(out / name, DOCS_FIGS / f"text-to-3d-{name}")
    DOCS_PAGE.write_text(render_page(rec, "figures/text-to-3d-"))
    return DOCS_PAGE
