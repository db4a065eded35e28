"""The DMD benchmark's figures, drawn from ``results/study.json`` (never from a live run).

- ``dmd-variance_ratio.png``: per real teacher, each arm's variance ratio over (8, 1) i.i.d.
  at the checkpoints, ±1 SE, with the 16× target;
- ``dmd-quality_<teacher>.png``: the end-to-end quality curves, mean over seeds, against
  generator steps and against training seconds (equal compute);
- ``dmd-ablation.png``: final quality against the fake-update ratio for the baseline and
  the stratified arm (mean over seeds, two-level bootstrap interval).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..figures import figure

__all__ = ["write_figures", "NAMES"]

NAMES = {"mean_log_p": "mean log p* (↑)", "mode_tv": "mode TV (↓)", "frechet": "Fréchet to p* (↓)",
         "sliced_w": "sliced W (↓)", "fid": "classifier FID (↓)"}
TEACHER_TITLES = {"exact": "real score: exact p*", "unet": "real score: trained UNet"}


def _variance_ratio(rec: dict, path: Path, target: float) -> None:
    parts = rec["teachers"]
    with figure(path, figsize=(5 * len(parts), 3.6), ncols=len(parts), squeeze=False) as axes:
        for ax, (name, part) in zip(axes[0], parts.items()):
            steps = [c["step"] for c in part["checkpoints"]]
            for j, arm in enumerate(a["name"] for a in part["checkpoints"][0]["arms"][1:]):
                rows = [next(a for a in c["arms"] if a["name"] == arm) for c in part["checkpoints"]]
                ax.errorbar(np.array(steps) + 3 * (j - 1.5), [r["variance_ratio"] for r in rows],
                            yerr=[r["variance_ratio_se"] for r in rows], marker="o", capsize=3, label=arm)
            ax.axhline(target, color="grey", ls="--", lw=1, label=f"target {target:.0f}×")
            ax.set_yscale("log")
            ax.set_xlabel("generator step (checkpoint)")
            ax.set_ylabel("tr Cov of (8, 1) iid / arm's")
            ax.set_title(TEACHER_TITLES.get(name, name), fontsize=9)
        axes[0][0].legend(fontsize=7)


def _curves(e2e: dict) -> dict:
    """arm -> metric -> (steps, seconds, mean over seeds), the runs' evaluation points aligned by index."""
    by = {}
    for r in e2e["runs"]:
        by.setdefault(r["arm"], []).append(r["curve"])
    out = {}
    for arm, curves in by.items():
        n = min(len(c) for c in curves)
        out[arm] = {m: (np.mean([[p["step"] for p in c[:n]] for c in curves], 0),
                        np.mean([[p["seconds"] for p in c[:n]] for c in curves], 0),
                        np.mean([[p[m] for p in c[:n]] for c in curves], 0))
                    for m in NAMES if m in curves[0][0]}
    return out


def _quality(e2e: dict, path: Path, title: str) -> None:
    curves = _curves(e2e)
    metrics = list(next(iter(curves.values())))
    with figure(path, figsize=(3.1 * len(metrics), 5.4), nrows=2, ncols=len(metrics), squeeze=False) as axes:
        for j, m in enumerate(metrics):
            for arm, by_m in curves.items():
                steps, secs, vals = by_m[m]
                axes[0][j].plot(steps, vals, marker=".", label=arm)
                axes[1][j].plot(secs, vals, marker=".", label=arm)
            axes[0][j].set_title(NAMES[m], fontsize=9)
            axes[0][j].set_xlabel("generator step", fontsize=8)
            axes[1][j].set_xlabel("training seconds", fontsize=8)
        axes[0][0].legend(fontsize=6)
        axes[0][0].figure.suptitle(f"{title}: mean over seeds", fontsize=9)


def _ablation(rec: dict, path: Path) -> None:
    ratios = {int(k): v for k, v in rec["ablation"].items()}
    ratios[rec["teachers"]["exact"]["distill"]["fake_ratio"]] = rec["teachers"]["exact"]["end_to_end"]
    order = sorted(ratios)
    summaries = [ratios[r]["summary"] for r in order]
    arms = [a for a in summaries[0] if all(a in s for s in summaries)]
    metrics = [m for m in NAMES if m in summaries[0][arms[0]]]
    with figure(path, figsize=(3.1 * len(metrics), 3.2), ncols=len(metrics), squeeze=False) as axes:
        for j, m in enumerate(metrics):
            ax = axes[0][j]
            for k, arm in enumerate(arms):
                e = [s[arm][m] for s in summaries]
                mean = np.array([x["mean"] for x in e])
                lo = np.array([x.get("boot_lo", x["mean"]) for x in e])
                hi = np.array([x.get("boot_hi", x["mean"]) for x in e])
                ax.errorbar(np.array(order) * (1 + 0.04 * k), mean, yerr=np.clip([mean - lo, hi - mean], 0, None), marker="o",
                            capsize=3, label=arm)
            ax.set_xscale("log")
            ax.set_xticks(order, [str(r) for r in order])
            ax.set_xlabel("fake-score updates per generator step", fontsize=8)
            ax.set_title(NAMES[m], fontsize=9)
        axes[0][0].legend(fontsize=7)


def write_figures(rec: dict, folder: Path, *, target: float = 16.0) -> list[Path]:
    """Draw every figure of the module docstring into ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "dmd-variance_ratio.png"]
    _variance_ratio(rec, paths[0], target)
    for name, part in rec["teachers"].items():
        paths.append(folder / f"dmd-quality_{name}.png")
        _quality(part["end_to_end"], paths[-1], TEACHER_TITLES.get(name, name))
    if rec.get("ablation"):
        paths.append(folder / "dmd-ablation.png")
        _ablation(rec, paths[-1])
    return paths
