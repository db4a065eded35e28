r"""The DMD variance study: generator-gradient variance per estimator at checkpoints of a DMD2-style run.

    python -m benchmarks.dmd.study [--size full|quick|smoke] [--out benchmarks/dmd/results] [--threads 1]

1. $p^\star$ (:mod:`.mixture`) and the denoiser pre-trained on it (:mod:`.networks`), which
   initialises the fake score and the one-step generator; a digits classifier trained on the
   real digits (:mod:`.classifier`) for the classifier-feature FID;
2. per real teacher — the exact $p^\star$ score, and the frozen trained denoiser — the costs
   $c_u$ (generator forward + backward, per sample) and $c_d$ (one real + one fake evaluation,
   per draw), measured; the equal-compute $K = 1$ arm has $R' = \operatorname{round}(8(c_u + 16c_d)/(c_u + c_d))$;
3. a baseline run, $(R, K) = (8, 1)$ i.i.d., and at each checkpoint, every arm's
   $\operatorname{tr}\operatorname{Cov}(\nabla_\theta)$ from ``reps`` repeated estimates and the sample
   quality; a pilot at the first checkpoint gives $q^\star \propto p\sqrt{m(t)}$ for the
   importance-sampled arm ($w \equiv 1$ under the uniform weighting, so the weight heuristic
   is $q = p$). With the denoiser as the real score the fake score starts equal to it (the
   gradient is exactly 0 at step 0), so its first checkpoint is a tenth of the run in;
4. end to end at equal compute (:mod:`.end_to_end`), and the fake-update ratio ablation.

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

from ..digits import load_digits
from ..text_to_3d.pipeline import Progress, oracle_from_draws
from ..timing import median_seconds
from .classifier import ClassifierFID, train_classifier
from .distill import Arm, DistillSettings, distill, sampler_for
from .end_to_end import end_to_end, predicted_speedups, speedups
from .figures import write_figures
from .mixture import fit_mixture, real_teacher, sample
from .networks import OneStepGenerator, fake_teacher, frozen_teacher, make_scheduler, make_unet, pretrain
from .quality import METRICS, QualityMeter
from .report import write_page
from .teacher import WEIGHTS_DIR, load_denoiser, score_error
from .variance import measure_arms, pilot_second_moment

__all__ = ["SIZES", "TEACHERS", "arms_for", "measure_costs", "teacher_study", "run_study", "main"]

HERE = Path(__file__).resolve().parent
SIZES = {"full": dict(pretrain_steps=1500, steps=300, reps=64, pilot=8, quality_n=2000, classifier_epochs=None,
                      e2e_steps=300, e2e_seeds=(0, 1, 2), ablation_ratios=(1, 10), ablation_seeds=(0, 1, 2)),
         "quick": dict(pretrain_steps=300, steps=40, reps=16, pilot=4, quality_n=500, classifier_epochs=None,
                       e2e_steps=40, e2e_seeds=(0, 1), ablation_ratios=(1,), ablation_seeds=(0,)),
         "smoke": dict(pretrain_steps=3, steps=2, reps=3, pilot=1, quality_n=50, classifier_epochs=1,
                       e2e_steps=2, e2e_seeds=(0, 1), ablation_ratios=(1,), ablation_seeds=(0, 1))}
#: The real scores: the exact p* score, and the trained denoiser (frozen).
TEACHERS = ("exact", "unet")
BASE, STRAT, AUTO = "(8, 1) iid", "(8, 16) stratified", "(8, auto) stratified, CARV's K"


def arms_for(R_eq: int) -> list[Arm]:
    return [Arm(BASE, 8, 1), Arm("(8, 16) iid", 8, 16), Arm(STRAT, 8, 16, "stratified"),
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


def teacher_study(unet, sched, real, meter, sz: dict, *, first_checkpoint: int, seed: int, progress: bool,
                  label: str, e2e_arms=(BASE, STRAT, "equal compute", AUTO)) -> dict:
    """Costs, the variance at the checkpoints of a baseline run and the end-to-end runs, with ``real`` as the real score."""
    abar = sched.alphas_cumprod.to(torch.float64)
    fake, gen_model = fake_teacher(unet, sched), OneStepGenerator(unet, abar)
    c_u, c_d = measure_costs(gen_model, real, fake)
    R_eq = max(9, round(8 * (c_u + 16 * c_d) / (c_u + c_d)))
    arms = arms_for(R_eq)
    g = torch.Generator().manual_seed(seed + 7)
    steps = sz["steps"]
    checkpoints = tuple(sorted({min(first_checkpoint, steps), steps // 2, steps}))
    records, state = [], {}

    def at_checkpoint(step):
        t0 = time.perf_counter()
        if not state:      # the pilot for q* (a sampler per arm from then on)
            base = sampler_for(arms[0], abar.shape[0])
            t_p, sq_p = pilot_second_moment(gen_model, real, fake, base, n=sz["pilot"], generator=g)
            state["q"] = oracle_from_draws(t_p, sq_p, abar.shape[0], delta=0.1)[0].to(torch.float64)
            state["samplers"] = {a.name: sampler_for(a, abar.shape[0], state["q"]) for a in arms}
        vb = Progress(sz["reps"] + 1, f"{label}: variance at step {step}", unit=" sweeps", enabled=progress)
        rows = measure_arms(gen_model, real, fake, arms, state["samplers"], reps=sz["reps"], generator=g,
                            progress=lambda s: vb.update(s))
        vb.close()
        base = rows[0]
        for r in rows:
            r["variance_ratio"] = base["trace_cov"] / r["trace_cov"]
            r["variance_ratio_se"] = r["variance_ratio"] * math.hypot(base["trace_cov_se"] / base["trace_cov"],
                                                                      r["trace_cov_se"] / r["trace_cov"])
            r["ecm"] = base["trace_cov"] * base["seconds"] / (r["trace_cov"] * r["seconds"])
        records.append({"step": step, "arms": rows, "quality": meter(gen_model, g),
                        "seconds": time.perf_counter() - t0})

    db = Progress(steps, f"{label}: DMD {BASE}", unit=" steps", enabled=progress)
    run = distill(gen_model, real, fake, arms[0], sampler_for(arms[0], abar.shape[0]), steps=steps,
                  settings=DistillSettings(checkpoints=checkpoints), seed=seed, on_checkpoint=at_checkpoint,
                  progress=lambda i, loss: db.update(i, f"fake loss {loss:.3f}"))
    db.close()
    chosen = [a for a in arms + [Arm(AUTO, 8, "auto", "stratified")] if any(k in a.name for k in e2e_arms)]
    eb = Progress(len(sz["e2e_seeds"]) * len(chosen), f"{label}: DMD end to end", unit=" runs", enabled=progress)
    e2e = end_to_end(unet, sched, real, meter, chosen, seeds=sz["e2e_seeds"], steps=sz["e2e_steps"],
                     settings=DistillSettings(), q_oracle=state["q"], progress=lambda i: eb.update(i, force=True))
    eb.close()
    e2e["predicted"] = predicted_speedups(records, run["step_seconds"], BASE, STRAT)
    e2e["measured"] = {a.name: {m: speedups(e2e["runs"], BASE, a.name, m) for m in METRICS
                                if m in e2e["runs"][0]["curve"][0]} for a in chosen[1:]}
    return {"c_u": c_u, "c_d": c_d, "R_eq": R_eq, "checkpoints": records, "end_to_end": e2e,
            "distill": {"steps": steps, "step_seconds": run["step_seconds"], "fake_ratio": DistillSettings().fake_ratio}}


def _denoiser(sz, mix, abar, seed, use_shipped, progress):
    shipped = load_denoiser() if use_shipped else None
    if shipped is not None:       # the shipped teacher: trained by .teacher with this size's settings
        log = json.loads((WEIGHTS_DIR / "training_log.json").read_text())
        return shipped, {"seconds": log["seconds"], "loss": [log["final_loss"]], "source": "shipped weights",
                         "score_error": log["score_error"]}
    unet = make_unet(seed)
    bar = Progress(sz["pretrain_steps"], "pre-training the denoiser on p*", unit=" steps", enabled=progress)
    pre = pretrain(unet, mix, abar, steps=sz["pretrain_steps"], seed=seed,
                   progress=lambda i, loss: bar.update(i, f"loss {loss:.3f}"))
    bar.close()
    pre["source"] = "trained in this run"
    pre["score_error"] = score_error(unet, mix, abar)
    return unet, pre


def _classifier_meter(sz, mix, seed):
    """The digits classifier, the quality meter with its FID, and the FID's scale on real digits and on p*."""
    kw = {} if sz["classifier_epochs"] is None else {"epochs": sz["classifier_epochs"]}
    clf, info = train_classifier(seed=seed, **kw)
    n = sz["quality_n"]
    g = torch.Generator().manual_seed(seed + 31)
    fid = ClassifierFID(clf, sample(mix, n, g)[0])
    digits = load_digits().images
    info["fid_real_digits"] = fid(digits[torch.randperm(digits.shape[0], generator=g)[:n]])
    info["fid_p_star"] = fid(sample(mix, n, g)[0])
    info["n"] = n
    return QualityMeter(mix, n, fid), info


