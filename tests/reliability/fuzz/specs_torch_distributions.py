"""Case specs, carv_torch (parity with carv_core): validation switch, schedules, weighting, pmfs, proposals.

See :mod:`fuzz.cases` for the spec format and :mod:`fuzz.classify` for the verdicts."""

import numpy as np

import carv_core as C

from .cases import Catalogue, Lazy, _to_numpy, call, close_to, mut
from .fixtures import torch_pmfs, _abar
from .mutations import NAN, tensors


def torch_distributions_cases(cat: Catalogue) -> None:
    torch, T, DT, P4, Q4 = torch_pmfs()
    tm, L = "carv_torch", Lazy

    # ----------------------------------------------------------------- validation switch
    cat.add(tm, "set_validate_args", "value=str", lambda ctx: T.set_validate_args("no"), "error", ("value",))
    cat.add(tm, "set_validate_args", "value=int", lambda ctx: T.set_validate_args(0), "error", ("value",))

    def validate_off(ctx):
        with T.set_validate_args(False):
            inside = T.is_validating()
        return None if (inside is False and T.is_validating()) else "not restored"
    cat.add(tm, "set_validate_args", "context_manager", validate_off, "ok",
            check=lambda v: v)

    # ----------------------------------------------------------------- schedules, weighting
    cat.sweep(
        tm,
        "make_betas",
        call(T.make_betas),
        dict(beta_schedule="linear", num_train_timesteps=10, beta_start=1e-4, beta_end=0.02),
        {
            "device": [mut("bogus", "gpu0", "error")],
            "dtype": [mut("int", torch.int64, "error"), mut("str", "float64", "error")],
        },
        base_case=False,
    )
    cat.sweep(tm, "DiscreteSchedule", call(T.DiscreteSchedule), dict(alphas_cumprod=L(lambda: _abar(4))), {
        "alphas_cumprod": tensors(lambda: _abar(4), only=("nan", "int", "complex", "numpy", "float16"), extra=[
            mut("above_one", L(lambda: torch.tensor([1.5, 0.5], dtype=DT)), "error"),
            mut("2d", L(lambda: torch.full((2, 2), 0.5, dtype=DT)), "error"),
            mut("core_schedule", C.make_schedule("linear", 4, 0.1, 0.3), "error")]),
    }, base_kw=dict(check=lambda s: None))
    flow = T.continuous_schedule("vp_cosine")
    cat.sweep(
        tm,
        "ContinuousSchedule.sigma",
        call(flow.sigma),
        dict(t=L(lambda: torch.tensor([0.25, 0.5], dtype=DT))),
        {
            "t": [
                mut("nan", L(lambda: torch.tensor([NAN])), "error"),
                mut("above", L(lambda: torch.tensor([1.5])), "error"),
                mut("int", L(lambda: torch.tensor([0])), "error"),
                mut("list", [0.5], "ok"),
            ]
        },
    )
    cat.add(tm, "continuous_schedule", "beta_min=nan", lambda ctx: T.continuous_schedule("vp_linear", NAN), "error",
            ("beta_min",))
    S4 = T.make_schedule("linear", 4, 0.1, 0.3)
    cat.sweep(tm, "weighting", call(T.weighting), dict(name="sds", schedule=S4), {
        "name": [mut("bogus", "p2", "error", names=("name", "weighting")),
                 mut("nan_fn", lambda a: a * NAN, "error", names=("name", "weighting"))],
        "schedule": [mut("none", None, "error"), mut("core", C.make_schedule("linear", 4, 0.1, 0.3), "ok")],
    })

    # ----------------------------------------------------------------- distributions
    cat.sweep(tm, "pmf", call(T.pmf), dict(values=L(P4)), {
        "values": tensors(P4, full=True, only=("int", "meta", "float16_sum_1.5", "float32_1000"), extra=[
            mut("float16_sum_1.5", L(lambda: torch.full((1000,), 1.5e-3, dtype=torch.float16)), "error"),
            mut("float32_1000", L(lambda: torch.full((1000,), 1e-3, dtype=torch.float32)), "ok")]),
        "device": [mut("bogus", "gpu0", "error")],
    }, names={"values": ("p", "values")}, base_kw=dict(check=close_to([0.25] * 4)))
    cat.sweep(
        tm,
        "uniform_timesteps",
        call(T.uniform_timesteps),
        dict(num_train_timesteps=100),
        {
            "dtype": [mut("int", torch.int64, "error"), mut("float16", torch.float16, "ok")],
            "device": [mut("meta", "meta", "ok")],
            "min_step_percent": [
                mut("np_float32", np.float32(0.02), "ok"),
                mut("tensor", L(lambda: torch.tensor(0.02)), "error"),
            ],
        },
        base_case=False,
    )
    cat.sweep(
        tm,
        "PiecewiseDensity",
        call(T.PiecewiseDensity),
        dict(
            edges=L(lambda: torch.tensor([0.0, 0.5, 1.0], dtype=DT)),
            masses=L(lambda: torch.tensor([0.25, 0.75], dtype=DT)),
        ),
        {
            "masses": [
                mut("meta", L(lambda: torch.tensor([0.25, 0.75], dtype=DT).to("meta")), "error"),
                mut("int", L(lambda: torch.tensor([0, 1])), "error"),
                mut("nan", L(lambda: torch.tensor([NAN, 0.75], dtype=DT)), "error"),
            ],
            "edges": [mut("decreasing", L(lambda: torch.tensor([1.0, 0.5, 0.0], dtype=DT)), "error")],
        },
        base_kw=dict(check=lambda d: None),
    )
    cat.add(tm, "tabulate_density", "density=nan", lambda ctx: T.tabulate_density(lambda t: t * NAN, 0.0, 1.0, 4),
            "error", ("density",))

    # ----------------------------------------------------------------- proposals
    def w_near_one(w):
        w = _to_numpy(w)
        return (
            None
            if np.all(np.abs(w - 1) < 1e-2)
            else f"weights of a uniform p and q must be ~1, got {w.min():.4g}..{w.max():.4g}"
        )
    cat.sweep(tm, "importance_weights", call(T.importance_weights), dict(p=L(P4), q=L(Q4)), {
        "p": tensors(P4, full=True, only=("nan", "int", "meta", "float16", "short"), extra=[
            mut("short", L(lambda: torch.full((3,), 1 / 3, dtype=DT)), "error", names=("p", "q"))]),
        "q": tensors(Q4, only=("meta",), extra=[
            mut("zero_where_p", L(lambda: torch.tensor([0.0, 0.2, 0.4, 0.4], dtype=DT)), "error")]),
    }, base_kw=dict(check=close_to([2.5, 1.25, 0.25 / 0.3, 0.625])))
    U16 = lambda: torch.full((1000,), 1e-3, dtype=torch.float16)  # noqa: E731
    U64 = lambda: torch.full((1000,), 1e-3, dtype=DT)  # noqa: E731
    cat.add(tm, "importance_weights", "float16_uniform_pair", lambda ctx: T.importance_weights(U16(), U16()), "ok",
            check=w_near_one)
    cat.add(tm, "importance_weights", "float16_p_float64_q", lambda ctx: T.importance_weights(U16(), U64()), "ok",
            check=w_near_one)
    cat.add(
        tm,
        "importance_weights",
        "float16_p_sum_1.5",
        lambda ctx: T.importance_weights(torch.full((1000,), 1.5e-3, dtype=torch.float16), U64()),
        "error",
        ("p",),
        check=w_near_one,
    )
    cat.sweep(tm, "defensive_mixture", call(T.defensive_mixture), dict(q_hat=L(Q4), p=L(P4), delta=0.2), {
        "delta": [mut("nan", NAN, "error"), mut("np_float32", np.float32(0.2), "ok"),
                  mut("tensor", L(lambda: torch.tensor(0.2)), "error")],
        "q_hat": [mut("meta", L(lambda: Q4().to("meta")), "error", names=("q_hat", "p"))],
    }, base_case=False)
    cat.sweep(
        tm,
        "weight_heuristic",
        call(T.weight_heuristic),
        dict(p=L(P4), w_sds=L(lambda: torch.arange(1.0, 5.0, dtype=DT))),
        {
            "w_sds": [
                mut("nan", L(lambda: torch.tensor([NAN, 1, 1, 1], dtype=DT)), "error"),
                mut("meta", L(lambda: torch.ones(4, dtype=DT).to("meta")), "error"),
                mut("int", L(lambda: torch.arange(1, 5)), "error"),
            ],
            "p": [mut("float16", L(lambda: P4().half()), "ok")],
        },
        base_kw=dict(check=close_to([0.1, 0.2, 0.3, 0.4])),
    )
    cat.sweep(
        tm,
        "oracle_proposal",
        call(T.oracle_proposal),
        dict(p=L(P4), second_moment=L(lambda: torch.ones(4, dtype=DT))),
        {
            "second_moment": [
                mut("negative", L(lambda: torch.tensor([-1.0, 1, 1, 1], dtype=DT)), "error"),
                mut("2d", L(lambda: torch.ones(2, 2, dtype=DT)), "error"),
            ]
        },
        base_case=False,
    )
    cat.sweep(tm, "AdaptiveProposal", call(T.AdaptiveProposal), dict(p=L(P4), n_bins=2), {
        "p": [mut("nan", L(lambda: torch.tensor([NAN, 0.5, 0.25, 0.25], dtype=DT)), "error"),
              mut("int", L(lambda: torch.tensor([0, 0, 0, 1])), "error")],
        "device": [mut("bogus", "gpu0", "error")],
        "dtype": [mut("int", torch.int64, "error")],
        "n_bins": [mut("np_int64", np.int64(2), "ok")],
    }, base_kw=dict(check=lambda ap: close_to([0.25] * 4)(ap.proposal())))

    def tap_update(ctx, t, sq_norm, then=False):
        ap = T.AdaptiveProposal(P4(), n_bins=2, decay=0.5, delta=0.1)
        ctx.watch(ap.state_dict, "the proposal's state")
        ap.update(t, sq_norm)
        return ap.proposal() if then else None
    I2 = lambda: torch.tensor([0, 3])  # noqa: E731
    S2 = lambda: torch.tensor([1.0, 9.0], dtype=DT)  # noqa: E731
    cat.sweep(tm, "AdaptiveProposal.update", tap_update, dict(t=L(I2), sq_norm=L(S2)), {
        "t": [mut("bool", L(lambda: torch.tensor([True, False])), "error"),
              mut("meta", L(lambda: I2().to("meta")), "error")],
        "sq_norm": [mut("int", L(lambda: torch.tensor([1, 9])), "error"),
                    mut("meta", L(lambda: S2().to("meta")), "error"),
                    mut("nan", L(lambda: torch.tensor([NAN, 9.0], dtype=DT)), "error")],
    }, base_kw=dict(finite=False))
    cat.add(tm, "AdaptiveProposal.update", "shape_2x3_vs_3x2",
            lambda ctx: tap_update(ctx, torch.zeros(2, 3, dtype=torch.int64), torch.ones(3, 2, dtype=DT)),
            "error", ("t", "sq_norm"), note="6 entries each, but (2,3) vs (3,2): a mix-up")
    cat.add(tm, "AdaptiveProposal.update", "two_1e308_in_one_bin",
            lambda ctx: tap_update(ctx, torch.tensor([0, 1]), torch.tensor([1e308, 1e308], dtype=DT), then=True),
            "either", ("sq_norm",))
    cat.add(tm, "AdaptiveProposal.from_state_dict", "device=bogus",
            lambda ctx: T.AdaptiveProposal.from_state_dict(T.AdaptiveProposal(P4(), 2).state_dict(), device="gpu0"),
            "error", ("device",))
