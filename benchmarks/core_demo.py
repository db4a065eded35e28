"""A worked example of carv_core: exact variances, the allocator's K, and an ECM table.

Run with ``make demo`` (or ``python -m benchmarks.core_demo``). Everything here
is exact: the integrand is a table f(xi, t) over 16 upstream outcomes and the
1000 integer steps of a Stable-Diffusion schedule, so the variance of every
sampler is computed by enumeration (carv_core.testing), not estimated.

The integrand mimics an SDS residual: its size follows w_SDS(t) and it varies
with both the upstream outcome xi (between-variance) and t (within-variance).
Costs are an assumption stated on the command line (default c_u/c_d = 8, inside
the 6-9 teacher calls that design.md reports for render + VAE encode), not a
measurement; the text-to-3D benchmark measures them.
"""

from __future__ import annotations

import argparse

import numpy as np

from carv_core import (
    InverseCDFSampler,
    best_allocation,
    ecm,
    k_star,
    make_schedule,
    optimal_k,
    reuse_ceiling,
    sds_weight,
    uniform_timesteps,
    weight_heuristic,
)
from carv_core.testing import between_variance, exact_law, exact_moments, within_variance


def sds_like_table(n_outcomes: int = 16, dim: int = 4, seed: int = 0):
    """f(xi, t) = w_SDS(t) * (a_xi + b_xi * z(t)): an upstream part and a t-dependent part."""
    rng = np.random.default_rng(seed)
    sched = make_schedule("scaled_linear", 1000, 0.00085, 0.012)
    w = sds_weight("sds", sched)
    T = w.size
    a = rng.normal(size=(n_outcomes, 1, dim))
    b = rng.normal(size=(n_outcomes, 1, dim))
    phase = rng.uniform(0, 2 * np.pi, size=(1, 1, dim))
    z = np.sin(np.linspace(0, 6 * np.pi, T)[None, :, None] + phase) * 2.0
    return sched, (w[None, :, None] * (0.6 * a + b * z))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cost-ratio", type=float, default=8.0, help="c_u / c_d (assumed)")
    ap.add_argument("--k-max", type=int, default=32)
    args = ap.parse_args(argv)
    c_d, c_u = 1.0, args.cost_ratio

    sched, table = sds_like_table()
    T = sched.num_train_timesteps
    p = uniform_timesteps(T)
    q_w = weight_heuristic(p, sds_weight("sds", sched), delta=0.1)

    sigma_b2 = between_variance(table, p)
    iid1 = exact_law(InverseCDFSampler(p, p, "iid"), 1, 1, T)
    sigma_w2 = within_variance(iid1, table)
    print("Worked example (exact variances by enumeration over t; costs assumed)")
    print(f"  T = {T}, p uniform on [20, 980], c_u/c_d = {c_u / c_d:g}")
    print(f"  sigma_b2 = {sigma_b2:.4g}   sigma_w2 = {sigma_w2:.4g}   (uniform, i.i.d. t)")
    ks = k_star(c_u, c_d, sigma_b2, sigma_w2)
    K = optimal_k(c_u, c_d, sigma_b2, sigma_w2, k_max=args.k_max)
    print(f"  K* = {ks:.3f}  ->  integer K = {K}   reuse ceiling ECM = {reuse_ceiling(sigma_b2, sigma_w2):.3f}")
    budget = 2 * (c_u + c_d)
    alloc = best_allocation(budget * 4, c_u, c_d, sigma_b2, sigma_w2, k_max=args.k_max)
    print(f"  best (R, K) for a budget of 4 baseline steps: R = {alloc.R}, K = {alloc.K}")

    def exact_var(q, design, R, K):
        return exact_moments(exact_law(InverseCDFSampler(p, q, design), R, K, T), table).variance

    base_var, base_cost = exact_var(p, "iid", 2, 1), 2 * (c_u + c_d)
    rows = []
    for label, q, design in [("uniform", p, "iid"), ("stratified", p, "stratified"),
                             ("IS (weight heuristic)", q_w, "iid"), ("IS + stratified", q_w, "stratified")]:
        for R, Kc in [(2, 1), (1, K), (2, K)]:
            d = "global" if (design == "stratified" and Kc == 1) else design
            v = exact_var(q, d, R, Kc)
            c = R * (c_u + Kc * c_d)
            rows.append((label, R, Kc, v, c, ecm(base_var, base_cost, v, c)))
    print()
    print(f"  {'configuration':24s} {'R':>2s} {'K':>3s} {'variance':>11s} {'cost':>6s} {'ECM':>6s}")
    for label, R, Kc, v, c, e in rows:
        print(f"  {label:24s} {R:2d} {Kc:3d} {v:11.5g} {c:6.1f} {e:6.2f}")
    print("\n  ECM = (Var x cost) of uniform (R=2, K=1) / (Var x cost) of the row; cost = R(c_u + K c_d).")
    return rows


if __name__ == "__main__":
    main()
