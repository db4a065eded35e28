r"""Statistics of the upstream measurement: $V$, $\sigma_B^2$ per design, reductions, ECM, the CFG components.

From the raw rows of :func:`.upstream_measure.measure` (per replicate $e_i$, $x_i$, $d_i$;
$R_c = RP$ cameras per replicate, $P$ the period):

* $V$ = the MSE to the reference (:class:`carv_core.Welford`; it includes the reference's own
  variance $V_{\rm ref}$, as in the study); for a period of $P$ steps the per-step equivalent
  $P(\mathrm{MSE} - V_{\rm ref}) + V_{\rm ref}$. SE from the spread of $e_i$.
* $\hat\sigma_B^2(\text{design}) = \frac1n\sum_i R_c(x_i - V_{\rm ref})$ (the split-inner cross product),
  95 % interval $\pm 1.96$ SE. The i.i.d. value pools every i.i.d. row of the checkpoint
  (all $R$, both inner configurations: $\sigma_B^2$ does not depend on either), weighted by
  inverse variance.
* $\hat\sigma_W^2$ of an inner configuration: the mean of $R_c K d_i/2$ over all its rows.
* reduction $1 - \hat\sigma_B^2(\text{design})/\hat\sigma_B^2(\text{iid})$; camera designs
  against the pooled i.i.d. value (independent replicates), the control variate against
  its own i.i.d. row (the same replicates, paired); percentile bootstrap intervals.
* ECM $=$ :func:`carv_core.ecm` over the baseline row (inner ``baseline``, i.i.d., $R = 2$),
  SE from the two $V$ SEs (independent); $K^\star$ from :func:`carv_core.k_star` with the
  design's $\hat\sigma_B^2$.
"""

from __future__ import annotations

import math

import numpy as np

from carv_core import ecm, k_star, predict, reuse_ceiling

from ..measure import bootstrap_ci, ecm_estimate, mean_se
from .variance import ecm_vs_ratio

__all__ = ["mean_se", "bootstrap_ci", "records", "cfg_components", "attainable", "summarise"]

Z95 = 1.959963984540054


def _pooled(rows_sb: list[np.ndarray]):
    # Inverse-variance weighted mean of the rows' means, weights fixed from the sample.
    w = np.array([1.0 / max(mean_se(s)[1] ** 2, 1e-300) for s in rows_sb])
    w = w / w.sum()

    def stat(*samples):
        return float(sum(wi * s.mean() for wi, s in zip(w, samples)))

    return stat(*rows_sb), stat


def _k_star(c_u, c_d, sb, sw):
    return k_star(c_u, c_d, sb, sw) if sb > 0 and sw >= 0 else None


