r"""Exact moments of the hierarchical estimator under a :class:`~carv_core.testing.SamplerLaw`.

For an integrand table $f(\xi, t)$ (upstream outcomes $\xi$ with probabilities
$\pi_\xi$, drawn i.i.d. per row, independent of the timesteps) the estimator

$$ \hat G = \frac{1}{RK}\sum_{r,k}\tilde w_{rk}\, f(\xi_r, t_{rk}) $$

has an exactly computable mean and $\operatorname{tr}\operatorname{Cov}$
(:func:`exact_moments`); its target is $G = \sum_\xi\pi_\xi\sum_t p(t) f(\xi, t)$
(:func:`target_mean`), and the variance components of the hierarchical estimator are
:func:`between_variance` and :func:`within_variance`. :func:`integrand_scale` is the
size the test kit measures a bias against.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._validation import as_float_array, as_pmf
from .law import SamplerLaw

__all__ = ["Moments", "target_mean", "integrand_scale", "exact_moments", "between_variance",
           "within_variance"]


class Moments(NamedTuple):
    r"""$\mathbb E\hat G$ (shape ``(D,)``) and $\operatorname{tr}\operatorname{Cov}\hat G$."""

    mean: np.ndarray
    variance: float


def _table(table, row_probs):
    f = as_float_array("table", table, min_ndim=2)
    if f.ndim == 2:
        f = f[:, :, None]
    f = f.reshape(f.shape[0], f.shape[1], -1)
    X = f.shape[0]
    pi = np.full(X, 1.0 / X) if row_probs is None else as_pmf("row_probs", row_probs)
    if pi.shape != (X,):
        raise ValueError(f"row_probs must have shape ({X},) like table's first axis, got {pi.shape}")
    return f, pi


def target_mean(table, p, row_probs=None) -> np.ndarray:
    r"""$G = \sum_\xi \pi_\xi \sum_t p(t) f(\xi, t)$, shape ``(D,)``.

    Example:
        >>> target_mean([[0.0, 2.0], [2.0, 4.0]], [0.5, 0.5]).tolist()
        [2.0]
    """
    f, pi = _table(table, row_probs)
    p = _p_for(p, f)
    return np.einsum("x,t,xtd->d", pi, p, f)


def _p_for(p, f):
    p = as_pmf("p", p)
    if p.shape[0] != f.shape[1]:
        raise ValueError(f"p has {p.shape[0]} timesteps, table has {f.shape[1]}")
    return p


def integrand_scale(table, p, row_probs=None) -> float:
    r"""$\lVert f\rVert_{p,\pi} = \big(\sum_\xi \pi_\xi \sum_t p(t)\,\lVert f(\xi, t)\rVert^2\big)^{1/2}$: the RMS of $f$ under $p$ and the row law.

    The size :func:`~carv_core.testing.check_sampler` measures a bias against. Unlike
    $\lVert G\rVert$ it is 0 only when $f = 0$ wherever $p\,\pi > 0$, and it scales
    with $f$ (computed without underflow or overflow at any float64 magnitude).

    Example:
        >>> integrand_scale([[3.0, -3.0]], [0.5, 0.5])
        3.0
    """
    f, pi = _table(table, row_probs)
    p = _p_for(p, f)
    # Scale by the largest entry that counts (p pi > 0), so neither the squares of a
    # tiny f nor an entry where p = 0 can underflow the result to 0.
    mass = pi[:, None] * p[None, :]
    big = float(np.abs(f[mass > 0]).max(initial=0.0))
    if big == 0.0:
        return 0.0
    g = np.where(mass[:, :, None] > 0, f, 0.0) / big
    return big * float(np.sqrt(np.einsum("xt,xtd,xtd->", mass, g, g)))


def _marginals(law: SamplerLaw, T: int):
    # Per-slot marginals A[s, t] = sum of P * w over the slot's scenarios at t, with each
    # slot's row, block and column in its block.
    R, K = law.R, law.K
    rows, blocks_of, cols, A = [], [], [], []
    for bi, blk in enumerate(law.blocks):
        if blk.t.size and blk.t.max() >= T:
            raise ValueError(f"the law puts mass on t = {blk.t.max()}, the table has {T} timesteps")
        for i, (r, _) in enumerate(blk.slots):
            rows.append(int(r))
            blocks_of.append(bi)
            cols.append(i)
            A.append(np.bincount(blk.t[:, i], weights=blk.probs * blk.w[:, i], minlength=T))
    if len(A) != R * K or len({(int(r), int(k)) for b in law.blocks for r, k in b.slots}) != R * K:
        raise ValueError(f"the law must cover each of the R*K = {R * K} slots exactly once")
    return np.array(A), np.array(rows), np.array(blocks_of), cols


def exact_moments(law: SamplerLaw, table, row_probs=None) -> Moments:
    r"""Exact $\mathbb E\hat G$ and $\operatorname{tr}\operatorname{Cov}\hat G$ for an integrand table.

    Args:
        law: from :func:`exact_law`.
        table: $f(\xi, t)$, shape ``(X, T)`` or ``(X, T, *D)``.
        row_probs: $\pi_\xi$, shape ``(X,)``; uniform when ``None``.

    With $Z_s = \tilde w_s f(\xi_{r(s)}, t_s)$ for slot $s$:
    $\operatorname{Var}\sum_s Z_s = \sum_{s,s'\ \text{dependent}} \big(\mathbb E[Z_s\cdot Z_{s'}] - m_s\cdot m_{s'}\big)$,
    where slots are dependent when they share a row (same $\xi$) or a block (same uniforms),
    $\mathbb E[Z_s\cdot Z_{s'}]$ uses $M(t,t') = \sum_\xi\pi_\xi f(\xi,t)\cdot f(\xi,t')$ within a row
    and $\bar f(t)\cdot\bar f(t')$ across rows.

    Example:
        >>> from carv_core import InverseCDFSampler
        >>> from carv_core.testing import exact_law
        >>> p = np.full(4, .25)
        >>> law = exact_law(InverseCDFSampler(p, p, "stratified"), R=1, K=2, n_timesteps=4)
        >>> exact_moments(law, [[0.0, 1.0, 2.0, 3.0]])   # i.i.d. would give 1.25 / 2
        Moments(mean=array([1.5]), variance=0.125)
    """
    f, pi = _table(table, row_probs)
    R, K = law.R, law.K
    fbar = np.einsum("x,xtd->td", pi, f)             # (T, D)
    M = np.einsum("x,xtd,xsd->ts", pi, f, f)         # (T, T)
    Fdot = fbar @ fbar.T                             # (T, T)
    T = f.shape[1]

    # 1. Per-slot marginals and slot means.
    A, rows, blocks_of, cols = _marginals(law, T)
    m = A @ fbar                                     # (S, D) slot means
    mean = m.sum(axis=0) / (R * K)

    # 2. Independent slots of one row (different blocks): E[Z_s . Z_s'] = A_s M A_s'.
    same_row = rows[:, None] == rows[None, :]
    same_block = blocks_of[:, None] == blocks_of[None, :]
    cov = A @ M @ A.T - m @ m.T
    var = float(cov[same_row & ~same_block].sum())

    # 3. Slots of one block share their uniforms: sum over the block's scenarios.
    for bi, blk in enumerate(law.blocks):
        idx = np.flatnonzero(blocks_of == bi)
        for a, s in enumerate(idx):
            for b, s2 in enumerate(idx):
                G = M if rows[s] == rows[s2] else Fdot
                i, j = cols[s], cols[s2]
                second = float(np.sum(blk.probs * blk.w[:, i] * blk.w[:, j] * G[blk.t[:, i], blk.t[:, j]]))
                var += second - float(m[s] @ m[s2])
    return Moments(mean, max(var, 0.0) / (R * K) ** 2)


def within_variance(law: SamplerLaw, table, row_probs=None) -> float:
    r"""$\mathbb E_\xi \operatorname{tr}\operatorname{Cov}(\bar Y_r \mid \xi)$ for row 0 of a per-row law.

    Computed one outcome $\xi$ at a time (a table with a single row has no
    between-variance), so $K$ times this is $\sigma_W^2(K)$ in
    $\operatorname{Var}\hat G = (\sigma_B^2 + \sigma_W^2(K)/K)/R$. A block that also
    feeds other rows contributes the marginal law of its row-0 slots.

    Example:
        >>> from carv_core import InverseCDFSampler
        >>> from carv_core.testing import exact_law
        >>> p = np.full(4, .25)
        >>> law = exact_law(InverseCDFSampler(p, p, "stratified"), R=1, K=2, n_timesteps=4)
        >>> within_variance(law, [[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]])
        0.0625
    """
    f, pi = _table(table, row_probs)
    blocks = []
    for b in law.blocks:
        mine = b.slots[:, 0] == 0
        if mine.any():
            blocks.append(type(b)(b.slots[mine], b.probs, b.t[:, mine], b.w[:, mine]))
    row0 = SamplerLaw(1, law.K, tuple(blocks))
    return float(sum(pi[x] * exact_moments(row0, f[x:x + 1]).variance for x in range(f.shape[0])))


def between_variance(table, p, row_probs=None) -> float:
    r"""$\sigma_B^2 = \operatorname{tr}\operatorname{Cov}_\xi\big(\mu(\xi)\big)$, $\mu(\xi) = \sum_t p(t) f(\xi, t)$.

    Example:
        >>> between_variance([[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]], np.full(4, .25))
        0.0625
    """
    f, pi = _table(table, row_probs)
    mu = np.einsum("t,xtd->xd", _p_for(p, f), f)
    centred = mu - pi @ mu
    return float(np.einsum("x,xd,xd->", pi, centred, centred))


