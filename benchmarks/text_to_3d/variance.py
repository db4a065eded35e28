r"""Variance and cost of SDS configurations against a reference gradient (the study's stages 3–5).

:func:`reference_gradient` (many renders × stratified draws, its own variance from the batch
spread, the draws' $\lVert f\rVert^2$ for the oracle), :func:`measure_configs` (MSE to it over
replicates and the median step time, configurations interleaved), :func:`ecm_table`,
:func:`fit_components` ($V = \sigma_B^2/R + \sigma_W^2/(RK)$ on the uniform grid),
:func:`fit_costs` and :func:`ecm_vs_ratio`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from carv_core import Welford, cost, predict, predicted_variance
from carv_torch import sds, uniform_timesteps

from .nerf import flat_grad, upstream
from .pipeline import BASELINE, T_RANGE, Method, Progress, gradient_step, make_guidance
from ..measure import ecm_estimate
from .scenes import sample_cameras
from .teacher import null_condition, teacher_condition


def _uniform_twin(m: Method) -> str | None:
    # The uniform i.i.d. configuration at the same (R, K): RE's denominator.
    if m.K == "auto":
        return None
    return BASELINE.name if (m.R, m.K) == (2, 1) else f"uniform R={m.R} K={m.K}"


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
    for r in rows:
        r["ecm"], r["ecm_se"] = ecm_estimate(base["mse"], base["mse_se"], base["cost"],
                                             r["mse"], r["mse_se"], r["cost"])
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
