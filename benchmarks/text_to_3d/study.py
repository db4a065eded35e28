r"""The measurement of issue 5: CARV's effective compute multiplier on NeRF + latent-teacher SDS.

    python -m benchmarks.text_to_3d.study --out benchmarks/text_to_3d/results          # full, <= 2 h on 2 cores
    python -m benchmarks.text_to_3d.study --out benchmarks/text_to_3d/results --quick  # a few minutes

Stages (design.md §3):

1. **Costs.** $c_u$ (render + encode, forward + backward, per render) and $c_d$ (one CFG
   teacher evaluation per draw, batched) timed alone; also fitted from the configurations'
   median step times, $C(R, K) \approx a + R c_u + R K c_d$.
2. **Checkpoints.** A baseline SDS run on one prompt; the NeRF at an early, a middle and a
   late step.
3. **Reference gradient** per checkpoint: ``ref_renders`` renders $\times$ 16 stratified
   uniform draws ($\ge 4096$ draws in the full study), the mean of the batch gradients
   with respect to the NeRF grid ($4\cdot 64^3$ numbers); its own variance
   $V_{\rm ref}$ from the spread of the batches. The same draws give
   $\hat m(t) = \mathbb E[\lVert f\rVert^2\mid t]$, hence the oracle proposal.
4. **Variance and cost** of every configuration, interleaved in one process (every sweep
   runs each configuration once, in a fresh random order): variance = MSE to the
   reference over ``reps`` replicates (:class:`carv_core.Welford` on the flattened gradient,
   plus the per-replicate squared errors for a standard error); cost = median wall-clock
   of one gradient step (render, encode, teacher, backward). ECM and RE as in design.md §3.
5. **Variance components** $\sigma_B^2$, $\sigma_W^2$ (in parameter space) fitted from the
   uniform $(R, K)$ grid, $V = \sigma_B^2/R + \sigma_W^2/(RK)$, and the ECM that
   :func:`carv_core.predict` gives as a function of $c_u/c_d$.
6. **End to end**: prompts $\times$ seeds, baseline vs CARV at equal per-step compute
   ($R = 1$, $K \approx c_u/c_d + 2$, IS + stratified), quality vs training wall-clock.

Writes ``study.json``, PNG figures, and (full study, or ``--docs``) the docs page
``docs/benchmarks/text-to-3d.md`` with its figures. ``--report-only`` rebuilds the
figures and the page from an existing ``study.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from carv_core import Welford, cost, predict, predicted_variance
from carv_torch import sds, uniform_timesteps

from .nerf import flat_grad, make_nerf, measure_costs, upstream
from .pipeline import (BASELINE, Method, Progress, TrainSettings, eval_reference, gradient_step,
                       make_guidance, oracle_from_draws, train, T_RANGE)
from .scenes import PROMPTS, sample_cameras
from .teacher import load_teacher, null_condition, teacher_condition

__all__ = ["Size", "FULL", "QUICK", "study_methods", "Reference", "reference_gradient",
           "measure_configs", "ecm_table", "fit_components", "fit_costs", "ecm_vs_ratio",
           "end_to_end", "run_study", "write_report", "main"]

REPO = Path(__file__).resolve().parents[2]
DOCS_PAGE = REPO / "docs" / "benchmarks" / "text-to-3d.md"
DOCS_FIGS = REPO / "docs" / "benchmarks" / "figures"


@dataclass(frozen=True)
class Size:
    """How big the study is (``FULL``: the issue's sizes; ``QUICK``: a few minutes)."""

    mode: str = "full"
    scene_index: int = 0                 # prompt of the measurement
    ckpt_steps: tuple = (25, 150, 600)   # early, middle, late
    ref_renders: int = 256               # x ref_K draws each
    ref_K: int = 16
    ref_batch: int = 4                   # renders per reference backward pass
    reps: int = 100                      # replicates per configuration
    warmup: int = 3                      # sweeps dropped (timing warm-up, adaptive proposal)
    Ks: tuple = (1, 2, 4, 8, 16)
    k_variants: int = 8                  # K of the sampler/proposal variants (R = 1)
    e2e_prompts: tuple = (0, 1, 2, 3)
    e2e_seeds: tuple = (0, 1, 2)
    e2e_seconds: float = 150.0           # training wall-clock per run
    e2e_eval_every: float = 10.0
    cost_draws: tuple = (1, 2, 4, 8, 16, 32)  # draws per teacher call when timing c_d
    cost_repeats: int = 10
    grid_size: int = 64
    image_size: int = 64
    n_samples: int = 96

    def replace(self, **kw) -> "Size":
        """A copy with fields replaced."""
        return dataclasses.replace(self, **kw)


FULL = Size()
QUICK = Size(mode="quick", ckpt_steps=(10, 60), ref_renders=32, reps=10, warmup=2,
             e2e_prompts=(0, 1), e2e_seeds=(0,), e2e_seconds=30.0, e2e_eval_every=5.0,
             cost_draws=(1, 4, 16), cost_repeats=5)


def study_methods(Ks=(1, 2, 4, 8, 16), k_variants: int = 8) -> list[Method]:
    """The configurations of issue 5 (the first is the baseline)."""
    ms = [BASELINE]
    for R in (1, 2):
        for K in Ks:
            if (R, K) != (2, 1):
                ms.append(Method(f"uniform R={R} K={K}", R, K, "uniform", "iid"))
    ms.append(Method("strat R=2 K=1 (global)", 2, 1, "uniform", "global"))
    ms.append(Method("IS+strat R=2 K=1 (global)", 2, 1, "weight", "global"))
    for K in Ks:
        ms.append(Method(f"IS+strat R=1 K={K}", 1, K, "weight", "stratified"))
    k = k_variants
    ms += [
        Method(f"IS R=1 K={k}", 1, k, "weight", "iid"),
        Method(f"strat R=1 K={k}", 1, k, "uniform", "stratified"),
        Method(f"oracle R=1 K={k}", 1, k, "oracle", "iid"),
        Method(f"oracle+strat R=1 K={k}", 1, k, "oracle", "stratified"),
        Method(f"adaptive+strat R=1 K={k}", 1, k, "adaptive", "stratified"),
        Method(f"RQMC (sobol) R=1 K={k}", 1, k, "uniform", "sobol"),
        Method(f"IS+RQMC R=1 K={k}", 1, k, "weight", "sobol"),
        Method(f"antithetic R=1 K={k}", 1, k, "uniform", "iid", antithetic=True),
        Method(f"antithetic+IS+strat R=1 K={k}", 1, k, "weight", "stratified", antithetic=True),
        Method("K=auto R=2 IS+strat", 2, "auto", "weight", "stratified"),
    ]
    return ms


def _uniform_twin(m: Method) -> str | None:
    # The uniform i.i.d. configuration at the same (R, K): RE's denominator.
    if m.K == "auto":
        return None
    return BASELINE.name if (m.R, m.K) == (2, 1) else f"uniform R={m.R} K={m.K}"


# --------------------------------------------------------------------------- reference


@dataclass
class Reference:
    r"""The reference gradient $G$ at a checkpoint and what was measured on the way."""

    grad: np.ndarray       # (P,) float64
    var_ref: float         # tr Var of the reference itself
    t: torch.Tensor        # all draws' timesteps
    sq_norm: torch.Tensor  # and their ||f||^2
    n_renders: int
    n_draws: int
    seconds: float


def reference_gradient(nerf, teacher, scene_index: int, *, n_renders: int, K: int = 16,
                       batch: int = 4, guidance_scale: float, generator: torch.Generator,
                       progress: bool = True) -> Reference:
    r"""$G \approx$ the mean over ``n_renders // batch`` batch gradients (stratified uniform $t$, ``K`` per render)."""
    T = int(teacher.alphas_cumprod.shape[0])
    p = uniform_timesteps(T, *T_RANGE).to(torch.float64)
    cond, unc = teacher_condition(scene_index), null_condition()
    acc = Welford()
    ts, sq = [], []
    n_b = max(1, n_renders // batch)
    bar = Progress(n_b, "reference gradient", unit=" batches", enabled=progress)
    t0 = time.perf_counter()
    for b in range(n_b):
        nerf.zero_grad(set_to_none=True)
        _, z = upstream(nerf, teacher, sample_cameras(batch, generator))
        est = sds(teacher, z, K=K, p=p, design="stratified", weighting="sds", include_alpha=True,
                  condition=cond, uncond=unc, guidance_scale=guidance_scale, generator=generator)
        est.loss.backward()
        acc.update(flat_grad(nerf).double().numpy())
        ts.append(est.t.reshape(-1))
        sq.append(est.sq_norm.reshape(-1))
        bar.update(b + 1)
    bar.close()
    nerf.zero_grad(set_to_none=True)
    var_ref = acc.trace_cov / acc.count if acc.count > 1 else float("nan")
    return Reference(acc.mean.copy(), var_ref, torch.cat(ts), torch.cat(sq), n_b * batch,
                     n_b * batch * K, time.perf_counter() - t0)


# --------------------------------------------------------------------------- measurement


def measure_configs(nerf, teacher, scene_index: int, methods: list[Method], ref: Reference, *,
                    reps: int, warmup: int, guidance_scale: float, oracle_q, fixed_costs,
                    generator: torch.Generator, progress: bool = True) -> list[dict]:
    r"""Variance (MSE to ``ref``) and median step cost of each method, interleaved.

    Every sweep runs each method once in a random order; the first ``warmup`` sweeps
    are dropped. Per method: a Welford accumulator of the flattened gradients, the
    per-replicate squared errors $e_i = \lVert\hat G_i - G\rVert^2$ and the step times.
    """
    cond, unc = teacher_condition(scene_index), null_condition()
    seeds = torch.randint(0, 2**62, (len(methods), 2), generator=generator)
    state = []
    for m, (s_g, s_c) in zip(methods, seeds.tolist()):
        guid = make_guidance(teacher, m, seed=s_g, guidance_scale=guidance_scale,
                             oracle_q=oracle_q, fixed_costs=fixed_costs)
        state.append(dict(method=m, guidance=guid, cams=torch.Generator().manual_seed(s_c),
                          welford=Welford(), errors=[], times=[], ks=[], probes=[]))
    bar = Progress(reps + warmup, f"{len(methods)} configurations interleaved", unit=" sweeps",
                   enabled=progress)
    for sweep in range(reps + warmup):
        order = torch.randperm(len(methods), generator=generator).tolist()
        for i in order:
            st = state[i]
            cams = sample_cameras(st["method"].R, st["cams"])
            t0 = time.perf_counter()
            info = gradient_step(nerf, st["guidance"], cams, cond, unc)
            dt = time.perf_counter() - t0
            if sweep < warmup:
                continue
            g = flat_grad(nerf).double().numpy()
            st["welford"].update(g)
            st["errors"].append(float(np.sum((g - ref.grad) ** 2)))
            st["times"].append(dt)
            st["ks"].append(info.K)
            st["probes"].append(info.probe)
        bar.update(sweep + 1)
    bar.close()
    nerf.zero_grad(set_to_none=True)
    out = []
    for st in state:
        m, w, e = st["method"], st["welford"], np.asarray(st["errors"])
        n = len(e)
        times, probes = np.asarray(st["times"]), np.asarray(st["probes"], dtype=bool)
        # K="auto": a probe step (extra vector-Jacobian products) costs more; its share of
        # the steps weights its median, so the probes' cost is charged to the method.
        frac = float(probes.mean()) if n else 0.0
        step_cost = float(np.median(times[~probes])) if frac < 1 else 0.0
        if frac > 0:
            step_cost = (1 - frac) * step_cost + frac * float(np.median(times[probes]))
        mean_err = float(np.sum((w.mean - ref.grad) ** 2))
        expected = w.trace_cov / n + ref.var_ref
        out.append(dict(
            name=m.name, R=m.R, K=m.K, proposal=m.proposal, sampler=m.sampler,
            antithetic=m.antithetic, reps=n, mean_K=float(np.mean(st["ks"])),
            mse=float(w.mse(ref.grad)), mse_se=float(e.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
            trace_cov=float(w.trace_cov),
            bias_ratio=mean_err / expected if expected > 0 else float("nan"),
            cost=step_cost, probe_fraction=frac, cost_q1=float(np.quantile(times, 0.25)),
            cost_q3=float(np.quantile(times, 0.75)),
            k_history=[d.K for d in st["guidance"].accountant.history][-20:] if m.K == "auto" else None,
        ))
    return out


def ecm_table(rows: list[dict]) -> list[dict]:
    """Add ``ecm``, ``ecm_se`` (variance part only) and ``re`` to each row (baseline = first row)."""
    base = rows[0]
    by_name = {r["name"]: r for r in rows}
    rel_b = base["mse_se"] / base["mse"]
    for r in rows:
        r["ecm"] = (base["mse"] * base["cost"]) / (r["mse"] * r["cost"])
        r["ecm_se"] = r["ecm"] * math.sqrt(rel_b**2 + (r["mse_se"] / r["mse"]) ** 2)
        twin = by_name.get(_uniform_twin(Method(r["name"], r["R"], r["K"])) or "")
        r["re"] = twin["mse"] / r["mse"] if twin is not None else float("nan")
    return rows


def fit_components(rows: list[dict], names: list[str]) -> dict:
    r"""Weighted least squares of $V = \sigma_B^2/R + \sigma_W^2/(RK)$ on the rows ``names`` (relative errors)."""
    sel = [r for r in rows if r["name"] in names]
    A = np.array([[1.0 / r["R"], 1.0 / (r["R"] * r["K"])] for r in sel])
    v = np.array([r["mse"] for r in sel])
    W = 1.0 / v
    coef, *_ = np.linalg.lstsq(A * W[:, None], v * W, rcond=None)
    sb, sw = (max(float(c), 0.0) for c in coef)
    return {"sigma_b2": sb, "sigma_w2": sw, "n_configs": len(sel),
            "within_share": sw / (sb + sw) if sb + sw > 0 else float("nan")}


def fit_costs(rows: list[dict]) -> dict:
    r"""Least squares $C(R, K) = a + R c_u + R K c_d$ on the fixed-$K$ rows' median costs."""
    sel = [r for r in rows if r["K"] != "auto"]
    A = np.array([[1.0, r["R"], r["R"] * r["K"]] for r in sel])
    c = np.array([r["cost"] for r in sel])
    (a, cu, cd), *_ = np.linalg.lstsq(A, c, rcond=None)
    return {"overhead": float(a), "c_u": float(cu), "c_d": float(cd),
            "ratio": float(cu / cd) if cd > 0 else float("nan")}


def ecm_vs_ratio(comps: dict, comps_carv: dict | None = None, ratios=None, k_max: int = 64) -> dict:
    r"""Best-$K$ ECM against $(R, K) = (2, 1)$ uniform as a function of $c_u/c_d$.

    ``uniform``: reuse alone (:func:`carv_core.predict` with the uniform components);
    ``carv``: the same with the IS + stratified components for the method (baseline
    keeps the uniform ones).
    """
    ratios = np.logspace(0, 2.5, 40) if ratios is None else np.asarray(ratios)
    sb, sw = comps["sigma_b2"], comps["sigma_w2"]
    out = {"ratio": ratios.tolist(), "uniform": [], "uniform_K": [], "carv": [], "carv_K": []}
    for rho in ratios:
        best = max(((predict(1, K, rho, 1.0, sb, sw).ecm, K) for K in range(1, k_max + 1)))
        out["uniform"].append(best[0])
        out["uniform_K"].append(best[1])
        if comps_carv is not None:
            v0c0 = predicted_variance(2, 1, sb, sw) * cost(2, 1, rho, 1.0)
            b = max(((v0c0 / (predicted_variance(1, K, comps_carv["sigma_b2"], comps_carv["sigma_w2"])
                              * cost(1, K, rho, 1.0)), K) for K in range(1, k_max + 1)))
            out["carv"].append(b[0])
            out["carv_K"].append(b[1])
    return out


# --------------------------------------------------------------------------- end to end


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


def run_study(size: Size, out: Path, *, seed: int = 0, weights_dir=None, allow_random: bool = False,
              progress: bool = True, threads: int = 2, e2e_K: int | None = None, settings: TrainSettings | None = None,
              methods: list[Method] | None = None, skip_e2e: bool = False) -> dict:
    """Run every stage; write ``study.json`` (after each stage) and return the record."""
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(threads))
    teacher = load_teacher(weights_dir, require_weights=not allow_random)
    classifier = None
    try:
        from .classifier import load_classifier
        classifier = load_classifier(weights_dir)
    except FileNotFoundError:
        if not allow_random:
            raise
    settings = settings or TrainSettings(grid_size=size.grid_size, image_size=size.image_size,
                                         n_samples=size.n_samples)
    s = settings
    root = torch.Generator().manual_seed(int(seed))
    g_cost, g_ckpt, g_ref, g_meas = (torch.Generator().manual_seed(int(v))
                                     for v in torch.randint(0, 2**62, (4,), generator=root))
    rec = {"mode": size.mode, "size": dataclasses.asdict(size), "settings": dataclasses.asdict(s),
           "prompt": PROMPTS[size.scene_index], "seed": seed,
           "machine": {"platform": platform.platform(), "processor": platform.processor(),
                       "cpu_count": os.cpu_count(), "torch": torch.__version__,
                       "threads": torch.get_num_threads()},
           "teacher_weights": classifier is not None, "stages_seconds": {}}

    def save():
        rec["seconds_total"] = time.perf_counter() - t_start
        (out / "study.json").write_text(json.dumps(_jsonable(rec), indent=1) + "\n")

    # 1. costs
    print("1. measuring c_u and c_d", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    nerf = make_nerf(s.grid_size, s.image_size, s.n_samples)
    cond, unc = teacher_condition(size.scene_index), null_condition()
    by_batch = {}
    for nd in size.cost_draws:
        c = measure_costs(nerf, teacher, cond, unc, guidance_scale=s.guidance_scale, R=2, n_draws=nd,
                          repeats=size.cost_repeats, generator=g_cost)
        by_batch[nd] = c._asdict()
    ref_cost = by_batch[16 if 16 in by_batch else max(by_batch)]
    rec["costs"] = {"c_u": ref_cost["c_u"], "c_d": ref_cost["c_d"],
                    "ratio": ref_cost["c_u"] / ref_cost["c_d"],
                    "render_fwd_bwd": ref_cost["render_fwd_bwd"],
                    "encode_fwd_bwd": ref_cost["encode_fwd_bwd"],
                    "c_d_by_draws_per_call": {k: v["c_d"] for k, v in by_batch.items()},
                    "c_u_samples": [v["c_u"] for v in by_batch.values()]}
    c_u, c_d = rec["costs"]["c_u"], rec["costs"]["c_d"]
    print(f"   c_u = {1e3 * c_u:.1f} ms, c_d = {1e3 * c_d:.2f} ms (16 draws/call), "
          f"c_u/c_d = {c_u / c_d:.1f}", file=sys.stderr, flush=True)
    rec["stages_seconds"]["costs"] = time.perf_counter() - t0
    save()

    # 2. checkpoints of a baseline run
    print("2. baseline SDS run for the checkpoints", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    ref_eval = eval_reference(size.scene_index, grid_size=s.grid_size, image_size=s.image_size,
                              n_samples=s.n_samples)
    run = train(teacher, size.scene_index, BASELINE, seed=int(torch.randint(0, 2**31, (1,), generator=g_ckpt)),
                settings=s, steps=max(size.ckpt_steps), ref=ref_eval, classifier=classifier,
                eval_steps=tuple(size.ckpt_steps), checkpoint_steps=tuple(size.ckpt_steps),
                progress=progress)
    labels = ["early", "middle", "late"] if len(size.ckpt_steps) == 3 else \
        [f"step {k}" for k in size.ckpt_steps]
    rec["checkpoint_run"] = {"steps": run.steps, "curve": run.curve, "step_seconds": run.step_seconds,
                             "checkpoints": dict(zip(labels, size.ckpt_steps))}
    rec["stages_seconds"]["checkpoint_run"] = time.perf_counter() - t0
    save()

    # 3-5. per checkpoint: reference, configurations, components
    methods = methods or study_methods(size.Ks, size.k_variants)
    rec["checkpoints"] = []
    T = int(teacher.alphas_cumprod.shape[0])
    for label, step in zip(labels, size.ckpt_steps):
        print(f"3. checkpoint {label} (step {step}): reference gradient", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        nerf = make_nerf(s.grid_size, s.image_size, s.n_samples)
        nerf.load_state_dict(run.checkpoints[step])
        ref = reference_gradient(nerf, teacher, size.scene_index, n_renders=size.ref_renders,
                                 K=size.ref_K, batch=size.ref_batch, guidance_scale=s.guidance_scale,
                                 generator=g_ref, progress=progress)
        q_oracle, m_t = oracle_from_draws(ref.t, ref.sq_norm, T)
        t_ref = time.perf_counter() - t0
        print(f"4. checkpoint {label}: {len(methods)} configurations x {size.reps} replicates",
              file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        rows = measure_configs(nerf, teacher, size.scene_index, methods, ref, reps=size.reps,
                               warmup=size.warmup, guidance_scale=s.guidance_scale, oracle_q=q_oracle,
                               fixed_costs=(c_u, c_d), generator=g_meas, progress=progress)
        ecm_table(rows)
        t_meas = time.perf_counter() - t0
        uni = [m.name for m in methods if m.proposal == "uniform" and m.sampler == "iid"
               and not m.antithetic and m.K != "auto"]
        carv = [m.name for m in methods if m.name.startswith("IS+strat R=1")]
        comps = fit_components(rows, uni)
        comps_carv = fit_components(rows, carv) if len(carv) >= 2 else None
        rec["checkpoints"].append({
            "label": label, "step": step,
            "reference": {"n_renders": ref.n_renders, "n_draws": ref.n_draws, "var_ref": ref.var_ref,
                          "grad_norm2": float(np.sum(ref.grad**2)), "seconds": ref.seconds,
                          "var_ref_over_baseline_mse": ref.var_ref / rows[0]["mse"]},
            "oracle": {"m_t": m_t[:: max(1, T // 100)].tolist(), "q": q_oracle[:: max(1, T // 100)].tolist()},
            "configs": rows, "components": comps, "components_is_strat": comps_carv,
            "cost_fit": fit_costs(rows),
            "ecm_vs_ratio": ecm_vs_ratio(comps, comps_carv),
            "seconds": {"reference": t_ref, "measurement": t_meas},
        })
        _print_table(rows, label)
        rec["stages_seconds"][f"checkpoint_{label}"] = t_ref + t_meas
        save()

    # 6. end to end
    if not skip_e2e:
        print("6. end to end: baseline vs CARV at equal per-step compute", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        carv_m = _carv_e2e_method(c_u, c_d, e2e_K)
        e2e = end_to_end(teacher, classifier, size.e2e_prompts, size.e2e_seeds, [BASELINE, carv_m],
                         seconds=size.e2e_seconds, eval_every=size.e2e_eval_every, settings=s,
                         progress=progress)
        _render_grid(e2e["renders"], [BASELINE.name, carv_m.name], out / "e2e_renders.png")
        rec["e2e"] = {"runs": e2e["runs"], "summary": e2e["summary"], "carv_method": dataclasses.asdict(carv_m)}
        rec["stages_seconds"]["e2e"] = time.perf_counter() - t0
    rec["summary"] = summarise(rec)
    rec["full_estimate_seconds"] = estimate_full(rec)
    save()
    return rec


def summarise(rec: dict) -> dict:
    """The issue's targets, measured: best ECM, IS+strat over reuse alone, K=auto vs best fixed K, time to reach."""
    out = {"per_checkpoint": []}
    for ck in rec.get("checkpoints", []):
        rows = {r["name"]: r for r in ck["configs"]}
        fixed = [r for r in ck["configs"] if r["K"] != "auto"]
        best = max(fixed, key=lambda r: r["ecm"])
        reuse = [r for r in fixed if r["proposal"] == "uniform" and r["sampler"] == "iid"
                 and not r["antithetic"]]
        best_reuse = max(reuse, key=lambda r: r["ecm"])
        gains = []
        for r in reuse:
            other = rows.get(f"IS+strat R={r['R']} K={r['K']}")
            if other is not None and r["K"] > 1:
                gains.append({"K": r["K"], "R": r["R"], "gain": other["ecm"] / r["ecm"] - 1})
        auto = next((r for r in ck["configs"] if r["K"] == "auto"), None)
        out["per_checkpoint"].append({
            "label": ck["label"], "best": {"name": best["name"], "ecm": best["ecm"], "ecm_se": best["ecm_se"]},
            "best_reuse": {"name": best_reuse["name"], "ecm": best_reuse["ecm"]},
            "is_strat_gain_over_reuse": gains,
            "auto": None if auto is None else {"ecm": auto["ecm"], "mean_K": auto["mean_K"],
                                               "vs_best_fixed": auto["ecm"] / best["ecm"]},
        })
    if "e2e" in rec:
        out["e2e"] = {k: {kk: v[kk] for kk in ("baseline_final", "carv_final",
                                                 "carv_time_to_baseline_final", "fraction")}
                      for k, v in rec["e2e"]["summary"]["metrics"].items()}
    return out


def estimate_full(rec: dict, size: Size = FULL) -> float:
    """Predicted wall-clock of the full study from this run's measured step costs (seconds)."""
    if not rec.get("checkpoints"):
        return float("nan")
    ck = rec["checkpoints"][-1]
    sweep = sum(r["cost"] for r in ck["configs"])
    # Per-replicate bookkeeping (gradient copy, Welford, squared error) on top of the step.
    n_cfg = len(ck["configs"])
    measured = ck["seconds"]["measurement"]
    reps_run = rec["size"]["reps"] + rec["size"]["warmup"]
    overhead = max(0.0, measured / reps_run - sweep)
    per_ckpt = (size.reps + size.warmup) * (sweep + overhead)
    ref_per_render = ck["seconds"]["reference"] / max(1, ck["reference"]["n_renders"])
    refs = len(size.ckpt_steps) * size.ref_renders * ref_per_render
    ckpt_run = max(size.ckpt_steps) * rec["checkpoint_run"]["step_seconds"] * 1.15
    e2e_runs = len(size.e2e_prompts) * len(size.e2e_seeds) * 2
    evals = size.e2e_seconds / size.e2e_eval_every + 2
    eval_cost = 2.0  # seconds per evaluation (8 views, two renders each, classifier)
    if "e2e" in rec:
        r0 = rec["e2e"]["runs"][0]
        eval_cost = max(0.5, rec["stages_seconds"]["e2e"] / len(rec["e2e"]["runs"])
                        - r0["train_seconds"]) / max(1, len(r0["curve"]))
    e2e = e2e_runs * (size.e2e_seconds + evals * eval_cost)
    costs = rec["stages_seconds"].get("costs", 60.0) * 2
    _ = n_cfg
    return float(len(size.ckpt_steps) * per_ckpt + refs + ckpt_run + e2e + costs)


def _print_table(rows, label):
    print(f"\n   ECM table, checkpoint {label} (baseline {rows[0]['name']}):", file=sys.stderr)
    print(f"   {'configuration':34s} {'cost ms':>8s} {'MSE':>10s} {'ECM':>6s} {'±':>5s} {'RE':>5s} "
          f"{'bias':>5s} {'K':>5s}", file=sys.stderr)
    for r in rows:
        print(f"   {r['name']:34s} {1e3 * r['cost']:8.1f} {r['mse']:10.3e} {r['ecm']:6.2f} "
              f"{r['ecm_se']:5.2f} {r['re']:5.2f} {r['bias_ratio']:5.2f} {r['mean_K']:5.1f}",
              file=sys.stderr, flush=True)


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


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def image_strips(rows, path: Path, titles, *, fontsize: int = 8, width_per_image: float = 1.2) -> None:
    """One horizontal strip of ``(n, 3, H, W)`` images per row, titled, saved as a PNG."""
    plt = _plt()
    fig, axes = plt.subplots(len(rows), 1, figsize=(width_per_image * rows[0].shape[0], 1.45 * len(rows)),
                             squeeze=False)
    for ax, row, title in zip(axes[:, 0], rows, titles):
        ax.imshow(torch.cat(list(row.permute(0, 2, 3, 1)), dim=1).numpy().clip(0, 1))
        ax.set_title(title, fontsize=fontsize, loc="left")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    plt = _plt()
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--quick", action="store_true", help="a small version (a few minutes)")
    ap.add_argument("--docs", action="store_true", help="also write the docs page (default: full study only)")
    ap.add_argument("--no-docs", action="store_true", help="never write the docs page")
    ap.add_argument("--report-only", action="store_true", help="rebuild figures and page from study.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", default=None, help="teacher weights folder (default: the shipped one)")
    ap.add_argument("--allow-random-teacher", action="store_true",
                    help="run with a randomly initialised teacher when weights are missing (development)")
    ap.add_argument("--e2e-K", type=int, default=None, help="K of the end-to-end CARV run (default c_u/c_d + 2)")
    ap.add_argument("--lr", type=float, default=None, help="Adam learning rate of the NeRF grid")
    ap.add_argument("--guidance-scale", type=float, default=None)
    ap.add_argument("--reps", type=int, default=None, help="override replicates per configuration")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (2 is the sweet spot on 2 cores)")
    ap.add_argument("--e2e-extra", type=int, nargs=2, metavar=("R", "K"), default=None,
                    help="after a study: run IS+strat (R, K) against its baseline runs at equal wall-clock")
    ap.add_argument("--e2e-extra-seeds", type=int, nargs="+", default=[0])
    args = ap.parse_args(argv)
    size = QUICK if args.quick else FULL
    if args.reps:
        size = size.replace(reps=args.reps)
    out = Path(args.out) / ("quick" if args.quick else "")
    docs = (not args.no_docs) and (args.docs or not args.quick)
    if args.report_only or args.e2e_extra:
        rec = json.loads((out / "study.json").read_text())
        if args.e2e_extra:
            torch.set_num_threads(args.threads)
            from .classifier import load_classifier
            R, K = args.e2e_extra
            settings = TrainSettings(**{k: tuple(v) if isinstance(v, list) else v
                                        for k, v in rec["settings"].items()})
            t0 = time.perf_counter()
            rec["e2e_extra"] = extra_end_to_end(
                rec, load_teacher(args.weights), load_classifier(args.weights),
                Method(f"IS+strat (R={R}, K={K})", R, K, "weight", "stratified"),
                args.e2e_extra_seeds, settings=settings)
            rec["e2e_extra"]["seconds"] = time.perf_counter() - t0
    else:
        settings = TrainSettings(grid_size=size.grid_size, image_size=size.image_size, n_samples=size.n_samples)
        if args.lr is not None:
            settings = settings.replace(lr=args.lr)
        if args.guidance_scale is not None:
            settings = settings.replace(guidance_scale=args.guidance_scale)
        rec = run_study(size, out, seed=args.seed, weights_dir=args.weights,
                        allow_random=args.allow_random_teacher, e2e_K=args.e2e_K, settings=settings,
                        skip_e2e=args.skip_e2e, threads=args.threads)
    page = write_report(rec, out, docs)
    print(f"results: {out / 'study.json'}")
    print(f"page: {page if page else out / 'text-to-3d.md'}")
    est = rec.get("full_estimate_seconds")
    if est:
        print(f"predicted wall-clock of the full study on this machine: {est / 60:.0f} min")


if __name__ == "__main__":
    main()
