r"""A tiny differentiable volume renderer for tests and examples.

A dense grid of density $\sigma(\mathbf p)$ and colour $c(\mathbf p)$ on $[-1, 1]^3$,
sampled trilinearly with ``F.grid_sample`` at $S$ evenly spaced points
$\mathbf p_i = \mathbf o + s_i\mathbf d$ along each camera ray, composited as

$$ C(\mathbf r) = \sum_i T_i\,(1 - e^{-\sigma_i\delta})\,c_i + T_S\,c_{\rm bg}, \qquad
   T_i = \exp\Big(-\sum_{j<i}\sigma_j\delta\Big). $$

Cameras orbit the origin at a fixed radius, looking at it, with a pinhole of
field of view ``fov`` (radians). Rendering is deterministic given the cameras;
the randomness of the upstream (the camera $\xi$) comes from :func:`random_cameras`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from carv_core._validation import as_real
from torch import nn

from ._validation import as_dtype, as_int, describe, resolve_device

__all__ = ["Cameras", "orbit_cameras", "random_cameras", "GridRenderer"]


class Cameras(NamedTuple):
    r"""Camera centres ``origins`` ``(n, 3)`` and camera-to-world rotations ``rotations`` ``(n, 3, 3)``."""

    origins: torch.Tensor
    rotations: torch.Tensor


def _angles(name: str, value) -> torch.Tensor:
    # Structural checks only (no value read): a real floating tensor of shape (n,).
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a floating tensor of shape (n,) (radians), got "
                        f"{describe(value)} ({type(value).__name__}); wrap it in torch.tensor(...)")
    if not value.is_floating_point():
        raise TypeError(f"{name} must have a real floating dtype, got {value.dtype}")
    return value


def orbit_cameras(azimuth: torch.Tensor, elevation: torch.Tensor, radius: float = 2.5) -> Cameras:
    r"""Cameras at $r(\cos e\cos a, \sin e, \cos e\sin a)$ looking at the origin; angles ``(n,)`` in radians.

    ``radius`` must be finite and > 0 (at the origin no camera can look at it).
    """
    azimuth, elevation = _angles("azimuth", azimuth), _angles("elevation", elevation)
    if azimuth.shape != elevation.shape or azimuth.ndim != 1:
        raise ValueError(f"azimuth and elevation must both have shape (n,), got "
                         f"{tuple(azimuth.shape)} and {tuple(elevation.shape)}")
    if elevation.device != azimuth.device:
        raise ValueError(f"elevation is on {elevation.device} but azimuth is on {azimuth.device}")
    radius = as_real("radius", radius, positive=True)
    o = radius * torch.stack([elevation.cos() * azimuth.cos(), elevation.sin(),
                              elevation.cos() * azimuth.sin()], dim=-1)
    forward = -o / o.norm(dim=-1, keepdim=True)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=o.dtype, device=o.device).expand_as(o)
    right = torch.linalg.cross(forward, up)
    right = right / right.norm(dim=-1, keepdim=True)
    true_up = torch.linalg.cross(right, forward)
    return Cameras(o, torch.stack([right, true_up, forward], dim=-1))


def random_cameras(n: int, *, generator: torch.Generator | None = None, radius: float = 2.5,
                   max_elevation: float = 0.5, device=None,
                   dtype: torch.dtype = torch.float32) -> Cameras:
    r"""$n$ orbit cameras with azimuth $\sim U[0, 2\pi)$, elevation $\sim U[-e_{\max}, e_{\max}]$.

    ``radius`` must be finite and > 0, ``max_elevation`` in $[0, \pi/2]$ (radians).
    """
    n = as_int("n", n, minimum=1)
    radius = as_real("radius", radius, positive=True)
    max_elevation = as_real("max_elevation", max_elevation, nonnegative=True)
    if max_elevation > math.pi / 2:
        raise ValueError(f"max_elevation must be <= pi/2 (radians), got {max_elevation}")
    dtype = as_dtype("dtype", dtype)
    device = resolve_device(device, generator)
    u = torch.rand(2, n, generator=generator, device=device, dtype=dtype)
    return orbit_cameras(2 * math.pi * u[0], max_elevation * (2 * u[1] - 1), radius)


class GridRenderer(nn.Module):
    r"""Volume rendering of a learnable $G^3$ density/colour grid to ``(n, 3, H, W)`` images.

    Args:
        grid_size: $G$ (grid resolution per axis).
        image_size: $H = W$.
        n_samples: $S$ points per ray between ``near`` and ``far``.
        fov: field of view in radians, in $(0, \pi)$.
        near, far: the ray segment $0 \le$ ``near`` $<$ ``far`` (finite).
        generator: initialises the grid (small random density, random colour).

    Parameters ``density`` ``(1, 1, G, G, G)`` (through softplus) and ``colour``
    ``(1, 3, G, G, G)`` (through a sigmoid); background colour ``background`` (3,).

    Example:
        >>> import torch
        >>> r = GridRenderer(8, 8, 8, generator=torch.Generator().manual_seed(0))
        >>> r(orbit_cameras(torch.zeros(2), torch.zeros(2))).shape
        torch.Size([2, 3, 8, 8])
    """

    def __init__(self, grid_size: int = 16, image_size: int = 16, n_samples: int = 16, *,
                 fov: float = 0.8, near: float = 1.0, far: float = 4.0, generator=None,
                 dtype: torch.dtype = torch.float32):
        G = as_int("grid_size", grid_size, minimum=1)
        image_size = as_int("image_size", image_size, minimum=1)
        n_samples = as_int("n_samples", n_samples, minimum=1)
        fov = as_real("fov", fov, positive=True)
        if fov >= math.pi:
            raise ValueError(f"fov must be < pi (radians), got {fov}")
        near = as_real("near", near, nonnegative=True)
        far = as_real("far", far)
        if not near < far:
            raise ValueError(f"near must be < far, got near = {near} and far = {far}")
        dtype = as_dtype("dtype", dtype)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {describe(generator)}")
        super().__init__()
        self.image_size, self.n_samples = image_size, n_samples
        self.fov, self.near, self.far = fov, near, far
        self.density = nn.Parameter(0.5 * torch.randn(1, 1, G, G, G, generator=generator, dtype=dtype))
        self.colour = nn.Parameter(torch.randn(1, 3, G, G, G, generator=generator, dtype=dtype))
        self.register_buffer("background", torch.ones(3, dtype=dtype))

    def rays(self, cameras: Cameras):
        r"""Ray origins ``(n, H W, 3)`` and unit directions ``(n, H W, 3)``."""
        H = self.image_size
        dtype, device = self.density.dtype, self.density.device
        half = math.tan(self.fov / 2)
        s = (torch.arange(H, dtype=dtype, device=device) + 0.5) / H * 2 - 1
        yy, xx = torch.meshgrid(-s * half, s * half, indexing="ij")
        d_cam = torch.stack([xx, yy, torch.ones_like(xx)], dim=-1).reshape(-1, 3)
        d = torch.einsum("nij,pj->npi", cameras.rotations.to(dtype), d_cam)
        d = d / d.norm(dim=-1, keepdim=True)
        return cameras.origins.to(dtype)[:, None].expand_as(d), d

    def forward(self, cameras: Cameras) -> torch.Tensor:
        """Render ``(n, 3, H, W)`` images."""
        o, d = self.rays(cameras)
        n, P = o.shape[:2]
        S, H = self.n_samples, self.image_size
        z = torch.linspace(self.near, self.far, S, dtype=o.dtype, device=o.device)
        delta = (self.far - self.near) / S
        pts = o[:, :, None] + z[None, None, :, None] * d[:, :, None]          # (n, P, S, 3)
        grid = pts.reshape(1, n * P, S, 1, 3)
        dens = F.grid_sample(F.softplus(self.density), grid, align_corners=True).reshape(n, P, S)
        col = F.grid_sample(torch.sigmoid(self.colour), grid, align_corners=True)
        col = col.reshape(3, n, P, S).permute(1, 2, 3, 0)                      # (n, P, S, 3)
        # 1. alpha_i = 1 - exp(-sigma_i delta), 2. exclusive transmittance, 3. composite.
        tau = dens * delta
        alpha = 1 - torch.exp(-tau)
        trans = torch.exp(-(torch.cumsum(tau, dim=-1) - tau))
        wts = trans * alpha
        rgb = (wts[..., None] * col).sum(2) + torch.exp(-tau.sum(-1))[..., None] * self.background
        return rgb.reshape(n, H, H, 3).permute(0, 3, 1, 2)
