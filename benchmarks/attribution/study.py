r"""The attribution study: feature variance, ECM and ranking quality of timestep designs vs budget $K$.

    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.attribution.study          # writes results/study.json
    python -m benchmarks.attribution.report                                  # figures + docs page

Points: ``--n-train`` training images (a fixed random subset of the model's training
split) and queries (``--n-heldout`` held-out digits and ``--n-generated`` DDIM samples).

1. **Reference** $\phi^\star_r$: the mean of two independent stratified estimates at
   ``--ref-k`` draws each, $a_r$ and $b_r$. Its own error is estimated without bias by
   $v_r = \lVert a_r - b_r\rVert^2/4 = \operatorname{tr}\operatorname{Var}\phi^\star_r$.
2. **IS proposal** from single-draw feature norms (:func:`~benchmarks.attribution.pipeline.is_proposal`).
3. For each replicate, configuration and budget $K$: features of all points, with an
   independent generator. Per replicate, the error
   $e = \frac1N\sum_r\big(\lVert\hat\phi_r - \phi^\star_r\rVert^2 - v_r\big)$ (unbiased for the
   MSE to the true $\bar\phi_r$, since the reference is independent), the mean over queries
   of the Spearman correlation of $s(q, \cdot)$ with the reference scores, and the seconds.
4. $\mathrm{ECM} = \bar e_{\rm iid}/\bar e_{\rm design}$ at equal $K$ (equal evaluations; the
   measured seconds give ``ecm_timed``), standard errors by the delta method over
   replicates (the i.i.d. unit: under common random numbers the points of a replicate
   are dependent). The fixed grid's squared bias:
   $\frac1N\sum_r(\lVert\bar\phi_r - \phi^\star_r\rVert^2 - v_r) - \overline{\operatorname{tr}\operatorname{Var}}/n_{\rm rep}$,
   $\bar\phi_r$ the replicate mean (Welford).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

import carv_torch
from benchmarks.digits import load_digits, split
from benchmarks.text_to_3d.pipeline import Progress
from benchmarks.timing import argument_parser, machine_info
from carv_core import Welford
from carv_core.designs import Stratified

from .model import (
    CLASSES,
    N_HELDOUT,
    feature_params,
    generate,
    load_teacher,
    write_json,
)
from .pipeline import (
    Config,
    configs,
    cosine_scores,
    features,
    is_proposal,
    make_projector,
    spearman_per_query,
)
from ..measure import ratio_se

__all__ = ["Settings", "main", "points", "run"]

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Settings:
    n_train: int = 128
    n_heldout: int = 16
    n_generated: int = 16
    budgets: tuple = (1, 2, 4, 8, 16, 32, 64)
    replicates: int = 6
    ref_k: int = 256
    proj_dim: int = 512
    is_draws: int = 8
    is_bins: int = 10
    seed: int = 0
    threads: int = 2
    time_budget_s: float | None = None  # stop adding replicates (at least min_replicates) when it would pass this
    min_replicates: int = 4
    weights_dir: str | None = None
    extra: dict = field(default_factory=dict)


def points(teacher, s: Settings) -> tuple[torch.Tensor, int, dict]:
    """All points ``(N, 1, 8, 8)``: the train subset first, then held-out and generated queries."""
    train, held = split(load_digits(CLASSES), N_HELDOUT, seed=0)
    g = torch.Generator().manual_seed(s.seed)
    pick = torch.randperm(train.images.shape[0], generator=g)[:s.n_train].sort().values
    gen = generate(teacher, s.n_generated, seed=s.seed + 1) if s.n_generated else torch.zeros(0, 1, 8, 8)
    x = torch.cat([train.images[pick], held.images[:s.n_heldout], gen.to(train.images.dtype)])
    info = {"train_rows": train.index[pick].tolist(), "heldout_rows": held.index[:s.n_heldout].tolist(),
            "n_generated": s.n_generated}
    return x.to(teacher.dtype), s.n_train, info


def _generators(seed: int, n: int) -> list[torch.Generator]:
    # Independent streams by spawning (never seed + i).
    return [torch.Generator().manual_seed(int(c.generate_state(1, np.uint64)[0] >> np.uint64(1)))
            for c in np.random.SeedSequence(seed).spawn(n)]


def run(s: Settings, *, progress: bool = True) -> dict:
    torch.set_num_threads(s.threads)
    t_start = time.perf_counter()
    teacher = load_teacher(s.weights_dir)
    x, n_train, point_info = points(teacher, s)
    P = sum(p.numel() for p in feature_params(teacher.unet))
    project = make_projector(P, s.proj_dim, seed=s.seed)
    N = x.shape[0]
    cfg0 = configs(torch.ones(1000, dtype=torch.float64) / 1000)
    total = 2 * s.ref_k * N + s.is_draws * N + s.replicates * len(cfg0) * sum(s.budgets) * N
    bar = Progress(total, "attribution study", unit=" evals", enabled=progress)
    done = 0
    with carv_torch.set_validate_args(False):  # timing without the validation pass (see attribution)
        # 1. reference: two independent stratified halves.
        strat = Config("stratified", Stratified(), False)
        g_a, g_b, g_is, *g_rest = _generators(s.seed, 3 + s.replicates)
        halves, ref_seconds = [], 0.0
        for g in (g_a, g_b):
            f, sec = features(teacher, x, strat, s.ref_k, g, project)
            halves.append(f)
            ref_seconds += sec
            done += s.ref_k * N
            bar.update(done, "reference")
        a, b = halves
        ref = (a + b) / 2
        v_ref = (a - b).pow(2).sum(1) / 4                       # tr Var of each reference feature
        ref_scores = cosine_scores(ref[n_train:], ref[:n_train])
        half_rho = spearman_per_query(cosine_scores(a[n_train:], a[:n_train]),
                                                      cosine_scores(b[n_train:], b[:n_train]))
        # 2. importance proposal from measured single-draw norms.
        q_is, norm_info = is_proposal(teacher, x, project, n_draws=s.is_draws, n_bins=s.is_bins,
                                      seed=int(g_is.initial_seed()))
        done += s.is_draws * N
        cfgs = configs(q_is)
        # 3. replicates x configurations x budgets.
        err = {(c.name, K): [] for c in cfgs for K in s.budgets}
        rho = {(c.name, K): [] for c in cfgs for K in s.budgets}
        secs = {(c.name, K): [] for c in cfgs for K in s.budgets}
        acc = {(c.name, K): Welford() for c in cfgs for K in s.budgets if c.name.startswith("grid")}
        n_rep = 0
        for rep, g_rep in enumerate(g_rest):
            rep_start = time.perf_counter()
            streams = _generators(int(g_rep.initial_seed()), len(cfgs) * len(s.budgets))
            for i, c in enumerate(cfgs):
                for j, K in enumerate(s.budgets):
                    f, sec = features(teacher, x, c, K, streams[i * len(s.budgets) + j], project)
                    e = (f - ref).pow(2).sum(1) - v_ref
                    err[c.name, K].append(float(e.mean()))
                    rho[c.name, K].append(float(np.mean(spearman_per_query(
                        cosine_scores(f[n_train:], f[:n_train]), ref_scores))))
                    secs[c.name, K].append(sec / (N * K))
                    if (c.name, K) in acc:
                        acc[c.name, K].update(f.reshape(1, -1).numpy())
                    done += K * N
                    bar.update(done, f"rep {rep + 1}/{s.replicates} {c.name} K={K}")
            n_rep += 1
            per_rep = time.perf_counter() - rep_start
            if s.time_budget_s is not None and n_rep >= s.min_replicates and \
                    time.perf_counter() - t_start + per_rep > s.time_budget_s:
                break
    bar.close()
    # 4. ECM, Spearman intervals, grid bias.
    records = []
    for c in cfgs:
        for K in s.budgets:
            e_b, e_m = np.array(err["iid", K]), np.array(err[c.name, K])
            ecm, ecm_se = ratio_se(e_b, e_m)
            r = np.array(rho[c.name, K])
            c_b, c_m = np.median(secs["iid", K]), np.median(secs[c.name, K])
            records.append({
                "design": c.name, "budget": K, "common_random_numbers": c.common,
                "ecm": ecm, "ecm_se": ecm_se, "ecm_timed": ecm * c_b / c_m,
                "mse": float(e_m.mean()), "mse_se": float(e_m.std(ddof=1) / np.sqrt(e_m.size)),
                "spearman": float(r.mean()),
                "spearman_ci95": [float(r.mean() - 1.96 * r.std(ddof=1) / np.sqrt(r.size)),
                                  float(r.mean() + 1.96 * r.std(ddof=1) / np.sqrt(r.size))],
                "seconds_per_eval": float(c_m), "replicates": int(e_m.size)})
    bias = []
    for (name, K), w in acc.items():
        mean = torch.from_numpy(w.mean.reshape(N, -1))
        var_point = w.trace_cov / N if w.count > 1 else float("nan")
        b2 = float(((mean - ref).pow(2).sum(1) - v_ref).mean()) - var_point / w.count
        bias.append({"design": name, "budget": K, "bias2": b2, "variance": var_point,
                     "mse": float(np.mean(err[name, K])), "bias2_fraction_of_mse": b2 / float(np.mean(err[name, K])),
                     "relative_bias": float(np.sqrt(max(b2, 0.0)) / ref.pow(2).sum(1).mean().sqrt())})
    return {
        "description": "D-TRAK-style attribution on 8x8 digits (classes 0, 1): feature MSE to a reference, "
                       "ECM over iid uniform t at equal budget, per-query Spearman of cosine scores",
        "command": " ".join(["python -m benchmarks.attribution.study", *s.extra.get("argv", [])]), "settings": asdict(s),
        "replicates_run": n_rep, "n_points": N, "n_train": n_train, "n_queries": N - n_train, "points": point_info,
        "n_params_feature": P, "proj_dim": s.proj_dim,
        "reference": {"k_per_half": s.ref_k, "design": "stratified", "seconds": ref_seconds,
                      "mean_sq_norm": float(ref.pow(2).sum(1).mean()), "mean_variance": float(v_ref.mean()),
                      "relative_error": float((v_ref.mean() / ref.pow(2).sum(1).mean()).sqrt()),
                      "half_vs_half_spearman": float(np.mean(half_rho))},
        "grad_norm_by_t": norm_info, "records": records, "grid_bias": bias,
        "lds": {"computed": False, "why": "not run: 16 retrained models do not fit the study's time budget"},
        "seconds_total": time.perf_counter() - t_start, "machine": machine_info(s.threads),
    }


def main(argv=None) -> None:
    parser, arg = argument_parser("benchmarks.attribution.study", __doc__)
    d = Settings()
    for name in ("n_train", "n_heldout", "n_generated", "replicates", "min_replicates", "ref_k", "proj_dim",
                 "threads", "seed"):
        arg("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    arg("--time-budget-s", type=float, default=None)
    arg("--budgets", type=int, nargs="+", default=list(d.budgets))
    arg("--out", type=Path, default=RESULTS / "study.json")
    args = parser.parse_args(argv)
    keys = ("n_train", "n_heldout", "n_generated", "replicates", "min_replicates", "ref_k", "proj_dim", "threads",
            "seed", "time_budget_s")
    s = Settings(**{k: getattr(args, k) for k in keys}, budgets=tuple(args.budgets),
                 extra={"argv": list(sys.argv[1:] if argv is None else argv)})
    out = run(s)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, out)
    print(f"wrote {args.out} in {out['seconds_total']:.0f}s")


if __name__ == "__main__":
    main()
