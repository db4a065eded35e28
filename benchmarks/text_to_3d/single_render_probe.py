r"""Single-render ($R = 1$) variance probes against the $R = 2$ split-half probes, on the benchmark.

    OMP_WAIT_POLICY=PASSIVE nice python -m benchmarks.text_to_3d.single_render_probe \
        --out benchmarks/text_to_3d/results/single_render_probe.json

A baseline SDS run (threestudio's estimator, $R = 2$, $K = 1$, Adam) to ``--baseline-steps``
gives a NeRF and a warm optimiser; then training goes on at $R = 1$, $K$ i.i.d. draws (every
step a probe step, as in a burst), and at every step $s$:

1. the **training stream**: render one camera, draw $K$, two VJPs give $V_{A,s}$, $V_{B,s}$;
   :class:`carv_torch.probes.SingleRenderProbe` (``order`` 1 and 2) turns the run of
   $u_s = \frac12(V_{A,s} + V_{B,s})$ into $\hat\sigma_B^2$, $\hat\sigma_W^2$; the optimiser steps
   on $u_s$ (the gradient of the surrogate loss: $K = 2h$), so this stream has the drift *and*
   the optimiser's feedback of docs/maths/single-render-probes;
2. the **reference** at the same $\theta_s$, before the step: a second, independent camera
   with its own $K$ draws (two more VJPs, $V'_{A,s}$, $V'_{B,s}$), and the $R = 2$ split-half
   probe on the two renders (:func:`carv_torch.estimator.split_half_components`, the maths
   of :func:`carv_torch.probes.parameter_space_components`, checked equal at the first
   step), unbiased for $\sigma_B^2(\theta_s)$, $\sigma_W^2(\theta_s)$;
3. the **shadow stream**: the same single-render probe on the second camera's $u'_s$, whose
   draws never reach the optimiser: drift without feedback.

So ``R1 - R2`` is the single-render probe's bias on this pipeline, ``shadow - R2`` its drift
part and ``R1 - shadow`` the feedback part; the feedback is also predicted from the
cross-products $\langle u_{s-i} - u'_{s-i},\, u'_{s-j}\rangle$ (unbiased for
$\mathbb E\langle e_{s-i}, G_{s-j}\rangle$, Proposition 2's $F_p$). Means are over the
measured steps; standard errors are batch means over blocks of ``--block`` steps (window
estimates overlap); the per-step series are written too (``series``).
$K^\star = \sqrt{(c_u/c_d)\,\sigma_W^2/\sigma_B^2}$ at the measured $c_u/c_d$ (:func:`.nerf.measure_costs`).

Why the shadow stream is feedback-free and the cross-products unbiased: $u'_{s-i}$'s draws
never reach the optimiser, so $\mathbb E\langle e'_{s-i}, G_{s-j}\rangle = 0$, and $e'_{s-j}$ has mean 0
given everything drawn before it.
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import numpy as np
import torch

from carv_core import k_star
from carv_torch.estimator import split_half_components
from carv_torch.probes import SingleRenderProbe, _vjp, parameter_space_components

from .nerf import make_nerf, measure_costs, nerf_parameters
from .pipeline import BASELINE, Method, Progress, TrainSettings, gradient_step, make_guidance, write_json
from .scenes import sample_cameras
from .teacher import GUIDANCE_SCALE, load_teacher, null_condition, teacher_condition

ORDERS = (1, 2)


def _batch_means(x: np.ndarray, block: int) -> tuple[float, float]:
    """Mean and batch-means standard error (blocks of ``block`` consecutive entries)."""
    x = np.asarray(x, dtype=float)
    n = len(x) // block
    if n < 2:
        return float(np.mean(x)), float("nan")
    means = x[: n * block].reshape(n, block).mean(1)
    return float(np.mean(x)), float(np.std(means, ddof=1) / math.sqrt(n))


def _weights(order: int) -> np.ndarray:
    # c_j^2 / C(2p, p), j = 0 (newest) .. p.
    return np.array([math.comb(order, j) ** 2 for j in range(order + 1)], float) / math.comb(2 * order, order)


def _k(ratio: float, sb: float, sw: float) -> float:
    return float(k_star(ratio, 1.0, sb, sw)) if sb > 0 and sw > 0 else float("inf")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline-steps", type=int, default=150)
    ap.add_argument("--warmup", type=int, default=10, help="R = 1 steps before measuring")
    ap.add_argument("--steps", type=int, default=240, help="measured R = 1 steps")
    ap.add_argument("--K", type=int, default=8, help="inner draws per render (even)")
    ap.add_argument("--block", type=int, default=20, help="batch-means block (steps)")
    ap.add_argument("--max-seconds", type=float, default=520.0,
                    help="stop the measured phase after this long (the steps done are recorded)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    args = ap.parse_args(argv)
    if args.K < 2 or args.K % 2:
        raise SystemExit(f"--K must be even and >= 2, got {args.K}")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    h = args.K // 2
    teacher = load_teacher()
    cond, unc = teacher_condition(0), null_condition()
    s = TrainSettings()
    root = torch.Generator().manual_seed(args.seed)
    seeds = [int(v) for v in torch.randint(0, 2**62, (5,), generator=root)]
    g_cam, g_ref = torch.Generator().manual_seed(seeds[0]), torch.Generator().manual_seed(seeds[1])

    # 1. Baseline training (threestudio's estimator), keeping the optimiser.
    nerf = make_nerf(s.grid_size, s.image_size, s.n_samples)
    params = nerf_parameters(nerf)
    opt = torch.optim.Adam(params, lr=s.lr, betas=tuple(s.betas))
    base = make_guidance(teacher, BASELINE, seed=seeds[2], guidance_scale=s.guidance_scale)
    bar = Progress(args.baseline_steps, "baseline", unit=" steps")
    for step in range(args.baseline_steps):
        base.update_step(0, step)
        gradient_step(nerf, base, sample_cameras(BASELINE.R, g_cam), cond, unc)
        opt.step()
        bar.update(step + 1)
    bar.close()
    costs = measure_costs(nerf, teacher, cond, unc, guidance_scale=GUIDANCE_SCALE, n_draws=16, repeats=5)
    ratio = costs.c_u / costs.c_d
    print(f"c_u = {costs.c_u * 1e3:.1f} ms, c_d = {costs.c_d * 1e3:.2f} ms, c_u/c_d = {ratio:.1f}")

    # 2. R = 1 training with probes at every step; the reference at the same states.
    method = Method("R=1 probe", R=1, K=args.K, proposal="uniform", sampler="iid")
    train_g = make_guidance(teacher, method, seed=seeds[3], guidance_scale=s.guidance_scale)
    ref_g = make_guidance(teacher, method, seed=seeds[4], guidance_scale=s.guidance_scale)
    probes = {(stream, p): SingleRenderProbe(order=p) for stream in ("R1", "shadow") for p in ORDERS}
    rec = {"ref_sb": [], "ref_sw": [], "step_norm": []}
    win = {(stream, p): {"s": [], "sb": [], "sw": []} for stream, p in probes}
    fb = {p: [] for p in ORDERS}     # predicted feedback F_p per window
    us, u2s = [], []                 # the last few u_s, u'_s (for the cross-products)
    check = None
    n_total = args.warmup + args.steps
    bar = Progress(n_total, "R=1 with R=2 reference", unit=" steps")
    t0 = time.perf_counter()
    done = 0
    for i in range(n_total):
        if i >= args.warmup and time.perf_counter() - t0 > args.max_seconds:
            break
        train_g.update_step(0, args.baseline_steps + i)
        ref_g.update_step(0, args.baseline_steps + i)
        nerf.zero_grad(set_to_none=True)
        x = teacher.encode(nerf(sample_cameras(1, g_cam)))
        train_g(x, cond, unc, rgb_as_latents=True)
        Y = train_g.last.estimate.values
        va, vb = _vjp(x, params, Y[:, :h].mean(1)), _vjp(x, params, Y[:, h:].mean(1))
        u = (va + vb) / 2
        if i >= args.warmup:
            x2 = teacher.encode(nerf(sample_cameras(1, g_ref)))
            ref_g(x2, cond, unc, rgb_as_latents=True)
            Y2 = ref_g.last.estimate.values
            va2, vb2 = _vjp(x2, params, Y2[:, :h].mean(1)), _vjp(x2, params, Y2[:, h:].mean(1))
            u2 = (va2 + vb2) / 2
            ref = split_half_components((va + va2) / 2, (vb + vb2) / 2, torch.stack([u, u2]), h)
            if check is None:  # the R = 2 reference is the library's probe on the two renders
                lib = parameter_space_components(torch.cat([x, x2]), torch.cat([Y, Y2]), params)
                check = max(abs(float(lib.sigma_b2 - ref.sigma_b2)) / abs(float(ref.sigma_b2)),
                            abs(float(lib.sigma_w2 - ref.sigma_w2)) / abs(float(ref.sigma_w2)))
            rec["ref_sb"].append(float(ref.sigma_b2))
            rec["ref_sw"].append(float(ref.sigma_w2))
            j = i - args.warmup
            for (stream, p), probe in probes.items():
                a, b = (va, vb) if stream == "R1" else (va2, vb2)
                out = probe.update(a, b, h, step=j)
                if out is not None:
                    w = win[(stream, p)]
                    w["s"].append(j)
                    w["sb"].append(float(out.sigma_b2))
                    w["sw"].append(float(out.sigma_w2))
            us, u2s = (us + [u])[-3:], (u2s + [u2])[-3:]
            for p in ORDERS:  # F_p = (2/N_p) sum_{j<i} c_i c_j E<e_{s-i}, G_{s-j}>, by cross-products
                if len(us) > p:
                    c = [(-1) ** q * math.comb(p, q) for q in range(p + 1)]
                    tot = 0.0
                    for ii in range(1, p + 1):
                        for jj in range(ii):
                            e = us[-1 - ii] - u2s[-1 - ii]
                            tot += c[ii] * c[jj] * float(torch.dot(e, u2s[-1 - jj]))
                    fb[p].append(2 * tot / math.comb(2 * p, p))
            done += 1
        # The step: the surrogate's gradient is J^T Ybar = u (K = 2h), set directly.
        before = torch.cat([q.detach().reshape(-1) for q in params])
        off = 0
        for q in params:
            q.grad = u[off:off + q.numel()].view_as(q).clone()
            off += q.numel()
        opt.step()
        if i >= args.warmup:
            after = torch.cat([q.detach().reshape(-1) for q in params])
            rec["step_norm"].append(float(torch.linalg.vector_norm(after - before)))
        bar.update(i + 1)
    bar.close()
    elapsed = time.perf_counter() - t0

    # 3. Summaries.
    ref_sb, ref_sw = np.array(rec["ref_sb"]), np.array(rec["ref_sw"])
    res = {"c_u_over_c_d": ratio, "c_u": costs.c_u, "c_d": costs.c_d, "K": args.K, "h": h,
           "baseline_steps": args.baseline_steps, "warmup": args.warmup, "steps_requested": args.steps,
           "steps_measured": done, "block": args.block, "seconds_measured_phase": elapsed,
           "seconds_total": None, "seed": args.seed, "threads": args.threads,
           "machine": platform.platform(), "torch": torch.__version__,
           "reference_matches_parameter_space_components_rel": check,
           "mean_step_norm": float(np.mean(rec["step_norm"])) if rec["step_norm"] else None,
           "lr": s.lr, "betas": list(s.betas)}
    sb, sb_se = _batch_means(ref_sb, args.block)
    sw, sw_se = _batch_means(ref_sw, args.block)
    res["R2"] = {"sigma_b2": sb, "sigma_b2_se": sb_se, "sigma_w2": sw, "sigma_w2_se": sw_se,
                 "k_star": _k(ratio, sb, sw), "n": len(ref_sb)}
    series = {"R2": {"sigma_b2": rec["ref_sb"], "sigma_w2": rec["ref_sw"]}, "step_norm": rec["step_norm"]}
    print(f"{'R=2 reference':>22}: sigma_B^2 = {sb:.4g} ({sb_se:.2g}), sigma_W^2 = {sw:.4g} ({sw_se:.2g}), "
          f"K* = {res['R2']['k_star']:.3g}")
    for (stream, p), w in win.items():
        s_idx = np.array(w["s"], int)
        if len(s_idx) == 0:
            continue
        wt = _weights(p)
        # The reference weighted like the window (c_j^2 / C(2p, p) on steps s, s-1, ..., s-p).
        ref_b = np.array([sum(wt[q] * ref_sb[k - q] for q in range(p + 1)) for k in s_idx])
        ref_w = np.array([sum(wt[q] * ref_sw[k - q] for q in range(p + 1)) for k in s_idx])
        b, b_se = _batch_means(w["sb"], args.block)
        ww, ww_se = _batch_means(w["sw"], args.block)
        db, db_se = _batch_means(np.array(w["sb"]) - ref_b, args.block)
        dw, dw_se = _batch_means(np.array(w["sw"]) - ref_w, args.block)
        entry = {"sigma_b2": b, "sigma_b2_se": b_se, "sigma_w2": ww, "sigma_w2_se": ww_se,
                 "k_star": _k(ratio, b, ww), "n_windows": len(s_idx),
                 "minus_R2_sigma_b2": db, "minus_R2_sigma_b2_se": db_se,
                 "minus_R2_sigma_w2": dw, "minus_R2_sigma_w2_se": dw_se,
                 "relative_bias_sigma_b2": db / float(ref_b.mean()),
                 "relative_bias_sigma_b2_se": db_se / float(ref_b.mean()),
                 "relative_bias_sigma_w2": dw / float(ref_w.mean()),
                 "relative_bias_sigma_w2_se": dw_se / float(ref_w.mean())}
        series[f"{stream}_order{p}"] = {"step": w["s"], "sigma_b2": w["sb"], "sigma_w2": w["sw"]}
        if stream == "R1":
            f, f_se = _batch_means(fb[p], args.block)
            entry["predicted_feedback"] = f
            entry["predicted_feedback_se"] = f_se
        res[f"{stream}_order{p}"] = entry
        print(f"{stream + ' order ' + str(p):>22}: sigma_B^2 = {b:.4g} ({b_se:.2g}), sigma_W^2 = {ww:.4g} "
              f"({ww_se:.2g}), K* = {entry['k_star']:.3g}; minus R=2: sigma_B^2 {db:+.3g} ({db_se:.2g}), "
              f"sigma_W^2 {dw:+.3g} ({dw_se:.2g})"
              + (f"; predicted feedback {entry['predicted_feedback']:+.3g} ({entry['predicted_feedback_se']:.2g})"
                 if stream == "R1" else ""))
    for p in ORDERS:
        series[f"predicted_feedback_order{p}"] = fb[p]
    res["series"] = series
    res["seconds_total"] = time.perf_counter() - t_start
    print(f"measured {done} steps in {elapsed:.0f} s; total {res['seconds_total']:.0f} s; "
          f"reference check (rel. diff) {check}")
    write_json(res, args.out)
    return res


if __name__ == "__main__":
    main()