def run_study(size: str = "full", out: Path = HERE / "results", *, seed: int = 0, threads: int = 1,
              docs: bool = True, progress: bool = True) -> dict:
    torch.set_num_threads(int(threads))
    sz = SIZES[size]
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    mix = fit_mixture(seed=seed)
    sched = make_scheduler()
    abar = sched.alphas_cumprod.to(torch.float64)
    unet, pre = _denoiser(sz, mix, abar, seed, size == "full" and seed == 0, progress)
    meter, clf_info = _classifier_meter(sz, mix, seed)
    parts = {}
    for name in TEACHERS:
        real = real_teacher(mix, abar) if name == "exact" else frozen_teacher(unet, sched)
        parts[name] = teacher_study(unet, sched, real, meter, sz, seed=seed, progress=progress, label=name,
                                    first_checkpoint=0 if name == "exact" else max(1, sz["steps"] // 10),
                                    e2e_arms=(BASE, STRAT, "equal compute", AUTO) if name == "exact" else (BASE, STRAT, AUTO))
    # The fake-update ratio ablation (exact real score): the baseline and the stratified arm.
    real = real_teacher(mix, abar)
    ab_arms = [Arm(BASE, 8, 1), Arm(STRAT, 8, 16, "stratified")]
    n_runs = 2 * len(sz["ablation_ratios"]) * len(sz["ablation_seeds"])
    eb = Progress(n_runs, "DMD fake-update ratio ablation", unit=" runs", enabled=progress)
    ablation = {}
    for j, ratio in enumerate(sz["ablation_ratios"]):
        ablation[str(ratio)] = end_to_end(unet, sched, real, meter, ab_arms, seeds=sz["ablation_seeds"],
                                          steps=sz["e2e_steps"], settings=DistillSettings(fake_ratio=ratio),
                                          progress=lambda i, n=2 * j * len(sz["ablation_seeds"]):
                                          eb.update(n + i, force=True))
    eb.close()
    rec = {"size": size, "seed": seed, "threads": torch.get_num_threads(),
           "pretrain": {"steps": sz["pretrain_steps"], "seconds": pre["seconds"], "source": pre["source"],
                        "score_error": pre["score_error"],
                        "final_loss": sum(pre["loss"][-50:]) / len(pre["loss"][-50:])},
           "classifier": clf_info, "teachers": parts, "ablation": ablation,
           "seconds_total": time.perf_counter() - t_start}
    (out / "study.json").write_text(json.dumps(rec, indent=1) + "\n")
    if docs:
        write_page(rec, HERE.parents[1] / "docs" / "benchmarks" / "dmd.md")
        write_figures(rec, HERE.parents[1] / "docs" / "benchmarks" / "figures")
    return rec


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument("--out", default=str(HERE / "results"))
    # One thread: the 8x8 networks are too small to split (two threads ran a training step about
    # 2x slower here, 0.47 s against 0.2 s, mostly in system time).
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    rec = run_study(args.size, Path(args.out), threads=args.threads)
    print(f"done in {rec['seconds_total']:.0f} s: {Path(args.out) / 'study.json'}")


if __name__ == "__main__":
    main()
