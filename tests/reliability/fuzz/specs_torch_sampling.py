"""Case specs, carv_torch (parity with carv_core): sampling, uniform designs, samplers, noise, breakpoints.

See :mod:`fuzz.cases` for the spec format and :mod:`fuzz.classify` for the verdicts."""

import numpy as np

import carv_core as C

from .cases import Catalogue, Lazy, array_bytes, call, close_to, mut
from .fixtures import torch_pmfs, _g, element_size
from .mutations import NAN, ints, tensors


def torch_sampling_cases(cat: Catalogue) -> None:
    torch, T, DT, P4, Q4 = torch_pmfs()
    tm, L = "carv_torch", Lazy

    # ----------------------------------------------------------------- sampling
    cat.sweep(
        tm,
        "cdf_from_pmf",
        call(T.cdf_from_pmf),
        dict(q=L(Q4)),
        {"q": tensors(Q4, only=("nan", "int", "numpy", "float16"))},
        base_kw=dict(check=close_to([0.1, 0.3, 0.6, 1.0])),
    )
    CDF = lambda: torch.tensor([0.25, 0.25, 1.0], dtype=DT)  # noqa: E731
    UU = lambda: torch.tensor([0.0, 0.2, 0.25, 0.99], dtype=DT)  # noqa: E731
    cat.sweep(tm, "inverse_cdf", call(T.inverse_cdf), dict(cdf=L(CDF), u=L(UU)), {
        "cdf": [mut("nan_inside", L(lambda: torch.tensor([0.25, NAN, 1.0], dtype=DT)), "error"),
                mut("nan_last", L(lambda: torch.tensor([0.25, 0.5, NAN], dtype=DT)), "error"),
                mut("meta", L(lambda: CDF().to("meta")), "error")],
        "u": [mut("one", L(lambda: torch.tensor([1.0], dtype=DT)), "error"),
              mut("int", L(lambda: torch.tensor([0])), "error")],
    }, base_kw=dict(check=close_to([0, 0, 2, 2])))
    cat.sweep(
        tm,
        "stratum_pmfs",
        call(T.stratum_pmfs),
        dict(q=L(lambda: torch.tensor([0.5, 0.25, 0.25], dtype=DT)), B=2),
        {
            "B": [mut("zero", 0, "error"), mut("tensor", L(lambda: torch.tensor(2)), "error")],
            "q": [mut("float16", L(lambda: torch.tensor([0.5, 0.25, 0.25], dtype=torch.float16)), "ok")],
        },
        base_kw=dict(check=close_to([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])),
    )
    XI = lambda: torch.tensor([0.5, 0.5], dtype=DT)  # noqa: E731
    cat.sweep(
        tm,
        "stratify",
        call(T.stratify),
        dict(xi=L(XI), offset=L(lambda: torch.tensor([0.0, 1.0], dtype=DT))),
        {
            "xi": [
                mut("nan", L(lambda: torch.tensor([NAN, 0.5], dtype=DT)), "error"),
                mut("negative", L(lambda: torch.tensor([-0.5, 0.5], dtype=DT)), "error"),
                mut("above_one", L(lambda: torch.tensor([1.5, 0.5], dtype=DT)), "error"),
            ],
            "offset": [mut("mismatched", L(lambda: torch.tensor([0.0, 1.0, 2.0], dtype=DT)), "error")],
        },
        base_kw=dict(check=close_to([0.25, 0.75])),
    )
    cat.sweep(
        tm,
        "draw_uniforms",
        call(T.draw_uniforms),
        dict(design="stratified", R=2, K=4, generator=L(_g)),
        {
            "design": [],
            "R": ints(2, 1, huge="either", only=("np_int64", "huge")),
            "K": [],
            "generator": [mut("numpy", np.random.default_rng(0), "error")],
            "device": [
                mut("bogus", "gpu0", "error"),
                mut("meta_vs_cpu_generator", "meta", "error", names=("device", "generator")),
            ],
            "dtype": [mut("int", torch.int64, "error"), mut("float16", torch.float16, "warn")],
        },
        base_kw=dict(
            check=lambda u: (
                None if tuple(u.shape) == (2, 4) and bool((torch.floor(u * 4) == torch.arange(4)).all()) else "strata"
            )
        ),
        output_bytes=lambda R, K, dtype=DT, **_: array_bytes((R, K), element_size(dtype)),
    )
    cat.add(tm, "draw_uniforms", "design=sobol_R=1e5", lambda ctx: T.draw_uniforms("sobol", 10**5, 4, _g()), "ok",
            limit=2.0, note="4e5 uniforms; one SobolEngine per row takes ~10 s")
    cat.add(tm, "draw_uniforms", "design=sobol_K=3_warns", lambda ctx: T.draw_uniforms("sobol", 1, 3, _g()),
            "warn", ("K",))
    U = lambda: torch.tensor([[0.1, 0.9]], dtype=DT)  # noqa: E731
    P2 = lambda: torch.tensor([0.5, 0.5], dtype=DT)  # noqa: E731
    Q2 = lambda: torch.tensor([0.25, 0.75], dtype=DT)  # noqa: E731
    cat.sweep(tm, "timesteps_from_uniforms", call(T.timesteps_from_uniforms), dict(u=L(U), p=L(P2), q=L(Q2)), {
        "u": tensors(U, only=("nan", "int", "meta", "float16", "bool"),
                     extra=[]),
        "p": [mut("short", L(lambda: torch.tensor([1.0], dtype=DT)), "error", names=("p", "q")),
              mut("meta", L(lambda: P2().to("meta")), "error")],
        "q": [mut("zero_where_p", L(lambda: torch.tensor([0.0, 1.0], dtype=DT)), "error")],
    }, base_kw=dict(check=lambda d: close_to([[2.0, 2 / 3]])(d.w)))
    TD = T.PiecewiseDensity(torch.tensor([0.0, 0.5, 1.0], dtype=DT), torch.tensor([0.5, 0.5], dtype=DT))
    cat.sweep(tm, "continuous_from_uniforms", call(T.continuous_from_uniforms),
              dict(u=L(lambda: torch.tensor([0.1, 0.7], dtype=DT)), p=TD, q=TD), {
        "p": [mut("core_density", C.PiecewiseDensity(np.array([0.0, 0.5, 1.0]), np.array([0.5, 0.5])), "error")],
        "u": [mut("nan", L(lambda: torch.tensor([NAN], dtype=DT)), "error"),
              mut("meta", L(lambda: torch.tensor([0.5]).to("meta")), "error", names=("u", "p", "edges"))],
    }, base_kw=dict(check=lambda d: close_to([0.1, 0.7])(d.t)))
    cat.sweep(
        tm,
        "InverseCDFSampler",
        call(T.InverseCDFSampler),
        dict(p=L(P4), q=L(Q4), design="stratified"),
        {
            "p": [mut("int", L(lambda: torch.tensor([0, 0, 0, 1])), "error")],
            "q": [
                mut("meta", L(lambda: Q4().to("meta")), "error"),
                mut("short", L(lambda: torch.full((3,), 1 / 3, dtype=DT)), "error", names=("p", "q")),
            ],
            "design": [mut("bogus", "lhs", "error")],
        },
        base_kw=dict(check=lambda s: None),
    )
    TS = T.InverseCDFSampler(P4(), Q4(), "stratified")
    cat.sweep(tm, "InverseCDFSampler.__call__", call(TS), dict(R=2, K=4, generator=L(_g)), {
        "R": [mut("zero", 0, "error"), mut("np_int64", np.int64(2), "ok")],
        "generator": [mut("numpy", np.random.default_rng(0), "error")],
    }, base_case=False)
    cat.add(tm, "InverseCDFSampler.transform", "u=meta", lambda ctx: TS.transform(torch.tensor([0.5]).to("meta")),
            "error", ("u",))
    cat.sweep(tm, "gaussian_noise", call(T.gaussian_noise), dict(shape=(3,), K=2, generator=L(_g)), {
        "shape": [],
        "K": [mut("zero", 0, "error"), mut("np_int64", np.int64(2), "ok")],
        "dtype": [mut("int", torch.int64, "error")],
        "device": [],
        "antithetic": [mut("odd_K", True, "error", names=("K", "antithetic"))],
    })
    cat.set_run("torch.gaussian_noise/antithetic=odd_K", lambda ctx: T.gaussian_noise((3,), 3, _g(), antithetic=True))

    # ----------------------------------------------------------------- breakpoints
    CUTS = lambda: torch.tensor([0.0, 0.5, 0.5, 1.0], dtype=DT)  # noqa: E731
    cat.sweep(
        tm,
        "BreakpointSampler",
        call(T.BreakpointSampler),
        dict(cuts=L(CUTS), weights=L(lambda: torch.tensor([1.0, 9.0, 2.0], dtype=DT))),
        {
            "cuts": [mut("nan", L(lambda: torch.tensor([0.0, NAN, 0.5, 1.0], dtype=DT)), "error")],
            "weights": [
                mut("meta", L(lambda: torch.ones(3, dtype=DT).to("meta")), "error"),
                mut("short", L(lambda: torch.ones(2, dtype=DT)), "error"),
            ],
            "device": [mut("bogus", "gpu0", "error")],
        },
        base_kw=dict(check=lambda s: None),
    )

    class UserSampler:
        design = "iid"

        def transform(self, u):
            u = np.asarray(u)
            return C.TimestepDraw(np.minimum((u * 4).astype(np.int64), 3), np.ones(u.shape))
    cat.sweep(tm, "as_sampler", call(T.as_sampler), dict(sampler=UserSampler(), n_timesteps=4), {
        "sampler": [mut("int", 5, "error")],
        "n_timesteps": [mut("none", None, "error"), mut("np_int64", np.int64(4), "ok")],
        "device": [mut("bogus", "gpu0", "error")],
    }, base_kw=dict(check=lambda s: None))