def records(rows: list[dict], *, var_ref: float, c_u: float, c_d: float, rng: np.random.Generator,
            n_boot: int = 2000, checkpoint: str = "") -> dict:
    """The records of one checkpoint (one per design row and per control-variate table group)."""
    base = next((r for r in rows if (r["inner"], r["upstream"], r["R"]) == ("baseline", "iid", 2)), None)
    if base is None:
        raise ValueError("rows must contain the baseline row (inner 'baseline', upstream 'iid', R = 2)")
    v_b, se_b = _v(base, var_ref)

    def sb_of(r):
        return r["R"] * r["period"] * (np.asarray(r["cross"]) - var_ref)

    split = [r for r in rows if r["cross"] is not None]
    sw = {inner: float(np.mean(np.concatenate([r["R"] * r["period"] * r["K"] * np.asarray(r["dab"]) / 2
                                               for r in split if r["inner"] == inner])))
          for inner in sorted({r["inner"] for r in split})}
    iid = [sb_of(r) for r in split if r["upstream"] == "iid"]
    sb_iid, pooled_stat = _pooled(iid)
    sb_iid_ci = bootstrap_ci(iid, pooled_stat, rng=rng, n_boot=n_boot)
    out = []

    def record(r, upstream, V, V_se, sb_s, cost, red, red_ci, **extra):
        sb, sb_se = mean_se(sb_s) if sb_s is not None else (float("nan"), float("nan"))
        e, e_se = ecm_estimate(v_b, se_b, base["cost"], V, V_se, cost)
        rec = dict(checkpoint=checkpoint, inner=r["inner"], upstream=upstream, R=r["R"], K=r["K"],
                   period=r["period"], reps=r["reps"], V=V, V_se=V_se, sigma_b2=sb, sigma_b2_se=sb_se,
                   sigma_b2_ci=[sb - Z95 * sb_se, sb + Z95 * sb_se], sigma_b2_reduction=red,
                   sigma_b2_reduction_ci=red_ci, sigma_w2=sw.get(r["inner"]), cost_s=cost,
                   ecm=e, ecm_se=e_se,
                   k_star=_k_star(c_u, c_d, sb, sw.get(r["inner"], float("nan"))), **extra)
        rec["name"] = f"{r['inner']} {upstream} R={r['R']}" + (f" P={r['period']}" if r["period"] > 1 else "")
        out.append(rec)
        return rec

    cv_cost = {(r["inner"], r["R"]): r for r in rows if r["upstream"] == "cv"}
    vjp_cost = {(r["inner"], r["R"]): r["cost"] for r in rows if r["upstream"] == "cv-vjp"}
    for r in rows:
        if r["upstream"] in ("cv", "cv-vjp"):
            continue
        V, V_se = _v(r, var_ref)
        sb_s = sb_of(r) if r["cross"] is not None else None
        red, red_ci = float("nan"), [float("nan"), float("nan")]
        if sb_s is not None:
            red = 1 - float(sb_s.mean()) / sb_iid
            red_ci = bootstrap_ci([sb_s, *iid], lambda s, *rest: 1 - s.mean() / pooled_stat(*rest),
                                  rng=rng, n_boot=n_boot)
        record(r, r["upstream"], V, V_se, sb_s, r["cost"], red, red_ci, bias_ratio=r["bias_ratio"],
               cost_q1=r["cost_q1"], cost_q3=r["cost_q3"],
               sigma_b2_from_V=r["R"] * (V - var_ref) - sw.get(r["inner"], float("nan")) / r["K"])
        timing = cv_cost.get((r["inner"], r["R"]))
        groups: dict = {}
        for p in r["posthoc"]:
            groups.setdefault((p["staleness"], p["kind"]), []).append(p)
        for (s, kind), ps in groups.items():
            if timing is None:
                continue
            E = np.stack([p["err"] for p in ps], 1)        # (n, tables)
            X = np.stack([p["cross"] for p in ps], 1)
            M = E.shape[1]
            V = float(E.mean())
            V_se = math.sqrt(E.mean(1).var(ddof=1) / len(E) + (E.mean(0).var(ddof=1) / M if M > 1 else 0.0))
            Rc = r["R"]
            sb_s = Rc * (X.mean(1) - var_ref)
            paired = np.stack([X.mean(1), np.asarray(r["cross"])], 1) - var_ref
            red = 1 - paired[:, 0].mean() / paired[:, 1].mean()
            red_ci = bootstrap_ci([paired], lambda q: 1 - q[:, 0].mean() / q[:, 1].mean(), rng=rng, n_boot=n_boot)
            rec = record(r, "cv", V, V_se, sb_s, timing["cost"], float(red), red_ci, staleness=s,
                         staleness_effective=ps[0]["effective"], table=kind, tables=M,
                         cv_extra_cost_s=timing["cost"] - r["cost"], cost_q1=timing["cost_q1"],
                         cost_q3=timing["cost_q3"], cost_batched_vjp_s=vjp_cost.get((r["inner"], r["R"])))
            rec["name"] = f"{r['inner']} cv s={s} {kind} R={r['R']}"
            if ps[0]["index"] == 0 and s == r["posthoc"][0]["staleness"]:
                rec["online_check"] = {"mse_online_step": timing["mse"], "mse_online_se": mean_se(timing["err"])[1],
                                       "mse_posthoc_table0": float(E[:, 0].mean()),
                                       "mse_posthoc_table0_se": mean_se(E[:, 0])[1]}
    # 5. What no upstream method can beat at these inner configurations: sigma_B^2 = 0 leaves
    #    V = sigma_W^2/(R K) + V_ref at the i.i.d. row's cost.
    bounds = [{"inner": r["inner"], "R": r["R"], "K": r["K"],
               "ecm_if_sigma_b2_zero": ecm(v_b, base["cost"], sw[r["inner"]] / (r["R"] * r["K"]) + var_ref, r["cost"])}
              for r in split if r["upstream"] == "iid" and sw.get(r["inner"], 0) > 0]
    return {"records": out, "sigma_b2_iid": sb_iid, "sigma_b2_iid_ci": sb_iid_ci, "sigma_w2": sw,
            "baseline": {"V": v_b, "V_se": se_b, "cost_s": base["cost"]}, "bounds": bounds,
            "cv_decomposition": _cv_decomposition(out, sw, sb_iid)}


