r"""The measurement: CARV's effective compute multiplier on NeRF + latent-teacher SDS.

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
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .nerf import make_nerf, measure_costs
from .pipeline import BASELINE, Method, TrainSettings, eval_reference, oracle_from_draws, train
from .end_to_end import _carv_e2e_method, end_to_end, extra_end_to_end
# The variance/cost measurement lives in .variance, the report in .report (names re-exported).
from .variance import (Reference, ecm_table, ecm_vs_ratio, fit_components, fit_costs, measure_configs,
                       reference_gradient)
# The report (figures, page) lives in .report; its names are re-exported for demo.py and the tests.
from .report import (DOCS_FIGS, DOCS_PAGE, REPO, _jsonable, _render_grid,
                     image_strips, make_figures, render_page, write_report)
from .scenes import PROMPTS
from .classifier import load_models
from .teacher import load_teacher, null_condition, teacher_condition

__all__ = ["Size", "FULL", "QUICK", "study_methods", "Reference", "reference_gradient",
           "measure_configs", "ecm_table", "fit_components", "fit_costs", "ecm_vs_ratio",
           "end_to_end", "run_study", "write_report", "render_page", "make_figures", "image_strips",
           "DOCS_PAGE", "DOCS_FIGS", "REPO", "main"]



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


# --------------------------------------------------------------------------- reference


def run_study(size: Size, out: Path, *, seed: int = 0, weights_dir=None, allow_random: bool = False,
              progress: bool = True, threads: int = 2, e2e_K: int | None = None, settings: TrainSettings | None = None,
              methods: list[Method] | None = None, skip_e2e: bool = False) -> dict:
    """Run every stage; write ``study.json`` (after each stage) and return the record."""
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(threads))
    teacher, classifier = load_models(weights_dir, allow_random=allow_random)
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
