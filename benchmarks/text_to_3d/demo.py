r"""The text-to-3D demo: baseline SDS vs CARV on one prompt, and a small ECM table.

    python -m benchmarks.text_to_3d.demo [--prompt 0] [--seconds 75] [--out DIR]

About 4–5 minutes on 2 CPU cores:

1. load the shipped teacher and classifier; time $c_u$ (render + encode, forward and
   backward) and $c_d$ (one CFG teacher draw);
2. train the NeRF for ``--seconds`` of wall-clock with the baseline (threestudio: $R = 2$,
   $K = 1$, uniform $t$) and with CARV at the same per-step compute ($R = 1$,
   $K \approx c_u/c_d + 2$, importance-sampled and stratified $t$), evaluating PSNR, mask
   IoU and the classifier's probability at held-out views;
3. at the baseline's final NeRF, measure a small ECM table (MSE to a reference gradient
   over ``--reps`` replicates, median step time, configurations interleaved);
4. write the report folder (render grids, quality curves, ECM table, variance-vs-compute
   plot, ``summary.md``) and print its path.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .nerf import make_nerf, measure_costs
from .pipeline import BASELINE, Method, TrainSettings, eval_reference, oracle_from_draws, train
from .scenes import PROMPTS, check_scene_index, render
from .report import _jsonable, _plt, image_strips
from .end_to_end import _carv_e2e_method, time_to_reach
from .variance import ecm_table, measure_configs, reference_gradient
from .teacher import load_teacher, null_condition, teacher_condition

__all__ = ["demo_methods", "run_demo", "main"]

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "demo"


def demo_methods(K_eq: int) -> list[Method]:
    """The demo's ECM table: baseline, reuse alone, IS + stratified, K = auto."""
    Ks = sorted({8, int(K_eq)})
    return ([BASELINE] + [Method(f"uniform R=1 K={K}", 1, K, "uniform", "iid") for K in Ks]
            + [Method(f"IS+strat R=1 K={K}", 1, K, "weight", "stratified") for K in Ks]
            + [Method("K=auto R=2 IS+strat", 2, "auto", "weight", "stratified")])


