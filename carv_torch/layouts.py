r"""Design layouts on the device: what :func:`carv_torch.sampling.draw_uniforms` runs.

An affine design's integer :class:`~carv_core.designs.Layout` is validated once per
``(design, R, K, device)`` and kept on the device; a draw is then one ``rand`` and a
few elementwise ops, the same arithmetic as :func:`carv_core.designs.apply_layout`, so
the same jitters give the same uniforms bit for bit.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import torch
from carv_core.designs import Design, Sobol, warn_sobol_length

__all__ = ["draw_layout", "largest_below_one"]


@functools.lru_cache(maxsize=None)
def largest_below_one(dtype: torch.dtype) -> float:
    """The largest value below 1 in ``dtype``."""
    return 1.0 - torch.finfo(dtype).eps / 2


_SOBOL_BITS = 53  # as carv_core.designs: digits of the points, the float64 grid of rand()


def _sobol_rows(R: int, K: int, generator, device) -> torch.Tensor:
    # The method of carv_core.designs.Sobol.draw, vectorised over rows on the device (no
    # host read): row r is the van der Corput prefix x_0..x_{K-1} under a linear matrix
    # scramble M_r (lower triangular, unit diagonal, uniform bits below it) plus a uniform
    # 53-bit digital shift D_r; only the columns of the m leading digits are needed.
    m = max(K - 1, 0).bit_length()
    if m > _SOBOL_BITS:
        raise ValueError(f"K must be <= 2**{_SOBOL_BITS} for a {_SOBOL_BITS}-digit Sobol design, got {K}")
    gen_device = generator.device if generator is not None else device
    draw = functools.partial(torch.randint, 0, 2**_SOBOL_BITS, generator=generator,
                             device=gen_device, dtype=torch.int64)
    top = torch.tensor([1 << (_SOBOL_BITS - 1 - j) for j in range(m)], dtype=torch.int64, device=gen_device)
    cols = top | (draw((R, m)) & (top - 1))                    # (R, m): column j of M_r
    y = draw((R, 1)).expand(R, K).clone()                     # D_r
    i = torch.arange(K, dtype=torch.int64, device=gen_device)
    for j in range(m):  # y_i = M_r x_i xor D_r: xor of the columns over the set bits of i
        y ^= cols[:, j:j + 1] * ((i >> j) & 1)
    # y < 2**53: exact in float64, and y * 2**-53 (a power of two) is exact and < 1.
    return (y.to(torch.float64) * 2.0**-_SOBOL_BITS).to(device)


class _Plan(NamedTuple):
    # A validated Layout on the device. kind: "iid" (u = xi), "own" (u = (o + xi)/d:
    # slot rk reads jitter rk with sign +1, e.g. per-row strata) or "general".
    kind: str
    block: torch.Tensor
    offset: torch.Tensor
    sign: torch.Tensor
    denom: torch.Tensor
    n_blocks: int
    shuffle_rows: bool


def _layout_on(design: Design, R: int, K: int, device: torch.device) -> _Plan:
    # Cached per (design, R, K, device); a design with unhashable settings is laid out afresh.
    try:
        return _cached_layout(design, R, K, device)
    except TypeError as err:
        if "unhashable" not in str(err):
            raise
        return _plan(design, R, K, device)


@functools.lru_cache(maxsize=256)
def _cached_layout(design: Design, R: int, K: int, device: torch.device) -> _Plan:
    return _plan(design, R, K, device)


def _plan(design: Design, R: int, K: int, device: torch.device) -> _Plan:
    # The design's integer layout, validated once and kept on the device: a draw is
    # then one rand() and a few elementwise ops, with no host work. The fast kinds
    # skip only exact no-ops (xi[arange] = xi, 1 * xi = xi, (0 + xi)/1 = xi).
    lay = design.checked_layout(R, K)
    own = (lay.n_blocks == R * K and np.array_equal(lay.block, np.arange(R * K).reshape(R, K))
           and bool(np.all(lay.sign == 1)))
    kind = "general"
    if own:
        kind = "iid" if (not lay.offset.any() and bool(np.all(lay.denom == 1))) else "own"
    def put(a):
        return torch.as_tensor(a, dtype=torch.int64).to(device)
    return _Plan(kind, put(lay.block), put(lay.offset).to(torch.float64), put(lay.sign).to(torch.float64),
                 put(lay.denom).to(torch.float64), lay.n_blocks, lay.shuffle_rows)


def draw_layout(design: Design, R: int, K: int, generator, device) -> torch.Tensor:
    r"""$u = (o + s\,\xi_{\beta})/d$ of ``design``'s layout in float64, below 1; then the optional row shuffle.

    Jitters are drawn first, then (shuffled designs) the permutation keys, as in
    :meth:`carv_core.Design.draw`. Non-affine designs: :class:`~carv_core.designs.Sobol`, or a
    design with its own ``draw_torch(R, K, generator, device)``.
    """
    if not design.affine:
        if isinstance(design, Sobol):
            warn_sobol_length(K)
            return _sobol_rows(R, K, generator, device)
        draw_torch = getattr(design, "draw_torch", None)
        if draw_torch is None:
            raise TypeError(f"{type(design).__name__} is not affine and has no draw_torch(R, K, "
                            "generator, device): carv_torch cannot draw it")
        return draw_torch(R, K, generator, device)
    plan = _layout_on(design, R, K, torch.device(device))
    xi = torch.rand((plan.n_blocks,), generator=generator, device=device, dtype=torch.float64)
    if plan.kind == "iid":
        u = xi.view(R, K)
    elif plan.kind == "own":
        u = (plan.offset + xi.view(R, K)) / plan.denom
    else:
        u = (plan.offset + plan.sign * xi[plan.block]) / plan.denom
    u = u.clamp_(0.0, largest_below_one(torch.float64))
    if plan.shuffle_rows:
        keys = torch.rand((R, K), generator=generator, device=device, dtype=torch.float64)
        u = torch.gather(u, 1, torch.argsort(keys, dim=1, stable=True))
    return u
