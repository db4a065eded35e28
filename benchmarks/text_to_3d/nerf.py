r"""The NeRF upstream of the text-to-3D benchmark: render, then encode.

The NeRF is a :class:`carv_torch.renderers.GridRenderer`: a $64^3$ grid of
density and colour, volume-rendered at $64\times 64$ with 96 samples per ray
(the sizes of issue 5; the ground truth of :mod:`.scenes` is rendered the same way).
The upstream of one camera $\xi$ is

$$ x(\theta, \xi) = s_{\rm vae}\,\mathcal E\big(2\,\mathrm{render}_\theta(\xi) - 1\big)
   \in \mathbb R^{4\times 16\times 16}, $$

the frozen teacher's VAE encoder applied to the render; its cost $c_u$ is the
forward *and* backward pass through both (the teacher itself is never trained).

Initialisation follows threestudio's density blob: a soft ball of radius ``0.5``
(``density`` $= b(1 - r/r_0)$ before the softplus) in neutral grey, so the first
renders show one object-sized blob on the white background.

Example:
    >>> import torch
    >>> nerf = make_nerf(grid_size=8, image_size=8, n_samples=8)
    >>> cams = sample_cameras(2, torch.Generator().manual_seed(0))
    >>> nerf(cams).shape
    torch.Size([2, 3, 8, 8])
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from carv_torch.renderers import Cameras, GridRenderer

from ..timing import median_seconds
from .scenes import FOV, sample_cameras

__all__ = [
    "GRID_SIZE",
    "IMAGE_SIZE",
    "N_SAMPLES",
    "make_nerf",
    "nerf_parameters",
    "flat_grad",
    "upstream",
    "opacity",
    "UpstreamCosts",
    "measure_costs",
]

GRID_SIZE = 64
"""$G$: grid resolution per axis."""
IMAGE_SIZE = 64
"""$H = W$ of the renders."""
N_SAMPLES = 96
"""Samples per ray (as the ground-truth renderer)."""

_BLOB_DENSITY = 8.0   # b: softplus(8) ~ 8 at the centre, opaque over a few samples
_BLOB_RADIUS = 0.5    # r_0


def make_nerf(grid_size: int = GRID_SIZE, image_size: int = IMAGE_SIZE,
              n_samples: int = N_SAMPLES, *, blob_density: float = _BLOB_DENSITY,
              blob_radius: float = _BLOB_RADIUS) -> GridRenderer:
    r"""A fresh NeRF: ``density`` $= b(1 - r/r_0)$ (a soft ball), ``colour`` $= 0$ (grey after the sigmoid).

    Deterministic (no randomness in the initial grid); a run's randomness is its
    cameras and inner draws.
    """
    nerf = GridRenderer(grid_size, image_size, n_samples, fov=FOV,
                        generator=torch.Generator().manual_seed(0))
    s = torch.linspace(-1.0, 1.0, grid_size)
    zz, yy, xx = torch.meshgrid(s, s, s, indexing="ij")
    r = torch.sqrt(xx**2 + yy**2 + zz**2)
    with torch.no_grad():
        nerf.density.copy_((blob_density * (1 - r / blob_radius))[None, None])
        nerf.colour.zero_()
    return nerf


def nerf_parameters(nerf: GridRenderer) -> list[torch.Tensor]:
    r"""$\theta$: the trainable grids ``[density, colour]`` ($4G^3$ numbers)."""
    return [nerf.density, nerf.colour]


def flat_grad(nerf: GridRenderer) -> torch.Tensor:
    r"""$\nabla_\theta$ after a backward pass, flattened to ``(4 G^3,)`` (zeros where no grad)."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in nerf_parameters(nerf)])


def upstream(nerf: GridRenderer, teacher, cameras: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Images ``(R, 3, H, W)`` and latents $x$ ``(R, 4, H/4, W/4)``, both differentiable in $\theta$."""
    images = nerf(cameras)
    return images, teacher.encode(images)


def opacity(nerf: GridRenderer, cameras: Cameras) -> torch.Tensor:
    r"""Accumulated opacity $1 - T_S$ ``(n, H, W)`` (no grad).

    From two renders with white and black backgrounds: $C_{\rm white} - C_{\rm black} = T_S$.
    """
    with torch.no_grad():
        saved = nerf.background.clone()
        try:
            white = nerf(cameras)
            nerf.background.zero_()
            black = nerf(cameras)
        finally:
            nerf.background.copy_(saved)
    return (1.0 - (white - black).mean(1)).clamp(0, 1)


class UpstreamCosts(NamedTuple):
    r"""Median seconds: ``c_u`` per upstream sample (render + encode, forward + backward, at ``R``
    images per call) and ``c_d`` per teacher draw (one CFG evaluation, at ``n_draws`` draws per call)."""

    c_u: float
    c_d: float
    R: int
    n_draws: int
    render_fwd_bwd: float
    encode_fwd_bwd: float


def measure_costs(nerf: GridRenderer, teacher, condition, uncond, *, guidance_scale: float,
                  R: int = 2, n_draws: int = 16, repeats: int = 10,
                  generator: torch.Generator | None = None) -> UpstreamCosts:
    r"""Time the upstream (per image) and the teacher (per CFG draw) separately.

    $c_u$: render + encode forward, a backward pass with a random cotangent, ``R`` images
    per call, divided by ``R``. $c_d$: one ``predict_noise`` call on ``n_draws`` noisy
    latents with CFG, divided by ``n_draws``. The render and encode parts are
    also reported alone (forward + backward).
    """
    gen = generator or torch.Generator().manual_seed(0)
    cams = sample_cameras(R, gen)
    _, z = upstream(nerf, teacher, cams)
    cot = torch.randn(z.shape, generator=gen)
    img_cot = torch.randn(R, 3, nerf.image_size, nerf.image_size, generator=gen)

    def both():
        nerf.zero_grad(set_to_none=True)
        _, z = upstream(nerf, teacher, cams)
        (z * cot).sum().backward()

    def render_only():
        nerf.zero_grad(set_to_none=True)
        (nerf(cams) * img_cot).sum().backward()

    img = torch.rand(R, 3, nerf.image_size, nerf.image_size, generator=gen, requires_grad=True)

    def encode_only():
        (teacher.encode(img) * cot).sum().backward()

    z_t = torch.randn(n_draws, *z.shape[1:], generator=gen)
    t = torch.randint(20, 980, (n_draws,), generator=gen)

    def inner():
        with torch.no_grad():
            teacher.predict_noise(z_t, t, condition, uncond=uncond, guidance_scale=guidance_scale)

    c_u = median_seconds(both, repeats) / R
    c_d = median_seconds(inner, repeats) / n_draws
    r = median_seconds(render_only, max(3, repeats // 2)) / R
    e = median_seconds(encode_only, max(3, repeats // 2)) / R
    nerf.zero_grad(set_to_none=True)
    return UpstreamCosts(c_u, c_d, R, n_draws, r, e)
