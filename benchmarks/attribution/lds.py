r"""A *reduced* linear datamodeling score (LDS) for the attribution features.

    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.attribution.lds      # adds "lds" to results/study.json

LDS (TRAK): for $M$ random subsets $S_m$ of the training set (fraction $\alpha$), retrain
and measure a model output $f_{S_m}(q)$ per query; the attribution scores predict it by
$g_m(q) = \sum_{r\in S_m}\tau(q, r)$; LDS is the Spearman correlation of $g_m(q)$ with
$f_{S_m}(q)$ over $m$, averaged over queries (``dattri.metric.lds``). Here
$f_S(q) = -\frac1J\sum_j \ell_S(q, t_j, \epsilon_j)$, minus the query's denoising loss under
the retrained model at $J$ fixed draws shared by all models (lower loss = more
"support"), and $\tau$ the cosine score of the features.

*Reduced*: $M$ = ``--subsets`` (16) at $\alpha = 0.5$, one seed each, and every retrain runs
``--steps`` steps (fewer than the shipped model's), so the numbers are comparable
between designs, not with published LDS values.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

import carv_torch
from benchmarks.digits import load_digits, split
from benchmarks.text_to_3d.pipeline import Progress
from benchmarks.timing import argument_parser

from .model import (
    CLASSES,
    N_HELDOUT,
    build_scheduler,
    feature_params,
    generate,
    load_teacher,
)
from .pipeline import configs, cosine_scores, features, make_projector
from .train_unet import train

__all__ = ["main", "model_outputs", "run"]

RESULTS = Path(__file__).resolve().parent / "results"


@torch.no_grad()
def model_outputs(unet, queries: torch.Tensor, *, n_draws: int = 64, seed: int = 7) -> torch.Tensor:
    r"""$f(q) = -\frac1J\sum_j\ell(q, t_j, \epsilon_j)$ with $J$ = ``n_draws`` stratified $t_j$ and seeded $\epsilon_j$, shape ``(Q,)``."""
    abar = build_scheduler().alphas_cumprod.to(torch.float64)
    g = torch.Generator().manual_seed(seed)
    T = abar.shape[0]
    t = ((torch.arange(n_draws) + torch.rand(n_draws, generator=g, dtype=torch.float64)) * T / n_draws).long()
    eps = torch.randn(n_draws, *queries.shape[1:], generator=g)
    out = []
    for q in queries:
        a = abar[t].sqrt().float().view(-1, 1, 1, 1)
        s = (1 - abar[t]).sqrt().float().view(-1, 1, 1, 1)
        pred = unet(a * q + s * eps, t).sample
        out.append(-(pred - eps).pow(2).mean())
    return torch.stack(out)


def run(*, subsets: int = 16, alpha: float = 0.5, steps: int = 800, budgets=(4, 64),
        designs=("iid", "stratified", "systematic+crn", "grid+crn"), n_queries: int = 16,
        proj_dim: int = 512, seed: int = 0, threads: int = 2) -> dict:
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    from dattri.metric import lds

    train_set, held = split(load_digits(CLASSES), N_HELDOUT, seed=0)
    teacher = load_teacher(require_weights=True)
    n_half = n_queries // 2
    queries = torch.cat([held.images[:n_half], generate(teacher, n_queries - n_half, seed=seed + 1)])
    x = torch.cat([train_set.images, queries])
    N = train_set.images.shape[0]
    # 1. retrain on random subsets; outputs on the queries.
    rng = np.random.default_rng(seed)
    masks = [np.sort(rng.choice(N, int(alpha * N), replace=False)) for _ in range(subsets)]
    bar = Progress(subsets, "LDS retrains", unit=" models")
    outputs, train_seconds = [], 0.0
    for m, rows in enumerate(masks):
        s0 = time.perf_counter()
        unet, _ = train(train_set.images[torch.from_numpy(rows)], steps=steps, seed=seed + 100 + m,
                        progress=False)
        train_seconds += time.perf_counter() - s0
        outputs.append(model_outputs(unet, queries))
        bar.update(m + 1)
    bar.close()
    gt = (torch.stack(outputs), torch.from_numpy(np.stack(masks)))
    # 2. scores of the shipped model's features for every design and budget.
    project = make_projector(sum(p.numel() for p in feature_params(teacher.unet)), proj_dim, seed=seed)
    by_name = {c.name: c for c in configs()}
    rows = []
    with carv_torch.set_validate_args(False):
        for name in designs:
            for K in budgets:
                f, sec = features(teacher, x, by_name[name], K, torch.Generator().manual_seed(seed + K), project)
                tau = cosine_scores(f[N:], f[:N])                    # (Q, N)
                rho, _ = lds(tau.T.float(), gt)
                rho = rho.numpy()
                rows.append({"design": name, "budget": K, "lds": float(np.nanmean(rho)),
                             "lds_se": float(np.nanstd(rho, ddof=1) / np.sqrt(np.isfinite(rho).sum())),
                             "seconds": sec})
    return {"computed": True, "reduced": True, "subsets": subsets, "alpha": alpha, "retrain_steps": steps,
            "n_train": N, "n_queries": n_queries, "output": "minus the query's denoising loss at 64 fixed draws",
            "score": "cosine of projected features", "metric": "dattri.metric.lds",
            "retrain_seconds": train_seconds, "seconds_total": time.perf_counter() - t0, "rows": rows,
            "command": "python -m benchmarks.attribution.lds"}


def main(argv=None) -> None:
    parser, arg = argument_parser("benchmarks.attribution.lds", __doc__)
    arg("--subsets", type=int, default=16)
    arg("--steps", type=int, default=800)
    arg("--threads", type=int, default=2)
    arg("--results", type=Path, default=RESULTS / "study.json")
    args = parser.parse_args(argv)
    out = run(subsets=args.subsets, steps=args.steps, threads=args.threads)
    rec = json.loads(args.results.read_text())
    rec["lds"] = out
    args.results.write_text(json.dumps(rec, indent=2, sort_keys=True) + "\n")
    print(json.dumps(out["rows"], indent=1))


if __name__ == "__main__":
    main()
