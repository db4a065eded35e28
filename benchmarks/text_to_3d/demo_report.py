r"""The demo's report: render grids, quality curves, the ECM table, and ``summary.md``.

The summary opens with one sentence, built from the measured values, on what the user
should see; then expected vs measured time per stage (the cost probe's prediction checked).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .end_to_end import time_to_reach
from .pipeline import BASELINE
from ..figures import pyplot
from .report import _jsonable, image_strips
from .scenes import PROMPTS

__all__ = ["DemoSummary", "first_reach", "what_you_should_see", "write_report"]


class DemoSummary(NamedTuple):
    """``sentence``: what the user should see; ``total_seconds``: the demo's wall-clock."""

    sentence: str
    total_seconds: float


def first_reach(curve, threshold: float) -> float:
    r"""Training seconds at which $p(\text{prompt})$ first reaches ``threshold`` (linear between evaluations), ``nan`` if never."""
    return time_to_reach([c[0] for c in curve], [c[4] for c in curve], threshold)


def _secs(v: float) -> str:
    return "never" if v != v else f"{v:.0f} s"


def what_you_should_see(prompt: int, runs: dict, carv_name: str, ecm_row: dict, threshold: float) -> str:
    """One sentence from the measured runs: recognisable or not, when each run got there, CARV's ECM."""
    b, c = runs[BASELINE.name], runs[carv_name]
    pb, pc = b.curve[-1][4], c.curve[-1][4]
    name = PROMPTS[prompt]
    if not pb >= threshold:
        head = (f"The baseline did NOT reach p(prompt) ≥ {threshold} in its {b.steps} steps (p = {pb:.3f}): "
                f"its renders are not yet a recognisable {name!r}, which the demo's step budget was set to "
                f"ensure — raise --baseline-steps; ")
    else:
        head = (f"What you should see: after its {b.steps} steps ({b.train_seconds:.0f} s here) the baseline's "
                f"renders are a recognisable {name!r} (p(prompt) = {pb:.3f}); ")
    return head + (
        f"CARV, given the same {b.train_seconds:.0f} s, made {c.steps} steps and ended at p(prompt) = {pc:.3f}, "
        f"first reaching {threshold} at {_secs(first_reach(c.curve, threshold))} against the baseline's "
        f"{_secs(first_reach(b.curve, threshold))}; at the baseline's final NeRF its effective-compute "
        f"multiplier is {ecm_row['ecm']:.2f} ± {ecm_row['ecm_se']:.2f}.")


