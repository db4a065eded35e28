r"""Variance components in the teacher's input space versus parameter space, on the benchmark.

    python -m benchmarks.text_to_3d.components_space --out benchmarks/text_to_3d/results/components_space.json

A baseline SDS run to step 10 gives a NeRF; then ``calls`` guidance calls with $R = 2$,
$K = 8$, i.i.d. inner draws, each giving (i) the ANOVA components of the latent-space
residuals (:func:`carv_torch.variance_components`) and (ii) the parameter-space
split-half components of a variance probe (:func:`carv_torch.split_half_components`).
Prints the means and the $K^\star$ each implies at the measured $c_u/c_d$. The point:
$K$ chosen from latent-space components is not the $K$ the parameter gradient needs.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from carv_core import k_star

from .nerf import measure_costs, nerf_parameters
from .pipeline import BASELINE, Method, make_guidance, train, write_json
from .scenes import sample_cameras
from .teacher import GUIDANCE_SCALE, load_teacher, null_condition, teacher_condition


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--steps", type=int, default=10, help="baseline steps before measuring")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    teacher = load_teacher()
    nerf = train(teacher, 0, BASELINE, seed=args.seed, steps=args.steps, progress=False).nerf
    cond, unc = teacher_condition(0), null_condition()
    costs = measure_costs(nerf, teacher, cond, unc, guidance_scale=GUIDANCE_SCALE, n_draws=16, repeats=5)
    ratio = costs.c_u / costs.c_d
    guid = make_guidance(teacher, Method("probe", 2, "auto", "uniform", "iid"), seed=args.seed + 1,
                         fixed_costs=(costs.c_u, costs.c_d))
    guid.config.probe_every = 1
    g = torch.Generator().manual_seed(args.seed + 2)
    x_b, x_w, t_b, t_w = [], [], [], []
    for _ in range(args.calls):
        nerf.zero_grad(set_to_none=True)
        guid(nerf(sample_cameras(2, g)), cond, unc, params=nerf_parameters(nerf))
        step = guid.last
        comps = step.components()  # input-space ANOVA of the same draws
        x_b.append(float(comps.sigma_b2))
        x_w.append(float(comps.sigma_w2))
        t_b.append(float(step.probe.sigma_b2))
        t_w.append(float(step.probe.sigma_w2))
    res = {"c_u_over_c_d": ratio, "calls": args.calls}
    for name, b, w in (("input_space", x_b, x_w), ("parameter_space", t_b, t_w)):
        sb, sw = float(np.mean(b)), float(np.mean(w))
        ks = k_star(ratio, 1.0, sb, sw) if sb > 0 else float("inf")
        res[name] = {"sigma_b2": sb, "sigma_w2": sw, "sigma_b2_se": float(np.std(b, ddof=1) / np.sqrt(len(b))),
                     "k_star": ks}
        print(f"{name:>16}: sigma_B^2 = {sb:.4g} (SE {res[name]['sigma_b2_se']:.2g}), "
              f"sigma_W^2 = {sw:.4g}, K* = {ks:.3g} at c_u/c_d = {ratio:.1f}")
    write_json(res, args.out)
    return res


if __name__ == "__main__":
    main()
