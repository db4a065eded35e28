"""Case specs, carv_torch: the guidance (GuidanceConfig fields, CARVGuidance construction, calls, checkpoints).

See :mod:`fuzz.cases` for the spec format and :mod:`fuzz.classify` for the verdicts."""

import copy

import numpy as np

from .cases import Catalogue, Lazy, mut, resolve
from .fixtures import _DELETE, DT_T, _g, _probe_run, _UserSampler50, gm_teacher, images
from .mutations import INF, NAN


def guidance_cases(cat: Catalogue) -> None:
    import torch
    import carv_torch as T
    from carv_torch.guidance import CARVGuidance, GuidanceConfig

    tm = "carv_torch"
    DT = torch.float64
    L = Lazy
    FP = (ValueError, TypeError, FloatingPointError)
    TEACHER = gm_teacher()

    def guidance(teacher=None, **cfg):
        cfg.setdefault("K", 2)
        return CARVGuidance(TEACHER if teacher is None else teacher, GuidanceConfig(**cfg))

    def one_call(g, B=2):
        out = g(images(B))
        out["loss"] = next(v for k, v in out.items() if k.startswith("loss_"))
        out["loss"].backward()
        return out

    # ----------------------------------------------------------------- GuidanceConfig fields
    # "Validated when it is built (a bad field is an error at construction, naming it, not at
    # the first call)": an error case builds the config only. An ok case also builds the guidance
    # and runs two calls (the fields must work, not just be stored).
    def config(ctx, full=False, **fields):
        base = {"K": 2}
        base.update(fields)
        cfg = GuidanceConfig(**base)
        if not full:
            return None
        g = CARVGuidance(TEACHER, cfg)
        outs = [one_call(g) for _ in range(2)]
        return {k: v for k, v in outs[-1].items() if k != "variance"}

    field_muts = {
        "min_step_percent": [
            mut("np_float32", np.float32(0.02), "ok"), mut("schedule", [0, 0.3, 0.02, 100], "ok"),
            mut("nan", NAN, "error"), mut("above_one", 1.5, "error"),
            mut("above_max", 0.99, "error", names=("min_step_percent", "max_step_percent")),
            mut("schedule_len2", [0.3, 0.02], "error")],
        "max_step_percent": [
            mut("np_float64", np.float64(0.98), "ok"), mut("schedule3", [0.98, 0.5, 100], "ok"),
            mut("nan", NAN, "error"), mut("zero", 0.0, "error", names=("max_step_percent", "min_step_percent"))],
        "weighting": [mut("bogus", "p2", "error"), mut("uniform", "uniform", "ok")],
        "include_alpha": [mut("str", "no", "error"), mut("np_bool", np.bool_(False), "ok")],
        "proposal": [mut("bogus", "oracle", "error"), mut("int", 5, "error"), mut("adaptive", "adaptive", "ok"),
                     mut("weight", "weight", "ok")],
        "delta": [mut("nan", NAN, "error"), mut("above_one", 1.5, "error"), mut("bool", True, "error"),
                  mut("np_float32", np.float32(0.1), "ok")],
        "adaptive_bins": [mut("zero", 0, "error"), mut("float", 2.5, "error"), mut("np_int64", np.int64(20), "ok")],
        "adaptive_decay": [mut("nan", NAN, "error"), mut("one", 1.0, "error"),
                           mut("np_float32", np.float32(0.9), "ok")],
        "sampler": [mut("bogus", "lhs", "error"), mut("sobol", "sobol", "ok"),
                    mut("design_object", L(lambda: __import__("carv_core").Antithetic()), "ok")],
        "antithetic": [mut("str", "yes", "error")],
        "K": [mut("zero", 0, "error"), mut("bool", True, "error"), mut("str", "4", "error"),
              mut("np_int64", np.int64(2), "ok"), mut("one", 1, "ok"),
              mut("auto", "auto", "ok")],
        "k_init": [mut("nan", NAN, "error"), mut("zero", 0, "error"), mut("above_k_max", 64, "error"),
                   mut("np_int64", np.int64(4), "ok")],
        "k_min": [mut("zero", 0, "error"), mut("above_k_max", 40, "error", names=("k_min", "k_max"))],
        "k_max": [mut("float", 32.0, "error")],
        "decide_every": [mut("zero", 0, "error"), mut("np_int64", np.int64(1), "ok")],
        "probe_every": [mut("zero", 0, "error"), mut("np_int64", np.int64(20), "ok")],
        "warmup": [mut("neg", -1, "error"), mut("str", "2", "error"), mut("np_int64", np.int64(2), "ok")],
        "fixed_costs": [mut("nan", (NAN, 1.0), "error"), mut("inf", (INF, 1.0), "error"),
                        mut("one_entry", (1.0,), "error"),
                        mut("np_float32", (np.float32(8.0), np.float32(1.0)), "ok")],
        "max_batch_size": [mut("zero", 0, "error"), mut("np_int64", np.int64(8), "ok")],
        "guidance_scale": [mut("nan", NAN, "error"), mut("inf", INF, "error"),
                           mut("np_float32", np.float32(1.0), "ok")],
        "seed": [mut("str", "abc", "error"), mut("float", 2.5, "error"),
                 mut("np_int64", np.int64(3), "ok")],
    }
    needs = {"adaptive_bins": dict(proposal="adaptive"), "adaptive_decay": dict(proposal="adaptive"),
             "delta": dict(proposal="weight"), "k_init": dict(K="auto"), "k_min": dict(K="auto"),
             "k_max": dict(K="auto"), "decide_every": dict(K="auto"), "probe_every": dict(K="auto"),
             "warmup": dict(K="auto"), "fixed_costs": dict(K="auto")}
    for field_name, ms in field_muts.items():
        for m in ms:
            fields = dict(needs.get(field_name, {}))
            fields[field_name] = m.value
            if field_name == "antithetic":
                fields["K"] = 3 if m.label == "odd_K" else 2
            full = m.expect == "ok"
            cat.add(
                tm,
                "GuidanceConfig",
                f"{field_name}={m.label}",
                lambda ctx, f=fields, full=full: config(ctx, full=full, **{k: resolve(v) for k, v in f.items()}),
                m.expect,
                m.kw.pop("names", (field_name,)),
                **m.kw,
            )
    cat.add(tm, "GuidanceConfig", "antithetic=odd_K", lambda ctx: config(ctx, antithetic=True, K=3), "error",
            ("antithetic", "K"))
    cat.add(tm, "GuidanceConfig", "sampler=full_with_proposal",
            lambda ctx: config(ctx, sampler=_UserSampler50(), proposal="weight"), "error", ("proposal", "sampler"))
    cat.add(tm, "GuidanceConfig", "base", lambda ctx: config(ctx, full=True), "ok")

    # ----------------------------------------------------------------- CARVGuidance construction
    cat.add(tm, "CARVGuidance", "objective=none", lambda ctx: CARVGuidance(None, GuidanceConfig(K=2)), "error",
            ("objective", "teacher"))
    cat.add(tm, "CARVGuidance", "config=str", lambda ctx: CARVGuidance(TEACHER, "K=2"), "error", ("config",))
    cat.add(tm, "CARVGuidance", "config=dict", lambda ctx: CARVGuidance(TEACHER, {"K": 2}), "error", ("config",))
    cat.add(tm, "CARVGuidance", "teacher_T=1", lambda ctx: one_call(guidance(gm_teacher(T=1)))["loss_sds"], "ok")
    cat.add(
        tm,
        "CARVGuidance",
        "objective=dmd",
        lambda ctx: one_call(
            CARVGuidance(T.DMD(TEACHER, gm_teacher(means=torch.zeros(2, 16, dtype=DT))), GuidanceConfig(K=2))
        )["loss"],
        "ok",
    )

    # ------------------------------------------------ CARVGuidance calls (a failed call changes nothing)
    def gcall(ctx, rgb=None, g=None, watch=True, **kw):
        g = guidance(proposal="adaptive") if g is None else g
        one_call(g)  # a step in: the proposal has state, the counters moved
        if watch:
            ctx.watch(g.state_dict, "the guidance's state_dict")
        out = g(images() if rgb is None else rgb, **kw)
        return out["loss_sds"], out["grad_norm"]
    cat.sweep(
        tm,
        "CARVGuidance.forward",
        gcall,
        dict(),
        {
            "rgb": [
                mut("list", [[0.0]], "error"),
                mut("3d", L(lambda: torch.rand(2, 16, 1, dtype=DT)[..., 0]), "error"),
                mut("int", L(lambda: torch.ones(2, 4, 2, 2, dtype=torch.int64)), "error"),
                mut("nan", L(lambda: torch.full((2, 4, 2, 2), NAN, dtype=DT)), "error"),
                mut("meta", L(lambda: images().to("meta")), "error"),
                mut("other_size", L(lambda: torch.rand(2, 3, 2, 2, dtype=DT)), "error", names=("rgb", "x_t")),
                mut("float32", L(lambda: images().float()), "ok"),
                mut("B1", L(lambda: images(1)), "ok"),
            ],
            "condition": [
                mut("wrong_rows", L(lambda: torch.zeros(3, 2, dtype=DT)), "error"),
                mut("list", [0.0, 0.0], "error"),
            ],
            "generator": [
                mut("str", "seed", "error"),
                mut("numpy", np.random.default_rng(0), "error"),
                mut("own", L(lambda: _g(11)), "ok"),
            ],
            "params": [mut("int", 5, "error"), mut("no_grad", L(lambda: [torch.ones(3)]), "error")],
        },
    )

    def nan_teacher_call(ctx):
        g = guidance(gm_teacher(means=torch.full((2, 16), 1e200, dtype=DT)))  # finite, but its score overflows
        ctx.watch(g.state_dict, "the guidance's state_dict")
        return g(images())["loss_sds"]
    cat.add(tm, "CARVGuidance.forward", "teacher=nan_output", nan_teacher_call, "error", ("teacher",), exc_types=FP)
    cat.add(tm, "CARVGuidance.forward", "K=auto_B1_without_params_warns",
            lambda ctx: guidance(K="auto", fixed_costs=(8.0, 1.0),
                                 probe_every=1)(images(1))["loss_sds"], "warn", ("params",))
    cat.add(tm, "CARVGuidance.forward", "K=auto_probe_params_ok",
            lambda ctx: _probe_run(guidance(K="auto", fixed_costs=(8.0, 1.0), probe_every=1)), "ok")

    # ----------------------------------------------------------------- CARVGuidance checkpoints
    # A checkpoint of a guidance 3 steps in (adaptive proposal, so the proposal has state), loaded
    # into a fresh one (0 steps): a load that raises must leave the fresh one as it was.
    def source(T_=DT_T, **cfg):
        cfg.setdefault("proposal", "adaptive")
        g = guidance(gm_teacher(T=T_), **cfg)
        for _ in range(3):
            one_call(g)
        return g.state_dict()

    def edit(sd, path, value):
        sd = copy.deepcopy(sd)
        node = sd["_extra_state"]
        for key in path[:-1]:
            node = node[key]
        if value is _DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value(node[path[-1]]) if callable(value) else value
        return sd

    def ckpt(*path_value, T_=DT_T, **cfg):
        def make():
            sd = source(T_, **cfg)
            for path, value in zip(path_value[::2], path_value[1::2]):
                sd = edit(sd, path, value)
            return sd
        return Lazy(make)

    def load(ctx, sd, **cfg):
        cfg.setdefault("proposal", "adaptive")
        g = guidance(**cfg)
        ctx.watch(g.state_dict, "the guidance's state_dict")
        g.load_state_dict(sd)
        return one_call(g)["loss_sds"]
    cat.sweep(
        tm,
        "CARVGuidance.load_state_dict",
        load,
        dict(sd=ckpt()),
        {
            "sd": [
                mut("generator_truncated", ckpt(("generator",), lambda g: g[:-16]), "error", names=("generator",)),
                mut("generator_float", ckpt(("generator",), lambda g: g.double()), "error", names=("generator",)),
                mut("accountant_K_1000", ckpt(("accountant", "K"), 1000), "error", names=("K", "accountant")),
                mut(
                    "accountant_k_max_1000", ckpt(("accountant", "k_max"), 1000), "error", names=("k_max", "accountant")
                ),
                mut("accountant_decay_nan", ckpt(("accountant", "decay"), NAN), "error", names=("decay", "accountant")),
                mut(
                    "accountant_fixed_costs_nan",
                    ckpt(("accountant", "fixed_costs"), (NAN, 1.0)),
                    "error",
                    names=("fixed_costs", "accountant"),
                ),
                mut("accountant_missing", ckpt(("accountant",), _DELETE), "error", names=("accountant",)),
                mut(
                    "adaptive_counts_short", ckpt(("proposal", "counts"), lambda c: c[:-1]), "error", names=("counts",)
                ),
                mut(
                    "adaptive_counts_negative",
                    ckpt(("proposal", "counts"), lambda c: [-5] * len(c)),
                    "error",
                    names=("counts",),
                ),
                mut("adaptive_decay_one", ckpt(("proposal", "decay"), 1.0), "error", names=("decay",)),
                mut(
                    "adaptive_moment_nan",
                    ckpt(("proposal", "second_moment"), lambda m: [NAN] * len(m)),
                    "error",
                    names=("second_moment",),
                ),
                mut("adaptive_n_bins", ckpt(("proposal", "n_bins"), 7), "error", names=("n_bins", "second_moment")),
                mut("teacher_other_T", ckpt(T_=40), "error", names=("p", "T", "timesteps")),
                mut("calls_negative", ckpt(("calls",), -1), "error", names=("calls",)),
                mut("calls_str", ckpt(("calls",), "three"), "error", names=("calls",)),
                mut("config_other_K", ckpt(K=4), "error", names=("K",)),
                mut("single_render_order", ckpt(("single_render", "order"), 3), "error", names=("order",)),
                mut(
                    "extra_state_none",
                    Lazy(lambda: {"_extra_state": None}),
                    "error",
                    names=("state", "_extra_state", "checkpoint"),
                ),
                mut(
                    "empty",
                    Lazy(dict),
                    "error",
                    names=("_extra_state",),
                    exc_types=(ValueError, TypeError, RuntimeError),
                ),
            ]
        },
    )
    cat.add(tm, "CARVGuidance.load_state_dict", "sd=uniform_config_with_proposal_state",
            lambda ctx: load(ctx, edit(source(proposal="uniform"), ("proposal",), {"second_moment": [1.0]}),
                             proposal="uniform"), "error", ("proposal", "UniformProposal"))

    def resume_matches(ctx):
        a = guidance(proposal="adaptive")
        for _ in range(2):
            one_call(a)
        sd = copy.deepcopy(a.state_dict())
        b = guidance(proposal="adaptive")
        try:  # a failed load, then the good one: the retry must resume exactly
            b.load_state_dict(edit(sd, ("accountant", "K"), "x"))
        except Exception:  # noqa: BLE001
            pass
        b.load_state_dict(sd)
        la, lb = one_call(a)["loss_sds"], one_call(b)["loss_sds"]
        return None if torch.equal(la, lb) else f"resumed loss {lb.item()} != {la.item()}"
    cat.add(tm, "CARVGuidance.load_state_dict", "retry_after_failed_load_resumes", resume_matches, "ok",
            finite=False, check=lambda v: v)
