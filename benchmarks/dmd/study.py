r"""The DMD variance study: generator-gradient variance per estimator at checkpoints of a DMD2-style run.

    python -m benchmarks.dmd.study [--quick] [--out benchmarks/dmd/results]

1. $p^\star$ (:mod:`.mixture`) and the denoiser pre-trained on it (:mod:`.networks`), which
   initialises the fake score and the one-step generator;
2. the exact $p^\star$ teacher as the real score; costs $c_u$ (generator forward + backward,
   per sample) and $c_d$ (one real + one fake evaluation, per draw), measured; the
   equal-compute $K = 1$ arm has $R' = \operatorname{round}(8(c_u + 16c_d)/(c_u + c_d))$;
3. a pilot at the start gives $q^\star \propto p\sqrt{m(t)}$ for the importance-sampled arm
   ($w \equiv 1$ under the uniform weighting, so the weight heuristic is $q = p$);
4. a baseline run, $(R, K) = (8, 1)$ i.i.d., and at each checkpoint, every arm's
   $\operatorname{tr}\operatorname{Cov}(\nabla_\theta)$ from ``reps`` repeated estimates, the exact mean
   $\log p^\star$ of generated samples and the mode-coverage TV.

Writes ``study.json`` (``variance_ratio`` per checkpoint and arm: the (8, 1) variance over
the arm's) and the docs page ``docs/benchmarks/dmd.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from ..text_to_3d.pipeline import Progress, oracle_from_draws
from ..timing import median_seconds
from .distill import Arm, DistillSettings, distill, sampler_for
from .end_to_end import end_to_end, predicted_speedups, speedups
from .mixture import fit_mixture, real_teacher
from .quality import METRICS, quality
from .networks import OneStepGenerator, fake_teacher, make_scheduler, make_unet, pretrain
from .report import write_page
from .teacher import WEIGHTS_DIR, load_denoiser, score_error
from .variance import measure_arms, pilot_second_moment

__all__ = ["SIZES", "arms_for", "measure_costs", "run_study", "main"]

HERE = Path(__file__).resolve().parent
SIZES = {"full": dict(pretrain_steps=1500, steps=300, reps=64, pilot=8, quality_n=2000,
                      e2e_steps=300, e2e_seeds=(0, 1, 2), ablation_ratios=(1, 10), ablation_seeds=(0, 1)),
         "quick": dict(pretrain_steps=300, steps=40, reps=16, pilot=4, quality_n=500,
                       e2e_steps=40, e2e_seeds=(0, 1), ablation_ratios=(1,), ablation_seeds=(0,)),
         "smoke": dict(pretrain_steps=3, steps=2, reps=3, pilot=1, quality_n=50,
                       e2e_steps=2, e2e_seeds=(0, 1), ablation_ratios=(1,), ablation_seeds=(0, 1))}


def arms_for(R_eq: int) -> list[Arm]:
    return [Arm("(8, 1) iid", 8, 1), Arm("(8, 16) iid", 8, 16), Arm("(8, 16) stratified", 8, 16, "stratified"),
            Arm("(8, 16) IS + stratified", 8, 16, "stratified", "oracle"),
            Arm(f"({R_eq}, 1) iid, equal compute", R_eq, 1)]


def measure_costs(gen_model, real, fake, *, repeats: int = 7) -> tuple[float, float]:
    """$c_u$ per generator sample (forward + backward, batch 8), $c_d$ per draw (real + fake, 128 draws)."""
    z, xt, t = torch.randn(8, 1, 8, 8), torch.randn(128, 1, 8, 8), torch.randint(0, 1000, (128,))

    def up():
        gen_model.zero_grad(set_to_none=True)
        gen_model(z).sum().backward()

    def inner():
        with torch.no_grad():
            real.predict_noise(xt, t)
            fake.predict_noise(xt, t)

    c_u, c_d = median_seconds(up, repeats) / 8, median_seconds(inner, repeats) / 128
    gen_model.zero_grad(set_to_none=True)
    return c_u, c_d


def run_study(size: str = "full", out: Path = HERE / "results", *, seed: int = 0, threads: int = 2,
              docs: bool = True, progress: bool = True) -> dict:
    torch.set_num_threads(int(threads))
    sz = SIZES[size]
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    mix = fit_mixture(seed=seed)
    sched = make_scheduler()
    abar = sched.alphas_cumprod.to(torch.float64)
    shipped = load_denoiser() if (size == "full" and seed == 0) else None
    if shipped is not None:       # the shipped teacher: trained by .teacher with this size's settings
        unet = shipped
        log = json.loads((WEIGHTS_DIR / "training_log.json").read_text())
        pre = {"seconds": log["seconds"], "loss": [log["final_loss"]], "source": "shipped weights",
               "score_error": log["score_error"]}
    else:
        unet = make_unet(seed)
        bar = Progress(sz["pretrain_steps"], "pre-training the denoiser on p*", unit=" steps", enabled=progress)
        pre = pretrain(unet, mix, abar, steps=sz["pretrain_steps"], seed=seed,
                       progress=lambda i, loss: bar.update(i, f"loss {loss:.3f}"))
        pre["source"] = "trained in this run"
        pre["score_error"] = score_error(unet, mix, abar)
        bar.close()
    real, fake = real_teacher(mix, abar), fake_teacher(unet, sched)
    gen_model = OneStepGenerator(unet, abar)
    c_u, c_d = measure_costs(gen_model, real, fake)
    R_eq = max(9, round(8 * (c_u + 16 * c_d) / (c_u + c_d)))
    arms = arms_for(R_eq)
    g = torch.Generator().manual_seed(seed + 7)
    base_sampler = sampler_for(arms[0], abar.shape[0])
    t_p, sq_p = pilot_second_moment(gen_model, real, fake, base_sampler, n=sz["pilot"], generator=g)
    q_oracle, _ = oracle_from_draws(t_p, sq_p, abar.shape[0], delta=0.1)
    samplers = {a.name: sampler_for(a, abar.shape[0], q_oracle.to(torch.float64)) for a in arms}
    steps = sz["steps"]
    checkpoints = tuple(sorted({0, steps // 2, steps}))
    records = []

    def at_checkpoint(step):
        t0 = time.perf_counter()
        vb = Progress(sz["reps"] + 1, f"variance at step {step}", unit=" sweeps", enabled=progress)
        rows = measure_arms(gen_model, real, fake, arms, samplers, reps=sz["reps"], generator=g,
                            progress=lambda s: vb.update(s))
        vb.close()
        base = rows[0]
        for r in rows:
            r["variance_ratio"] = base["trace_cov"] / r["trace_cov"]
            r["variance_ratio_se"] = r["variance_ratio"] * math.hypot(base["trace_cov_se"] / base["trace_cov"],
                                                                      r["trace_cov_se"] / r["trace_cov"])
            r["ecm"] = base["trace_cov"] * base["seconds"] / (r["trace_cov"] * r["seconds"])
        records.append({"step": step, "arms": rows, "quality": quality(gen_model, mix, sz["quality_n"], g),
                        "seconds": time.perf_counter() - t0})

    db = Progress(steps, f"DMD {arms[0].name}", unit=" steps", enabled=progress)
    run = distill(gen_model, real, fake, arms[0], samplers[arms[0].name], steps=steps,
                  settings=DistillSettings(checkpoints=checkpoints), seed=seed, on_checkpoint=at_checkpoint,
                  progress=lambda i, loss: db.update(i, f"fake loss {loss:.3f}"))
    db.close()
    # End to end: the baseline, stratified and equal-compute arms at equal wall-clock; the ratio ablation.
    e2e_arms = [arms[0], arms[2], arms[4]]
    n_runs = len(sz["e2e_seeds"]) * len(e2e_arms) + 2 * len(sz["ablation_ratios"]) * len(sz["ablation_seeds"])
    eb = Progress(n_runs, "DMD end to end", unit=" runs", enabled=progress)
    done = []
    e2e = end_to_end(unet, sched, mix, e2e_arms, seeds=sz["e2e_seeds"], steps=sz["e2e_steps"],
                     settings=DistillSettings(), q_oracle=q_oracle, n_quality=sz["quality_n"],
                     progress=lambda i: eb.update(i))
    done += e2e["runs"]
    ablation = {}
    for ratio in sz["ablation_ratios"]:
        ablation[str(ratio)] = end_to_end(unet, sched, mix, [arms[0], arms[2]], seeds=sz["ablation_seeds"],
                                          steps=sz["e2e_steps"], settings=DistillSettings(fake_ratio=ratio),
                                          q_oracle=q_oracle, n_quality=sz["quality_n"],
                                          progress=lambda i, n=len(done): eb.update(n + i))
        done += ablation[str(ratio)]["runs"]
    eb.close()
    e2e["predicted"] = predicted_speedups(records, run["step_seconds"], arms[0].name, arms[2].name)
    e2e["measured"] = {m: speedups(e2e["runs"], arms[0].name, arms[2].name, m) for m in METRICS}
    rec = {"size": size, "seed": seed, "threads": torch.get_num_threads(), "c_u": c_u, "c_d": c_d, "R_eq": R_eq,
           "pretrain": {"steps": sz["pretrain_steps"], "seconds": pre["seconds"], "source": pre["source"],
                        "score_error": pre["score_error"],
                        "final_loss": sum(pre["loss"][-50:]) / len(pre["loss"][-50:])},
           "distill": {"steps": steps, "step_seconds": run["step_seconds"], "fake_ratio": DistillSettings().fake_ratio},
           "checkpoints": records, "end_to_end": e2e, "ablation": ablation,
           "seconds_total": time.perf_counter() - t_start}
    (out / "study.json").write_text(json.dumps(rec, indent=1) + "\n")
    if docs:
        write_page(rec, HERE.parents[1] / "docs" / "benchmarks" / "dmd.md")
    return rec


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    rec = run_study(args.size, Path(args.out), threads=args.threads)
    print(f"done in {rec['seconds_total']:.0f} s: {Path(args.out) / 'study.json'}")


if __name__ == "__main__":
    main()
