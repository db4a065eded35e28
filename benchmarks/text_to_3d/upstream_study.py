r"""Upstream variance on NeRF + latent-teacher SDS: camera designs and per-view control variates (issue 15).

    python -m benchmarks.text_to_3d.upstream_study --out benchmarks/text_to_3d/results          # full, ~50 min
    python -m benchmarks.text_to_3d.upstream_study --out benchmarks/text_to_3d/results --quick  # <= 2 min
    python -m benchmarks.text_to_3d.upstream_study --out benchmarks/text_to_3d/results --report-only

Stages:

1. **Costs** $c_u$, $c_d$ (:func:`.nerf.measure_costs`) and the predicted wall-clock.
2. **Checkpoints** of one baseline run (:func:`.pipeline.train`): the early, middle and late
   steps $N$ of the study, and the steps $N - s$ for each table staleness $s$.
3. Per checkpoint: the **reference** $\hat G_{\rm ref}$ (:func:`.variance.reference_gradient`);
   the control-variate **tables** of each inner configuration at the NeRF of step
   $N - s$ (:func:`.upstream_measure.cell_pool`); every **configuration** (inner
   configuration $\times$ camera design or control variate $\times R$) interleaved
   (:func:`.upstream_measure.measure`); the statistics (:mod:`.upstream_analysis`).
4. **CFG scales**: at each checkpoint and scale a reference at that scale and the i.i.d.
   $R = 2$ rows of both inner configurations (the NeRF and the teacher unchanged).

The inner configurations: ``baseline`` ($K = 1$, uniform $t$, i.i.d.) and ``carv``, the fixed-$K$
row of the study (``study.json``) with the largest mean ECM over its checkpoints. Writes
``upstream.json`` after every checkpoint; the page and figures by :mod:`.upstream_report`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..timing import machine_info
from .nerf import make_nerf, measure_costs
from .pipeline import BASELINE, Method, TrainSettings, train
from .scenes import ELEVATION_RANGE, PROMPTS, RADIUS
from .teacher import load_teacher, null_condition, teacher_condition
from .upstream_analysis import cfg_components, records, summarise
from .upstream_measure import CELLS, Config, cell_pool, cell_tables, check_camera_law, measure
from .report import _jsonable
from .upstream_report import write_report
from .variance import reference_gradient

__all__ = ["Size", "FULL", "QUICK", "carv_inner", "configurations", "estimate_seconds", "run", "main"]

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Size:
    """How big the measurement is (``FULL``: the study's checkpoints; ``QUICK``: a smoke run)."""

    mode: str = "full"
    scene_index: int = 0
    ckpt_steps: tuple = (25, 150, 600)     # early, middle, late (the study's)
    staleness: tuple = (0, 10, 50)         # table built at step N - s (s = 0: fresh draws at N)
    design_Rs: tuple = (2, 4)
    cv_Rs: tuple = (1, 2)
    period: int = 4                        # steps per period of the run-long sequence (carv, R = 2)
    per_cell: int = 3                      # cameras per cell in a table pool (3 SAGA tables + their mean)
    ref_renders: int = 256
    ref_K: int = 16
    ref_batch: int = 4
    reps: int = 40
    warmup: int = 2
    cfg_scales: tuple = (5.0, 25.0, 100.0)
    cfg_ref_renders: int = 128
    cfg_reps: int = 40
    cost_repeats: int = 10
    n_boot: int = 2000
    grid_size: int = 64
    image_size: int = 64
    n_samples: int = 96

    def replace(self, **kw) -> "Size":
        """A copy with fields replaced."""
        return dataclasses.replace(self, **kw)


FULL = Size()
QUICK = Size(mode="quick", ckpt_steps=(10,), staleness=(0, 5), per_cell=1, ref_renders=16, reps=2, warmup=1,
             cfg_scales=(5.0, 25.0), cfg_ref_renders=8, cfg_reps=2, cost_repeats=3, n_boot=200)


def carv_inner(study_json: Path | None) -> tuple[Method, dict]:
    r"""The fixed-$K$ row of the study with the largest mean ECM over checkpoints, as an inner configuration.

    Returns the :class:`~.pipeline.Method` (its ``R`` is replaced per configuration) and how
    it was chosen. Without ``study.json``: $K = 8$, uniform, i.i.d. (warns).
    """
    if study_json is None or not Path(study_json).is_file():
        warnings.warn(f"no study results at {study_json}; the carv inner configuration defaults to K=8, "
                      "uniform, iid", RuntimeWarning, stacklevel=2)
        return Method("carv", 2, 8, "uniform", "iid"), {"source": None, "rule": "default K=8 uniform iid"}
    rec = json.loads(Path(study_json).read_text())
    ecms: dict = {}
    for ck in rec["checkpoints"]:
        for r in ck["configs"]:
            if r["K"] != "auto" and r["name"] != BASELINE.name:
                ecms.setdefault(r["name"], (r, []))[1].append(r["ecm"])
    n_ck = len(rec["checkpoints"])
    name, (row, vals) = max(((k, v) for k, v in ecms.items() if len(v[1]) == n_ck),
                            key=lambda kv: float(np.mean(kv[1][1])))
    m = Method("carv", int(row["R"]), int(row["K"]), row["proposal"], row["sampler"], bool(row["antithetic"]))
    return m, {"source": str(study_json), "row": name, "ecm_by_checkpoint": vals, "mean_ecm": float(np.mean(vals)),
               "rule": "largest mean ECM over the study's checkpoints among fixed-K rows"}


def _at(m: Method, R: int) -> Method:
    return Method(f"{m.name} R={R}", R, m.K, m.proposal, m.sampler, m.antithetic)


def configurations(inners: dict, size: Size) -> list[Config]:
    """The measured configurations (the baseline row first)."""
    out = [Config("baseline", _at(inners["baseline"], 2), "iid")]
    for label, m in inners.items():
        for R in sorted(set(size.design_Rs) | set(size.cv_Rs)):
            if (label, R) != ("baseline", 2):
                out.append(Config(label, _at(m, R), "iid"))
        for up in ("strat", "antipodal", "sobol"):
            out += [Config(label, _at(m, R), up) for R in size.design_Rs]
        if label == "carv" and size.period > 1:
            out.append(Config(label, _at(m, 2), "sequence", period=size.period))
        out += [Config(label, _at(m, R), "cv", split=False) for R in size.cv_Rs]
        out += [Config(label, _at(m, R), "cv-vjp", split=False) for R in size.cv_Rs if R > 1]
    return out


def _step_model(R: int, K: int, c_u: float, c_d: float) -> float:
    # The study's cost fit: a + R c_u' + R K c_d' with c_u' = 0.85 c_u, c_d' = 0.7 c_d (c_d at 16 draws per call).
    return 0.045 + 0.85 * R * c_u + 0.7 * R * K * c_d


def estimate_seconds(size: Size, inners: dict, c_u: float, c_d: float) -> float:
    r"""Predicted wall-clock of a run of ``size`` from the measured $c_u$, $c_d$ (seconds).

    A sweep is $1.17\sum$ over configurations of $P\,C(R, K)$ (times 1.8 with the untimed $B$
    draws; 1.17 and 1.8 measured by the quick run, 2-core machine, 1 thread), plus 25 ms per table applied post hoc.
    """
    cfgs = configurations(inners, size)
    sweep = 1.17 * sum(c.period * _step_model(c.method.R, c.method.K, c_u, c_d) * (1.8 if c.split else 1.0)
                       + (0.03 if c.upstream == "cv" else 0.6 * _step_model(c.method.R, 1, c_u, 0.0)
                          if c.upstream == "cv-vjp" else 0.0) for c in cfgs)
    n_tab = len(size.staleness) * (size.per_cell + (size.per_cell > 1))
    sweep += 0.025 * n_tab * len(size.cv_Rs) * len(inners)
    tables = sum(size.per_cell * 32 * len(size.staleness) * _step_model(1, m.K, c_u, c_d) for m in inners.values())
    ref = size.ref_renders * (c_u + size.ref_K * c_d) * 1.3
    cfg = sum(size.cfg_ref_renders * (c_u + size.ref_K * c_d) * 1.3 + (size.cfg_reps + 1) * 1.8
              * sum(_step_model(2, m.K, c_u, c_d) for m in inners.values())
              for s in size.cfg_scales if s != 5.0)
    per_ck = (size.reps + size.warmup) * sweep + tables + ref + cfg
    run = (max(size.ckpt_steps) + 1) * _step_model(2, 1, c_u, c_d) * 1.1
    return float(len(size.ckpt_steps) * per_ck + run + 20.0)


def _check_size(size: Size) -> None:
    def ints(name, vals, minimum):
        if not vals or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in vals):
            raise ValueError(f"size.{name} must be a non-empty tuple of ints >= {minimum}, got {vals!r}")

    ints("ckpt_steps", size.ckpt_steps, 1)
    ints("staleness", size.staleness, 0)
    ints("design_Rs", size.design_Rs, 2)
    ints("cv_Rs", size.cv_Rs, 1)
    for name in ("per_cell", "period", "ref_renders", "ref_batch", "cfg_ref_renders", "n_boot", "ref_K"):
        ints(name, (getattr(size, name),), 1)
    ints("reps", (size.reps, size.cfg_reps), 2)
    if any(R & (R - 1) for R in size.design_Rs):
        raise ValueError(f"size.design_Rs must be powers of 2 (antipodal pairs need even R, Sobol points "
                         f"powers of 2), got {size.design_Rs}")
    if 2 not in size.design_Rs and 2 not in size.cv_Rs:
        raise ValueError("R = 2 must be measured (the baseline row is R = 2): add 2 to size.design_Rs or cv_Rs")
    if not size.cfg_scales or 5.0 not in size.cfg_scales:
        raise ValueError(f"size.cfg_scales must include 5.0 (the checkpoints' scale), got {size.cfg_scales!r}")


