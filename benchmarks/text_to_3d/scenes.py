r"""Ground-truth scenes for the text-to-3D benchmark: one procedural object per prompt.

Each object is a signed distance function $d(\mathbf p)$ on $[-1, 1]^3$, turned
into a density and a colour on a $G^3$ grid:

$$ \sigma(\mathbf p) = \sigma_{\max}\,\operatorname{sigmoid}\!\big(-d(\mathbf p)/\varepsilon\big), \qquad
   c(\mathbf p) = c_0\,\big(a + (1 - a)\max(0, \mathbf n(\mathbf p)\cdot\mathbf l)\big), $$

with a soft edge of width $\varepsilon$, the object's base colour $c_0$, and
Lambertian shading baked into the colour ($\mathbf n = \nabla d/\lVert\nabla d\rVert$,
a fixed light $\mathbf l$, ambient $a$), so views carry shape cues beyond the
silhouette. The colour is view independent, so a NeRF of the same form
(:class:`carv_torch.renderers.GridRenderer`) can represent it exactly.

The ground truth is rendered by the same :class:`~carv_torch.renderers.GridRenderer`
as the NeRF, its parameters set to the inverses of its activations:
``density`` $= \operatorname{softplus}^{-1}(\sigma)$, ``colour`` $= \operatorname{logit}(c)$.

Cameras (shared by teacher training, SDS and evaluation): orbit cameras at radius
``RADIUS`` looking at the origin, azimuth $\sim U[0, 2\pi)$, elevation
$\sim U[e_{\min}, e_{\max}]$ (``ELEVATION_RANGE``), white background.
:func:`heldout_cameras` is a fixed set of views for evaluation.

Example:
    >>> import torch
    >>> views = render_views(0, 2, torch.Generator().manual_seed(0), image_size=16, n_samples=32)
    >>> views.images.shape
    torch.Size([2, 3, 16, 16])
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch

from carv_torch.renderers import Cameras, GridRenderer, orbit_cameras

__all__ = [
    "PROMPTS",
    "N_PROMPTS",
    "RADIUS",
    "ELEVATION_RANGE",
    "FOV",
    "Views",
    "scene_fields",
    "load_fields",
    "ground_truth_renderer",
    "sample_cameras",
    "heldout_cameras",
    "render",
    "render_views",
    "heldout_views",
    "check_scene_index",
]

PROMPTS = ("a red cube", "a green sphere", "a blue torus", "a yellow cone")
"""The prompts; a prompt's index is its class label (the null prompt is ``N_PROMPTS``)."""
N_PROMPTS = len(PROMPTS)

RADIUS = 2.5
"""Camera distance from the origin."""
ELEVATION_RANGE = (0.25, 0.8)
r"""Elevation $[e_{\min}, e_{\max}]$ in radians (looking slightly down, so the torus shows its hole)."""
FOV = 0.8
"""Pinhole field of view in radians (GridRenderer's default)."""

_SIGMA_MAX = 40.0     # opaque after ~3 samples of delta = 3/96
_EDGE = 0.03          # epsilon, soft-edge width (about one grid cell at G = 64)
_AMBIENT = 0.45       # a
_LIGHT = (0.45, 0.8, 0.4)
_COLOURS = ((0.85, 0.12, 0.10), (0.12, 0.70, 0.15), (0.12, 0.25, 0.90), (0.95, 0.80, 0.10))


class Views(NamedTuple):
    r"""Rendered ``images`` ``(n, 3, H, W)`` in $[0, 1]$ and the ``cameras`` they were taken from."""

    images: torch.Tensor
    cameras: Cameras


def check_scene_index(scene_index) -> int:
    """Validate a prompt/scene index and return it as an ``int``."""
    if isinstance(scene_index, bool) or not isinstance(scene_index, int) \
            or not 0 <= scene_index < N_PROMPTS:
        raise ValueError(f"scene_index must be an integer in [0, {N_PROMPTS}) indexing PROMPTS "
                         f"{PROMPTS}, got {scene_index!r}")
    return scene_index


def _sdf(scene_index: int, p: torch.Tensor) -> torch.Tensor:
    # Signed distance d(p) for points p (..., 3); negative inside.
    x, y, z = p.unbind(-1)
    if scene_index == 0:      # cube, half-size 0.5
        q = p.abs() - 0.5
        return q.clamp(min=0).norm(dim=-1) + q.max(dim=-1).values.clamp(max=0)
    if scene_index == 1:      # sphere, radius 0.6
        return p.norm(dim=-1) - 0.6
    if scene_index == 2:      # torus lying flat (axis y), radii 0.5 and 0.2
        ring = torch.sqrt(x**2 + z**2) - 0.5
        return torch.sqrt(ring**2 + y**2) - 0.2
    # cone, apex up at y = 0.55, base radius 0.6 at y = -0.55 (exact capped-cone SDF)
    h, r = 1.1, 0.6
    y0 = y + 0.55                                   # 0 at the base, h at the apex
    rho = torch.sqrt(x**2 + z**2)
    # 2-D problem in (rho, y0): triangle with vertices (0, 0), (r, 0), (0, h).
    # Distance to the slanted edge from (r, 0) to (0, h).
    ex, ey = -r, h
    L2 = ex * ex + ey * ey
    s = (((rho - r) * ex + y0 * ey) / L2).clamp(0, 1)
    d_slant = torch.sqrt((rho - r - s * ex) ** 2 + (y0 - s * ey) ** 2)
    d_base = torch.sqrt((rho - rho.clamp(max=r)) ** 2 + y0**2)
    inside = (y0 > 0) & (rho * h + y0 * r < r * h)
    d = torch.minimum(d_slant, d_base)
    return torch.where(inside, -d, d)


