"""Regenerate the documentation figures and the worked-example table from carv_core.

Usage (from the repository root)::

    python docs/scripts/make_figures.py            # writes into docs/figures/
    python docs/scripts/make_figures.py --out DIR  # writes elsewhere (tests use this)

Every number comes from carv_core itself: exact laws and moments from
:mod:`carv_core.testing` (no sampling, so no seed), the allocation model from
:mod:`carv_core.allocation`, proposals from :mod:`carv_core.proposals`. The output
is deterministic: the same inputs give byte-identical PNGs and tables.

The worked example is a *toy*: a Stable-Diffusion-like schedule (T = 1000,
scaled-linear betas), threestudio's uniform p on steps 20..980, the ``sds``
weighting, and a small synthetic integrand table f(xi, t) with four upstream
outcomes. It illustrates the maths; it is not a measurement of a real teacher.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import carv_core as cc  # noqa: E402
from carv_core.testing import (  # noqa: E402
    Block,
    SamplerLaw,
    between_variance,
    exact_moments,
    within_variance,
)

#: Cost of one upstream sample in teacher calls (the paper: render + encode is
#: about 6-9 teacher calls; we take the middle of that range).
COST_RATIO = 8.0
PNG_METADATA = {"Software": None}  # keep the PNG bytes independent of the matplotlib version


# ---------------------------------------------------------------------------
# The toy problem
# ---------------------------------------------------------------------------

def toy_problem(T: int = 1000):
    """Schedule, p, w_SDS and an integrand table f(xi, t) of shape (4, T, 2)."""
    schedule = cc.make_schedule("scaled_linear", T, 0.00085, 0.012)
    p = cc.uniform_timesteps(T)
    w_sds = cc.sds_weight("sds", schedule)
    s = np.arange(T) / T
    # Upstream outcomes: a mean direction per xi (between-variance) and a
    # t-dependent wiggle per xi (within-variance), both scaled by w_SDS(t) as
    # the SDS residual is.
    centres = np.array([[1.0, 0.2], [-0.6, 0.9], [0.3, -1.1], [-0.5, -0.3]])
    wiggle = np.array([[0.8, -0.5], [-0.4, 1.0], [1.1, 0.3], [-0.7, -0.9]])
    shape = np.sin(2 * np.pi * 3 * s + 0.5) + 0.6 * (s - 0.5)
    table = w_sds[None, :, None] * (0.6 + centres[:, None, :] + 2.0 * shape[None, :, None] * wiggle[:, None, :])
    return schedule, p, w_sds, table


def proposals(p, w_sds, table):
    """The proposals compared on the maths pages."""
    m = np.einsum("xtd,xtd->t", table, table) / table.shape[0]  # E_xi ||f||^2 given t
    return {
        "uniform (q = p)": p,
        "weight heuristic": cc.weight_heuristic(p, w_sds),
        "heuristic, delta = 0.1": cc.weight_heuristic(p, w_sds, delta=0.1),
        "oracle": cc.oracle_proposal(p, m),
    }


def inverse_cdf_law(p, q, design, R, K) -> SamplerLaw:
    """The exact law of ``InverseCDFSampler(p, q, design)`` built from :func:`carv_core.stratum_pmfs`.

    Slot (r, k) of an ``iid`` draw has law q; of a ``stratified`` draw, row k of
    ``stratum_pmfs(q, K)``; of a ``global`` draw, row rK + k of ``stratum_pmfs(q, RK)``.
    (Equivalent to :func:`carv_core.testing.exact_law`, whose breakpoint search
    needs every CDF breakpoint above about 2**-12; the toy heuristic proposal has
    one at 8e-5.)
    """
    w = cc.importance_weights(p, q)
    T = p.size
    if design == "iid":
        laws = np.broadcast_to(q, (R * K, T))
    elif design == "stratified":
        laws = np.tile(cc.stratum_pmfs(q, K), (R, 1))
    elif design == "global":
        laws = cc.stratum_pmfs(q, R * K)
    else:
        raise ValueError(f"design must be iid, stratified or global, got {design!r}")
    blocks = []
    for i, law in enumerate(laws):
        nz = np.flatnonzero(law > 0)
        blocks.append(Block(np.array([[i // K, i % K]]), law[nz], nz[:, None], w[nz][:, None]))
    return SamplerLaw(R, K, tuple(blocks))


def exact_variance(p, q, design, R, K, table):
    return exact_moments(inverse_cdf_law(p, q, design, R, K), table).variance


# ---------------------------------------------------------------------------
# Worked example table (Benchmarks page)
# ---------------------------------------------------------------------------

def worked_example(p, w_sds, table):
    q_h = cc.weight_heuristic(p, w_sds)
    base_var = exact_variance(p, p, "iid", 2, 1, table)
    base_cost = cc.cost(2, 1, COST_RATIO, 1.0)
    rows = [("uniform t, i.i.d. (baseline)", 2, 1, base_var, base_cost)]
    for label, q, design in [
        ("uniform t, global strata", p, "global"),
    ]:
        rows.append((label, 2, 1, exact_variance(p, q, design, 2, 1, table), base_cost))
    R, K = 2, 8
    c = cc.cost(R, K, COST_RATIO, 1.0)
    for label, q, design in [
        ("reuse: uniform t, i.i.d.", p, "iid"),
        ("reuse + IS (weight heuristic)", q_h, "iid"),
        ("reuse + stratified", p, "stratified"),
        ("reuse + IS + stratified", q_h, "stratified"),
    ]:
        rows.append((label, R, K, exact_variance(p, q, design, R, K, table), c))
    uniform_at = {(r[1], r[2]): r[3] for r in rows if r[0].startswith(("uniform t, i.i.d.", "reuse: uniform"))}
    sigma_b2 = between_variance(table, p)
    sigma_w2 = within_variance(inverse_cdf_law(p, p, "iid", 1, 1), table)
    lines = [
        "| method | R | K | exact variance | cost (teacher calls) | RE | ECM |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r, k, v, c in rows:
        re = cc.relative_efficiency(uniform_at[(r, k)], v)
        e = cc.ecm(base_var, base_cost, v, c)
        lines.append(f"| {label} | {r} | {k} | {v:.5f} | {c:g} | {re:.2f} | {e:.2f} |")
    lines += [
        "",
        f"Toy problem: $\\sigma_B^2 = {sigma_b2:.5f}$, $\\sigma_W^2 = {sigma_w2:.5f}$ (i.i.d. uniform $t$), "
        f"$c_u/c_d = {COST_RATIO:g}$; "
        f"$K^\\star = {cc.k_star(COST_RATIO, 1.0, sigma_b2, sigma_w2):.2f}$, "
        f"best integer $K = {cc.optimal_k(COST_RATIO, 1.0, sigma_b2, sigma_w2)}$, "
        f"reuse ceiling $= {cc.reuse_ceiling(sigma_b2, sigma_w2):.2f}$.",
    ]
    return "\n".join(lines) + "\n", sigma_b2, sigma_w2


# ---------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------

def fig_variance_vs_k(p, w_sds, table, sigma_b2, sigma_w2, out):
    q_h = cc.weight_heuristic(p, w_sds)
    Ks = [1, 2, 4, 8, 16]
    R = 1
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    K_grid = np.arange(1, 17)
    model = [cc.predicted_variance(R, int(k), sigma_b2, sigma_w2) for k in K_grid]
    ax.plot(K_grid, model, color="0.6", lw=1, label=r"model $(\sigma_B^2+\sigma_W^2/K)/R$")
    for label, q, design, marker in [
        ("uniform, i.i.d.", p, "iid", "o"),
        ("weight heuristic, i.i.d.", q_h, "iid", "s"),
        ("uniform, stratified", p, "stratified", "^"),
        ("heuristic + stratified", q_h, "stratified", "D"),
    ]:
        v = [(sigma_b2 + within_variance(inverse_cdf_law(p, q, design, 1, K), table)) / R for K in Ks]
        ax.plot(Ks, v, marker=marker, lw=1.2, label=label)
    ax.axhline(sigma_b2 / R, color="k", ls=":", lw=1, label=r"floor $\sigma_B^2/R$")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(Ks, [str(k) for k in Ks])
    ax.set_xlabel("inner draws per upstream sample, K")
    ax.set_ylabel(r"exact $\mathrm{tr\,Cov}\,\hat G$  (R = 1)")
    ax.set_title("Variance vs K on the toy problem (exact, no sampling)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "variance_vs_k.png", metadata=PNG_METADATA)
    plt.close(fig)


def fig_ecm_vs_cost_ratio(sigma_b2, sigma_w2, out):
    ratios = np.geomspace(0.25, 256, 60)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for K in (2, 8, 32):
        e = [cc.predict(1, K, float(r), 1.0, sigma_b2, sigma_w2).ecm for r in ratios]
        ax.plot(ratios, e, lw=1.2, label=f"K = {K}")
    best = [cc.predict(1, cc.optimal_k(float(r), 1.0, sigma_b2, sigma_w2, k_max=4096), float(r), 1.0,
                       sigma_b2, sigma_w2).ecm for r in ratios]
    ax.plot(ratios, best, color="k", lw=2, label=r"K = optimal_k (integer $K^\star$)")
    ax.axhline(cc.reuse_ceiling(sigma_b2, sigma_w2), color="k", ls=":", lw=1, label="reuse ceiling")
    ax.axhline(1.0, color="0.6", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(r"cost ratio $c_u/c_d$ (upstream sample / teacher call)")
    ax.set_ylabel("predicted ECM vs (R=2, K=1)")
    ax.set_title("Effective compute multiplier of reuse (allocation model)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "ecm_vs_cost_ratio.png", metadata=PNG_METADATA)
    plt.close(fig)


def fig_proposals(schedule, p, w_sds, table, out):
    t = np.arange(p.size)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for label, q in proposals(p, w_sds, table).items():
        ax.plot(t, q * p.size, lw=1.4, label=label)
    for name, style in (("fantasia3d", "--"), ("uniform", ":")):
        ax.plot(t, cc.weight_heuristic(p, cc.sds_weight(name, schedule)) * p.size, ls=style, lw=1,
                label=f"heuristic, w = {name}")
    ax.set_xlabel("timestep t")
    ax.set_ylabel(r"$T\,q(t)$  (1 = uniform over all T)")
    ax.set_title("Proposal shapes over t (sds weighting unless noted)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "proposal_shapes.png", metadata=PNG_METADATA)
    plt.close(fig)


def fig_idea(out):
    """The one-figure idea: one expensive upstream pass, K cheap re-noisings."""
    fig, ax = plt.subplots(figsize=(7.2, 2.8), dpi=100)
    ax.set_axis_off()
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 4)

    def box(x, y, w, h, text, color):
        ax.add_patch(plt.Rectangle((x, y), w, h, fc=color, ec="k", lw=1))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=9)

    box(0.2, 1.4, 2.2, 1.2, "upstream\n$x = g(\\theta, \\xi)$\ncost $c_u$", "#c6d4f5")
    ys = [3.1, 2.2, 1.3, 0.4]
    for k, y in enumerate(ys):
        label = f"$t_{{{k + 1}}}, \\epsilon_{{{k + 1}}}$" if k < 3 else "$t_K, \\epsilon_K$"
        ax.annotate("", xy=(4.0, y + 0.25), xytext=(2.4, 2.0), arrowprops=dict(arrowstyle="->", lw=0.8))
        box(4.0, y, 2.2, 0.5, f"teacher call {label}", "#f5e0c6")
        ax.annotate("", xy=(7.3, 2.0), xytext=(6.2, y + 0.25), arrowprops=dict(arrowstyle="->", lw=0.8))
    ax.text(5.1, 1.05, "...", ha="center", fontsize=12)
    box(7.3, 1.4, 2.5, 1.2, "average $\\frac{1}{K}\\sum_k \\tilde w_k f_k$\nthen ONE backward\nthrough upstream",
        "#d7f0d0")
    ax.set_title("Render once, re-noise K times: cost $c_u + K c_d$ instead of $K(c_u + c_d)$", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "idea.png", metadata=PNG_METADATA)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "docs" / "figures")
    args = parser.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    plt.rcParams.update({"font.family": "DejaVu Sans", "savefig.dpi": 100, "svg.hashsalt": "carv"})

    schedule, p, w_sds, table = toy_problem()
    text, sigma_b2, sigma_w2 = worked_example(p, w_sds, table)
    (out / "core_example_table.md").write_text(text)
    fig_idea(out)
    fig_variance_vs_k(p, w_sds, table, sigma_b2, sigma_w2, out)
    fig_ecm_vs_cost_ratio(sigma_b2, sigma_w2, out)
    fig_proposals(schedule, p, w_sds, table, out)
    print(text)
    print(f"wrote {sorted(f.name for f in out.iterdir())} to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
