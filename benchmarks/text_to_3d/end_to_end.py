r"""The study's end-to-end stage: baseline vs CARV at equal per-step compute, quality vs wall-clock.

:func:`end_to_end` trains prompts × seeds with each method for a wall-clock budget and records
the quality curves; :func:`time_to_reach` reads the time CARV needs to reach a quality.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .pipeline import BASELINE, Method, TrainSettings, eval_reference, train
from .scenes import PROMPTS


def _interp(curve, times, col):
    ct = np.array([c[0] for c in curve])
    cv = np.array([c[col] for c in curve])
    return np.interp(times, ct, cv)


def time_to_reach(times, carv, target) -> float:
    """First time the curve ``carv`` reaches ``target`` (linear between points), ``nan`` if never."""
    for i, v in enumerate(carv):
        if v >= target:
            if i == 0:
                return float(times[0])
            v0, t0 = carv[i - 1], times[i - 1]
            return float(t0 + (times[i] - t0) * (target - v0) / (v - v0)) if v != v0 else float(times[i])
    return float("nan")


def end_to_end(teacher, classifier, prompts, seeds, methods, *, seconds: float, eval_every: float,
               settings: TrainSettings, progress: bool = True) -> dict:
    """Run every (prompt, seed, method); curves on a common time grid and time-to-reach summaries."""
    runs, renders = [], {}
    for k in prompts:
        ref = eval_reference(k, grid_size=settings.grid_size, image_size=settings.image_size,
                             n_samples=settings.n_samples)
        renders[k] = {"gt": ref.images}
        for s in seeds:
            for m in methods:
                run = train(teacher, k, m, seed=s, settings=settings, seconds=seconds,
                            eval_every_s=eval_every, ref=ref, classifier=classifier,
                            progress=progress)
                runs.append(dict(method=m.name, prompt=k, seed=s, steps=run.steps,
                                 train_seconds=run.train_seconds, step_seconds=run.step_seconds,
                                 mean_K=run.mean_K, curve=run.curve))
                if s == seeds[0]:
                    from .scenes import render
                    renders[k][m.name] = render(run.nerf, ref.cameras)
    times = np.arange(0.0, seconds + 1e-9, eval_every)
    summary = {"times": times.tolist(), "methods": [m.name for m in methods], "metrics": {}}
    base, carv = methods[0].name, methods[1].name
    for col, metric in ((2, "psnr"), (3, "iou"), (4, "prob")):
        curves = {}
        for m in methods:
            rs = [r for r in runs if r["method"] == m.name]
            curves[m.name] = np.mean([_interp(r["curve"], times, col) for r in rs], axis=0)
        target = float(curves[base][-1])
        # No target when the baseline did not improve on its start (e.g. p(prompt) still ~0).
        t_reach = time_to_reach(times, curves[carv], target) if target > curves[base][0] else float("nan")
        per_prompt = {}
        for k in prompts:
            cb = np.mean([_interp(r["curve"], times, col) for r in runs
                          if r["method"] == base and r["prompt"] == k], axis=0)
            cc = np.mean([_interp(r["curve"], times, col) for r in runs
                          if r["method"] == carv and r["prompt"] == k], axis=0)
            tr = time_to_reach(times, cc, float(cb[-1])) if cb[-1] > cb[0] else float("nan")
            per_prompt[PROMPTS[k]] = {"baseline_final": float(cb[-1]), "carv_final": float(cc[-1]),
                                      "carv_time_to_baseline_final": tr,
                                      "fraction": tr / seconds if tr == tr else float("nan")}
        summary["metrics"][metric] = {
            "mean_curves": {k: v.tolist() for k, v in curves.items()},
            "baseline_final": target, "carv_final": float(curves[carv][-1]),
            "carv_time_to_baseline_final": t_reach,
            "fraction": t_reach / seconds if t_reach == t_reach else float("nan"),
            "per_prompt": per_prompt,
        }
    return {"runs": runs, "summary": summary, "renders": renders}


def extra_end_to_end(rec: dict, teacher, classifier, method: Method, seeds, *, settings: TrainSettings,
                     progress: bool = True) -> dict:
    r"""``method`` against the study's own baseline runs at equal *training wall-clock*.

    The study's end-to-end comparison holds the per-step compute equal, which forces
    $R = 1$; this one lets a method cost more per step (e.g. the best-ECM $(R, K)$) and
    compares quality reached in the same seconds, run for run (same prompt and seed).
    """
    e2e, sz = rec["e2e"], rec["size"]
    seconds, every = sz["e2e_seconds"], sz["e2e_eval_every"]
    times = np.arange(0.0, seconds + 1e-9, every)
    base = {(r["prompt"], r["seed"]): r for r in e2e["runs"] if r["method"] == BASELINE.name}
    runs, pairs = [], []
    for k in sz["e2e_prompts"]:
        ref = eval_reference(k, grid_size=settings.grid_size, image_size=settings.image_size,
                             n_samples=settings.n_samples)
        for sd in seeds:
            if (k, sd) not in base:
                raise ValueError(f"the study has no baseline run for prompt {k}, seed {sd}")
            run = train(teacher, k, method, seed=sd, settings=settings, seconds=seconds,
                        eval_every_s=every, ref=ref, classifier=classifier, progress=progress)
            runs.append(dict(method=method.name, prompt=k, seed=sd, steps=run.steps,
                             train_seconds=run.train_seconds, step_seconds=run.step_seconds,
                             mean_K=run.mean_K, curve=run.curve))
            pairs.append((base[(k, sd)], runs[-1]))
    metrics = {}
    for col, metric in ((2, "psnr"), (3, "iou"), (4, "prob")):
        cb = np.mean([_interp(b["curve"], times, col) for b, _ in pairs], axis=0)
        cm = np.mean([_interp(m["curve"], times, col) for _, m in pairs], axis=0)
        reach = time_to_reach(times, cm, float(cb[-1])) if cb[-1] > cb[0] else float("nan")
        metrics[metric] = {"baseline_final": float(cb[-1]), "method_final": float(cm[-1]),
                           "time_to_baseline_final": reach,
                           "fraction": reach / seconds if reach == reach else float("nan")}
    return {"method": dataclasses.asdict(method), "seeds": list(seeds), "runs": runs, "metrics": metrics}


# --------------------------------------------------------------------------- the study


def _carv_e2e_method(c_u: float, c_d: float, K: int | None = None) -> Method:
    # Equal per-step compute with the baseline's 2 (c_u + c_d): R = 1, K = c_u/c_d + 2.
    if K is None:
        K = int(min(max(round(c_u / c_d + 2), 2), 32))
    return Method(f"CARV (R=1, K={K}, IS+strat)", 1, K, "weight", "stratified")
