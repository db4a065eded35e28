r"""The statistics of the tuned end-to-end protocol (:mod:`.tuned_e2e`): per-run metrics, the tuning
criterion, and summaries with 95 % confidence intervals.

A run $m$ on a (prompt, seed) pair records evaluation points $(s_i, q_i)$: training seconds
and a quality (PSNR in dB, mask IoU). Its budget $T$ is the measured training wall-clock of the
baseline on the same pair. With $q$ linear between points:

- **final** $q(T)$ (linear interpolation at $T$; a run stops at the first step with $s \ge T$);
- **time average** $\bar q = \frac1T\int_0^T q(s)\,ds$: the area under the quality-vs-time curve
  divided by the budget, in the metric's unit (trapezoids, the curve cut at $T$);
- **time to reach** a level $\ell$: the first $s \le T$ with $q(s) \ge \ell$
  (:func:`.end_to_end.time_to_reach`), "never" when there is none; reported as the fraction
  $\tau = s/T$ of the baseline's wall-clock. The levels are $\ell_f = q_B(0) + f\,(q_B(T) - q_B(0))$,
  $f \in \{0.9, 1\}$, from the baseline's run on the same pair: $f = 1$ is the baseline's final
  value, $f = 0.9$ is 90 % of its gain over the common starting NeRF (PSNR is in dB, so 90 % of
  its *value* would not be a fraction of progress). No level when $q_B(T) \le q_B(0)$.

Intervals over the $n$ evaluation pairs: for final and time average, the mean with a Student-$t$
interval $\bar x \pm t_{0.975, n-1}\,s/\sqrt n$, and the paired difference to the baseline (same
prompt and seed) with the same interval. For $\tau$, the median over pairs with "never" $= +\infty$
(a censored time), with a percentile-bootstrap interval over pairs (inverted-CDF quantiles, so an
infinite end stays infinite: "never"). The target (issue 15): median $\tau_1 \le 0.5$ on PSNR and on
IoU; *decided* when the interval lies on one side of 0.5.
"""

from __future__ import annotations

import math

import numpy as np

from ..measure import mean_interval, median_interval
from .end_to_end import time_to_reach

__all__ = ["METRICS", "LEVELS", "CRITERIA", "TARGET_FRACTION", "cut_at", "final_value", "time_average",
           "reach_fraction", "run_metrics", "attach_metrics", "tuning_scores", "choose_rate", "mean_interval",
           "median_interval", "summarise", "clean"]


METRICS = {"psnr": 2, "iou": 3}
"""Quality columns of a :class:`.pipeline.Run` curve ``(seconds, step, psnr, iou, prob)``."""
LEVELS = (0.9, 1.0)
"""$f$ of the levels $\\ell_f$ (module docstring)."""
CRITERIA = {"auc_psnr": ("psnr", "time_average"), "final_psnr": ("psnr", "final"),
            "auc_iou": ("iou", "time_average")}
"""Tuning criteria: the metric and the statistic whose mean over the tuning seeds is maximised."""
TARGET_FRACTION = 0.5
"""Issue 15's target: the baseline's final quality in at most this fraction of its wall-clock."""


def cut_at(curve, col: int, T: float) -> tuple[np.ndarray, np.ndarray]:
    """The curve's points $(s_i, q_i)$ with $s_i < T$, then $(T, q(T))$ (linear interpolation, held at the ends)."""
    if not T > 0:
        raise ValueError(f"T (the budget in seconds) must be > 0, got {T!r}")
    s = np.array([c[0] for c in curve], float)
    q = np.array([c[col] for c in curve], float)
    if s.size == 0:
        raise ValueError("curve has no evaluation points")
    keep = s < T
    return np.append(s[keep], T), np.append(q[keep], np.interp(T, s, q))


def final_value(curve, col: int, T: float) -> float:
    """$q(T)$."""
    return float(cut_at(curve, col, T)[1][-1])


def time_average(curve, col: int, T: float) -> float:
    r"""$\bar q = \frac1T\int_0^T q(s)\,ds$ (trapezoids; before the first point $q$ is held at its first value)."""
    s, q = cut_at(curve, col, T)
    s, q = np.insert(s, 0, 0.0), np.insert(q, 0, q[0])
    return float(np.sum(np.diff(s) * (q[1:] + q[:-1]) / 2) / T)


def reach_fraction(curve, col: int, T: float, level: float) -> float:
    r"""$\tau$: the first time $\le T$ the curve reaches ``level``, over $T$ (``inf``: never; ``nan``: no level)."""
    if level != level:
        return math.nan
    s, q = cut_at(curve, col, T)
    t = time_to_reach(s, q, level)
    return math.inf if t != t else t / T


def run_metrics(curve, base_curve, T: float) -> dict:
    """``{metric: {final, time_average, reach: {f: tau}}}`` of one run against the baseline's run on its pair."""
    out = {}
    for metric, col in METRICS.items():
        q0, qT = float(base_curve[0][col]), final_value(base_curve, col, T)
        levels = {f: q0 + f * (qT - q0) if qT > q0 else math.nan for f in LEVELS}
        out[metric] = {"final": final_value(curve, col, T), "time_average": time_average(curve, col, T),
                       "reach": {str(f): reach_fraction(curve, col, T, lv) for f, lv in levels.items()}}
    return out