def _cv_decomposition(recs: list[dict], sw: dict, sb_iid: float) -> list[dict]:
    r"""Proposition 4 of maths/upstream from the fresh tables, in units of $\sigma_B^2$ (i.i.d. cameras).

    A SAGA table gives $r_1 = F + E$, the mean of $M$ such tables $r_M = F + E/M$, with $F$ the
    within-cell part of $\sigma_B^2$ (the floor) and $E$ one table entry's error (another camera
    of the cell, plus its inner noise $N = \sigma_W^2/(K\sigma_B^2)$): $E = (r_1 - r_M)M/(M - 1)$,
    $F = r_1 - E$. The drift at age $s$ is $r_1(s) - r_1(0)$.
    """
    out = []
    cv = [r for r in recs if r["upstream"] == "cv"]
    for inner, R in sorted({(r["inner"], r["R"]) for r in cv}):
        rows = {(r["table"], r["staleness"]): r for r in cv if (r["inner"], r["R"]) == (inner, R)}
        fresh = min(r["staleness"] for r in rows.values())
        saga = rows.get(("saga", fresh))
        mean = next((r for (kind, st), r in rows.items() if kind.startswith("mean") and st == fresh), None)
        if saga is None or mean is None:
            continue
        M = int(mean["table"][4:])
        r1, rM = 1 - saga["sigma_b2_reduction"], 1 - mean["sigma_b2_reduction"]
        E = (r1 - rM) * M / (M - 1)
        drift = {int(st): 1 - r["sigma_b2_reduction"] - r1 for (kind, st), r in rows.items()
                 if kind == "saga" and st != fresh}
        out.append({"inner": inner, "R": R, "K": saga["K"], "r_saga": r1, "r_mean": rM, "M": M, "entry_error": E,
                    "floor": r1 - E, "inner_noise": sw[inner] / (saga["K"] * sb_iid) if sb_iid > 0 else None,
                    "drift": drift})
    return out


def _v(r: dict, var_ref: float) -> tuple[float, float]:
    # Per-step V (one V_ref included) and its SE.
    P = r["period"]
    se = mean_se(r["err"])[1] * P
    return (r["mse"], se) if P == 1 else (P * (r["mse"] - var_ref) + var_ref, se)


