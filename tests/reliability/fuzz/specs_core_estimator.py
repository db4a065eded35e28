"""Case specs, carv_core: breakpoints of user samplers, the hierarchical estimator, Welford.

See :mod:`fuzz.cases` for the spec format and :mod:`fuzz.classify` for the verdicts."""

import types

import numpy as np

from .cases import Catalogue, Lazy, array_bytes, call, close_to, mut
from .mutations import NAN, arrays


def estimator_cases(cat: Catalogue) -> None:
    import carv_core as C

    core = "carv_core"

    # ----------------------------------------------------------------- breakpoints
    CUTS, WTS = np.array([0.0, 0.5, 0.5, 1.0]), np.array([1.0, 9.0, 2.0])
    cat.sweep(
        core,
        "BreakpointSampler",
        call(C.BreakpointSampler),
        dict(cuts=CUTS, weights=WTS, design="stratified"),
        {
            "cuts": [
                mut("nan", np.array([0.0, NAN, 0.5, 1.0]), "error"),
                mut("not_from_zero", np.array([0.1, 0.5, 0.5, 1.0]), "error"),
                mut("decreasing", np.array([0.0, 0.6, 0.5, 1.0]), "error"),
            ],
            "weights": [mut("short", np.array([1.0, 2.0]), "error"), mut("nan", np.array([1.0, NAN, 2.0]), "error")],
            "design": [],
        },
        base_kw=dict(check=lambda s: None if s(R=1, K=2, rng=0).t.tolist() == [[0, 2]] else "draw"),
    )

    class Transform:
        def __init__(self, fn, design="iid"):
            self.transform, self.design = fn, design
    good_t = Transform(
        lambda u: C.TimestepDraw(np.minimum((np.asarray(u) * 4).astype(np.int64), 3), np.ones(np.shape(u)))
    )
    cat.sweep(core, "call_transform", call(C.call_transform), dict(sampler=good_t, u=np.array([0.1, 0.9])), {
        "sampler": [mut("no_transform", 5, "error"),
                    mut("scalar_only", Transform(lambda u: (int(u * 4), 1.0)), "error"),
                    mut("dict", Transform(lambda u: {"t": u, "w": u}), "error"),
                    mut("float_t", Transform(lambda u: (np.asarray(u) * 4, np.ones(np.shape(u)))), "error"),
                    mut("wrong_shape", Transform(lambda u: (np.zeros(1, dtype=np.int64), np.ones(1))), "error")],
    }, names={"sampler": ("sampler", "transform")}, finite=False)
    cat.sweep(
        core,
        "find_breakpoints",
        call(C.find_breakpoints),
        dict(sampler=good_t, n_timesteps=4),
        {
            "n_timesteps": [
                mut("zero", 0, "error"),
                mut("np_int64", np.int64(4), "ok"),
                mut("huge", 10**9, "either"),
                mut("too_small", 2, "error", names=("n_timesteps", "transform")),
            ],
            "sampler": [
                mut(
                    "non_monotone",
                    Transform(lambda u: ((np.asarray(u) * 4).astype(np.int64) % 2, np.ones(np.shape(u)))),
                    "error",
                ),
                mut(
                    "negative_t",
                    Transform(lambda u: (np.full(np.shape(u), -1, dtype=np.int64), np.ones(np.shape(u)))),
                    "error",
                ),
            ],
        },
        names={"sampler": ("sampler", "transform")},
        base_kw=dict(check=close_to([0, 0.25, 0.5, 0.75, 1.0], 1e-12)),
        output_bytes=lambda n_timesteps, **_: array_bytes((n_timesteps + 1,)),  # the cuts c_0..c_T
    )
    cat.add(
        core,
        "tabulate",
        "sampler=no_design",
        lambda ctx: C.tabulate(types.SimpleNamespace(transform=good_t.transform), 4),
        "error",
        ("design", "sampler"),
    )
    cat.add(core, "tabulate", "base", lambda ctx: C.tabulate(good_t, 4), "ok", finite=False)

    # ----------------------------------------------------------------- estimator
    V = np.array([[1.0, 3.0], [5.0, 7.0]])
    cat.sweep(core, "hierarchical_estimate", call(C.hierarchical_estimate), dict(values=V, weights=None), {
        "values": arrays(V, full=True, only=("nan", "int", "torch", "1d", "huge"),
                         extra=[mut("1d", np.ones(3), "error"), mut("huge", np.full((2, 2), 1e308), "either")]),
        "weights": [mut("transposed", np.ones((3, 2)), "error")],
    }, base_kw=dict(check=lambda e: None if (float(e.mean), e.variance) == (4.0, 4.0) else f"{e}"))
    cat.set_run(
        "core.hierarchical_estimate/weights=transposed",
        lambda ctx: C.hierarchical_estimate(np.ones((2, 3, 5)), np.ones((3, 2))),
    )
    cat.add(core, "hierarchical_estimate", "R=1_doc_nan_variance",
            lambda ctx: C.hierarchical_estimate(np.ones((1, 3))).mean, "ok")
    cat.sweep(core, "variance_components", call(C.variance_components), dict(values=V, weights=None), {
        "values": [mut("R1", np.ones((1, 3)), "error"), mut("K1", np.ones((3, 1)), "error"),
                   mut("huge", np.full((2, 2), 1e308), "either")],
        "weights": [mut("transposed", np.ones((3, 2)), "error")],
    }, base_kw=dict(check=lambda v: None if (v.sigma_w2, v.sigma_b2) == (2.0, 7.0) else f"{v}"))
    cat.set_run(
        "core.variance_components/weights=transposed",
        lambda ctx: C.variance_components(np.ones((2, 3)), np.ones((3, 2))),
    )

    def wf_update(ctx, x, first=None):
        acc = C.Welford()
        if first is not None:
            acc.update(first)
        ctx.watch(lambda: vars(acc), "the accumulator")
        acc.update(x)
        return acc.mean, acc.m2
    cat.sweep(
        core,
        "Welford.update",
        wf_update,
        dict(x=np.array([[1.0, 0.0], [3.0, 0.0]])),
        {
            "x": [
                mut("nan", np.array([NAN, 0.0]), "error"),
                mut("empty", np.zeros((0, 2)), "error"),
                mut("3d", np.ones((2, 1, 2)), "ok"),
                mut("huge", np.full((2, 2), 1e308), "either"),
            ]
        },
    )
    cat.add(core, "Welford.update", "x=dimension_change",
            lambda ctx: wf_update(ctx, np.ones(3), first=np.ones(2)), "error", ("x",))

    def wf_mse(ctx, reference, updates=True):
        acc = C.Welford()
        if updates:
            acc.update(np.array([[1.0, 0.0], [3.0, 0.0]]))
        return acc.mse(reference)
    cat.sweep(core, "Welford.mse", wf_mse, dict(reference=np.zeros(2)), {
        "reference": [mut("short", np.zeros(3), "error"), mut("nan", np.array([NAN, 0.0]), "error")],
        "updates": [mut("none_yet", False, "error", names=("mse", "update"))],
    }, base_kw=dict(check=close_to(5.0)))

    def wf_state(**changes):
        acc = C.Welford()
        acc.update(np.array([[1.0, 0.0], [3.0, 0.0], [2.0, 1.0]]))
        s = acc.state_dict()
        s.update(changes)
        return s

    def wf_load(ctx, state):
        acc = C.Welford()
        acc.update(np.array([[5.0, 5.0]]))
        ctx.watch(lambda: vars(acc), "the accumulator")
        acc.load_state_dict(state)
        return acc.mean, acc.m2, acc.trace_cov
    cat.sweep(core, "Welford.load_state_dict", wf_load, dict(state=Lazy(wf_state)), {"state": [
        mut("count_negative", Lazy(lambda: wf_state(count=-1)), "error", names=("count",)),
        mut("m2_nan", Lazy(lambda: wf_state(m2=NAN)), "error", names=("m2",)),
        mut("m2_negative", Lazy(lambda: wf_state(m2=-1.0)), "error", names=("m2",)),
        mut("mean_nan", Lazy(lambda: wf_state(mean=[NAN, 0.0])), "error", names=("mean",)),
        mut("mean_str", Lazy(lambda: wf_state(mean="abc")), "error", names=("mean",)),
        mut("count0_with_mean", Lazy(lambda: wf_state(count=0)), "error", names=("count", "mean")),
        mut("missing_m2", Lazy(lambda: {"count": 3, "mean": [1.0, 0.0]}), "error", names=("m2",)),
    ]})
