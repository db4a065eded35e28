"""Case specs, carv_core: sampling (inverse CDF, strata, uniform designs, layouts, samplers, noise).

See :mod:`fuzz.cases` for the spec format and :mod:`fuzz.classify` for the verdicts."""

import numpy as np

from .cases import Catalogue, Lazy, _torch, array_bytes, call, close_to, mut
from .mutations import NAN, ints, pmfs


def sampling_cases(cat: Catalogue) -> None:
    import carv_core as C

    core = "carv_core"
    P4 = np.full(4, 0.25)
    Q4 = np.array([0.1, 0.2, 0.3, 0.4])

    # ----------------------------------------------------------------- sampling
    cat.sweep(core, "cdf_from_pmf", call(C.cdf_from_pmf), dict(q=Q4), {"q": pmfs(4, only=("nan", "2d", "float32"))},
              base_kw=dict(check=close_to([0.1, 0.3, 0.6, 1.0])))
    CDF = np.array([0.25, 0.25, 1.0])
    cat.sweep(core, "inverse_cdf", call(C.inverse_cdf), dict(cdf=CDF, u=np.array([0.0, 0.2, 0.25, 0.99])), {
        "cdf": [mut("zero_end", np.zeros(3), "error"), mut("below_one_end", np.array([0.25, 0.5, 0.999999]), "ok")],
        "u": [mut("one", np.array([1.0]), "error"), mut("nan", np.array([NAN]), "error"),
              mut("empty", np.zeros(0), "ok")],
    }, base_kw=dict(check=close_to([0, 0, 2, 2])))
    cat.sweep(core, "stratum_pmfs", call(C.stratum_pmfs), dict(q=np.array([0.5, 0.25, 0.25]), B=2), {
        "B": ints(2, 1, huge="either", only=("zero", "np_int64", "huge")),
        "q": [mut("nan", np.array([NAN, 0.5, 0.5]), "error")],
    }, base_kw=dict(check=close_to([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])),
        output_bytes=lambda q, B, **_: array_bytes((B, len(q))))
    cat.sweep(core, "stratify", call(C.stratify), dict(xi=np.array([0.5, 0.5]), offset=np.array([0, 1])), {
        "xi": [mut("nan", np.array([NAN, 0.5]), "error"), mut("negative", np.array([-0.5, 0.5]), "error"),
               mut("above_one", np.array([1.5, 0.5]), "error")],
        "offset": [mut("mismatched", np.array([0, 1, 2]), "error"), mut("out_of_range", np.array([0, 5]), "error")],
    }, base_kw=dict(check=close_to([0.25, 0.75])))
    cat.sweep(
        core,
        "draw_uniforms",
        call(C.draw_uniforms),
        dict(design="stratified", R=2, K=4, rng=0),
        {
            "design": [mut("bogus", "lhs", "error")],
            "R": ints(2, 1, huge="either", full=True, only=("zero", "np_int64", "huge")),
            "K": ints(4, 1, only=("one",), extra=[mut("one", 1, "ok")]),
            "rng": [
                mut("str", "abc", "error"),
                mut("neg_seed", -1, "error"),
                mut("torch_generator", Lazy(lambda: _torch().Generator()), "error"),
            ],
        },
        base_kw=dict(
            check=lambda u: None if u.shape == (2, 4) and (np.floor(u * 4) == np.arange(4)).all() else "strata"
        ),
        output_bytes=lambda R, K, **_: array_bytes((R, K)),
    )
    for design in ("antithetic", "sobol"):
        cat.add(core, "draw_uniforms", f"design={design}", lambda ctx, d=design: C.draw_uniforms(d, 2, 4, rng=0),
                "ok",
                check=lambda u: None if u.shape == (2, 4) and u.min() >= 0 and u.max() < 1 else "range")
    cat.add(core, "Antithetic.draw", "K=odd", lambda ctx: C.Antithetic().draw(2, 3, 0), "error", ("K",))
    cat.add(core, "Antithetic", "stratified=str", lambda ctx: C.Antithetic(stratified="no"), "error",
            ("stratified",))
    cat.add(core, "Sobol.draw", "K=3_warns", lambda ctx: C.Sobol().draw(1, 3, 0), "warn", ("K",))
    cat.add(core, "Sobol.draw", "R=1e5", lambda ctx: C.Sobol().draw(10**5, 4, 0), "ok", limit=2.0,
            note="4e5 uniforms; one scipy engine per row takes ~20 s")

    class BadDesign(C.Design):
        def __init__(self, how):
            self.how = how

        def layout(self, R, K):
            ok = C.Stratified().layout(R, K)
            if self.how == "type":
                return tuple(ok)[:4]
            if self.how == "shape":
                return ok._replace(offset=ok.offset[:, :1])
            if self.how == "n_blocks":
                return ok._replace(n_blocks=0)
            if self.how == "offset":
                return ok._replace(offset=ok.offset + 5)
            if self.how == "sign":
                return ok._replace(sign=ok.sign * 2)
            return ok
    for how in ("type", "shape", "n_blocks", "offset"):
        cat.add(
            core,
            "Design.draw",
            f"user_layout={how}",
            lambda ctx, h=how: C.draw_uniforms(BadDesign(h), 2, 4, 0),
            "error",
            ("layout", how),
        )
    cat.add(core, "Design.draw", "user_layout=valid", lambda ctx: C.draw_uniforms(BadDesign("ok"), 2, 4, 0), "ok")
    cat.add(core, "as_design", "design=int", lambda ctx: C.as_design(5), "error", ("design",))
    cat.add(core, "as_design", "design=bogus", lambda ctx: C.as_design("halton"), "error", ("design",))
    LAY = C.Stratified().layout(2, 2)
    cat.sweep(core, "apply_layout", call(C.apply_layout), dict(layout=LAY, xi=np.full(4, 0.5), perm_keys=None), {
        "xi": [mut("short", np.full(2, 0.5), "error"), mut("nan", np.array([NAN, 0.5, 0.5, 0.5]), "error"),
               mut("list", [0.5] * 4, "either")],
        "layout": [mut("tuple", tuple(LAY)[:4], "error")],
        "perm_keys": [mut("missing_for_shuffle", None, "error", names=("perm_keys",))],
    }, base_kw=dict(check=close_to([[0.25, 0.75], [0.25, 0.75]])))
    # the perm_keys case needs a shuffling layout
    cat.set_run("core.apply_layout/perm_keys=missing_for_shuffle",
                lambda ctx: C.apply_layout(C.PermutedStrata().layout(2, 2), np.full(4, 0.5), None))
    cat.sweep(core, "timesteps_from_uniforms", call(C.timesteps_from_uniforms),
              dict(u=np.array([[0.1, 0.9]]), p=np.array([0.5, 0.5]), q=np.array([0.25, 0.75])), {
        "u": [mut("one", np.array([[1.0]]), "error"), mut("nan", np.array([[NAN]]), "error"),
              mut("empty", np.zeros((1, 0)), "ok")],
        "p": [mut("short", np.array([1.0]), "error", names=("p", "q"))],
        "q": [mut("zero_where_p", np.array([0.0, 1.0]), "error")],
    }, base_kw=dict(check=lambda d: close_to([[2.0, 2 / 3]])(d.w)))
    D2 = C.PiecewiseDensity(np.array([0.0, 0.5, 1.0]), np.array([0.5, 0.5]))
    D2b = C.PiecewiseDensity(np.array([0.0, 0.25, 1.0]), np.array([0.5, 0.5]))
    D2z = C.PiecewiseDensity(np.array([0.0, 0.5, 1.0]), np.array([1.0, 0.0]))
    cat.sweep(
        core,
        "continuous_from_uniforms",
        call(C.continuous_from_uniforms),
        dict(u=np.array([0.1, 0.7]), p=D2, q=D2),
        {
            "p": [
                mut("array", np.array([0.5, 0.5]), "error"),
                mut("other_edges", D2b, "error", names=("p", "q", "edges")),
            ],
            "q": [mut("zero_where_p", D2z, "error")],
            "u": [mut("nan", np.array([NAN]), "error")],
        },
        base_kw=dict(check=lambda d: close_to([0.1, 0.7])(d.t)),
    )
    cat.sweep(core, "InverseCDFSampler", call(C.InverseCDFSampler), dict(p=P4, q=Q4, design="stratified"), {
        "q": [mut("short", np.full(3, 1 / 3), "error", names=("p", "q")),
              mut("zero_where_p", np.array([0.0, 0.2, 0.4, 0.4]), "error")],
        "design": [mut("none", None, "error"), mut("object", C.Sobol(), "ok")],
    }, base_kw=dict(check=lambda s: None))
    SAMP = C.InverseCDFSampler(P4, Q4, "stratified")
    cat.sweep(core, "InverseCDFSampler.__call__", call(SAMP), dict(R=2, K=4, rng=0), {
        "R": [mut("zero", 0, "error"), mut("np_int64", np.int64(2), "ok")],
        "K": [mut("one", 1, "ok")],
        "rng": [mut("str", "seed", "error")],
    }, base_case=False)
    cat.sweep(core, "InverseCDFSampler.transform", call(SAMP.transform), dict(u=np.array([0.5])), {
        "u": [mut("one", np.array([1.0]), "error"), mut("nan", np.array([NAN]), "error")]}, base_case=False)
    cat.sweep(core, "gaussian_noise", call(C.gaussian_noise), dict(shape=(3,), K=2, rng=0, antithetic=False, R=1), {
        "shape": [mut("zero", (0,), "error"), mut("int", 3, "error")],
        "K": ints(2, 1, only=("zero", "huge"), huge="either"),
        "R": [mut("zero", 0, "error"), mut("np_int64", np.int64(2), "ok")],
        "antithetic": [mut("odd_K", True, "error", names=("K", "antithetic"))],
    }, output_bytes=lambda shape, K, R, **_: array_bytes((R, K, *shape)))
    # the odd-K antithetic case needs K = 3
    cat.set_run("core.gaussian_noise/antithetic=odd_K", lambda ctx: C.gaussian_noise((3,), 3, rng=0, antithetic=True))