def attach_metrics(runs: list[dict]) -> list[dict]:
    """Set each run's ``metrics`` (:func:`run_metrics`) against the run that set its budget: the run of its
    ``(stage, prompt, seed)`` with ``sets_budget`` (the baseline's). Returns ``runs``."""
    refs = {(r["stage"], r["prompt"], r["seed"]): r for r in runs if r.get("sets_budget")}
    for r in runs:
        key = (r["stage"], r["prompt"], r["seed"])
        if key not in refs:
            raise ValueError(f"run {r['method']!r} on {key} has no budget-setting baseline run")
        r["metrics"] = run_metrics(r["curve"], refs[key]["curve"], r["budget_seconds"])
    return runs


def clean(x):
    r"""A JSON-safe copy: ``nan`` -> ``None``, $+\infty$ (never reached) -> ``"never"``, tuples -> lists."""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None if x != x else ("never" if x > 0 else "-inf")
    return x


def tuning_scores(runs: list[dict], criterion: str) -> dict:
    """``{method: {factor: {"per_seed": [...], "mean": x}}}`` of the criterion over the tuning runs."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {sorted(CRITERIA)}, got {criterion!r}")
    metric, stat = CRITERIA[criterion]
    scores = {}
    for r in runs:
        v = r["metrics"][metric][stat]
        scores.setdefault(r["method"], {}).setdefault(str(r["lr_factor"]), []).append(v)
    return {m: {f: {"per_seed": v, "mean": float(np.mean(v))} for f, v in by.items()} for m, by in scores.items()}


def choose_rate(scores: dict) -> dict:
    """``{method: factor}``: the factor with the largest mean score (the first listed among ties)."""
    return {m: float(max(by, key=lambda f: by[f]["mean"])) for m, by in scores.items()}


def _target(reach: dict) -> dict:
    # Median tau_1 <= 0.5 (never = inf); decided when the bootstrap interval is on one side.
    # No pair with a level (the baseline never improved): neither met nor missed (None).
    med, lo, hi = reach["median"], reach["lo"], reach["hi"]
    if reach["n"] == 0:
        return {"median_fraction": med, "lo": lo, "hi": hi, "met": None, "decided": False}
    return {"median_fraction": med, "lo": lo, "hi": hi, "met": bool(med <= TARGET_FRACTION),
            "decided": bool(hi <= TARGET_FRACTION or lo > TARGET_FRACTION)}


def _bands(ys: np.ndarray) -> dict:
    # Per grid point (columns of ys, rows = pairs): the mean and its t-interval.
    band = [mean_interval(c) for c in ys.T]
    return {k: [b[k] for b in band] for k in ("mean", "lo", "hi")}


def summarise(runs: list[dict], methods: list[str], *, seed: int = 0, grid_points: int = 51) -> dict:
    """Summaries of the evaluation runs (``methods[0]`` is the baseline): the module docstring's statistics,
    the target per CARV method (``met``: ``None`` without a level), and on a grid of budget fractions the
    mean curves and the paired differences to the baseline, with 95 % t-bands."""
    base = methods[0]
    by = {(r["prompt"], r["seed"]): {} for r in runs}
    for r in runs:
        by[(r["prompt"], r["seed"])][r["method"]] = r
    pairs = sorted(k for k, v in by.items() if all(m in v for m in methods))
    if not pairs:
        raise ValueError("no (prompt, seed) pair has a run of every method")
    rng = np.random.default_rng(seed)
    grid = np.linspace(0.0, 1.0, grid_points)
    out = {"pairs": [list(p) for p in pairs], "metrics": {}, "target": {}, "curves": {},
           "budget_seconds": mean_interval([by[p][base]["budget_seconds"] for p in pairs]),
           "steps": {m: mean_interval([by[p][m]["steps"] for p in pairs]) for m in methods},
           "step_seconds": {m: float(np.median([by[p][m]["step_seconds"] for p in pairs])) for m in methods}}
    for metric, col in METRICS.items():
        out["metrics"][metric], out["curves"][metric] = {}, {}
        for m in methods:
            entry = {}
            for stat in ("final", "time_average"):
                vals = np.array([by[p][m]["metrics"][metric][stat] for p in pairs])
                ref = np.array([by[p][base]["metrics"][metric][stat] for p in pairs])
                entry[stat] = mean_interval(vals)
                if m != base:
                    entry[stat]["diff"] = mean_interval(vals - ref)
            entry["reach"] = {f: median_interval([by[p][m]["metrics"][metric]["reach"][f] for p in pairs], rng)
                              for f in map(str, LEVELS)}
            out["metrics"][metric][m] = entry
            ys, yb = (np.array([np.interp(grid * by[p][n]["budget_seconds"],
                                          *cut_at(by[p][n]["curve"], col, by[p][n]["budget_seconds"]))
                                for p in pairs]) for n in (m, base))
            out["curves"][metric][m] = {"fraction": grid.tolist(), "mean": _bands(ys), "diff": _bands(ys - yb)}
    for m in methods[1:]:
        t = {metric: _target(out["metrics"][metric][m]["reach"]["1.0"]) for metric in METRICS}
        t["met"] = None if any(t[k]["met"] is None for k in METRICS) else all(t[k]["met"] for k in METRICS)
        out["target"][m] = t
    return out
