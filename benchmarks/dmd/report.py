"""The DMD benchmark page, generated from ``results/study.json`` (never typed)."""

from __future__ import annotations

import statistics
from pathlib import Path

from .figures import NAMES, TEACHER_TITLES
from .quality import METRICS

__all__ = ["render_page", "write_page", "within_share", "diagnostic_table"]

TARGET = 16.0   # the issue's bar for (8, 16) stratified over (8, 1) at equal R; published 982 / 30.7 = 32


def _arm(c: dict, name: str) -> dict:
    return next(a for a in c["arms"] if a["name"] == name)


def within_share(ratio_iid: float, K: int = 16) -> float:
    r"""$\sigma_W^2/(\sigma_B^2 + \sigma_W^2)$ from the i.i.d. ratio $r = V(R, 1)/V(R, K)$: $(1 - 1/r)/(1 - 1/K)$."""
    return (1 - 1 / ratio_iid) / (1 - 1 / K)


def _summary(rec: dict) -> list[str]:
    L = ["| real score | checkpoint (step) | variance ratio over (8, 1): (8, 16) i.i.d. | (8, 16) stratified | "
         "(8, 16) IS + stratified | target for stratified | within share \\(w\\) | reuse ceiling \\(1/(1 - w)\\) |",
         "|---|---|---|---|---|---|---|---|"]
    for name, part in rec["teachers"].items():
        for c in part["checkpoints"]:
            iid, a, isa = (_arm(c, n) for n in ("(8, 16) iid", "(8, 16) stratified", "(8, 16) IS + stratified"))
            ok = "met" if a["variance_ratio"] - 2 * a["variance_ratio_se"] >= TARGET else (
                "not met" if a["variance_ratio"] + 2 * a["variance_ratio_se"] < TARGET else "within 2 SE")
            w = within_share(iid["variance_ratio"])
            ceiling = f"{1 / (1 - w):.0f}×" if w < 1 else "∞"
            L.append(f"| {TEACHER_TITLES[name]} | {c['step']} | {iid['variance_ratio']:.1f} ± "
                     f"{iid['variance_ratio_se']:.1f} | {a['variance_ratio']:.1f} ± {a['variance_ratio_se']:.1f} | "
                     f"{isa['variance_ratio']:.1f} ± {isa['variance_ratio_se']:.1f} | ≥ {TARGET:.0f}× ({ok}) | "
                     f"{w:.3f} | {ceiling} |")
    return L


def _variance_details(name: str, part: dict) -> list[str]:
    L = []
    for c in part["checkpoints"]:
        q = c["quality"]
        L += [f"??? note \"{TEACHER_TITLES[name]}, step {c['step']}: mean log p* {q['mean_log_p']:.1f} "
              f"(p* itself {q['p_star_mean_log_p']:.1f}), mode TV {q['mode_tv']:.2f}\"", "",
              "    | arm | tr Cov(∇θ) | ± SE | variance ratio | tr Cov of the score difference ḡ | "
              "seconds / estimate | ECM |", "    |---|---|---|---|---|---|---|"]
        for a in c["arms"]:
            L.append(f"    | {a['name']} | {a['trace_cov']:.4g} | {a['trace_cov_se']:.2g} | "
                     f"{a['variance_ratio']:.2f} ± {a['variance_ratio_se']:.2f} | {a['x_trace_cov']:.3g} | "
                     f"{a['seconds'] * 1e3:.0f} ms | {a['ecm']:.2f} |")
        L.append("")
    return L


def _quality_table(summary: dict) -> list[str]:
    metrics = [m for m in NAMES if m in next(iter(summary.values()))]
    L = ["| arm | " + " | ".join(NAMES[m] for m in metrics) + " |", "|---|" + "---|" * len(metrics)]
    for arm, by_m in summary.items():
        cells = []
        for m in metrics:
            e = by_m[m]
            cell = f"{e['mean']:.3g}"
            if "boot_lo" in e:
                cell += f" [{e['boot_lo']:.3g}, {e['boot_hi']:.3g}]"
            if "diff" in e:
                cell += f"<br>Δ {e['diff']:+.3g} [{e['diff_lo']:+.3g}, {e['diff_hi']:+.3g}]"
            cells.append(cell)
        L.append(f"| {arm} | " + " | ".join(cells) + " |")
    return L


