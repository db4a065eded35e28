"""Case specs, carv_torch: teachers (Gaussian mixture, diffusers UNet), check_finite.

See :mod:`fuzz.cases` for the spec format and :mod:`fuzz.classify` for the verdicts."""

import functools

import numpy as np

from .cases import Catalogue, Lazy, call, mut
from .fixtures import DT_T, FP, _abar, _g, gm_teacher
from .mutations import NAN


def teacher_cases(cat: Catalogue) -> None:
    import torch
    import carv_torch as T
    from carv_torch.teachers import GaussianMixtureTeacher

    tm = "carv_torch"
    DT = torch.float64
    L = Lazy

    # ----------------------------------------------------------------- teachers
    MEANS = lambda: torch.randn(2, 16, generator=_g(0), dtype=DT)  # noqa: E731
    cat.sweep(tm, "GaussianMixtureTeacher", call(GaussianMixtureTeacher),
              dict(means=L(MEANS), variances=0.5, alphas_cumprod=L(_abar)), {
        "means": [mut("int", L(lambda: torch.ones(2, 16, dtype=torch.int64)), "error"),
                  mut("nan", L(lambda: torch.full((2, 16), NAN, dtype=DT)), "error")],
        "variances": [mut("nan", NAN, "error")],
        "alphas_cumprod": [mut("above_one", L(lambda: torch.tensor([1.5, 0.5], dtype=DT)), "error"),
                           mut("nan", L(lambda: torch.tensor([0.9, NAN], dtype=DT)), "error")],
        "log_weights": [mut("nan", L(lambda: torch.tensor([NAN, 0.0], dtype=DT)), "error")],
        "nan_policy": [mut("bogus", "ignore", "error")],
    }, base_kw=dict(check=lambda t: None))
    GM = gm_teacher()
    XT = lambda: torch.rand(3, 4, 2, 2, generator=_g(2), dtype=DT)  # noqa: E731
    TT = lambda: torch.tensor([1, 20, 40])  # noqa: E731
    cat.sweep(tm, "GaussianMixtureTeacher.predict_noise", call(GM.predict_noise), dict(x_t=L(XT), t=L(TT)), {
        "t": [mut("float", L(lambda: torch.tensor([1.0, 20.0, 40.0])), "error"),
              mut("out_of_range", L(lambda: torch.tensor([1, 20, 50])), "error"),
              mut("meta", L(lambda: TT().to("meta")), "error")],
        "x_t": [mut("wrong_D", L(lambda: torch.rand(3, 3, 2, 2, dtype=DT)), "error"),
                mut("nan", L(lambda: torch.full((3, 4, 2, 2), NAN, dtype=DT)), "error", exc_types=FP)],
        "condition": [mut("wrong_rows", L(lambda: torch.zeros(2, 2, dtype=DT)), "error")],
        "guidance_scale": [mut("no_condition", 3.0, "error", names=("guidance_scale", "condition")),
                           mut("nan", NAN, "error")],
    })
    cat.set_run(
        "torch.GaussianMixtureTeacher.predict_noise/guidance_scale=nan",
        lambda ctx: GM.predict_noise(XT(), TT(), torch.zeros(1, 2, dtype=DT), guidance_scale=NAN),
    )
    cat.sweep(
        tm,
        "check_finite",
        call(T.check_finite),
        dict(eps=L(lambda: torch.ones(2, 3)), t=L(lambda: torch.tensor([1, 2]))),
        {
            "nan_policy": [mut("bogus_with_nan", "ignore", "error")],
            "eps": [
                mut(
                    "nan_raises",
                    L(lambda: torch.tensor([[NAN, 1.0, 1.0], [1.0, 1.0, 1.0]])),
                    "error",
                    names=("teacher", "timesteps"),
                    exc_types=FP,
                )
            ],
        },
    )
    cat.set_run(
        "torch.check_finite/nan_policy=bogus_with_nan",
        lambda ctx: T.check_finite(torch.tensor([[NAN, 1.0], [1.0, 1.0]]), torch.tensor([1, 2]), nan_policy="ignore"),
    )

    def tiny_unet():
        from diffusers import UNet2DModel
        from diffusers.utils import logging as diffusers_logging
        diffusers_logging.set_verbosity_error()
        torch.manual_seed(0)
        return (
            UNet2DModel(
                sample_size=8,
                in_channels=3,
                out_channels=3,
                block_out_channels=(16, 32),
                down_block_types=("DownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "UpBlock2D"),
                layers_per_block=1,
                norm_num_groups=8,
            )
            .to(DT)
            .eval()
        )
    unet = functools.lru_cache(maxsize=1)(tiny_unet)

    def scheduler():
        from diffusers import DDPMScheduler
        return DDPMScheduler(num_train_timesteps=DT_T)
    cat.sweep(
        tm,
        "DiffusersTeacher",
        lambda ctx, **kw: T.DiffusersTeacher(**kw),
        dict(unet=L(unet), scheduler=L(scheduler)),
        {
            "scheduler": [mut("object", object(), "error")],
            "prediction_type": [],
            "max_batch_size": [mut("zero", 0, "error"), mut("np_int64", np.int64(8), "ok")],
            "nan_policy": [mut("bogus", "ignore", "error")],
            "unet": [],
            "check_finite": [mut("str", "no", "error")],
        },
        base_kw=dict(check=lambda t: None),
        limit=60.0,
    )
    dteacher = functools.lru_cache(maxsize=1)(lambda: T.DiffusersTeacher(unet(), scheduler()))
    DX = lambda: torch.randn(2, 3, 8, 8, generator=_g(3), dtype=DT)  # noqa: E731

    def dpredict(ctx, x_t, t, **kw):
        with torch.no_grad():
            return dteacher().predict_noise(x_t, t, **kw)
    cat.sweep(
        tm,
        "DiffusersTeacher.predict_noise",
        dpredict,
        dict(x_t=L(DX), t=L(lambda: torch.tensor([1, 30]))),
        {
            "t": [
                mut("float", L(lambda: torch.tensor([1.0, 30.0])), "error"),
                mut("out_of_range", L(lambda: torch.tensor([1, 60])), "error"),
            ],
            "x_t": [mut("meta", L(lambda: DX().to("meta")), "error")],
            "guidance_scale": [mut("no_uncond", 2.0, "error", names=("guidance_scale", "uncond"))],
            "condition": [mut("wrong_rows", L(lambda: torch.zeros(3, dtype=torch.int64)), "error")],
        },
        limit=60.0,
    )
