"""Case specs, carv_torch: objectives (SDS, DMD, Integrand) and the estimators (sds, dmd, estimate, ...).

See :mod:`fuzz.cases` for the spec format and :mod:`fuzz.classify` for the verdicts."""

import numpy as np

from .cases import Catalogue, Lazy, call, mut
from .fixtures import DT_T, FP, DuckTeacher, _UserSampler50, _abar, _g, gm_teacher, images
from .mutations import INF, NAN


def objective_cases(cat: Catalogue) -> None:
    import torch
    import carv_torch as T
    from carv_torch.teachers import GaussianMixtureTeacher

    tm = "carv_torch"
    DT = torch.float64
    L = Lazy
    GM = gm_teacher()
    MEANS = lambda: torch.randn(2, 16, generator=_g(0), dtype=DT)  # noqa: E731

    # ----------------------------------------------------------------- objectives
    cat.sweep(
        tm,
        "SDS",
        lambda ctx, **kw: T.SDS(**kw),
        dict(teacher=GM),
        {
            "teacher": [],
            "weighting": [
                mut("bogus", "p2", "error"),
                mut("nan_table", L(lambda: torch.full((DT_T,), NAN, dtype=DT)), "error"),
            ],
            "guidance_scale": [mut("nan", NAN, "error"), mut("inf", INF, "error")],
            "include_alpha": [mut("str", "no", "error")],
        },
        base_kw=dict(check=lambda o: None),
    )
    cat.sweep(
        tm,
        "DMD",
        lambda ctx, **kw: T.DMD(**kw),
        dict(real=GM, fake=gm_teacher(means=torch.zeros(2, 16, dtype=DT))),
        {
            "fake": [
                mut("other_T", L(lambda: gm_teacher(T=40)), "error", names=("real", "fake")),
                mut("none", None, "error"),
            ],
            "guidance_scale": [mut("nan", NAN, "error")],
        },
        base_kw=dict(check=lambda o: None),
    )
    cat.sweep(
        tm,
        "Integrand",
        lambda ctx, **kw: T.Integrand(**kw),
        dict(fn=lambda x_t, t, eps: x_t - eps, alphas_cumprod=L(_abar)),
        {
            "fn": [mut("not_callable", 5, "error")],
            "alphas_cumprod": [
                mut("2d", L(lambda: torch.ones(2, 2, dtype=DT)), "error"),
                mut("list", [0.9, 0.5], "error"),
            ],
            "weights": [mut("short", L(lambda: torch.ones(3, dtype=DT)), "error")],
        },
        base_kw=dict(check=lambda o: None),
    )

    P50 = lambda T_=DT_T: torch.full((T_,), 1.0 / T_, dtype=DT)  # noqa: E731

    def sds(ctx, teacher=GM, x=None, **kw):
        kw.setdefault("K", 2)
        if "sampler" not in kw:
            kw.setdefault("p", P50())
        kw.setdefault("generator", _g(5))
        est = T.sds(teacher, images() if x is None else x, **kw)
        return est.grad, est.loss
    cat.sweep(
        tm,
        "sds",
        sds,
        dict(),
        {
            "K": [mut("zero", 0, "error"), mut("np_int64", np.int64(2), "ok"), mut("one", 1, "ok")],
            "p": [
                mut("short_vs_teacher_T", L(lambda: P50(40)), "error", names=("p",)),
                mut("long_vs_teacher_T", L(lambda: P50(60)), "error", names=("p",)),
                mut("nan", L(lambda: torch.full((DT_T,), NAN, dtype=DT)), "error"),
                mut("none", None, "error"),
            ],
            "q": [
                mut(
                    "zero_where_p",
                    L(lambda: torch.cat([torch.zeros(1, dtype=DT), torch.full((DT_T - 1,), 1 / (DT_T - 1), dtype=DT)])),
                    "error",
                )
            ],
            "design": [],
            "x": [
                mut("1d", L(lambda: torch.rand(16, dtype=DT)), "error"),
                mut("nan", L(lambda: torch.full((2, 4, 2, 2), NAN, dtype=DT)), "error", names=("x",)),
                mut("wrong_D", L(lambda: torch.rand(2, 3, 2, 2, dtype=DT)), "error", names=("x", "x_t")),
            ],
            "condition": [mut("wrong_rows", L(lambda: torch.zeros(3, 2, dtype=DT)), "error")],
            "generator": [mut("numpy", np.random.default_rng(0), "error")],
            "weighting": [],
            "guidance_scale": [mut("nan", NAN, "error")],
            "antithetic": [mut("odd_K", True, "error", names=("K", "antithetic"))],
            "sampler": [
                mut("with_p_too", L(lambda: T.InverseCDFSampler(P50(), P50())), "error", names=("sampler", "p"))
            ],
            "teacher": [
                mut(
                    "nan_output_gm",
                    L(lambda: gm_teacher(means=torch.full((2, 16), 1e200, dtype=DT))),
                    "error",
                    names=("teacher",),
                    exc_types=FP,
                ),
                mut(
                    "nan_output_user",
                    L(lambda: DuckTeacher(lambda x: torch.full_like(x, NAN))),
                    "error",
                    names=("teacher",),
                    exc_types=FP,
                ),
                mut(
                    "channels_last_output",
                    L(lambda: DuckTeacher(lambda x: x.permute(0, 2, 3, 1))),
                    "error",
                    names=("teacher",),
                ),
                mut(
                    "flat_output",
                    L(lambda: DuckTeacher(lambda x: x.reshape(x.shape[0], -1))),
                    "error",
                    names=("teacher",),
                ),
                mut("no_abar", object(), "error"),
            ],
        },
    )
    cat.set_run("torch.sds/antithetic=odd_K", lambda ctx: sds(ctx, K=3, antithetic=True))
    cat.set_run(
        "torch.sds/sampler=with_p_too", lambda ctx: sds(ctx, p=P50(), sampler=T.InverseCDFSampler(P50(), P50()))
    )
    FAKE = gm_teacher(means=torch.zeros(2, 16, dtype=DT))

    def dmd(ctx, fake=FAKE, **kw):
        kw.setdefault("K", 2)
        kw.setdefault("p", P50())
        est = T.dmd(GM, fake, images(), generator=_g(5), **kw)
        return est.grad, est.loss
    cat.sweep(tm, "dmd", dmd, dict(), {
        "fake_condition": [mut("wrong_rows", L(lambda: torch.zeros(3, 2, dtype=DT)), "error")],
        "p": [mut("short_vs_teacher_T", L(lambda: P50(40)), "error")],
        "fake": [mut("nan_output_user", L(lambda: DuckTeacher(lambda x: torch.full_like(x, NAN))), "error",
                     names=("fake", "teacher"), exc_types=FP)],
    })
    OBJ = T.Integrand(lambda x_t, t, eps: x_t - eps, _abar())

    def estimate(ctx, objective=OBJ, x=None, **kw):
        kw.setdefault("K", 2)
        kw.setdefault("p", P50())
        est = T.estimate(objective, images() if x is None else x, generator=_g(5), **kw)
        return est.grad, est.loss
    cat.sweep(tm, "estimate", estimate, dict(), {
        "objective": [mut("int", 5, "error"),
                      mut("nan_integrand", T.Integrand(lambda x_t, t, eps: x_t * NAN, _abar()), "error",
                          names=("integrand", "objective"), exc_types=FP),
                      mut("wrong_shape_integrand", T.Integrand(lambda x_t, t, eps: x_t[:, :1], _abar()), "error",
                          names=("integrand", "objective"))],
        "sampler": [mut("user_sampler", L(lambda: _UserSampler50()), "ok")],
    })
    cat.set_run("torch.estimate/sampler=user_sampler", lambda ctx: estimate(ctx, sampler=_UserSampler50(), p=None))

    def from_draws(ctx, draws):
        return T.estimate_from_draws(OBJ, images(), draws).grad
    DR = lambda: T.draw_inner(2, 2, (4, 2, 2), P50(), generator=_g(4), dtype=DT)  # noqa: E731
    cat.sweep(
        tm,
        "estimate_from_draws",
        from_draws,
        dict(draws=L(DR)),
        {
            "draws": [
                mut("none", None, "error"),
                mut(
                    "t_out_of_range", L(lambda: DR()._replace(t=torch.full((2, 2), 99))), "error", names=("t", "draws")
                ),
                mut(
                    "wrong_rows",
                    L(lambda: T.draw_inner(3, 2, (4, 2, 2), P50(), generator=_g(4), dtype=DT)),
                    "error",
                    names=("draws", "x"),
                ),
                mut(
                    "w_nan",
                    L(lambda: DR()._replace(w=torch.full((2, 2), NAN, dtype=DT))),
                    "error",
                    names=("w", "draws"),
                ),
            ]
        },
    )
    cat.sweep(
        tm,
        "draw_inner",
        lambda ctx, **kw: T.draw_inner(**{"R": 2, "K": 2, "shape": (3,), "p": P50(), **kw}),
        dict(),
        {
            "R": [mut("np_int64", np.int64(2), "ok")],
            "K": [mut("zero", 0, "error")],
            "shape": [mut("zero", (0,), "error")],
            "p": [mut("none", None, "error")],
            "common": [mut("str", "yes", "error")],
        },
    )

    def attribution(ctx, **kw):
        means = MEANS().requires_grad_(True)
        teacher = GaussianMixtureTeacher(means, 0.5, _abar())
        kw.setdefault("params", [means])
        kw.setdefault("x0", images(requires_grad=False))
        return T.attribution(teacher, K=2, p=P50(), generator=_g(6), **kw).features
    cat.sweep(
        tm,
        "attribution",
        attribution,
        dict(),
        {
            "params": [
                mut("empty", [], "error"),
                mut("no_grad", L(lambda: [torch.ones(3)]), "error"),
                mut("int", 5, "error"),
            ],
            "x0": [
                mut("int", L(lambda: torch.ones(2, 4, 2, 2, dtype=torch.int64)), "error"),
                mut("1d", L(lambda: torch.ones(16, dtype=DT)), "error"),
            ],
        },
    )
    cat.sweep(
        tm,
        "surrogate_loss",
        call(T.surrogate_loss),
        dict(x=L(images), grad=L(lambda: images(requires_grad=False))),
        {
            "grad": [
                mut("shape", L(lambda: torch.ones(2, 16, dtype=DT)), "error"),
                mut("nan", L(lambda: torch.full((2, 4, 2, 2), NAN, dtype=DT)), "error"),
                mut("list", [0.0], "error"),
            ],
            "x": [mut("list", [0.0], "error")],
        },
    )
