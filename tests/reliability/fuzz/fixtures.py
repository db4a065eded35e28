"""Fixtures of the torch specs: small teachers, images, user samplers, the probe run."""

import numpy as np

from .cases import _torch

FP = (ValueError, TypeError, FloatingPointError)  # a non-finite teacher output: documented FloatingPointError
DT_T = 50  # T of the small torch teachers


def _g(seed=0):
    return _torch().Generator().manual_seed(seed)


def element_size(dtype) -> int:
    """Bytes per element of a torch ``dtype``."""
    return _torch().empty((), dtype=dtype).element_size()


def _abar(T=DT_T):
    torch = _torch()
    return torch.linspace(0.99, 0.05, T, dtype=torch.float64)


def gm_teacher(T=DT_T, *, means=None, variances=0.5, D=16, **kw):
    """An exact Gaussian-mixture teacher on D = 4*2*2 coordinates (inputs (N, 4, 2, 2)).

    ``means`` of 1e200 (finite) make its output NaN: the squared distances overflow.
    """
    torch = _torch()
    from carv_torch.teachers import GaussianMixtureTeacher
    if means is None:
        means = torch.randn(2, D, generator=_g(0), dtype=torch.float64)
    return GaussianMixtureTeacher(means, variances, _abar(T), **kw)


def images(B=2, seed=1, requires_grad=True):
    torch = _torch()
    x = torch.rand(B, 4, 2, 2, generator=_g(seed), dtype=torch.float64)
    return x.requires_grad_(requires_grad)


class DuckTeacher:
    """A user's teacher (the protocol only): ``out`` maps (x_t, eps) to what it returns."""

    def __init__(self, out, T=DT_T):
        self.alphas_cumprod = _abar(T)
        self.out = out

    def predict_noise(self, x_t, t, condition=None, *, uncond=None, guidance_scale=1.0):
        return self.out(x_t)


class _UserSampler50:
    """A user sampler of the core protocol (numpy transform) over T = 50 steps."""

    design = "stratified"

    def transform(self, u):
        import carv_core
        u = np.asarray(u)
        return carv_core.TimestepDraw(np.minimum((u * DT_T).astype(np.int64), DT_T - 1), np.ones(u.shape))


_DELETE = object()


def _probe_run(g):
    """Two K='auto' probe calls with params (R = 2): the parameter-space probe path."""
    torch = _torch()
    theta = torch.ones(2, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    out = None
    for i in range(2):
        x = theta * images(2, seed=20 + i, requires_grad=False)
        out = g(x, params=[theta])
        out["loss_sds"].backward()
    return out["loss_sds"]


def torch_pmfs():
    """(torch, carv_torch, float64, a uniform and a ramp pmf over 4 steps): the torch specs' prelude."""
    import torch
    import carv_torch

    dt = torch.float64
    return (torch, carv_torch, dt, lambda: torch.full((4,), 0.25, dtype=dt),
            lambda: torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=dt))