def run_demo(prompt: int = 0, seconds: float = 75.0, out: Path = DEFAULT_OUT, *, reps: int = 12,
             ref_renders: int = 32, seed: int = 0, weights_dir=None, allow_random: bool = False,
             threads: int = 2, settings: TrainSettings | None = None, eval_every: float = 5.0) -> Path:
    """Run the demo; returns the report folder."""
    t_start = time.perf_counter()
    prompt = check_scene_index(prompt)
    torch.set_num_threads(int(threads))
    out.mkdir(parents=True, exist_ok=True)
    s = settings or TrainSettings()
    teacher = load_teacher(weights_dir, require_weights=not allow_random)
    try:
        from .classifier import load_classifier
        classifier = load_classifier(weights_dir)
    except FileNotFoundError:
        if not allow_random:
            raise
        classifier = None
    root = torch.Generator().manual_seed(int(seed))
    g_cost, g_ref, g_meas = (torch.Generator().manual_seed(int(v))
                             for v in torch.randint(0, 2**62, (3,), generator=root))
    print(f"[1/4] prompt {PROMPTS[prompt]!r}: timing the upstream and the teacher", flush=True)
    nerf = make_nerf(s.grid_size, s.image_size, s.n_samples)
    costs = measure_costs(nerf, teacher, teacher_condition(prompt), null_condition(),
                          guidance_scale=s.guidance_scale, R=2, n_draws=16, repeats=5, generator=g_cost)
    c_u, c_d = costs.c_u, costs.c_d
    carv = _carv_e2e_method(c_u, c_d)
    print(f"      c_u = {1e3 * c_u:.1f} ms, c_d = {1e3 * c_d:.2f} ms, c_u/c_d = {c_u / c_d:.1f}; "
          f"CARV = {carv.name}", flush=True)

    print(f"[2/4] SDS: {BASELINE.name} and {carv.name}, {seconds:.0f} s of training each", flush=True)
    ref = eval_reference(prompt, grid_size=s.grid_size, image_size=s.image_size, n_samples=s.n_samples)
    runs, snaps = {}, {}
    for m in (BASELINE, carv):
        snaps[m.name] = []

        def keep(step, clock, q, nerf, name=m.name):
            snaps[name].append((clock, render(nerf, ref.cameras)[[0, 2, 4, 6]]))

        runs[m.name] = train(teacher, prompt, m, seed=seed, settings=s, seconds=seconds,
                             eval_every_s=eval_every, ref=ref, classifier=classifier, on_eval=keep)
        last = runs[m.name].curve[-1]
        print(f"      {m.name}: {runs[m.name].steps} steps, PSNR {last[2]:.2f} dB, IoU {last[3]:.3f}, "
              f"p(prompt) {last[4]:.3f}", flush=True)

    print(f"[3/4] ECM table at the baseline's final NeRF ({reps} replicates)", flush=True)
    nerf = runs[BASELINE.name].nerf
    T = int(teacher.alphas_cumprod.shape[0])
    refg = reference_gradient(nerf, teacher, prompt, n_renders=ref_renders, K=16, batch=4,
                              guidance_scale=s.guidance_scale, generator=g_ref)
    q_oracle, _ = oracle_from_draws(refg.t, refg.sq_norm, T)
    rows = ecm_table(measure_configs(nerf, teacher, prompt, demo_methods(carv.K), refg, reps=reps,
                                     warmup=2, guidance_scale=s.guidance_scale, oracle_q=q_oracle,
                                     fixed_costs=(c_u, c_d), generator=g_meas))

    print("[4/4] writing the report", flush=True)
    # Render grids: ground truth, then each run's final views; and each run over time.
    finals = [ref.images[[0, 2, 4, 6]]] + [snaps[n][-1][1] for n in runs]
    image_strips(finals, out / "renders_final.png",
                 ["ground truth"] + [f"{n} (after {runs[n].train_seconds:.0f} s)" for n in runs])
    for n, tag in zip(runs, ("baseline", "carv")):
        pick = np.linspace(0, len(snaps[n]) - 1, min(5, len(snaps[n]))).round().astype(int)
        image_strips([snaps[n][i][1] for i in pick], out / f"renders_{tag}_progress.png",
                     [f"{n}: t = {snaps[n][i][0]:.0f} s" for i in pick])
    plt = _plt()
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

    # Summary.
    total = time.perf_counter() - t_start
    cb, cc = runs[BASELINE.name].curve, runs[carv.name].curve
    reach = {}
    for col, metric in ((2, "psnr"), (3, "iou"), (4, "prob")):
        times = np.arange(0.0, seconds + 1e-9, eval_every)
        vb = np.interp(times, [x[0] for x in cb], [x[col] for x in cb])
        vc = np.interp(times, [x[0] for x in cc], [x[col] for x in cc])
        reach[metric] = time_to_reach(times, vc, float(vb[-1])) if vb[-1] > vb[0] else float("nan")
    L = [f"# CARV text-to-3D demo: {PROMPTS[prompt]!r}\n",
         f"Teacher weights: {'shipped' if classifier is not None else 'RANDOM (weights missing)'}; "
         f"{torch.get_num_threads()} torch threads; total demo time {total:.0f} s.\n",
         "## Costs\n",
         f"- $c_u$ (render {s.image_size}×{s.image_size}, {s.n_samples} samples/ray, {s.grid_size}³ grid, "
         f"+ VAE encode, forward + backward, per render): {1e3 * c_u:.1f} ms "
         f"(render {1e3 * costs.render_fwd_bwd:.1f} ms, encode {1e3 * costs.encode_fwd_bwd:.1f} ms)",
         f"- $c_d$ (one CFG teacher draw, 16 per call): {1e3 * c_d:.2f} ms; $c_u/c_d$ = {c_u / c_d:.1f}\n",
         "## SDS runs (equal per-step compute)\n",
         "| run | steps | median step (ms) | PSNR (dB) | mask IoU | p(prompt) |", "|---|---|---|---|---|---|"]
    for n, r in runs.items():
        last = r.curve[-1]
        L.append(f"| {n} | {r.steps} | {1e3 * r.step_seconds:.0f} | {last[2]:.2f} | {last[3]:.3f} | {last[4]:.3f} |")
    L.append("")
    L.append("Time for CARV to reach the baseline's final value: " + ", ".join(
        f"{k} {'not reached' if v != v else f'{v:.0f} s ({v / seconds:.0%} of the baseline time)'}"
        for k, v in reach.items()) + " (one seed: noisy; the study averages prompts × seeds).\n")
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
    for f in ("renders_final.png", "renders_baseline_progress.png", "renders_carv_progress.png",
              "quality_vs_wallclock.png", "variance_vs_compute.png"):
        L.append(f"![{f}]({f})\n")
    (out / "summary.md").write_text("\n".join(L) + "\n")
    (out / "ecm_table.json").write_text(json.dumps(_jsonable(
        {"prompt": PROMPTS[prompt], "c_u": c_u, "c_d": c_d, "rows": rows, "seconds_total": total,
         "runs": {n: {"steps": r.steps, "curve": r.curve, "step_seconds": r.step_seconds}
                  for n, r in runs.items()}, "time_to_reach": reach}), indent=1) + "\n")
    print(f"done in {total:.0f} s", flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompt", type=int, default=0, help=f"index into {PROMPTS}")
    ap.add_argument("--seconds", type=float, default=75.0, help="training wall-clock per run")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="report folder")
    ap.add_argument("--reps", type=int, default=12, help="replicates per ECM configuration")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", default=None, help="teacher weights folder (default: the shipped one)")
    ap.add_argument("--allow-random-teacher", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    out = run_demo(args.prompt, args.seconds, Path(args.out), reps=args.reps, seed=args.seed,
                   weights_dir=args.weights, allow_random=args.allow_random_teacher, threads=args.threads)
    print(f"report: {out.resolve()}")
    print(f"summary: {(out / 'summary.md').resolve()}", file=sys.stderr)


if __name__ == "__main__":
    main()