def _steps_needed(size: Size) -> tuple[list[int], dict]:
    stale = {(N, s): max(N - s, 0) for N in size.ckpt_steps for s in size.staleness}
    return sorted(set(size.ckpt_steps) | set(stale.values())), stale


def run(size: Size, out: Path, *, seed: int = 0, weights_dir=None, allow_random: bool = False,
        progress: bool = True, threads: int = 2, carv: Method | None = None, study_json: Path | None = None,
        command: str = "") -> dict:
    """Run every stage and write ``out / "upstream.json"`` (after each checkpoint); return the record."""
    _check_size(size)
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(threads))
    check_camera_law()
    teacher = load_teacher(weights_dir, require_weights=not allow_random)
    s = TrainSettings(grid_size=size.grid_size, image_size=size.image_size, n_samples=size.n_samples)
    if carv is None:
        carv, chosen = carv_inner(study_json)
    else:
        chosen = {"source": "argument", "rule": "given"}
    inners = {"baseline": Method("baseline", 2, 1, "uniform", "iid"), "carv": carv}
    root = torch.Generator().manual_seed(int(seed))
    g_cost, g_ckpt, g_ref, g_tab, g_meas = (torch.Generator().manual_seed(int(v))
                                            for v in torch.randint(0, 2**62, (5,), generator=root))
    rng = np.random.default_rng(seed)
    rec = {"mode": size.mode, "command": command, "size": dataclasses.asdict(size), "settings": dataclasses.asdict(s),
           "prompt": PROMPTS[size.scene_index], "seed": seed, "machine": machine_info(threads),
           "inner": {k: dataclasses.asdict(m) for k, m in inners.items()}, "carv_choice": chosen,
           "camera_law": {"azimuth": [0.0, 2 * math.pi], "elevation": list(ELEVATION_RANGE), "radius": RADIUS,
                          "checked_against": "scenes.sample_cameras"},
           "stages_seconds": {}, "checkpoints": []}

    def save():
        rec["seconds_total"] = time.perf_counter() - t_start
        write_record(rec, out)

    def say(msg):
        print(msg, file=sys.stderr, flush=True)

    # 1. costs and the prediction
    t0 = time.perf_counter()
    cond, unc = teacher_condition(size.scene_index), null_condition()
    c = measure_costs(make_nerf(s.grid_size, s.image_size, s.n_samples), teacher, cond, unc,
                      guidance_scale=s.guidance_scale, R=2, n_draws=16, repeats=size.cost_repeats, generator=g_cost)
    rec["costs"] = c._asdict()
    c_u, c_d = c.c_u, c.c_d
    rec["estimate_seconds"] = estimate_seconds(size, inners, c_u, c_d)
    rec["stages_seconds"]["costs"] = time.perf_counter() - t0
    say(f"1. c_u = {1e3 * c_u:.1f} ms, c_d = {1e3 * c_d:.2f} ms; carv inner: K={carv.K} {carv.proposal} "
        f"{carv.sampler}; predicted wall-clock of this run: {rec['estimate_seconds'] / 60:.1f} min")
    save()

    # 2. checkpoints of one baseline run
    t0 = time.perf_counter()
    steps, stale = _steps_needed(size)
    say(f"2. baseline run to step {max(steps)} (checkpoints at {steps})")
    ck_run = train(teacher, size.scene_index, BASELINE, seed=int(torch.randint(0, 2**31, (1,), generator=g_ckpt)),
                   settings=s, steps=max(steps), checkpoint_steps=tuple(steps), progress=progress)
    rec["checkpoint_run"] = {"steps": ck_run.steps, "step_seconds": ck_run.step_seconds, "checkpoints": steps}
    rec["stages_seconds"]["checkpoint_run"] = time.perf_counter() - t0
    save()

    labels = ["early", "middle", "late"] if len(size.ckpt_steps) == 3 else \
        [f"checkpoint {i + 1}" for i in range(len(size.ckpt_steps))]
    cfgs = configurations(inners, size)
    for label, N in zip(labels, size.ckpt_steps):
        t0 = time.perf_counter()
        ck = {"label": label, "step": N, "seconds": {}}
        nerf = make_nerf(s.grid_size, s.image_size, s.n_samples)
        nerf.load_state_dict(ck_run.checkpoints[N])
        say(f"3. {label} (step {N}): reference, tables, {len(cfgs)} configurations x {size.reps} replicates")
        ref = reference_gradient(nerf, teacher, size.scene_index, n_renders=size.ref_renders, K=size.ref_K,
                                 batch=size.ref_batch, guidance_scale=s.guidance_scale, generator=g_ref,
                                 progress=progress)
        ck["reference"] = {"n_renders": ref.n_renders, "n_draws": ref.n_draws, "var_ref": ref.var_ref,
                           "grad_norm2": float(np.sum(ref.grad ** 2)), "seconds": ref.seconds}
        t1 = time.perf_counter()
        tables = {}
        for inner, m in inners.items():
            tables[inner] = []
            for st in size.staleness:
                pool = cell_pool(ck_run.checkpoints[stale[N, st]], teacher, m, size.scene_index,
                                 per_cell=size.per_cell, guidance_scale=s.guidance_scale, generator=g_tab, settings=s)
                tables[inner] += cell_tables(pool, st, N - stale[N, st], stale[N, st])
                del pool
        ck["seconds"]["tables"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        rows = measure(nerf, teacher, size.scene_index, cfgs, ref, reps=size.reps, warmup=size.warmup,
                       guidance_scale=s.guidance_scale, generator=g_meas, tables=tables,
                       posthoc_Rs=tuple(size.cv_Rs), progress=progress, label=f"{label}: ")
        del tables
        ck["seconds"]["measurement"] = time.perf_counter() - t1
        ck["raw"] = rows
        ck["analysis"] = records(rows, var_ref=ref.var_ref, c_u=c_u, c_d=c_d, rng=rng, n_boot=size.n_boot,
                                 checkpoint=label)
        ck["cfg"] = [cfg_components(rows, var_ref=ref.var_ref, c_u=c_u, c_d=c_d, scale=s.guidance_scale,
                                    rng=rng, n_boot=size.n_boot)]
        _print_records(ck["analysis"]["records"], label)
        for scale in size.cfg_scales:
            if scale == s.guidance_scale:
                continue
            say(f"4. {label}: CFG scale {scale:g}")
            ref_s = reference_gradient(nerf, teacher, size.scene_index, n_renders=size.cfg_ref_renders,
                                       K=size.ref_K, batch=size.ref_batch, guidance_scale=scale, generator=g_ref,
                                       progress=progress)
            rows_s = measure(nerf, teacher, size.scene_index, [c_ for c_ in cfgs if c_.upstream == "iid"
                                                                 and c_.method.R == 2],
                             ref_s, reps=size.cfg_reps, warmup=1, guidance_scale=scale, generator=g_meas,
                             progress=progress, label=f"{label} CFG {scale:g}: ")
            ck["cfg"].append(cfg_components(rows_s, var_ref=ref_s.var_ref, c_u=c_u, c_d=c_d, scale=scale,
                                            rng=rng, n_boot=size.n_boot))
            ck["cfg"][-1]["raw"] = rows_s
        ck["seconds"]["total"] = time.perf_counter() - t0
        rec["checkpoints"].append(ck)
        rec["stages_seconds"][f"checkpoint_{label}"] = ck["seconds"]["total"]
        save()
    rec["summary"] = summarise(rec["checkpoints"], design_Rs=size.design_Rs, cv_Rs=size.cv_Rs,
                               n_cells=CELLS[0] * CELLS[1])
    save()
    return rec


def write_record(rec: dict, out: Path) -> None:
    """``out/upstream.json`` (strict JSON: no NaN)."""
    (Path(out) / "upstream.json").write_text(json.dumps(_jsonable(rec), indent=1, allow_nan=False) + "\n")


def _print_records(recs, label):
    print(f"\n   {label}: {'record':34s} {'cost ms':>8s} {'V':>10s} {'sigma_B2':>10s} {'red.':>6s} "
          f"{'ECM':>6s} {'±':>5s}", file=sys.stderr)
    for r in recs:
        print(f"   {r['name']:42s} {1e3 * r['cost_s']:8.1f} {r['V']:10.3e} {r['sigma_b2']:10.3e} "
              f"{r['sigma_b2_reduction']:6.2f} {r['ecm']:6.2f} {r['ecm_se']:5.2f}", file=sys.stderr, flush=True)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m benchmarks.text_to_3d.upstream_study",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(RESULTS), help="results folder (--quick writes to <out>/quick)")
    ap.add_argument("--quick", action="store_true", help="a small version (<= 2 minutes)")
    ap.add_argument("--report-only", action="store_true", help="rebuild the page and figures from upstream.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", default=None, help="teacher weights folder (default: the shipped one)")
    ap.add_argument("--allow-random-teacher", action="store_true", help="development without weights")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (2 on 2 cores)")
    ap.add_argument("--reps", type=int, default=None, help="override replicates per configuration")
    ap.add_argument("--study-json", default=None, help="the study's results (default <out>/study.json)")
    ap.add_argument("--carv", nargs=3, metavar=("K", "PROPOSAL", "SAMPLER"), default=None,
                    help="the carv inner configuration (default: the best fixed-K row of study.json)")
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    if args.carv and (not args.carv[0].isdigit() or int(args.carv[0]) < 1):
        ap.error(f"--carv K must be an integer >= 1, got {args.carv[0]!r}")
    size = QUICK if args.quick else FULL
    if args.reps is not None:
        if args.reps < 2:
            ap.error(f"--reps must be >= 2 (a standard error needs two replicates), got {args.reps}")
        size = size.replace(reps=args.reps, cfg_reps=args.reps)
    base = Path(args.out)
    out = base / "quick" if args.quick else base
    docs = not args.quick
    if args.report_only:  # the summary is re-derived from the recorded checkpoints (analysis only)
        rec = json.loads((out / "upstream.json").read_text())
        rec["summary"] = summarise(rec["checkpoints"], design_Rs=size.design_Rs, cv_Rs=size.cv_Rs,
                                   n_cells=CELLS[0] * CELLS[1])
        write_record(rec, out)
    else:
        carv = None
        if args.carv:
            carv = Method("carv", 2, int(args.carv[0]), args.carv[1], args.carv[2])
        study_json = Path(args.study_json) if args.study_json else base / "study.json"
        rec = run(size, out, seed=args.seed, weights_dir=args.weights, allow_random=args.allow_random_teacher,
                  threads=args.threads, carv=carv, study_json=study_json,
                  command="python -m benchmarks.text_to_3d.upstream_study " + " ".join(argv))
    page = write_report(rec, out, docs=docs)
    print(f"results: {out / 'upstream.json'}\npage: {page}")
    if not args.report_only:
        print(f"wall-clock {rec['seconds_total'] / 60:.1f} min (predicted {rec['estimate_seconds'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