def _figures(out: Path, runs, snaps, ref, rows) -> list[str]:
    finals = [ref.images[[0, 2, 4, 6]]] + [snaps[n][-1][1] for n in runs]
    image_strips(finals, out / "renders_final.png",
                 ["ground truth"] + [f"{n} ({runs[n].steps} steps, {runs[n].train_seconds:.0f} s)" for n in runs])
    for n, tag in zip(runs, ("baseline", "carv")):
        pick = np.linspace(0, len(snaps[n]) - 1, min(5, len(snaps[n]))).round().astype(int)
        image_strips([snaps[n][i][1] for i in pick], out / f"renders_{tag}_progress.png",
                     [f"{n}: t = {snaps[n][i][0]:.0f} s" for i in pick])
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.1))
    for ax, col, label in zip(axes, (2, 3, 4), ("PSNR (dB)", "mask IoU", "p(prompt)")):
        for n, r in runs.items():
            ax.plot([c[0] for c in r.curve], [c[col] for c in r.curve], label=n)
        ax.set(xlabel="training wall-clock (s)", ylabel=label)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "quality_vs_wallclock.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    b = rows[0]
    for r in rows:
        ax.scatter(1e3 * r["cost"], r["mse"], label=f"{r['name']}: ECM {r['ecm']:.2f}")
    c = np.geomspace(min(r["cost"] for r in rows) * 0.8, max(r["cost"] for r in rows) * 1.2, 20)
    for e, ls in ((1, "-"), (2, "--"), (4, ":")):
        ax.plot(1e3 * c, b["mse"] * b["cost"] / (e * c), "k", ls=ls, lw=0.7)
    ax.set(xscale="log", yscale="log", xlabel="cost per step (ms)", ylabel="MSE to reference",
           title="variance vs compute (lines: ECM 1, 2, 4)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "variance_vs_compute.png", dpi=110)
    plt.close(fig)
    return ["renders_final.png", "renders_baseline_progress.png", "renders_carv_progress.png",
            "quality_vs_wallclock.png", "variance_vs_compute.png"]


def write_report(out: Path, *, prompt: int, plan, runs: dict, snaps: dict, ref, rows: list[dict], refg,
                 reps: int, settings, stage_seconds: dict, teacher_shipped: bool, t_start: float,
                 report_start: float, threshold: float = 0.9) -> DemoSummary:
    """Write the figures, ``summary.md`` and ``ecm_table.json`` under ``out``."""
    carv = plan.carv
    figures = _figures(out, runs, snaps, ref, rows)
    carv_row = next(r for r in rows if r["name"].startswith("IS+strat R=1") and r["K"] == carv.K)
    sentence = what_you_should_see(prompt, runs, carv.name, carv_row, threshold)
    stage_seconds = dict(stage_seconds, report=time.perf_counter() - report_start)
    total = time.perf_counter() - t_start
    s = settings
    L = [f"# CARV text-to-3D demo: {PROMPTS[prompt]!r}\n", sentence + "\n",
         f"Teacher weights: {'shipped' if teacher_shipped else 'RANDOM (weights missing)'}; "
         f"{torch.get_num_threads()} torch threads; total demo time {total:.0f} s (expected {plan.total:.0f} s "
         "from the cost probe).\n",
         "## Costs and time\n",
         f"- $c_u$ (render {s.image_size}×{s.image_size}, {s.n_samples} samples/ray, {s.grid_size}³ grid, "
         f"+ VAE encode, forward + backward, per render): {1e3 * plan.c_u:.1f} ms "
         f"(render {1e3 * plan.render_seconds:.1f} ms, encode {1e3 * plan.encode_seconds:.1f} ms)",
         f"- $c_d$ (one CFG teacher draw, 16 per call): {1e3 * plan.c_d:.2f} ms; $c_u/c_d$ = "
         f"{plan.c_u / plan.c_d:.1f}; baseline step {1e3 * plan.step_seconds:.0f} ms\n",
         "| stage | expected (s) | measured (s) |", "|---|---|---|"]
    for k, v in plan.stages.items():
        L.append(f"| {k} | {v:.0f} | {stage_seconds.get(k, math.nan):.0f} |")
    L += ["", "## SDS runs (equal per-step compute; the baseline budgeted in steps, CARV in the baseline's "
          "measured training time)\n",
          f"| run | steps | training (s) | median step (ms) | PSNR (dB) | mask IoU | p(prompt) | "
          f"first p ≥ {threshold} |", "|---|---|---|---|---|---|---|---|"]
    for n, r in runs.items():
        last = r.curve[-1]
        L.append(f"| {n} | {r.steps} | {r.train_seconds:.0f} | {1e3 * r.step_seconds:.0f} | {last[2]:.2f} | "
                 f"{last[3]:.3f} | {last[4]:.3f} | {_secs(first_reach(r.curve, threshold))} |")
    L.append("\nOne seed: noisy; the study averages prompts × seeds.\n")
    L.append(f"## ECM table (baseline's final NeRF; reference {refg.n_draws} draws over {refg.n_renders} renders; "
             f"{reps} replicates each)\n")
    L.append("| configuration | cost (ms) | MSE | ECM | ± SE | RE |")
    L.append("|---|---|---|---|---|---|")
    for r in rows:
        name = r["name"] + (f" (mean K {r['mean_K']:.1f})" if r["K"] == "auto" else "")
        re = "" if r["re"] != r["re"] else f"{r['re']:.2f}"
        L.append(f"| {name} | {1e3 * r['cost']:.0f} | {r['mse']:.3e} | {r['ecm']:.2f} | {r['ecm_se']:.2f} | "
                 f"{re} |")
    L.append("\n## Figures\n")
    L += [f"![{f}]({f})\n" for f in figures]
    (out / "summary.md").write_text("\n".join(L) + "\n")
    (out / "ecm_table.json").write_text(json.dumps(_jsonable(
        {"prompt": PROMPTS[prompt], "c_u": plan.c_u, "c_d": plan.c_d, "rows": rows, "seconds_total": total,
         "expected_seconds": plan.stages, "measured_seconds": stage_seconds, "what_you_should_see": sentence,
         "runs": {n: {"steps": r.steps, "train_seconds": r.train_seconds, "curve": r.curve,
                      "step_seconds": r.step_seconds} for n, r in runs.items()}}), indent=1) + "\n")
    return DemoSummary(sentence, total)
