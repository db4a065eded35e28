r"""DMD end to end: sample quality against training compute, per estimator, paired by seed.

Every run starts from the same pre-trained denoiser (fresh copies of the generator and
the fake score). Equal compute, robust to a busy machine: each arm's training step
(generator estimate, backward, Adam, the fake-score updates) is timed *interleaved* with
the others (:func:`step_costs`, medians), the baseline $(8, 1)$ i.i.d. trains ``steps``
steps and every other arm $\operatorname{round}(\text{steps}\cdot c_{\rm base}/c_{\rm arm})$;
a run's clock is its steps times its median step cost. A ``K="auto"`` arm's step cost
changes as it chooses $K$: it trains for the baseline's compute in seconds of its own
(measured) training time. Quality (:mod:`.quality`) at ``n_evals`` evenly spaced points, the
last with bootstrap replicates. Summary: per arm and metric, the final value's mean over
seeds with a two-level bootstrap interval (seeds resampled, then each seed's sample
replicate), and the mean paired difference to the baseline with a $t$-interval over
seeds. The fake-update ratio ablation repeats this at ratios 1 and 10 (5 above) for the
baseline and the stratified arm.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from carv_core.diagnostics import speedup

from ..measure import mean_interval, two_level_interval
from ..text_to_3d.end_to_end import time_to_reach

from .distill import DistillSettings, distill, sampler_for
from .networks import OneStepGenerator, fake_teacher
from .quality import METRICS

__all__ = ["run_arm", "end_to_end", "paired_summary", "speedups", "predicted_speedups"]

#: Bootstrap replicates of a run's final quality.
BOOT = 100


def _models(unet, sched, real):
    abar = sched.alphas_cumprod.to(torch.float64)
    return OneStepGenerator(copy.deepcopy(unet), abar), fake_teacher(unet, sched), real, abar


def _sampler(arm, T, q_oracle):
    return None if arm.K == "auto" else sampler_for(arm, T, q_oracle)


def step_costs(unet, sched, real, arms, *, settings: DistillSettings, q_oracle=None, rounds: int = 7,
               seed: int = 0) -> dict:
    """Median seconds of one training step per (fixed-$K$) arm, the arms interleaved (order rotated each round)."""
    state = {}
    for arm in arms:
        gen_model, fake, real, abar = _models(unet, sched, real)
        state[arm.name] = (gen_model, fake, real, sampler_for(arm, abar.shape[0], q_oracle))
    times = {a.name: [] for a in arms}
    for r in range(rounds + 1):                    # the first round warms up
        for arm in arms[r % len(arms):] + arms[:r % len(arms)]:
            gen_model, fake, real, sampler = state[arm.name]
            run = distill(gen_model, real, fake, arm, sampler, settings=settings, steps=1, seed=seed + r)
            if r:
                times[arm.name].append(run["train_seconds"])
    return {k: float(np.median(v)) for k, v in times.items()}


def run_arm(unet, sched, real, meter, arm, *, seed: int, settings: DistillSettings, q_oracle=None, steps=None,
            seconds=None, n_evals: int = 6, step_cost: float | None = None) -> dict:
    """One run from fresh copies of the pre-trained ``unet``; returns its quality curve and budget.

    ``meter``: a :class:`~.quality.QualityMeter`. With ``step_cost`` (and ``steps``) the curve's
    clock is ``step * step_cost`` (equal-compute runs); with ``seconds``, the run's own training time.
    The final point carries ``BOOT`` bootstrap replicates in the run's ``final_boot``.
    """
    gen_model, fake, real, abar = _models(unet, sched, real)
    g_eval = torch.Generator().manual_seed(10_000 + seed)
    curve = []

    def on_eval(step, clock):
        if seconds is None or clock < seconds:   # the final point is taken after the run, with replicates
            curve.append({"step": step, "seconds": clock, **meter(gen_model, g_eval)})

    every = None if seconds is None else seconds / (n_evals - 1)
    ckpts = () if steps is None else tuple(int(v) for v in np.linspace(0, steps, n_evals).round()[:-1])
    run = distill(gen_model, real, fake, arm, _sampler(arm, abar.shape[0], q_oracle),
                  settings=DistillSettings(**{**settings.__dict__, "checkpoints": ckpts}), steps=steps,
                  seconds=seconds, seed=seed, eval_every_s=every,
                  on_checkpoint=(lambda s: on_eval(s, float("nan"))) if steps is not None else None,
                  on_eval=on_eval if steps is None else None)
    final = meter(gen_model, g_eval, boot=BOOT)
    boot = final.pop("boot")
    curve.append({"step": run["steps"], "seconds": run["train_seconds"], **final})
    if steps is not None:   # step-budgeted: the clock is steps times the (interleaved) step cost
        per_step = step_cost if step_cost is not None else run["step_seconds"]
        for c in curve:
            c["seconds"] = c["step"] * per_step
    out = {"arm": arm.name, "seed": seed, "fake_ratio": settings.fake_ratio, "steps": run["steps"],
           "train_seconds": run["train_seconds"], "step_seconds": run["step_seconds"], "curve": curve,
           "final_ci": {m: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for m, v in boot.items()},
           "final_boot": boot}
    if arm.K == "auto":
        out["K"], out["diagnoses"] = run["K"], run["diagnoses"]
    return out


def paired_summary(runs: list[dict], baseline: str) -> dict:
    """Per arm and metric: final mean over seeds (and its two-level bootstrap interval when the runs carry
    ``final_boot``), and the mean paired difference to ``baseline`` with a 95 % t-interval."""
    by, boots = {}, {}
    for r in runs:
        by.setdefault(r["arm"], {})[r["seed"]] = r["curve"][-1]
        if "final_boot" in r:
            boots.setdefault(r["arm"], {})[r["seed"]] = r["final_boot"]
    rng = np.random.default_rng(0)
    out = {}
    for arm, finals in by.items():
        out[arm] = {}
        for m in METRICS:
            if m not in next(iter(finals.values())):
                continue
            vals = np.array([finals[s][m] for s in sorted(finals)])
            entry = {"mean": float(vals.mean()), "n": int(vals.size)}
            if arm in boots:
                entry["boot_lo"], entry["boot_hi"] = two_level_interval(
                    [boots[arm][s][m] for s in sorted(finals)], rng)
            if arm != baseline:
                seeds = sorted(set(finals) & set(by[baseline]))
                d = mean_interval([finals[s][m] - by[baseline][s][m] for s in seeds])
                entry.update(diff=d["mean"], diff_lo=d["lo"], diff_hi=d["hi"])
            out[arm][m] = entry
    return out


def end_to_end(unet, sched, real, meter, arms, *, seeds, steps: int, settings: DistillSettings, q_oracle=None,
               n_evals: int = 6, progress=None) -> dict:
    """Per seed: the baseline (``arms[0]``) for ``steps`` steps, every other arm for the same compute."""
    fixed = [a for a in arms if a.K != "auto"]
    costs = step_costs(unet, sched, real, fixed, settings=settings, q_oracle=q_oracle)
    budget = {a.name: max(1, round(steps * costs[arms[0].name] / costs[a.name])) for a in fixed}
    seconds = steps * costs[arms[0].name]
    runs = []
    for seed in seeds:
        for arm in arms:
            if arm.K == "auto":
                run = run_arm(unet, sched, real, meter, arm, seed=seed, settings=settings, seconds=seconds,
                              n_evals=n_evals)
            else:
                run = run_arm(unet, sched, real, meter, arm, seed=seed, settings=settings, q_oracle=q_oracle,
                              steps=budget[arm.name], n_evals=n_evals, step_cost=costs[arm.name])
            runs.append(run)
            if progress is not None:
                progress(len(runs))
    summary = paired_summary(runs, arms[0].name)
    for r in runs:
        r.pop("final_boot")
    return {"runs": runs, "step_costs": costs, "steps": budget, "seconds_budget": seconds, "summary": summary}


def _time_to(times, values, level, larger_better: bool) -> float:
    # The text-to-3D study's first-passage time, on -values when smaller is better.
    sign = 1.0 if larger_better else -1.0
    return time_to_reach(times, [sign * v for v in values], sign * level)


def speedups(runs: list[dict], baseline: str, arm: str, metric: str, fractions=(0.5, 0.9)) -> dict:
    r"""Per fraction $f$: the baseline's time to $f$ of its own gain over ``arm``'s, per seed (0 if never)."""
    larger = METRICS[metric]
    by = {(r["arm"], r["seed"]): r["curve"] for r in runs}
    out = {}
    for f in fractions:
        vals = []
        for (a, seed), b in by.items():
            if a != baseline or (arm, seed) not in by:
                continue
            c = by[(arm, seed)]
            start, final = b[0][metric], b[-1][metric]
            if not ((final > start) if larger else (final < start)):
                continue
            level = start + f * (final - start)
            t_b = _time_to([x["seconds"] for x in b], [x[metric] for x in b], level, larger)
            t_c = _time_to([x["seconds"] for x in c], [x[metric] for x in c], level, larger)
            if t_b > 0:
                vals.append(0.0 if t_c != t_c else t_b / max(t_c, 1e-9))
        out[str(f)] = {"median": float(np.median(vals)) if vals else math.nan, "values": vals}
    return out


def predicted_speedups(checkpoints: list[dict], step_seconds: float, baseline: str, arm: str) -> list[dict]:
    r"""The noise-scale model's $S$ of ``arm`` over ``baseline`` per checkpoint (:mod:`carv_core.diagnostics`).

    $V$ are the measured $\operatorname{tr}\operatorname{Cov}$; $\lVert G\rVert^2$ pools every arm's
    $\lVert\bar G\rVert^2 - V/n$ (all estimate the same $G$); the per-step cost is the arm's
    estimate time plus the fake-score updates, $c_0$ = the baseline's training step minus its estimate.
    """
    out = []
    for c in checkpoints:
        a0 = next(a for a in c["arms"] if a["name"] == baseline)
        a1 = next(a for a in c["arms"] if a["name"] == arm)
        g = float(np.mean([a["grad_sq_norm_of_mean"] - a["trace_cov"] / a["reps"] for a in c["arms"]]))
        c0 = max(step_seconds - a0["seconds"], 0.0)
        C0, C1 = c0 + a0["seconds"], c0 + a1["seconds"]
        out.append({"step": c["step"], "grad_sq_norm": g, "noise_scale": a0["trace_cov"] / g if g > 0 else math.inf,
                    "overhead": c0, "speedup": speedup(a0["trace_cov"], C0, a1["trace_cov"], C1, g),
                    "ecm_limit": a0["trace_cov"] * C0 / (a1["trace_cov"] * C1)})
    return out
