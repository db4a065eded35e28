"""Case specs, carv_torch (parity with carv_core): the hierarchical estimator, split halves, Welford.

See :mod:`fuzz.cases` for the spec format and :mod:`fuzz.classify` for the verdicts."""

import numpy as np

import carv_core as C

from .cases import Catalogue, Lazy, call, mut
from .mutations import NAN, tensors


def torch_estimator_cases(cat: Catalogue) -> None:
    import torch
    import carv_torch as T

    tm = "carv_torch"
    DT = torch.float64
    L = Lazy

    # ----------------------------------------------------------------- estimator
    V = lambda: torch.tensor([[1.0, 3.0], [5.0, 7.0]], dtype=DT)  # noqa: E731
    cat.sweep(tm, "hierarchical_estimate", call(T.hierarchical_estimate), dict(values=L(V)), {
        "values": tensors(V, full=True, only=("nan", "int", "float16")),
        "weights": [mut("meta", L(lambda: torch.ones(2, 2).to("meta")), "error"),
                    mut("transposed", L(lambda: torch.ones(3, 2, dtype=DT)), "error")],
    }, base_kw=dict(check=lambda e: None if (e.mean.item(), e.variance.item()) == (4.0, 4.0) else f"{e}"))
    cat.set_run(
        "torch.hierarchical_estimate/weights=transposed",
        lambda ctx: T.hierarchical_estimate(torch.ones(2, 3, 5, dtype=DT), torch.ones(3, 2, dtype=DT)),
    )
    cat.add(
        tm,
        "hierarchical_estimate",
        "values=huge",
        lambda ctx: T.hierarchical_estimate(torch.full((2, 2), 1e308, dtype=DT)),
        "either",
        ("values",),
    )
    cat.add(tm, "variance_components", "values=R1", lambda ctx: T.variance_components(torch.ones(1, 3)), "error",
            ("values",))
    HA = lambda: torch.tensor([1.0], dtype=DT)  # noqa: E731
    RM = lambda: torch.tensor([[0.0], [2.0]], dtype=DT)  # noqa: E731
    cat.sweep(
        tm,
        "split_half_components",
        call(T.split_half_components),
        dict(half_a=L(HA), half_b=L(lambda: torch.zeros(1, dtype=DT)), row_means=L(RM), h=1),
        {
            "h": [mut("zero", 0, "error"), mut("np_int64", np.int64(1), "ok")],
            "row_means": [mut("one_row", L(lambda: torch.zeros(1, 1, dtype=DT)), "error")],
            "half_a": [
                mut("shape", L(lambda: torch.ones(2, dtype=DT)), "error", names=("half_a", "half_b")),
                mut("meta", L(lambda: HA().to("meta")), "error"),
            ],
        },
        base_kw=dict(check=lambda v: None if (v.sigma_w2.item(), v.sigma_b2.item()) == (1.0, 1.5) else f"{v}"),
    )

    def tw_update(ctx, x, first=None, **kw):
        acc = T.Welford(**kw)
        if first is not None:
            acc.update(first)
        ctx.watch(lambda: vars(acc), "the accumulator")
        acc.update(x)
        return acc.mean, acc.m2
    cat.sweep(tm, "Welford.update", tw_update, dict(x=L(lambda: torch.tensor([[1.0, 0.0], [3.0, 0.0]], dtype=DT))),
              {
        "x": [mut("nan", L(lambda: torch.tensor([NAN, 0.0], dtype=DT)), "error"),
              mut("float16", L(lambda: torch.tensor([1.0, 0.0], dtype=torch.float16)), "ok")],
        "device": [mut("bogus", "gpu0", "error")],
        "dtype": [mut("int", torch.int64, "error")],
    })
    cat.add(tm, "Welford.update", "x=meta_after_cpu",
            lambda ctx: tw_update(ctx, torch.ones(2).to("meta"), first=torch.ones(2, dtype=DT)), "error", ("x",))

    def tw_state(**changes):
        acc = T.Welford()
        acc.update(torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 1.0]], dtype=DT))
        s = acc.state_dict()
        s.update(changes)
        return s

    def tw_load(ctx, state):
        acc = T.Welford()
        acc.update(torch.tensor([[5.0, 5.0]], dtype=DT))
        ctx.watch(lambda: vars(acc), "the accumulator")
        acc.load_state_dict(state)
        return acc.mean, acc.m2, acc.trace_cov
    cat.sweep(
        tm,
        "Welford.load_state_dict",
        tw_load,
        dict(state=L(tw_state)),
        {
            "state": [
                mut("m2_nan", L(lambda: tw_state(m2=NAN)), "error", names=("m2",)),
                mut("m2_negative", L(lambda: tw_state(m2=-1.0)), "error", names=("m2",)),
                mut("mean_nan", L(lambda: tw_state(mean=[NAN, 0.0])), "error", names=("mean",)),
                mut("mean_str", L(lambda: tw_state(mean="abc")), "error", names=("mean",)),
                mut("mean_wrong_length", L(lambda: tw_state(mean=[1.0, 0.0, 0.0])), "error", names=("mean",)),
                mut(
                    "core_state",
                    L(
                        lambda: (lambda a: (a.update(np.array([[1.0, 0.0], [3.0, 0.0]])), a.state_dict())[1])(
                            C.Welford()
                        )
                    ),
                    "ok",
                ),
            ]
        },
    )
