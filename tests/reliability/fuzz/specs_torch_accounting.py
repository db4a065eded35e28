"""Case specs, carv_torch: the Accountant (construction, record/observe/decide/interval, state loads).

See :mod:`fuzz.cases` for the spec format and :mod:`fuzz.classify` for the verdicts."""

import numpy as np

from .cases import Catalogue, Lazy, call, mut
from .mutations import INF, NAN


def accounting_cases(cat: Catalogue) -> None:
    import carv_torch as T

    tm = "carv_torch"
    L = Lazy

    # ----------------------------------------------------------------- accounting
    cat.sweep(tm, "Accountant", call(T.Accountant), dict(K=4, k_min=2, k_max=32, fixed_costs=(8.0, 1.0)), {
        "K": [mut("above_k_max", 64, "error")],
        "k_min": [mut("np_int64", np.int64(2), "ok")],
        "k_max": [mut("below_k_min", 1, "error", names=("k_max", "k_min"))],
        "warmup": [],
        "window": [],
        "decay": [mut("nan", NAN, "error"), mut("np_float32", np.float32(0.9), "ok")],
        "fixed_costs": [mut("nan", (NAN, 1.0), "error"), mut("inf", (INF, 1.0), "error"),
                        mut("one_entry", (1.0,), "error"),
                        mut("str", "ab", "error"), mut("np_float32", (np.float32(8.0), np.float32(1.0)), "ok")],
        "device": [mut("bogus", "gpu0", "error")],
    }, base_kw=dict(check=lambda a: None))

    def acc_call(ctx, method, *args, **kw):
        acc = T.Accountant(K=4, k_min=2, k_max=32, warmup=0)
        ctx.watch(acc.state_dict, "the accountant's state")
        return getattr(acc, method)(*args, **kw)
    for label, args, expect, names in [
        ("kind=bogus", ("teacher", 0.1), "error", ("kind",)),
        ("seconds=nan", ("inner", NAN), "error", ("seconds",)),
        ("seconds=inf", ("inner", INF), "error", ("seconds",)),
        ("seconds=neg", ("inner", -1.0), "error", ("seconds",)),
        ("seconds=str", ("inner", "fast"), "error", ("seconds",)),
        ("seconds=np_float32", ("inner", np.float32(0.1)), "ok", ()),
    ]:
        cat.add(tm, "Accountant.record", label, lambda ctx, a=args: acc_call(ctx, "record", *a), expect, names)
    for label, args, expect, names in [
        ("sigma_b2=nan", (NAN, 1.0), "error", ("sigma_b2",)),
        ("sigma_w2=inf", (1.0, INF), "error", ("sigma_w2",)),
        ("sigma_b2=str", ("big", 1.0), "error", ("sigma_b2",)),
        ("sigma_b2=negative_doc", (-1.0, 1.0), "ok", ()),
        ("sigma_b2=np_float32", (np.float32(1.0), 1.0), "ok", ()),
    ]:
        cat.add(tm, "Accountant.observe", label, lambda ctx, a=args: acc_call(ctx, "observe", *a), expect, names)
    cat.add(tm, "Accountant.decide", "step=str", lambda ctx: acc_call(ctx, "decide", "first"), "error", ("step",))

    def acc_interval(ctx, kind="inner", start=None, stop=None, n=1):
        acc = T.Accountant(K=4, k_min=2, k_max=32, warmup=0)
        m = acc.marker()
        ctx.watch(acc.state_dict, "the accountant's state")
        acc.interval(kind, m if start is None else start, acc.marker() if stop is None else stop, n)
        return acc.c_d
    cat.sweep(tm, "Accountant.interval", acc_interval, dict(), {
        "n": [mut("zero", 0, "error"), mut("np_int64", np.int64(2), "ok")],
        "kind": [mut("bogus", "outer", "error")],
        "start": [mut("str", "now", "error")],
    })

    def acc_state(**changes):
        src = T.Accountant(K=4, k_min=2, k_max=32, warmup=0, fixed_costs=(8.0, 1.0))
        src.observe(1.0, 8.0)
        src.decide(0)
        s = src.state_dict()
        s.update(changes)
        return s

    def acc_load(ctx, state):
        acc = T.Accountant(K=4, k_min=2, k_max=32, warmup=0, fixed_costs=(8.0, 1.0))
        ctx.watch(acc.state_dict, "the accountant's state")
        acc.load_state_dict(state)
        return acc.decide(1).K
    cat.sweep(tm, "Accountant.load_state_dict", acc_load, dict(state=L(acc_state)), {"state": [
        mut("K_1000", L(lambda: acc_state(K=1000)), "error", names=("K",)),
        mut("k_min_above_k_max", L(lambda: acc_state(k_min=40)), "error", names=("k_min", "k_max")),
        mut("decay_1.5", L(lambda: acc_state(decay=1.5)), "error", names=("decay",)),
        mut("fixed_costs_nan", L(lambda: acc_state(fixed_costs=(NAN, 1.0))), "error", names=("fixed_costs",)),
        mut("samples_negative", L(lambda: acc_state(samples={"upstream": [-1.0], "inner": [-2.0]})), "error",
            names=("samples",)),
        mut("history_bad", L(lambda: acc_state(history=[{"K": 3}])), "error", names=("history",)),
        mut("missing_seen", L(lambda: {k: v for k, v in acc_state().items() if k != "seen"}), "error",
            names=("seen",)),
    ]})