def _verdict(summary: dict) -> str:
    """One sentence from the intervals: which (arm, metric) differences exclude 0, and in which direction."""
    found = []
    for arm, by_m in summary.items():
        for m, e in by_m.items():
            if "diff" in e and (e["diff_lo"] > 0 or e["diff_hi"] < 0):
                found.append(f"{arm} {'better' if (e['diff'] > 0) == METRICS[m] else 'worse'} on {NAMES[m]}")
    if not found:
        return ("No arm's final quality differs from the baseline's beyond its 95 % paired interval on any metric: "
                "at equal compute the lower-variance estimators bring no measurable quality gain here.")
    return "Differences whose 95 % paired interval excludes 0: " + "; ".join(found) + "."


def _auto_k(e2e: dict) -> str:
    ks = [k for r in e2e["runs"] if "K" in r for k in r["K"]]
    if not ks:
        return ""
    late = [k for r in e2e["runs"] if "K" in r for k in r["K"][len(r["K"]) // 2:]]
    steps = [r["steps"] for r in e2e["runs"] if "K" in r]
    return (f"CARV's `K=\"auto\"` (the guidance, stratified, probes every 10 calls, \\(K \\le 64\\)) trained for the "
            f"baseline's compute in its own measured seconds ({e2e['seconds_budget']:.0f} s, "
            f"{min(steps)}–{max(steps)} steps); the \\(K\\) it ran: median {statistics.median(ks):.0f} over the runs, "
            f"{statistics.median(late):.0f} over their second halves (range {min(ks)}–{max(ks)}).")


def _end_to_end(name: str, part: dict) -> list[str]:
    e = part["end_to_end"]
    seeds = sorted({r["seed"] for r in e["runs"]})
    costs = ", ".join(f"{k} {v * 1e3:.0f} ms ({e['steps'][k]} steps)" for k, v in e["step_costs"].items())
    L = [f"### {TEACHER_TITLES[name]}", "",
         f"Step costs timed interleaved (robust to a busy machine): {costs}. Seeds {seeds}, the same for every arm. "
         "Final values: mean over seeds [two-level bootstrap 95 % interval: seeds, then generated samples]; "
         "Δ: mean paired difference to the baseline [95 % t-interval over seeds].", ""]
    L += _quality_table(e["summary"])
    L += ["", _verdict(e["summary"]), ""]
    auto = _auto_k(e)
    if auto:
        L += [auto, ""]
    L += [f"![quality curves]({'figures'}/dmd-quality_{name}.png)", ""]
    return L


def _ablation(rec: dict) -> list[str]:
    main = rec["teachers"]["exact"]
    ratio0 = main["distill"]["fake_ratio"]
    by = {int(k): v["summary"] for k, v in rec.get("ablation", {}).items()}
    by[ratio0] = {k: v for k, v in main["end_to_end"]["summary"].items() if k in ("(8, 1) iid", "(8, 16) stratified")}
    L = ["## Fake-score update ratio (the two time-scale rule)", "",
         f"The exact-score protocol with {' and '.join(map(str, sorted(set(by) - {ratio0})))} fake-score updates per "
         f"generator step ({ratio0} above), the baseline and the stratified arm: if the bilevel dynamics, not the "
         "variance, limit quality, the ratio moves quality more than the estimator does.", ""]
    for ratio in sorted(by):
        if ratio != ratio0:
            L += [f"Ratio {ratio}:", ""] + _quality_table(by[ratio]) + [""]
    metrics = [m for m in NAMES if m in by[ratio0]["(8, 1) iid"]]
    L += ["Side by side — the baseline's final value per ratio, and the largest |Δ| of the stratified arm over "
          "the ratios:", "", "| metric | " + " | ".join(f"baseline, ratio {r}" for r in sorted(by))
          + " | spread over ratios | largest estimator |Δ| |", "|---|" + "---|" * (len(by) + 2)]
    moved = []
    for m in metrics:
        base = [by[r]["(8, 1) iid"][m]["mean"] for r in sorted(by)]
        dmax = max(abs(by[r]["(8, 16) stratified"][m]["diff"]) for r in sorted(by))
        spread = max(base) - min(base)
        moved.append(spread > dmax)
        L.append(f"| {NAMES[m]} | " + " | ".join(f"{b:.3g}" for b in base) + f" | {spread:.3g} | {dmax:.3g} |")
    L += ["", f"On {sum(moved)} of {len(moved)} metrics the fake-update ratio moves the baseline's final quality more "
          "than the estimator moves it at any ratio (point estimates; the intervals above say which differences "
          "are resolved).", "", "![ablation](figures/dmd-ablation.png)", ""]
    return L


def diagnostic_table(rec: dict) -> list[str]:
    """The predicted-against-measured tables (also included by the maths page on the noise scale)."""
    L = ["| real score | checkpoint (step) | noise scale \\(\\mathcal B\\) of (8, 1) | fake-update overhead per step | "
         "predicted \\(S\\), stratified over (8, 1) | ECM limit |", "|---|---|---|---|---|---|"]
    for name, part in rec["teachers"].items():
        for p in part["end_to_end"]["predicted"]:
            L.append(f"| {TEACHER_TITLES[name]} | {p['step']} | {p['noise_scale']:.2f} | {p['overhead'] * 1e3:.0f} ms | "
                     f"{p['speedup']:.2f} | {p['ecm_limit']:.2f} |")
    L += ["", "| real score | arm over (8, 1) | metric | measured speed-up to 50 % of the baseline's gain | to 90 % |",
          "|---|---|---|---|---|"]
    for name, part in rec["teachers"].items():
        for arm, by_m in part["end_to_end"]["measured"].items():
            for m, by_f in by_m.items():
                L.append(f"| {TEACHER_TITLES[name]} | {arm} | {NAMES[m]} | " + " | ".join(
                    f"{v['median']:.2f} (n = {len(v['values'])})" for v in by_f.values()) + " |")
    L += ["", "Measured: median over seeds of the baseline's compute to a level over the arm's (0 where it never "
          "got there; metrics on which the baseline did not improve have n = 0); `python -m benchmarks.dmd.study`.", ""]
    return L + in_run_table(rec)


def _median(values) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def in_run_table(rec: dict) -> list[str]:
    """The library's own diagnostic, recorded inside the ``K="auto"`` runs, against their measured speed-up."""
    rows = []
    for name, part in rec["teachers"].items():
        e = part["end_to_end"]
        diags = [d for r in e["runs"] if "diagnoses" in r for d in r["diagnoses"]]
        if not diags:
            continue
        auto = next(r["arm"] for r in e["runs"] if "diagnoses" in r)
        best = statistics.mode(f"({d['best_R']}, {d['best_K']})" for d in diags)
        measured = "; ".join(f"{NAMES[m]} {by_f['0.5']['median']:.2f}" for m, by_f in e["measured"][auto].items()
                             if by_f["0.5"]["values"])
        rows.append(f"| {TEACHER_TITLES[name]} | {len(diags)} | {_median(d['noise_scale'] for d in diags):.3g} | "
                    f"{_median(d['grad_sq_norm'] for d in diags):.4g} | "
                    f"{_median(d['lag1_grad_sq_norm'] for d in diags):.4g} | {_median(d['K'] for d in diags):.0f} | "
                    f"{_median(d['ecm_own_K'] for d in diags):.2f} | {_median(d['speedup_own_K'] for d in diags):.2f} | "
                    f"{best}, {_median(d['best_speedup'] for d in diags):.2f} | {measured or 'n/a'} |")
    if not rows:
        return []
    return ["**In the run.** The same prediction from the library alone: `carv_torch.diagnostics.diagnose` inside "
            "the `K=\"auto\"` runs, every 25 steps, with \\(\\lVert G\\rVert^2\\) from the guidance's probes "
            "(`ProbeNormMonitor`, the last 4 probes), its \\(\\sigma_B^2, \\sigma_W^2, c_u, c_d\\) and the timed "
            "fake-score updates as the overhead \\(c_0\\). Medians over the records of all seeds; the cross-step "
            "`GradientMonitor` estimate of \\(\\lVert G\\rVert^2\\) beside it.", "",
            "| real score | records | noise scale of (8, 1) | \\(\\lVert G\\rVert^2\\), probes | "
            "\\(\\lVert G\\rVert^2\\), cross-step | K run | its ECM | its predicted \\(S\\) | "
            "most frequent best \\((R', K')\\), \\(S\\) | measured speed-up to 50 % |",
            "|---|---|---|---|---|---|---|---|---|---|", *rows, ""]


def render_page(rec: dict) -> str:
    exact = rec["teachers"]["exact"]
    reps = exact["checkpoints"][-1]["arms"][0]["reps"]
    clf = rec["classifier"]
    L = ["# DMD: generator-gradient variance and sample quality", "",
         "One-step distillation of a known density: \\(p^\\star\\), a 10-component diagonal Gaussian mixture "
         "fitted to the 8×8 digits. The real score is either \\(p^\\star\\)'s exact score (no teacher error) or a "
         "tiny diffusers `UNet2DModel` trained on \\(p^\\star\\) samples (frozen); the fake score and the "
         "one-step generator start from that trained UNet; the generator gradient goes through `carv_torch.dmd` "
         "(and, for `K=\"auto\"`, `carv_torch.CARVGuidance`). At checkpoints of a baseline run, every "
         "estimator's \\(\\operatorname{tr}\\operatorname{Cov}(\\nabla_\\theta)\\) over the generator's "
         f"parameters comes from {reps} repeated estimates at frozen parameters.", "",
         "## Summary", ""] + _summary(rec)
    L += ["", "At fixed \\(R\\) no change of the inner draws (reuse, stratification, IS) can beat the ceiling "
          "\\(1/(1 - w)\\), \\(w\\) the share of the (8, 1) variance that is within a generator sample (from the "
          "i.i.d. ratio, \\(w = (1 - 1/r)/(1 - 1/16)\\)); the paper's 16.4× at \\(K = 16\\) implies "
          "\\(w \\approx 1\\), here the samples \\(z\\) themselves carry a few per cent of the variance.", "",
          f"Published (SD-scale DMD): 982 at (8, 1), 59.9 at (8, 16), 30.7 with stratification (32×). Size "
          f"`{rec['size']}`, {rec['threads']} threads, {rec['seconds_total']:.0f} s in all; "
          "`python -m benchmarks.dmd.study`.", "", "![variance ratios](figures/dmd-variance_ratio.png)", "",
          "## Variance per arm", ""]
    for name, part in rec["teachers"].items():
        L += _variance_details(name, part)
    L += ["## Costs", ""]
    for name, part in rec["teachers"].items():
        L.append(f"- {TEACHER_TITLES[name]}: \\(c_u\\) (generator forward + backward, per sample) "
                 f"{part['c_u'] * 1e3:.2f} ms; \\(c_d\\) (real + fake score, per draw) {part['c_d'] * 1e3:.3f} ms; "
                 f"the equal-compute \\(K = 1\\) arm uses \\(R' = {part['R_eq']}\\); distillation "
                 f"{part['distill']['step_seconds'] * 1e3:.0f} ms per step with {part['distill']['fake_ratio']} "
                 "fake updates.")
    pre = rec["pretrain"]
    L += [f"- Pre-training the denoiser: {pre['steps']} steps, {pre['seconds']:.0f} s, final loss "
          f"{pre['final_loss']:.3f} ({pre['source']}).", "",
          "## The trained denoiser against the exact score", "",
          "The `UNet2DModel` trained on \\(p^\\star\\) (`python -m benchmarks.dmd.teacher` retrains it) is the second "
          "real score, and starts the fake score and the generator. Its excess error over the exact "
          "\\(\\hat\\epsilon^\\star\\), relative to the irreducible denoising error "
          "\\(\\mathbb E\\lVert\\epsilon - \\hat\\epsilon^\\star\\rVert^2\\):", "",
          "| t | excess | irreducible | relative |", "|---|---|---|---|"]
    L += [f"| {e['t_lo']}–{e['t_hi'] - 1} | {e['excess']:.3f} | {e['floor']:.3f} | {e['relative']:.3f} |"
          for e in pre["score_error"]]
    L += ["", "## The classifier-feature FID", "",
          f"A small CNN trained by the study on the real digits ({clf['n_train']} train, {clf['n_test']} held out; "
          f"held-out accuracy {clf['test_accuracy']:.3f}, {clf['seconds']:.0f} s) supplies {clf['features']}-"
          "dimensional features; torchmetrics' `FrechetInceptionDistance` with that extractor compares "
          f"{clf['n']} generated samples with a fixed set of {clf['n']} \\(p^\\star\\) samples. Its scale: fresh "
          f"\\(p^\\star\\) samples {clf['fid_p_star']:.3g} (the floor at this \\(n\\)), the real digits "
          f"{clf['fid_real_digits']:.3g} (how far \\(p^\\star\\) is from the data it was fitted to).", "",
          "## End to end: quality at equal compute", "",
          "Every run starts from the trained UNet (generator and fake score); the baseline trains "
          f"{exact['end_to_end']['runs'][0]['steps']} steps, every fixed-\\(K\\) arm as many steps as the same compute "
          "buys.", ""]
    for name, part in rec["teachers"].items():
        L += _end_to_end(name, part)
    if rec.get("ablation"):
        L += _ablation(rec)
    L += ["## The noise-scale diagnostic, predicted against measured", ""] + diagnostic_table(rec)
    return "\n".join(L)


def write_page(rec: dict, path: Path) -> None:
    """The page, and next to the docs' figures the diagnostic table the maths page includes."""
    Path(path).write_text(render_page(rec))
    (Path(path).parents[1] / "figures" / "diagnostic_dmd.md").write_text("\n".join(diagnostic_table(rec)))