@functools.lru_cache(maxsize=16)
def _fields(scene_index: int, grid_size: int):
    G = grid_size
    s = torch.linspace(-1.0, 1.0, G, dtype=torch.float64)
    # grid_sample's (x, y, z) index the (W, H, D) axes: volume[d, h, w] sits at (s[w], s[h], s[d]).
    zz, yy, xx = torch.meshgrid(s, s, s, indexing="ij")
    p = torch.stack([xx, yy, zz], dim=-1).requires_grad_(True)
    d = _sdf(scene_index, p)
    (n,) = torch.autograd.grad(d.sum(), p)
    d = d.detach()
    n = n / n.norm(dim=-1, keepdim=True).clamp(min=1e-9)
    light = torch.tensor(_LIGHT, dtype=torch.float64)
    light = light / light.norm()
    shade = _AMBIENT + (1 - _AMBIENT) * (n @ light).clamp(min=0)
    colour = torch.tensor(_COLOURS[scene_index], dtype=torch.float64) * shade[..., None]
    density = _SIGMA_MAX * torch.sigmoid(-d / _EDGE)
    return density[None, None].float(), colour.permute(3, 0, 1, 2)[None].float()


def scene_fields(scene_index: int, grid_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Ground-truth density $\sigma$ ``(1, 1, G, G, G)`` and colour $c$ ``(1, 3, G, G, G)`` in $[0, 1]$."""
    scene_index = check_scene_index(scene_index)
    if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 2:
        raise ValueError(f"grid_size must be an integer >= 2, got {grid_size!r}")
    density, colour = _fields(scene_index, grid_size)
    return density.clone(), colour.clone()


def load_fields(renderer: GridRenderer, density: torch.Tensor, colour: torch.Tensor) -> GridRenderer:
    r"""Set ``renderer``'s parameters so that it renders the fields $\sigma$, $c$ (in place; returns it).

    ``density`` $\leftarrow \operatorname{softplus}^{-1}(\sigma) = \sigma + \log(1 - e^{-\sigma})$,
    ``colour`` $\leftarrow \operatorname{logit}(c)$, with $\sigma \ge 10^{-6}$ and
    $c \in [10^{-3}, 1 - 10^{-3}]$ so both are finite.
    """
    if density.shape != renderer.density.shape or colour.shape != renderer.colour.shape:
        raise ValueError(f"density and colour must have shapes {tuple(renderer.density.shape)} and "
                         f"{tuple(renderer.colour.shape)} (the renderer's grid), got "
                         f"{tuple(density.shape)} and {tuple(colour.shape)}")
    sig = density.to(torch.float64).clamp(min=1e-6)
    c = colour.to(torch.float64).clamp(1e-3, 1 - 1e-3)
    with torch.no_grad():
        renderer.density.copy_(sig + torch.log(-torch.expm1(-sig)))
        renderer.colour.copy_(torch.logit(c))
    return renderer


def ground_truth_renderer(scene_index: int, grid_size: int = 64, image_size: int = 64,
                          n_samples: int = 96) -> GridRenderer:
    r"""A frozen :class:`GridRenderer` holding scene ``scene_index``'s ground-truth fields."""
    density, colour = scene_fields(scene_index, grid_size)
    r = GridRenderer(grid_size, image_size, n_samples, fov=FOV,
                     generator=torch.Generator().manual_seed(0))
    load_fields(r, density, colour)
    return r.requires_grad_(False).eval()


def sample_cameras(n: int, generator: torch.Generator | None = None) -> Cameras:
    r"""$n$ cameras: azimuth $\sim U[0, 2\pi)$, elevation $\sim U[e_{\min}, e_{\max}]$, radius ``RADIUS``.

    The camera distribution $p(\xi)$ of the benchmark (teacher data, SDS, evaluation).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    u = torch.rand(2, n, generator=generator)
    lo, hi = ELEVATION_RANGE
    return orbit_cameras(2 * math.pi * u[0], lo + (hi - lo) * u[1], RADIUS)


def heldout_cameras(n: int = 8) -> Cameras:
    r"""Fixed evaluation cameras: azimuth $2\pi(i + \tfrac12)/n$, elevations alternating at 1/4 and 3/4 of the range."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    i = torch.arange(n, dtype=torch.float32)
    lo, hi = ELEVATION_RANGE
    elev = lo + (hi - lo) * torch.where(i % 2 == 0, 0.25, 0.75)
    return orbit_cameras(2 * math.pi * (i + 0.5) / n, elev, RADIUS)


def render(renderer: GridRenderer, cameras: Cameras, chunk: int = 16) -> torch.Tensor:
    """Render ``(n, 3, H, W)`` images in chunks of ``chunk`` cameras (bounds memory; no grad)."""
    n = cameras.origins.shape[0]
    with torch.no_grad():
        return torch.cat([renderer(Cameras(cameras.origins[a:a + chunk], cameras.rotations[a:a + chunk]))
                          for a in range(0, n, chunk)])


def render_views(scene_index: int, n: int, generator: torch.Generator | None = None, *,
                 image_size: int = 64, n_samples: int = 96, grid_size: int = 64) -> Views:
    """``n`` ground-truth views of scene ``scene_index`` from :func:`sample_cameras` (drawn with ``generator``)."""
    cams = sample_cameras(n, generator)
    r = ground_truth_renderer(scene_index, grid_size, image_size, n_samples)
    return Views(render(r, cams), cams)


def heldout_views(scene_index: int, n: int = 8, *, image_size: int = 64, n_samples: int = 96,
                  grid_size: int = 64) -> Views:
    """Ground-truth views of scene ``scene_index`` from the fixed :func:`heldout_cameras`."""
    cams = heldout_cameras(n)
    r = ground_truth_renderer(scene_index, grid_size, image_size, n_samples)
    return Views(render(r, cams), cams)
