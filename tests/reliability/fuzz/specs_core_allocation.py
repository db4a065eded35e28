"""Case specs, carv_core: allocation (cost, variance, K*, best allocation, ECM), schedules, weighting.

See :mod:`fuzz.cases` for the spec format and :mod:`fuzz.classify` for the verdicts."""

import numpy as np

from .cases import Catalogue, array_bytes, call, close_to, mut
from .mutations import INF, NAN, arrays, ints, reals


def allocation_cases(cat: Catalogue) -> None:
    import carv_core as C

    core = "carv_core"

    # ----------------------------------------------------------------- allocation (carv_torch re-exports these)
    # The scalar validators are shared: the full mutation lists run on cost (R, c_u) and
    # optimal_k (k_max); the other functions get the cases their own maths makes interesting.
    cat.sweep(core, "cost", call(C.cost), dict(R=2, K=4, c_u=8.0, c_d=1.0), {
        "R": ints(2, 1, full=True, only=("zero", "float", "bool", "np_int64", "huge")),
                "c_u": reals(8.0, 0, lo_open=True, full=True, tensor="error",
                     only=("nan", "bool", "np_float32", "huge", "str",
                           "tensor")),
        "c_d": reals(1.0, 0, lo_open=True, only=("zero",)),
    }, base_kw=dict(check=close_to(24.0)))
    cat.sweep(core, "predicted_variance", call(C.predicted_variance),
              dict(R=2, K=4, sigma_b2=1.0, sigma_w2=8.0), {
        "sigma_b2": reals(1.0, 0, only=("nan", "neg", "huge"), extra=[mut("huge", 1e308, "ok")]),
    }, base_kw=dict(check=close_to(1.5)))
    # K* = sqrt(c_u/c_d * sw/sb): every huge or tiny input below has a finite true K* (~1e154 or
    # ~1e150), so an inf from an overflowing intermediate is a wrong result.
    cat.sweep(core, "k_star", call(C.k_star), dict(c_u=8.0, c_d=1.0, sigma_b2=1.0, sigma_w2=8.0), {
        "c_u": [mut("huge", 1e308, "ok", check=lambda v: None if 1e154 < v < 1e155 else
                    f"K* = sqrt(1e308 * 8) ~ 2.8e154, got {v}")],
        "c_d": [mut("tiny", 1e-300, "ok", check=lambda v: None if 1e150 < v < 1e152 else
                    f"K* = sqrt(8/1e-300 * 8) ~ 8e150, got {v}")],
        "sigma_b2": [mut("zero_doc_inf", 0.0, "ok", allow_inf=True), mut("nan", NAN, "error")],
        "sigma_w2": [mut("huge", 1e308, "ok", check=lambda v: None if 1e154 < v < 1e155 else
                         f"K* = sqrt(8 * 1e308) ~ 2.8e154, got {v}"), mut("neg", -1.0, "error")],
    }, base_kw=dict(check=close_to(8.0)))
    cat.sweep(core, "optimal_k", call(C.optimal_k),
              dict(c_u=8.0, c_d=1.0, sigma_b2=1.0, sigma_w2=5.0, k_max=None), {
        "k_max": ints(64, 1, none_ok=True, full=True, only=("zero", "np_int64", "huge")),
        "c_u": [mut("huge", 1e308, "ok", check=lambda v: None if isinstance(v, int) and v > 10**150 else
                    f"K* ~ 2.2e154, got {v!r}")],
        "sigma_b2": [mut("zero_no_cap", 0.0, "error", names=("sigma_b2", "k_max"))],
    }, base_kw=dict(check=close_to(6)))
    cat.add(core, "optimal_k", "sigma_b2=zero_with_cap",
            lambda ctx: C.optimal_k(8.0, 1.0, 0.0, 5.0, k_max=16), "ok", check=close_to(16))
    cat.sweep(core, "best_allocation", call(C.best_allocation),
              dict(budget=32.0, c_u=8.0, c_d=1.0, sigma_b2=1.0, sigma_w2=8.0, k_max=16), {
        "budget": reals(32.0, 0, lo_open=True, only=("nan", "np_float32", "too_small", "huge"),
                        extra=[mut("too_small", 5.0, "error"), mut("huge", 1e308, "ok", allow_inf=True)]),
        "k_max": ints(16, 1, only=("np_int64",)),
    }, base_kw=dict(check=lambda a: None if (a.R, a.K) == (2, 8) else f"expected R=2, K=8, got {a}"))
    # A scalar choice over 10**6 candidate K is closed-form maths (convex in K): far under 0.25 s.
    cat.add(core, "best_allocation", "k_max=1e6_big_budget",
            lambda ctx: C.best_allocation(1e12, 8.0, 1.0, 1.0, 8.0, k_max=10**6), "ok", limit=0.25,
            note="a loop over every K up to k_max takes ~1 s")
    cat.sweep(core, "ecm", call(C.ecm), dict(var_base=4.0, cost_base=1.0, var_method=1.0, cost_method=2.0), {
        "var_base": [mut("nan", NAN, "error"), mut("huge", 1e308, "ok", allow_inf=True)],
        "cost_base": [mut("neg", -1.0, "error")],
        "var_method": [mut("tiny", 1e-308, "ok", allow_inf=True)],
        "cost_method": [mut("str", "2", "error")],
    }, base_kw=dict(check=close_to(2.0)))
    cat.sweep(core, "relative_efficiency", call(C.relative_efficiency), dict(var_uniform=2.0, var_method=1.0), {
        "var_uniform": [mut("nan", NAN, "error")],
        "var_method": [mut("zero", 0.0, "error"), mut("np_float32", np.float32(1.0), "ok")],
    }, base_case=False)
    cat.sweep(core, "predict", call(C.predict),
              dict(R=1, K=8, c_u=8.0, c_d=1.0, sigma_b2=1.0, sigma_w2=8.0, R0=2, K0=1), {
        "R0": [mut("zero", 0, "error"), mut("float", 2.5, "error"), mut("np_int64", np.int64(2), "ok")],
        "K0": [mut("zero", 0, "error")],
        "sigma_b2": [mut("zero", 0.0, "ok")],
        "c_d": [mut("huge", 1e308, "ok", allow_inf=True)],
    }, base_kw=dict(check=lambda p: None if abs(p.ecm - 2.53125) < 1e-12 else f"ecm {p.ecm}"))
    cat.sweep(core, "reuse_ceiling", call(C.reuse_ceiling), dict(sigma_b2=1.0, sigma_w2=8.0, K0=1), {
        "K0": [mut("zero", 0, "error"), mut("np_int64", np.int64(2), "ok")],
        "sigma_b2": [mut("zero", 0.0, "ok", allow_inf=True)],
        "sigma_w2": [mut("inf", INF, "error")],
    }, base_case=False)

    # ----------------------------------------------------------------- schedules
    cat.sweep(core, "make_betas", call(C.make_betas),
              dict(beta_schedule="linear", num_train_timesteps=10, beta_start=1e-4, beta_end=0.02), {
        "beta_schedule": [mut("bogus", "cosine", "error")],
        "num_train_timesteps": ints(10, 1, huge="either", only=("np_int64", "huge"),
                                    extra=[]),
        "beta_start": reals(1e-4, 0, 1, lo_open=True, only=("np_float32", "huge"),
                            extra=[mut("huge", 1e308, "error")]),
        "beta_end": reals(0.02, 0, 1, lo_open=True, only=("inf",)),
        "max_beta": [],
    }, output_bytes=lambda num_train_timesteps, **_: array_bytes((num_train_timesteps,)))
    cat.sweep(core, "make_schedule", call(C.make_schedule),
              dict(beta_schedule="linear", num_train_timesteps=10, beta_start=1e-4, beta_end=0.02), {
        "beta_end": [mut("one", 1.0, "error", names=("beta_end", "betas")),
                     mut("np_float32", np.float32(0.02), "ok")],
    }, base_kw=dict(check=lambda s: None))
    cat.sweep(core, "DiscreteSchedule", call(C.DiscreteSchedule), dict(alphas_cumprod=np.array([0.9, 0.5, 0.1])), {
        "alphas_cumprod": arrays(np.array([0.9, 0.5, 0.1]), only=("nan", "above_one", "negative", "list"), extra=[
            mut("above_one", np.array([1.5, 0.5]), "error"), mut("negative", np.array([0.5, -0.1]), "error"),
            mut("2d", np.full((2, 2), 0.5), "error"), mut("list", [0.9, 0.5], "ok")]),
    }, base_kw=dict(check=lambda s: None))
    cat.sweep(core, "DiscreteSchedule.from_betas", call(C.DiscreteSchedule.from_betas),
              dict(betas=np.array([0.1, 0.2])), {
        "betas": [mut("nan", np.array([NAN, 0.2]), "error"), mut("one", np.array([1.0, 0.2]), "error")],
    }, base_kw=dict(check=lambda s: None))
    cat.sweep(core, "continuous_schedule", call(C.continuous_schedule),
              dict(name="vp_linear", beta_min=0.1, beta_max=20.0), {
        "name": [mut("bogus", "edm", "error"), mut("cosine", "vp_cosine", "ok")],
        "beta_min": [mut("nan", NAN, "error"), mut("np_float32", np.float32(0.1), "ok")],
        "beta_max": [mut("inf", INF, "error")],
    }, base_kw=dict(check=lambda s: None))
    flow = C.continuous_schedule("flow_matching")
    cat.sweep(core, "ContinuousSchedule.alpha", call(flow.alpha), dict(t=np.array([0.25, 0.5])), {
        "t": [mut("nan", np.array([NAN]), "error"), mut("above", np.array([1.5]), "error"),
              mut("empty", np.zeros(0), "ok"), mut("np_float32", np.float32(0.5), "ok")],
    })
    cat.add(core, "ContinuousSchedule.snr", "t=zero_doc_inf", lambda ctx: flow.snr(np.array([0.0])),
            "ok", allow_inf=True)

    # ----------------------------------------------------------------- weighting
    S3 = C.make_schedule("linear", 4, 0.1, 0.3)
    cat.sweep(core, "weighting", call(C.weighting), dict(name="sds", schedule=S3), {
        "name": [mut("bogus", "min_snr", "error", names=("name", "weighting")),
                 mut("negative_fn", lambda a: a - 1.0, "error", names=("name", "weighting", "weights")),
                 mut("nan_fn", lambda a: a * NAN, "error", names=("name", "weighting")),
                 mut("shape_fn", lambda a: a[:2], "error", names=("name", "weighting"))],
        "schedule": [mut("none", None, "error")],
    })
    cat.add(core, "sds_weight", "include_alpha=str", lambda ctx: C.sds_weight("sds", S3, include_alpha="no"),
            "error", ("include_alpha",))
