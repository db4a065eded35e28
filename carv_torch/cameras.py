r"""Camera designs on tensors: :mod:`carv_core.upstream` with a ``torch.Generator``, then orbit cameras.

The same split as the timesteps: a design draws the camera uniforms
$U \in [0,1)^{R\times d}$, a pure transform maps them to parameters
$\xi_{rj} = a_j + (b_j - a_j)\,U_{rj}$ (:func:`cameras_from_uniforms`), and
:func:`orbit_from_parameters` turns columns (azimuth, elevation[, distance]) into
:class:`~carv_torch.renderers.Cameras`. The designs are the core's objects
(:class:`~carv_core.PermutedStrata` for stratified azimuth, :class:`AntipodalPairs` for
$\varphi, \varphi + \pi$, :class:`~carv_core.Sobol`, ...):

* :func:`camera_uniforms` draws each coordinate on the device with
  :func:`carv_torch.sampling.draw_uniforms` (the law the exact kit certifies), one
  coordinate after the other from ``generator``; no host read;
* :func:`sequence_uniforms` and :func:`sobol_sequence` are the run-long designs: a pure
  function of ``(step, seed)``, computed on the host by the core (an ``(R, d)`` array,
  no device read) and copied to the device.

For the benchmark's law (azimuth $U[0, 2\pi)$, elevation $U[e_{\min}, e_{\max}]$, fixed
radius) use ``low = (0, e_min)``, ``high = (2 pi, e_max)``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from carv_core import upstream as _core
from carv_core.upstream import AntipodalPairs

from ._validation import (
    as_dtype,
    as_int,
    as_tensor,
    check_finite,
    check_unit_interval,
    from_host,
    is_validating,
    resolve_device,
)
from .layouts import largest_below_one
from .renderers import Cameras, orbit_cameras
from .sampling import draw_uniforms

__all__ = ["AntipodalPairs", "camera_uniforms", "sequence_uniforms", "sobol_sequence",
           "cameras_from_uniforms", "orbit_from_parameters", "CameraDraw", "draw_cameras"]


def _finish(u: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # Formed in float64; rounding to dtype must keep u < 1.
    return u.to(dtype).clamp_(max=largest_below_one(dtype))


def camera_uniforms(designs, R: int, generator=None, *, device=None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    r"""One step's camera uniforms $U$, ``(R, d)``: coordinate $j$ is row 0 of a ``(1, R)`` draw of ``designs[j]``.

    As :func:`carv_core.upstream.camera_uniforms`, on ``device`` (default: the generator's),
    coordinates drawn in order from ``generator``.

    Example:
        >>> from carv_core import PermutedStrata
        >>> u = camera_uniforms((PermutedStrata(), "iid"), 4, torch.Generator().manual_seed(0))
        >>> sorted(torch.floor(4 * u[:, 0]).long().tolist())
        [0, 1, 2, 3]
    """
    designs = _core._designs(designs)
    R = as_int("R", R, minimum=1)
    device = resolve_device(device, generator)
    dtype = as_dtype("dtype", dtype)
    cols = [draw_uniforms(g, 1, R, generator, device=device, dtype=torch.float64)[0] for g in designs]
    return _finish(torch.stack(cols, dim=1), dtype)


def sequence_uniforms(designs, R: int, step: int, period: int, seed, *, device=None,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    r"""Step $s$ of a run-long design (one draw of $PR$ slots per period of $P$ steps), ``(R, d)``.

    :func:`carv_core.upstream.sequence_uniforms` (host, pure in ``(step, seed)``), copied to ``device``.
    """
    u = _core.sequence_uniforms(designs, R, step, period, seed)
    return _finish(from_host(u, device=device), as_dtype("dtype", dtype))


def sobol_sequence(d: int, R: int, step: int, seed, *, device=None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    r"""Points $sR, \dots, sR + R - 1$ of one scrambled $d$-dimensional Sobol sequence, ``(R, d)``.

    :func:`carv_core.upstream.sobol_sequence` (scipy, host), copied to ``device``.
    """
    u = _core.sobol_sequence(d, R, step, seed)
    return _finish(from_host(u, device=device), as_dtype("dtype", dtype))


def cameras_from_uniforms(u, low, high) -> torch.Tensor:
    r"""The pure transform $\xi_{rj} = a_j + (b_j - a_j)\,U_{rj}$ on the device of ``u``, ``(R, d)``.

    ``low``, ``high``: sequences (or tensors) of $d$ reals with $a_j \le b_j$.

    Example:
        >>> cameras_from_uniforms(torch.tensor([[0.5, 0.25]]), (0.0, -1.0), (2.0, 1.0)).tolist()
        [[1.0, -0.5]]
    """
    u = as_tensor("u", u, ndim=2)
    check_unit_interval("u", u)
    a = as_tensor("low", low, ndim=1, device=u.device, other="u")
    b = as_tensor("high", high, ndim=1, device=u.device, other="u")
    d = u.shape[1]
    if tuple(a.shape) != (d,) or tuple(b.shape) != (d,):
        raise ValueError(f"low and high must have shape (d,) = ({d},) like u's columns, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    check_finite("low", a)
    check_finite("high", b)
    a, b = a.to(u.device, u.dtype), b.to(u.device, u.dtype)
    if not bool(torch.all(b >= a)):
        j = int(torch.nonzero(b < a)[0])
        raise ValueError(f"high must be >= low per coordinate, got low[{j}] = {float(a[j])} > "
                         f"high[{j}] = {float(b[j])}")
    return a + (b - a) * u


def orbit_from_parameters(xi, radius: float = 2.5) -> Cameras:
    r"""Orbit :class:`~carv_torch.renderers.Cameras` from columns (azimuth, elevation[, distance]) of ``xi``.

    Columns 0 and 1 are azimuth and elevation (radians); a third column, when present, is
    each camera's distance from the origin (> 0), else every camera sits at ``radius``.
    Further columns (light, ...) are the caller's.

    Example:
        >>> cams = orbit_from_parameters(torch.tensor([[0.0, 0.0, 3.0]]))
        >>> cams.origins.tolist()
        [[3.0, 0.0, 0.0]]
    """
    xi = as_tensor("xi", xi, ndim=2)
    if xi.shape[1] < 2:
        raise ValueError(f"xi must have columns (azimuth, elevation[, distance, ...]), got shape "
                         f"{tuple(xi.shape)}")
    if xi.shape[1] == 2:
        return orbit_cameras(xi[:, 0], xi[:, 1], radius)
    if is_validating() and xi.device.type != "meta" and bool((xi[:, 2] <= 0).any()):
        raise ValueError(f"xi[:, 2] (each camera's distance) must be > 0, got minimum {float(xi[:, 2].min())}")
    cams = orbit_cameras(xi[:, 0], xi[:, 1], 1.0)
    return Cameras(cams.origins * xi[:, 2:3], cams.rotations)


class CameraDraw(NamedTuple):
    r"""A step's cameras: ``uniforms`` $U$ ``(R, d)``, ``parameters`` $\xi$ ``(R, d)``, ``cameras``."""

    uniforms: torch.Tensor
    parameters: torch.Tensor
    cameras: Cameras


def draw_cameras(designs, R: int, low=(0.0, -0.5), high=(2 * math.pi, 0.5), generator=None, *,
                 radius: float = 2.5, device=None, dtype: torch.dtype = torch.float32) -> CameraDraw:
    r"""$R$ orbit cameras of one step: :func:`camera_uniforms`, :func:`cameras_from_uniforms`, :func:`orbit_from_parameters`.

    Example:
        >>> from carv_core import PermutedStrata
        >>> draw = draw_cameras((PermutedStrata(), "iid"), 2, generator=torch.Generator().manual_seed(0))
        >>> draw.cameras.origins.shape
        torch.Size([2, 3])
    """
    u = camera_uniforms(designs, R, generator, device=device, dtype=dtype)
    xi = cameras_from_uniforms(u, low, high)
    return CameraDraw(u, xi, orbit_from_parameters(xi, radius))
