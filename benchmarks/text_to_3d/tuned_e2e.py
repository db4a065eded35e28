r"""End to end with tuned learning rates: does CARV reach the baseline's final quality in half its wall-clock?

    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.text_to_3d.tuned_e2e --out benchmarks/text_to_3d/results
    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.text_to_3d.tuned_e2e --out benchmarks/text_to_3d/results --quick
    python -m benchmarks.text_to_3d.tuned_e2e --out benchmarks/text_to_3d/results --report-only

Item 3 of issue 15. Methods (:func:`protocol_methods`): the baseline (threestudio: $R = 2$,
$K = 1$, uniform $t$, :data:`.pipeline.BASELINE`, as in the study's end-to-end stage), the study's
end-to-end CARV configuration ($R = 1$, $K = c_u/c_d + 2$ from the measured costs, importance-sampled
and stratified $t$: :func:`.end_to_end._carv_e2e_method`), and the same plus a per-view control
variate (a :class:`carv_torch.CellTable` over 16 azimuth $\times$ 2 elevation cells, cameras drawn
through their uniforms with :func:`.pipeline.draw_uniform_cameras`).

1. **Probe** (:func:`.demo.plan_demo`): $c_u$, $c_d$, the baseline's step and one evaluation; the
   estimated total is printed before anything long starts.
2. **Tuning set**: prompt ``tune_prompt`` $\times$ ``tune_seeds``. Adam at
   $\mathrm{lr} = f\cdot$ :attr:`.pipeline.TrainSettings.lr` for $f \in$ ``lr_factors``. Per seed the
   baseline at $f = 1$ trains ``baseline_steps`` steps; its measured training wall-clock $T_s$ is every
   other tuning run's budget. Each method's factor maximises the tuning criterion (default: the mean
   over the tuning seeds of the time-averaged PSNR, :mod:`.tuned_e2e_stats`) and is then frozen.
3. **Evaluation set**: ``eval_prompts`` $\times$ ``eval_seeds`` (seeds disjoint from the tuning seeds;
   the benchmark has four prompts, so the tuning prompt is among them with other seeds). Per pair the
   baseline at its frozen rate trains ``baseline_steps`` steps; the CARV methods train for its measured
   wall-clock. Evaluation time is excluded from every clock.
4. **Report** (:mod:`.tuned_e2e_report`): ``tuned_e2e.json``, two figures and the page
   ``docs/benchmarks/text-to-3d-tuned.md``, every number read from the record.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..timing import argument_parser, machine_info
from .demo import plan_demo
from .end_to_end import _carv_e2e_method
from .nerf import GRID_SIZE, IMAGE_SIZE, N_SAMPLES, make_nerf
from .pipeline import BASELINE, Method, TrainSettings, eval_reference, evaluate, train
from .scenes import PROMPTS, check_scene_index
from .classifier import load_models
from .tuned_e2e_stats import CRITERIA, attach_metrics, choose_rate, clean, summarise, tuning_scores

__all__ = ["Protocol", "FULL", "QUICK", "protocol_methods", "estimate_seconds", "run_protocol", "finish",
           "main"]

RESULTS = Path(__file__).resolve().parent / "results"
JSON_NAME = "tuned_e2e.json"


def _positive_int(name: str, v, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return v


@dataclass(frozen=True)
class Protocol:
    """The protocol's sizes (``FULL``: about 40 min on 2 cores; ``QUICK``: under 2 min).

    ``baseline_steps`` is the per-run budget: the baseline's steps, whose measured wall-clock
    every other run on the same (prompt, seed) gets. ``K``: CARV's inner draws (``None``: from
    the measured $c_u/c_d$). Sizes of the NeRF as :class:`.pipeline.TrainSettings`.
    """

    mode: str = "full"
    tune_prompt: int = 0
    tune_seeds: tuple = (10, 11)
    eval_prompts: tuple = (0, 1, 2, 3)
    eval_seeds: tuple = (0, 1, 2)
    lr_factors: tuple = (0.5, 1.0, 2.0)
    baseline_steps: int = 170
    n_evals: int = 11
    criterion: str = "auc_psnr"
    cv_cells: tuple = (16, 2)
    K: int | None = None
    grid_size: int = GRID_SIZE
    image_size: int = IMAGE_SIZE
    n_samples: int = N_SAMPLES

    def __post_init__(self):
        check_scene_index(self.tune_prompt)
        for name in ("tune_seeds", "eval_seeds", "eval_prompts", "lr_factors"):
            v = getattr(self, name)
            if not isinstance(v, tuple) or not v or len(set(v)) != len(v):
                raise ValueError(f"{name} must be a non-empty tuple of distinct values, got {v!r}")
        for k in self.eval_prompts:
            check_scene_index(k)
        for name in ("tune_seeds", "eval_seeds"):
            for s in getattr(self, name):
                _positive_int(f"{name} entries", s, 0)
        if set(self.tune_seeds) & set(self.eval_seeds):
            raise ValueError(f"eval_seeds {self.eval_seeds} must not share seeds with tune_seeds "
                             f"{self.tune_seeds} (the evaluation set is held out)")
        if not all(isinstance(f, (int, float)) and not isinstance(f, bool) and f > 0 for f in self.lr_factors) \
                or 1.0 not in self.lr_factors:
            raise ValueError(f"lr_factors must be positive numbers including 1.0 (the baseline at the default "
                             f"rate sets the tuning budget), got {self.lr_factors!r}")
        _positive_int("baseline_steps", self.baseline_steps, 1)
        _positive_int("n_evals", self.n_evals, 2)
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {sorted(CRITERIA)}, got {self.criterion!r}")
        if self.K is not None:
            _positive_int("K", self.K, 1)
        Method("check", R=1, cv_cells=self.cv_cells)  # validates cv_cells

    def replace(self, **kw) -> "Protocol":
        """A copy with fields replaced (validated again)."""
        return dataclasses.replace(self, **kw)

    @property
    def n_tune(self) -> int:
        """Tuning runs: 3 methods x rates x tuning seeds."""
        return 3 * len(self.lr_factors) * len(self.tune_seeds)

    @property
    def n_eval(self) -> int:
        """Evaluation runs: 3 methods x prompts x seeds."""
        return 3 * len(self.eval_prompts) * len(self.eval_seeds)


FULL = Protocol()
QUICK = Protocol(mode="quick", tune_seeds=(10,), eval_prompts=(1, 2), eval_seeds=(0,), lr_factors=(1.0, 2.0),
                 baseline_steps=12, n_evals=4)


def protocol_methods(c_u: float, c_d: float, protocol: Protocol) -> list[Method]:
    """[baseline, CARV (the study's end-to-end configuration), CARV + per-view control variate]."""
    carv = _carv_e2e_method(c_u, c_d, protocol.K)
    a, e = protocol.cv_cells
    cv = dataclasses.replace(carv, name=f"CARV + CV {a}x{e} (R=1, K={carv.K}, IS+strat)", cv_cells=protocol.cv_cells)
    return [BASELINE, carv, cv]


def estimate_seconds(protocol: Protocol, step_seconds: float, eval_seconds: float) -> float:
    r"""$(n_{\rm tune} + n_{\rm eval})(N s_b + n_e s_e)$: every run trains about the baseline's $N$ steps'
    wall-clock $N s_b$ and evaluates $n_e$ times (a little more: the last eval and a final step)."""
    per_run = protocol.baseline_steps * step_seconds + (protocol.n_evals + 1) * eval_seconds
    return (protocol.n_tune + protocol.n_eval) * per_run + len(protocol.eval_prompts) * eval_seconds


def _cv_summary(run) -> dict | None:
    table = run.control_variate
    if table is None:
        return None
    seen = table.refreshed >= 0
    stale = table.staleness(run.steps)[seen]
    return {"n_cells": table.n_cells, "cells_refreshed": int(seen.sum()), "table_megabytes": table.nbytes / 1e6,
            "median_staleness_at_end": float(stale.float().median()) if bool(seen.any()) else None,
            "refreshed_cells": seen.nonzero().flatten().tolist()}


def finish(rec: dict) -> dict:
    """Metrics of every run, the tuning scores and the evaluation summary, recomputed from the curves."""
    runs = attach_metrics(rec["runs"])
    tune = [r for r in runs if r["stage"] == "tune"]
    if tune:
        scores = tuning_scores(tune, rec["protocol"]["criterion"])
        chosen = choose_rate(scores)
        frozen = rec.get("tuning", {}).get("chosen")
        if frozen and {m: v["factor"] for m, v in frozen.items()} != chosen:
            raise ValueError(f"the recorded frozen rates {frozen} are not the criterion's choice {chosen}")
        rec["tuning"] = {"criterion": rec["protocol"]["criterion"], "scores": scores,
                         "chosen": {m: {"factor": f, "lr": f * rec["settings"]["lr"]} for m, f in chosen.items()}}
    names = [m["name"] for m in rec["methods"]]
    ev = [r for r in runs if r["stage"] == "eval"]
    if ev:
        rec["summary"] = summarise(ev, names)
    return rec


def _save(rec: dict, out: Path) -> None:
    (out / JSON_NAME).write_text(json.dumps(clean(rec), indent=1) + "\n")


def run_protocol(protocol: Protocol, out: Path, *, weights_dir=None, allow_random: bool = False,
                 threads: int = 2, progress: bool = True, command: str | None = None, log=None) -> dict:
    """Run the protocol (module docstring); write ``out/tuned_e2e.json`` after every run; return the record.

    ``log``: a callable given each progress line (default: print to stdout); ``progress``: the per-run bars.
    """
    log = log or (lambda line: print(line, flush=True))
    p, t_start = protocol, time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(threads))
    teacher, classifier = load_models(weights_dir, allow_random=allow_random)
    settings = TrainSettings(grid_size=p.grid_size, image_size=p.image_size, n_samples=p.n_samples)
    refs = {k: eval_reference(k, grid_size=p.grid_size, image_size=p.image_size, n_samples=p.n_samples)
            for k in sorted({p.tune_prompt, *p.eval_prompts})}
    log(f"[probe] costs, {BASELINE.name} steps, one evaluation (prompt {PROMPTS[p.tune_prompt]!r})")
    plan = plan_demo(teacher, classifier, p.tune_prompt, refs[p.tune_prompt], settings,
                     baseline_steps=p.baseline_steps, n_evals=p.n_evals, reps=0, warmup=0, ref_renders=0,
                     ref_K=0, generator=torch.Generator().manual_seed(0))
    methods = protocol_methods(plan.c_u, plan.c_d, p)
    t0 = time.perf_counter()  # one evaluation as train makes it (the demo's probe also renders snapshots)
    evaluate(make_nerf(p.grid_size, p.image_size, p.n_samples), refs[p.tune_prompt], classifier)
    eval_s = time.perf_counter() - t0
    est = estimate_seconds(p, plan.step_seconds, eval_s)
    n_total = p.n_tune + p.n_eval
    log(f"        c_u = {1e3 * plan.c_u:.1f} ms, c_d = {1e3 * plan.c_d:.2f} ms; baseline step "
        f"{1e3 * plan.step_seconds:.0f} ms, evaluation {eval_s:.2f} s; methods: "
        + "; ".join(m.name for m in methods))
    log(f"        estimated total: {est / 60:.1f} min ({n_total} runs of ~{p.baseline_steps * plan.step_seconds:.0f} s "
        f"training + {p.n_evals} evaluations each)")
    rec = {"mode": p.mode, "protocol": dataclasses.asdict(p), "settings": dataclasses.asdict(settings),
           "command": command, "machine": machine_info(threads), "teacher_weights": classifier is not None,
           "probe": {"c_u": plan.c_u, "c_d": plan.c_d, "step_seconds": plan.step_seconds,
                     "eval_seconds": eval_s, "seconds": plan.stages["probe"] + eval_s},
           "estimate_seconds": est, "methods": [dataclasses.asdict(m) for m in methods], "runs": [],
           "stages_seconds": {"probe": plan.stages["probe"] + eval_s}, "status": "tuning"}

    def one(stage, method, factor, prompt, seed, budget=None):
        s = settings.replace(lr=factor * settings.lr)
        if budget is None:  # the baseline: N steps, its wall-clock measured
            kw = dict(steps=p.baseline_steps,
                      eval_steps=tuple(int(v) for v in np.linspace(0, p.baseline_steps, p.n_evals).round()))
        else:
            kw = dict(seconds=budget, eval_every_s=budget / (p.n_evals - 1))
        run = train(teacher, prompt, method, seed=seed, settings=s, ref=refs[prompt], classifier=classifier,
                    progress=progress, **kw)
        rec["runs"].append(dict(
            stage=stage, method=method.name, lr_factor=float(factor), lr=s.lr, prompt=prompt, seed=seed,
            sets_budget=budget is None, budget_seconds=run.train_seconds if budget is None else budget,
            steps=run.steps, train_seconds=run.train_seconds, step_seconds=run.step_seconds,
            mean_K=run.mean_K, curve=run.curve, control_variate=_cv_summary(run)))
        done, el = len(rec["runs"]), time.perf_counter() - t_start
        last = run.curve[-1]
        log(f"[{stage} {done}/{n_total}] {method.name}, lr x{factor:g}, prompt {prompt} seed {seed}: "
            f"{run.steps} steps in {run.train_seconds:.1f} s, PSNR {last[2]:.2f} IoU {last[3]:.3f}; "
            f"{el / 60:.1f} min elapsed, ~{el / done * (n_total - done) / 60:.1f} min left")
        _save(rec, out)
        return run.train_seconds

    t0 = time.perf_counter()
    for seed in p.tune_seeds:
        budget = one("tune", BASELINE, 1.0, p.tune_prompt, seed)
        for m in methods:
            for f in p.lr_factors:
                if not (m is BASELINE and f == 1.0):
                    one("tune", m, f, p.tune_prompt, seed, budget)
    finish(rec)
    chosen = {m: v["factor"] for m, v in rec["tuning"]["chosen"].items()}
    log("[tuned] frozen rates: " + "; ".join(f"{m}: lr x{f:g}" for m, f in chosen.items()))
    rec["stages_seconds"]["tuning"] = time.perf_counter() - t0
    rec["status"] = "evaluation"
    t0 = time.perf_counter()
    for k in p.eval_prompts:
        for seed in p.eval_seeds:
            budget = one("eval", BASELINE, chosen[BASELINE.name], k, seed)
            for m in methods[1:]:
                one("eval", m, chosen[m.name], k, seed, budget)
    rec["stages_seconds"]["evaluation"] = time.perf_counter() - t0
    finish(rec)
    rec["status"] = "done"
    rec["seconds_total"] = time.perf_counter() - t_start
    _save(rec, out)
    return rec


def _load(out: Path) -> dict:
    def never(x):
        return float("inf") if x == "never" else float("nan") if x is None else x

    rec = json.loads((out / JSON_NAME).read_text())
    for r in rec["runs"]:
        r["curve"] = [[never(v) for v in c] for c in r["curve"]]
    return finish(rec)


def main(argv=None):
    ap, arg = argument_parser("benchmarks.text_to_3d.tuned_e2e", __doc__)
    arg("--out", default=str(RESULTS), help="results folder (quick runs write to OUT/quick)")
    arg("--quick", action="store_true", help="a small version (under 2 minutes)")
    arg("--report-only", action="store_true", help="rebuild the figures and the page from tuned_e2e.json")
    arg("--baseline-steps", type=int, default=None, help="per-run budget: the baseline's steps (full: 170)")
    arg("--n-evals", type=int, default=None, help="evaluations per run")
    arg("--lr-factors", type=float, nargs="+", default=None, help="the sweep, times the default rate")
    arg("--criterion", choices=sorted(CRITERIA), default=None, help="tuning criterion (default auc_psnr)")
    arg("--K", type=int, default=None, help="CARV's inner draws (default: c_u/c_d + 2, measured)")
    arg("--threads", type=int, default=2, help="torch threads (2 on the 2-core reference machine)")
    arg("--weights", default=None, help="teacher weights folder (default: the shipped one)")
    arg("--allow-random-teacher", action="store_true", help="development without the shipped weights")
    arg("--no-docs", action="store_true", help="write the page and figures next to the JSON, not into docs/")
    args = ap.parse_args(argv)
    from .tuned_e2e_report import write_report

    p = QUICK if args.quick else FULL
    over = {"baseline_steps": args.baseline_steps, "n_evals": args.n_evals, "criterion": args.criterion, "K": args.K,
            "lr_factors": None if args.lr_factors is None else tuple(args.lr_factors)}
    p = p.replace(**{k: v for k, v in over.items() if v is not None})
    out = Path(args.out) / ("quick" if args.quick else "")
    docs = not (args.quick or args.no_docs)
    if args.report_only:
        rec = _load(out)
    else:
        command = "python -m benchmarks.text_to_3d.tuned_e2e " + shlex.join(sys.argv[1:] if argv is None else argv)
        rec = run_protocol(p, out, weights_dir=args.weights, allow_random=args.allow_random_teacher,
                           threads=args.threads, command=command)
    page = write_report(rec, out, docs)
    print(f"results: {out / JSON_NAME}\npage: {page}")


if __name__ == "__main__":
    main()