def cfg_components(rows: list[dict], *, var_ref: float, c_u: float, c_d: float, scale: float,
                   rng: np.random.Generator, n_boot: int = 2000) -> dict:
    r"""At one CFG scale: $\hat\sigma_B^2$ (pooled over the i.i.d. $R = 2$ rows), $\hat\sigma_W^2$ per inner
    configuration, within share, the inner-only ceiling :func:`carv_core.reuse_ceiling`, the
    measured ECM of ``carv`` over ``baseline`` and the ECM-vs-$c_u/c_d$ curve of :func:`carv_core.predict`."""
    by = {r["inner"]: r for r in rows if r["upstream"] == "iid" and r["R"] == 2 and r["cross"] is not None}
    if set(by) < {"baseline", "carv"}:
        raise ValueError(f"rows need i.i.d. R = 2 rows with B draws for 'baseline' and 'carv', got {sorted(by)}")
    b, c = by["baseline"], by["carv"]
    sbs = [2 * (np.asarray(r["cross"]) - var_ref) for r in (b, c)]
    sb, stat = _pooled(sbs)
    sb_ci = bootstrap_ci(sbs, stat, rng=rng, n_boot=n_boot)
    sw_s = {k: r["R"] * r["K"] * np.asarray(r["dab"]) / 2 for k, r in by.items()}   # R K d / 2
    sw = {k: float(v.mean()) for k, v in sw_s.items()}
    sw_se = {k: mean_se(v)[1] for k, v in sw_s.items()}
    (vb, seb), (vc, sec) = _v(b, var_ref), _v(c, var_ref)
    e, e_se = ecm_estimate(vb, seb, b["cost"], vc, sec, c["cost"])
    out = {"scale": scale, "sigma_b2": sb, "sigma_b2_ci": sb_ci, "sigma_w2": sw["baseline"],
           "sigma_w2_se": sw_se["baseline"], "sigma_w2_carv": sw["carv"], "K_carv": c["K"],
           "V_baseline": vb, "V_baseline_se": seb, "V_carv": vc, "V_carv_se": sec,
           "cost_baseline_s": b["cost"], "cost_carv_s": c["cost"], "ecm": e, "ecm_se": e_se,
           "var_ref": var_ref}
    if sb > 0:
        out["within_share"] = sw["baseline"] / (sb + sw["baseline"])
        out["ceiling"] = reuse_ceiling(sb, sw["baseline"])
        out["k_star"] = k_star(c_u, c_d, sb, sw["baseline"])
        out["ecm_predicted"] = predict(2, c["K"], c_u, c_d, sb, sw["baseline"]).ecm
        out["ecm_vs_ratio"] = ecm_vs_ratio({"sigma_b2": sb, "sigma_w2": sw["baseline"]},
                                           {"sigma_b2": sb, "sigma_w2": sw["carv"]})
    return out


def attainable(r: dict, n_cells: int, step: int) -> bool:
    r"""Whether a record's estimator can run online: every camera design; a control variate only as
    the one-sample (``saga``) table that :class:`carv_torch.CellTable` holds, at least as old as a
    SAGA table's mean age $\min(C/R, N)$ ($C$ cells, $R$ views per step, $N$ steps run). Fresher or
    averaged tables (``s=0``, ``mean3``) measure what a better table would give; they do not run."""
    if r["upstream"] != "cv":
        return True
    return r["table"] == "saga" and r["staleness_effective"] >= min(n_cells / r["R"], step)


def summarise(checkpoints: list[dict], *, design_Rs, cv_Rs, n_cells: int, ecm_target: float = 3.3,
              reduction_target: float = 0.3) -> list[dict]:
    """Per checkpoint: the best ECM, and the best $\\sigma_B^2$ reduction of the camera designs (each $R$ of
    ``design_Rs``) and of the control variate (each $R$ of ``cv_Rs``), with their targets, over the
    :func:`attainable` records (``best_ecm_any``: over all records, for reference)."""
    out = []
    for ck in checkpoints:
        every = ck["analysis"]["records"]
        recs = [r for r in every if attainable(r, n_cells, ck["step"])]
        best = max(recs, key=lambda r: r["ecm"])
        top_any = max(every, key=lambda r: r["ecm"])
        row = {"checkpoint": ck["label"], "step": ck["step"],
               "best_ecm": {k: best[k] for k in ("name", "ecm", "ecm_se")},
               "best_ecm_any": {k: top_any[k] for k in ("name", "ecm", "ecm_se")},
               "ecm_target_met": best["ecm"] >= ecm_target, "reductions": []}
        for family, Rs in (("camera designs", design_Rs), ("control variate", cv_Rs)):
            for R in Rs:
                cand = [r for r in recs if r["R"] == R and r["upstream"] not in ("iid",)
                        and (r["upstream"] == "cv") == (family == "control variate")
                        and math.isfinite(r["sigma_b2_reduction"])]
                if not cand:
                    continue
                top = max(cand, key=lambda r: r["sigma_b2_reduction"])
                row["reductions"].append({"family": family, "R": R, "name": top["name"],
                                          "reduction": top["sigma_b2_reduction"],
                                          "ci": top["sigma_b2_reduction_ci"],
                                          "met": top["sigma_b2_reduction"] >= reduction_target})
        out.append(row)
    return out
