"""Case specs, carv_torch: the threestudio adapter, prompts, Stable Diffusion helpers, renderer, cameras.

See :mod:`fuzz.cases` for the spec format and :mod:`fuzz.classify` for the verdicts."""

import types

import numpy as np

from .cases import Catalogue, Lazy, call, mut
from .fixtures import _g, gm_teacher
from .mutations import NAN


def text_to_3d_cases(cat: Catalogue) -> None:
    import torch
    import carv_torch as T

    tm = "carv_torch"
    DT = torch.float64
    L = Lazy

    # ------------------------------------------------ threestudio adapter, prompts, SD helpers, renderer
    ts_teacher = gm_teacher(T=100, D=64)

    def ts_make(ctx, **kw):
        kw.setdefault("config", T.GuidanceConfig(K=2))
        return T.ThreestudioGuidance(ts_teacher, **kw)
    cat.sweep(
        tm,
        "ThreestudioGuidance",
        ts_make,
        dict(guidance_scale=7.5),
        {
            "guidance_scale": [mut("nan", NAN, "error"), mut("np_float32", np.float32(7.5), "ok")],
            "cfg_convention": [],
            "posterior": [mut("bogus", "mode", "error")],
            "resolution": [mut("zero", 0, "error"), mut("np_int64", np.int64(4), "ok")],
            "include_alpha": [mut("str", "no", "error")],
            "config": [mut("scale_set", T.GuidanceConfig(K=2, guidance_scale=2.0), "error", names=("guidance_scale",))],
        },
        base_kw=dict(check=lambda g: None),
    )
    ts = T.ThreestudioGuidance(ts_teacher, T.GuidanceConfig(K=2), guidance_scale=7.5)
    PROMPT = T.FixedPrompt(torch.zeros(1, 2, dtype=DT), torch.zeros(1, 2, dtype=DT))
    RGB = lambda: torch.rand(2, 4, 4, 4, generator=_g(7), dtype=DT).requires_grad_(True)  # noqa: E731

    def ts_call(ctx, rgb=None, prompt_utils=PROMPT, elevation=None, **kw):
        ctx.watch(ts.state_dict, "the guidance's state")
        out = ts(RGB() if rgb is None else rgb, prompt_utils, torch.zeros(2) if elevation is None else elevation,
                 torch.zeros(2), torch.ones(2), rgb_as_latents=True, **kw)
        return out["loss_sds"]
    cat.sweep(
        tm,
        "ThreestudioGuidance.forward",
        ts_call,
        dict(),
        {
            "rgb": [
                mut("channels_first", L(lambda: torch.rand(2, 4, 3, 3, dtype=DT)), "error", names=("rgb", "x_t")),
                mut("nan", L(lambda: torch.full((2, 4, 4, 4), NAN, dtype=DT)), "error"),
            ],
            "prompt_utils": [
                mut("none", None, "error"),
                mut(
                    "wrong_rows",
                    T.FixedPrompt(torch.zeros(1, 3), torch.zeros(1, 3)),
                    "error",
                    names=("prompt_utils", "condition"),
                ),
            ],
            "elevation": [mut("shape", L(lambda: torch.zeros(3)), "error")],
            "guidance_eval": [mut("true", True, "error", exc_types=(ValueError, TypeError, NotImplementedError))],
            "generator": [mut("str", "seed", "error")],
        },
    )
    cat.add(tm, "FixedPrompt", "condition=list", lambda ctx: T.FixedPrompt([0.0], torch.zeros(1, 2)), "error",
            ("condition",))
    cat.add(
        tm,
        "FixedPrompt",
        "condition=two_rows",
        lambda ctx: T.FixedPrompt(torch.zeros(2, 2), torch.zeros(2, 2)),
        "error",
        ("condition",),
    )
    cat.add(
        tm,
        "FixedPrompt",
        "uncond=dtype",
        lambda ctx: T.FixedPrompt(torch.zeros(1, 2), torch.zeros(1, 2, dtype=DT)),
        "error",
        ("uncond",),
    )
    for fn in ("teacher_from_pipeline", "teacher_resolution"):
        for label, pipe in (
            ("object", object()),
            ("no_vae", types.SimpleNamespace(unet=torch.nn.Linear(1, 1), vae=None, scheduler=object())),
        ):
            cat.add(tm, fn, f"pipe={label}", lambda ctx, f=getattr(T, fn), p=pipe: f(p), "error", ("pipe", "vae"))
    cat.add(tm, "prompt_embeddings", "pipe=object", lambda ctx: T.prompt_embeddings(object(), "a corgi"), "error",
            ("pipe",))
    cat.add(
        tm,
        "prompt_embeddings",
        "prompt=int",
        lambda ctx: T.prompt_embeddings(
            types.SimpleNamespace(
                text_encoder=torch.nn.Linear(1, 1),
                tokenizer=object(),
                unet=torch.nn.Linear(1, 1),
                encode_prompt=lambda *a, **k: None,
            ),
            5,
        ),
        "error",
        ("prompt",),
    )
    IMG = lambda: torch.rand(2, 3, 4, 4, dtype=DT)  # noqa: E731
    cat.sweep(tm, "resize_to_teacher", call(T.resize_to_teacher), dict(rgb=L(IMG), size=8), {
        "rgb": [mut("int", L(lambda: torch.ones(2, 3, 4, 4, dtype=torch.int64)), "error"),
                mut("channels_last", L(lambda: torch.rand(2, 4, 4, 3, dtype=DT)), "warn")],
        "size": [mut("zero", 0, "error"), mut("np_int64", np.int64(8), "ok"), mut("one_entry", (8,), "error")],
    })
    CAM = lambda: T.orbit_cameras(torch.zeros(2), torch.zeros(2))  # noqa: E731

    def render(ctx, **kw):
        kw = {"grid_size": 4, "image_size": 4, "n_samples": 4, **kw}
        return T.GridRenderer(generator=_g(8), **kw)(CAM())
    cat.sweep(tm, "GridRenderer", render, dict(), {
        "grid_size": [mut("zero", 0, "error")],
        "image_size": [mut("zero", 0, "error")],
        "n_samples": [mut("zero", 0, "error")],
        "fov": [mut("nan", NAN, "error")],
        "near": [mut("above_far", 5.0, "error", names=("near", "far"))],
    })
    cat.sweep(
        tm,
        "orbit_cameras",
        call(T.orbit_cameras),
        dict(azimuth=L(lambda: torch.zeros(2)), elevation=L(lambda: torch.zeros(2))),
        {
            "azimuth": [
                mut("list", [0.0, 0.0], "error"),
                mut("shape", L(lambda: torch.zeros(3)), "error", names=("azimuth", "elevation")),
            ],
            "radius": [mut("nan", NAN, "error"), mut("zero", 0.0, "error")],
        },
    )
    cat.sweep(tm, "random_cameras", lambda ctx, **kw: T.random_cameras(**{"n": 2, "generator": _g(9), **kw}),
              dict(), {
        "n": [mut("zero", 0, "error"), mut("np_int64", np.int64(2), "ok")],
        "max_elevation": [mut("nan", NAN, "error")],
        "dtype": [mut("int", torch.int64, "error")],
    })
