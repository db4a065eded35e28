"""Case specs, carv_core: pmfs and densities, proposals (importance weights, mixtures, AdaptiveProposal).

See :mod:`fuzz.cases` for the spec format and :mod:`fuzz.classify` for the verdicts."""

import numpy as np

from .cases import Catalogue, Lazy, array_bytes, call, close_to, mut
from .mutations import NAN, ints, pmfs, reals


def distributions_cases(cat: Catalogue) -> None:
    import carv_core as C

    core = "carv_core"
    P4 = np.full(4, 0.25)
    Q4 = np.array([0.1, 0.2, 0.3, 0.4])

    # ----------------------------------------------------------------- distributions
    cat.sweep(
        core,
        "pmf",
        call(C.pmf),
        dict(values=P4),
        {"values": pmfs(4, full=True, only=("nan", "negative", "sum2", "float32", "int_onehot", "float16", "torch"))},
        names={"values": ("p", "values")},
        base_kw=dict(check=close_to(P4)),
    )
    cat.sweep(core, "uniform_timesteps", call(C.uniform_timesteps),
              dict(num_train_timesteps=100, min_step_percent=0.02, max_step_percent=0.98), {
        "num_train_timesteps": ints(100, 1, huge="either", only=("np_int64", "huge")),
        "min_step_percent": reals(0.02, 0, 1, only=("np_float32", "above_max"), extra=[
            mut("above_max", 0.99, "error", names=("min_step_percent", "max_step_percent"))]),
        "max_step_percent": [mut("np_float32", np.float32(0.98), "ok")],
    }, base_kw=dict(check=lambda p: None if abs(p.sum() - 1) < 1e-12 and p[2] > 0 and p[1] == 0 else "range"),
        output_bytes=lambda num_train_timesteps, **_: array_bytes((num_train_timesteps,)))
    cat.add(core, "uniform_timesteps", "T=1", lambda ctx: C.uniform_timesteps(1), "ok",
            check=close_to([1.0]))
    cat.sweep(
        core,
        "PiecewiseDensity",
        call(C.PiecewiseDensity),
        dict(edges=np.array([0.0, 0.5, 1.0]), masses=np.array([0.25, 0.75])),
        {
            "edges": [
                mut("decreasing", np.array([1.0, 0.5, 0.0]), "error"),
                mut("short", np.array([0.0, 1.0]), "error", names=("edges", "masses")),
            ],
            "masses": [
                mut("negative", np.array([-0.25, 1.25]), "error"),
                mut("float32", np.array([0.25, 0.75], dtype=np.float32), "ok"),
            ],
        },
        base_kw=dict(check=lambda d: None),
    )
    DENS = C.PiecewiseDensity(np.array([0.0, 0.5, 1.0]), np.array([0.25, 0.75]))
    cat.sweep(core, "PiecewiseDensity.cdf", call(DENS.cdf), dict(t=np.array([0.25, 0.75])), {
        "t": [mut("nan", np.array([NAN]), "error"), mut("np_float32", np.float32(0.5), "ok")],
    }, base_kw=dict(check=close_to([0.125, 0.625])))
    cat.add(core, "PiecewiseDensity.pdf", "t=str", lambda ctx: DENS.pdf("abc"), "error", ("t",))
    ones = lambda t: np.ones_like(t)  # noqa: E731
    cat.sweep(
        core,
        "tabulate_density",
        call(C.tabulate_density),
        dict(density=ones, lower=0.0, upper=1.0, n_bins=4),
        {
            "density": [
                mut("not_callable", 5, "error"),
                mut("nan", lambda t: t * NAN, "error"),
                mut("scalar", lambda t: 1.0, "error"),
            ],
            "lower": [mut("above_upper", 2.0, "error", names=("lower", "upper"))],
            "upper": [],
            "n_bins": ints(4, 1, huge="either", only=("huge",)),
        },
        base_kw=dict(check=lambda d: close_to([0.25] * 4)(d.masses)),
        output_bytes=lambda n_bins, **_: array_bytes((n_bins + 1,)) + array_bytes((n_bins,)),  # edges, masses
    )

    # ----------------------------------------------------------------- proposals
    cat.sweep(core, "importance_weights", call(C.importance_weights), dict(p=P4, q=Q4), {
        "p": pmfs(4, pair=True, full=True, only=("nan", "sum2", "short", "float16", "int_onehot", "torch")),
        "q": pmfs(4, pair=True, only=("zero_where_p",), extra=[
            mut("zero_where_p", np.array([0.0, 0.2, 0.4, 0.4]), "error")]),
    }, names={"p": ("p", "q"), "q": ("q", "p")},
        base_kw=dict(check=close_to([2.5, 1.25, 0.25 / 0.3, 0.625])))
    cat.sweep(core, "defensive_mixture", call(C.defensive_mixture), dict(q_hat=Q4, p=P4, delta=0.2), {
        "q_hat": pmfs(4, pair=True, only=("nan", "short")),
        "delta": reals(0.2, 0, 1, full=True, only=("nan", "np_float32", "above_one"),
                       extra=[mut("above_one", 1.5, "error")]),
    }, names={"q_hat": ("q_hat", "p")})
    cat.sweep(
        core,
        "weight_heuristic",
        call(C.weight_heuristic),
        dict(p=P4, w_sds=np.array([1.0, 2.0, 3.0, 4.0]), delta=0.0),
        {
            "w_sds": [
                mut("nan", np.array([NAN, 1, 1, 1]), "error"),
                mut("negative", np.array([-1.0, 1, 1, 1]), "error"),
                mut("zeros", np.zeros(4), "error"),
                mut("short", np.ones(3), "error"),
                mut("huge", np.full(4, 1e308), "either"),
            ]
        },
        base_kw=dict(check=close_to([0.1, 0.2, 0.3, 0.4])),
    )
    cat.sweep(
        core,
        "oracle_proposal",
        call(C.oracle_proposal),
        dict(p=P4, second_moment=np.array([1.0, 4.0, 9.0, 16.0]), delta=0.1),
        {
            "second_moment": [
                mut("nan", np.array([NAN, 1, 1, 1]), "error"),
                mut("negative", np.array([-1.0, 1, 1, 1]), "error"),
                mut("zeros", np.zeros(4), "error"),
                mut("huge", np.full(4, 1e308), "ok"),
            ],
            "delta": [mut("above_one", 2.0, "error")],
        },
    )
    cat.sweep(core, "AdaptiveProposal", call(C.AdaptiveProposal), dict(p=P4, n_bins=2, decay=0.9, delta=0.1), {
        "p": pmfs(4, only=("float32",)),
        "n_bins": ints(2, 1, 4, only=("np_int64", "above_T"),
                       extra=[mut("above_T", 5, "error"), mut("none", None, "ok")]),
        "decay": reals(0.9, 0, 1, hi_open=True, only=("one", "np_float32"),
                       extra=[mut("one", 1.0, "error"), mut("str", "0.9", "error")]),
        "delta": reals(0.1, 0, 1, lo_open=True, only=("above_one",),
                       extra=[mut("above_one", 1.5, "error")]),
    }, base_kw=dict(check=lambda ap: close_to(P4)(ap.proposal())))

    def ap_update(ctx, t, sq_norm, then=False):
        ap = C.AdaptiveProposal(P4, n_bins=2, decay=0.5, delta=0.1)
        ctx.watch(ap.state_dict, "the proposal's state")
        ap.update(t, sq_norm)
        return ap.proposal() if then else None
    cat.sweep(core, "AdaptiveProposal.update", ap_update, dict(t=np.array([0, 3]), sq_norm=np.array([1.0, 9.0])), {
        "t": [mut("fraction", np.array([0.5, 3]), "error"), mut("out_of_range", np.array([0, 4]), "error"),
              mut("nan", np.array([NAN, 3]), "error"),
              mut("bool", np.array([True, False]), "error")],
        "sq_norm": [mut("negative", np.array([-1.0, 9.0]), "error"), mut("nan", np.array([NAN, 9.0]), "error"),
                    mut("huge_one", np.array([1e308, 9.0]), "ok")],
    }, base_kw=dict(finite=False))
    cat.add(core, "AdaptiveProposal.update", "shape_2x3_vs_3x2_both",
            lambda ctx: ap_update(ctx, np.zeros((2, 3), dtype=np.int64), np.ones((3, 2))),
            "error", ("t", "sq_norm"), note="6 entries each, but (2,3) vs (3,2): a mix-up")
    cat.add(core, "AdaptiveProposal.update", "two_1e308_in_one_bin",
            lambda ctx: ap_update(ctx, np.array([0, 1]), np.array([1e308, 1e308]), then=True), "either",
            ("sq_norm",), note="the bin mean is 1e308, but the sum overflows")
    cat.add(core, "AdaptiveProposal.update", "empty",
            lambda ctx: ap_update(ctx, np.zeros(0), np.zeros(0), then=True), "ok")

    def ap_state(**changes):
        st = C.AdaptiveProposal(P4, n_bins=2, decay=0.5, delta=0.1)
        st.update([0, 3], [1.0, 9.0])
        s = st.state_dict()
        s.update(changes)
        return s

    def ap_load(ctx, state):
        ap = C.AdaptiveProposal(P4, n_bins=2, decay=0.9, delta=0.2)
        ctx.watch(ap.state_dict, "the proposal's state")
        ap.load_state_dict(state)
        return ap.proposal()
    cat.sweep(core, "AdaptiveProposal.load_state_dict", ap_load, dict(state=Lazy(ap_state)), {
        "state": [
            mut("other_p", Lazy(lambda: ap_state(p=[0.1, 0.2, 0.3, 0.4])), "error", names=("p",)),
            mut("n_bins", Lazy(lambda: ap_state(n_bins=3)), "error", names=("n_bins",)),
            mut("moment_nan", Lazy(lambda: ap_state(second_moment=[NAN, 1.0])), "error", names=("second_moment",)),
            mut("decay_one", Lazy(lambda: ap_state(decay=1.0)), "error", names=("decay",)),
            mut("delta_zero", Lazy(lambda: ap_state(delta=0.0)), "error", names=("delta",)),
            mut("counts_negative", Lazy(lambda: ap_state(counts=[-5, 1])), "error", names=("counts",)),
            mut("counts_short", Lazy(lambda: ap_state(counts=[1])), "error", names=("counts",)),
            mut("missing_counts", Lazy(lambda: {k: v for k, v in ap_state().items() if k != "counts"}),
                "error", names=("counts",)),
            ]})
    cat.add(core, "AdaptiveProposal.from_state_dict", "p_nan",
            lambda ctx: C.AdaptiveProposal.from_state_dict(ap_state(p=[NAN, 0.5, 0.25, 0.25])), "error", ("p",))
    cat.add(core, "AdaptiveProposal.from_state_dict", "missing_key",
            lambda ctx: C.AdaptiveProposal.from_state_dict({"p": P4.tolist()}), "error", ("n_bins",))
