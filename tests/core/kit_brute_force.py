"""Independent computations of a sampler's exact moments, to test ``carv_core.testing`` against.

Nothing here uses the kit: the crossings come from the closed-form CDF of q (no
bisection), the timesteps from the sampler's own ``transform`` at the design's own
uniforms (``apply_layout``), and the moments from a full joint enumeration over
every block and every upstream outcome (no pairwise covariance formula). The Monte
Carlo estimate runs the sampler's real draw (``sampler(n R, K, rng)``, shuffle included).
"""

from __future__ import annotations

import itertools

import numpy as np

from carv_core import apply_layout, as_design

__all__ = ["enumerate_moments", "monte_carlo_moments"]


def _block_scenarios(sampler, layout, b, cuts):
    # Scenarios of block b: cut xi where one of its slots meets a cut, t from transform at midpoints.
    sl = np.flatnonzero(layout.block.ravel() == b)
    o, s, d = (getattr(layout, n).ravel()[sl] for n in ("offset", "sign", "denom"))
    xi = ((cuts[:, None] * d[None, :] - o[None, :]) / s[None, :]).ravel()
    edges = np.unique(np.concatenate([[0.0, 1.0], xi[(xi > 0) & (xi < 1)]]))
    probs, mids = np.diff(edges), 0.5 * (edges[:-1] + edges[1:])
    full = np.zeros((mids.size, layout.n_blocks))
    full[:, b] = mids
    u = np.stack([apply_layout(layout, row).ravel()[sl] for row in full])
    t, w = sampler.transform(u)
    return sl, probs, np.asarray(t), np.asarray(w, dtype=np.float64)


def enumerate_moments(sampler, q, R, K, table, row_probs=None, max_cases=200_000):
    """Exact (E G_hat, tr Cov G_hat) of an inverse-CDF-of-q sampler by full joint enumeration.

    Returns ``None`` when the joint law has more than ``max_cases`` cases.
    """
    layout = as_design(sampler.design).layout(R, K)._replace(shuffle_rows=False)
    f = np.asarray(table, dtype=np.float64).reshape(len(table), len(q), -1)
    X = f.shape[0]
    pi = np.full(X, 1.0 / X) if row_probs is None else np.asarray(row_probs)
    cuts = np.cumsum(q)[:-1]
    blocks = [_block_scenarios(sampler, layout, b, cuts) for b in range(layout.n_blocks)]
    n_cases = np.prod([blk[1].size for blk in blocks], dtype=float) * X**R
    if n_cases > max_cases:
        return None
    mean, second = 0.0, 0.0
    outcomes = np.array(list(itertools.product(range(X), repeat=R)))          # (O, R)
    p_out = np.prod(pi[outcomes], axis=1)
    rows = np.repeat(np.arange(R), K)
    for combo in itertools.product(*(range(blk[1].size) for blk in blocks)):
        prob = np.prod([blk[1][i] for blk, i in zip(blocks, combo)])
        t, w = np.zeros(R * K, dtype=int), np.zeros(R * K)
        for (sl, _, tb, wb), i in zip(blocks, combo):
            t[sl], w[sl] = tb[i], wb[i]
        g = (w[None, :, None] * f[outcomes[:, rows], t[None, :]]).mean(axis=1)   # (O, D)
        mean = mean + prob * (p_out @ g)
        second = second + prob * float(p_out @ np.sum(g * g, axis=1))
    return mean, second - float(mean @ mean)


def monte_carlo_moments(sampler, R, K, table, n, rng, row_probs=None):
    """Sample mean of G_hat, its standard errors, the sample tr Cov and its standard error.

    One real draw ``sampler(n * R, K, rng)`` cut into n replicates of R rows: valid for
    designs whose jitters are shared within groups of rows that R is a multiple of
    (every design these tests use; not ``global``).
    """
    f = np.asarray(table, dtype=np.float64)
    f = f.reshape(f.shape[0], f.shape[1], -1)
    X = f.shape[0]
    pi = np.full(X, 1.0 / X) if row_probs is None else np.asarray(row_probs)
    t, w = sampler(n * R, K, rng=rng)
    x = rng.choice(X, size=(n * R, 1), p=pi)
    est = (w[:, :, None] * f[x, t]).reshape(n, R * K, -1).mean(axis=1)
    mean = est.mean(axis=0)
    sq = np.sum((est - mean) ** 2, axis=1)
    return mean, est.std(axis=0, ddof=1) / np.sqrt(n), sq.mean() * n / (n - 1), sq.std(ddof=1) / np.sqrt(n)
