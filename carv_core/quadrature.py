r"""Deterministic quadrature designs: timestep grids, *biased* at finite $K$.

Practice in data attribution (D-TRAK) evaluates the $K$ timesteps
``range(0, T, T // K)`` rather than random ones. As a :class:`~carv_core.designs.Design`
the grid plugs into every sampler and into the exact test kit
(:mod:`carv_core.testing`), which then *measures* its bias
$\mathbb E[\hat\mu] - \mu = \frac1K\sum_k f(t_k) - \sum_t p(t) f(t)$ instead of assuming
it away; the unbiased twin is :class:`~carv_core.designs.Systematic` (the grid with one
uniform shift).
"""

from __future__ import annotations

import numpy as np

from ._validation import as_int
from .designs import Design, Layout

__all__ = ["FixedGrid"]


class FixedGrid(Design):
    r"""D-TRAK's deterministic grid: slot $k$ is timestep $t_k = k\,\lfloor T/K\rfloor$ (``range(0, T, T // K)``).

    As an affine layout, $u_{rk} = (4 t_k + 1 + \xi)/(4T)$: the interval of slot $k$
    lies strictly inside $[t_k/T, (t_k + 1)/T)$, so under the uniform inverse CDF on
    $T$ steps the timestep is $t_k$ whatever $\xi$ is. It is a quadrature, *biased* at
    finite $K$ (the exact kit measures the bias); when $K \nmid T$ it keeps the first $K$
    grid points, so $[K\lfloor T/K\rfloor, T)$ is never visited. Use it with
    $p = q = $ uniform on $T$ steps; under another $q$ the slots sit at $q$'s quantiles.

    Example:
        >>> import carv_core
        >>> import numpy as np
        >>> p = np.full(1000, 1e-3)
        >>> carv_core.InverseCDFSampler(p, p, FixedGrid(1000))(R=1, K=4, rng=0).t.tolist()
        [[0, 250, 500, 750]]
    """

    name = "fixed-grid"

    def __init__(self, n_timesteps: int = 1000):
        self.n_timesteps = as_int("n_timesteps", n_timesteps, minimum=1)

    def layout(self, R, K):
        T = self.n_timesteps
        if K > T:
            raise ValueError(f"K must be <= n_timesteps = {T} for a fixed grid of distinct steps, got K = {K}")
        k = np.broadcast_to(np.arange(K), (R, K))
        ones = np.ones((R, K), dtype=np.int64)
        block = np.broadcast_to(np.arange(R)[:, None], (R, K)).astype(np.int64)
        return Layout(block, (4 * k * (T // K) + 1).astype(np.int64), ones, 4 * T * ones, R)
