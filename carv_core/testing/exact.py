r"""Exact laws and moments of timestep samplers over discrete $t$.

A *sampler* (the protocol, as :class:`carv_core.InverseCDFSampler` implements it) has

- ``design``: one of ``"iid"``, ``"stratified"``, ``"global"``, ``"systematic"``
  (how the uniforms $u \in [0,1)^{R\times K}$ are laid out, see :mod:`carv_core.sampling`);
- ``transform(u) -> (t, w)``: a pure, elementwise map, non-decreasing in $u$,
  from uniforms of any shape to integer timesteps and weights that depend on $t$ only.

From these the law of every slot $(r,k)$ is recovered without sampling: the
breakpoints $c_j = \inf\{u : t(u) \ge j\}$ are found by bisection to float64
resolution, and a slot whose uniform is $U[a, b)$ lands on $j$ with probability
$|[a,b) \cap [c_j, c_{j+1})|/(b-a)$. Slots are independent except under
``systematic``, where a row shares one shift $\xi$; its law is enumerated over
the intervals of $\xi$ between breakpoints.

For an integrand table $f(\xi, t)$ (upstream outcomes $\xi$ with probabilities
$\pi_\xi$, drawn i.i.d. per row) the estimator
$\hat G = \frac{1}{RK}\sum_{r,k}\tilde w_{rk} f(\xi_r, t_{rk})$ then has an exactly
computable mean and $\operatorname{tr}\operatorname{Cov}$: :func:`exact_moments`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._validation import as_float_array, as_int, as_pmf

__all__ = [
    "EXACT_DESIGNS",
    "Block",
    "SamplerLaw",
    "Moments",
    "BiasReport",
    "breakpoints",
    "exact_law",
    "exact_moments",
    "target_mean",
    "within_variance",
    "between_variance",
    "check_sampler",
]

EXACT_DESIGNS = ("iid", "stratified", "global", "systematic")


class Block(NamedTuple):
    """A group of slots with a joint law, independent of every other block.

    ``slots`` is ``(n, 2)`` of ``(r, k)``; scenario ``s`` has probability
    ``probs[s]`` and puts ``t[s, i]``, ``w[s, i]`` on slot ``i``.
    """

    slots: np.ndarray
    probs: np.ndarray
    t: np.ndarray
    w: np.ndarray


class SamplerLaw(NamedTuple):
    """The exact joint law of a sampler's ``(R, K)`` draw, as independent blocks."""

    R: int
    K: int
    blocks: tuple


class Moments(NamedTuple):
    r"""$\mathbb E\hat G$ (shape ``(D,)``) and $\operatorname{tr}\operatorname{Cov}\hat G$."""

    mean: np.ndarray
    variance: float


class BiasReport(NamedTuple):
    r"""What :func:`check_sampler` found: $\mathbb E\hat G$, the target $\mathbb E_p f$, bias, variance."""

    expectation: np.ndarray
    target: np.ndarray
    bias: float
    relative_bias: float
    variance: float
    unbiased: bool


def _transform(sampler, u: np.ndarray):
    t, w = sampler.transform(u)
    t, w = np.asarray(t), np.asarray(w, dtype=np.float64)
    if t.shape != u.shape or w.shape != u.shape:
        raise ValueError(f"sampler.transform must be elementwise: u of shape {u.shape} gave "
                         f"t of shape {t.shape} and w of shape {w.shape}")
    return t.astype(np.int64), w


def breakpoints(sampler, n_timesteps: int) -> np.ndarray:
    r"""$c_0 = 0 \le c_1 \le \dots \le c_T = 1$ with $t(u) = j$ on $[c_j, c_{j+1})$.

    Found by vectorised bisection on $t(u) \ge j$ down to adjacent float64 values; raises if
    ``transform`` is not non-decreasing in $u$ or leaves $[0, T)$.
    """
    T = as_int("n_timesteps", n_timesteps, minimum=1)
    top = np.nextafter(1.0, 0.0)
    j = np.arange(1, T)
    lo, hi = np.zeros(T - 1), np.full(T - 1, top)
    t_hi = _transform(sampler, hi)[0]
    never = t_hi < j  # t(u) >= j for no u in [0, 1)
    # Bisect until lo and hi are adjacent floats (a fixed 64 halvings would leave
    # small breakpoints, near 1e-4, several ulps too high).
    for _ in range(1100):
        open_ = np.nextafter(lo, 1.0) < hi
        if not open_.any():
            break
        mid = np.where(open_, lo + 0.5 * (hi - lo), hi)
        ge = _transform(sampler, mid)[0] >= j
        hi, lo = np.where(ge, mid, hi), np.where(ge, lo, mid)
    c = np.where(never, 1.0, hi)
    c = np.where(_transform(sampler, np.zeros(T - 1))[0] >= j, 0.0, c)
    cuts = np.concatenate([[0.0], c, [1.0]])
    # Validate: monotone, in range, and constant between the cuts found.
    inner = np.minimum(cuts[1:-1], top)
    grid = np.sort(np.concatenate([np.linspace(0.0, top, 4097), inner, np.clip(inner - 1e-15, 0, top)]))
    t_grid = _transform(sampler, grid)[0]
    if t_grid.min() < 0 or t_grid.max() >= T:
        raise ValueError(f"sampler.transform returned timesteps outside [0, {T}): "
                         f"[{t_grid.min()}, {t_grid.max()}]")
    if np.any(np.diff(t_grid) < 0):
        raise ValueError("sampler.transform is not non-decreasing in u; the exact law needs a "
                         "monotone (inverse-CDF type) transform")
    expected = np.searchsorted(cuts[1:-1], grid, side="right")
    if not np.array_equal(expected, t_grid):
        raise ValueError("sampler.transform does not match its breakpoints; is it elementwise?")
    return cuts


def _interval_law(cuts: np.ndarray, a: float, b: float) -> np.ndarray:
    # P(t = j) for u ~ U[a, b): overlap of [a, b) with [c_j, c_{j+1}).
    return np.clip(np.minimum(cuts[1:], b) - np.maximum(cuts[:-1], a), 0.0, None) / (b - a)


def _weights_by_t(sampler, cuts: np.ndarray) -> np.ndarray:
    T = cuts.size - 1
    w = np.zeros(T)
    has = cuts[1:] > cuts[:-1]
    if has.any():
        a, b = cuts[:-1][has], cuts[1:][has]
        probes = np.stack([a, 0.5 * (a + b), np.maximum(a, np.nextafter(b, 0.0))])
        t, wp = _transform(sampler, probes)
        if not np.all(wp == wp[1:2]):
            raise ValueError("sampler weights must be a function of t alone")
        w[has] = wp[1]
    return w


def exact_law(sampler, R: int, K: int, n_timesteps: int) -> SamplerLaw:
    """The exact joint law of ``sampler``'s ``(R, K)`` draw (designs in :data:`EXACT_DESIGNS`).

    Example:
        >>> from carv_core import InverseCDFSampler
        >>> s = InverseCDFSampler(np.full(4, .25), np.full(4, .25), "stratified")
        >>> law = exact_law(s, R=1, K=2, n_timesteps=4)
        >>> [b.probs.round(3).tolist() for b in law.blocks]
        [[0.5, 0.5], [0.5, 0.5]]
    """
    design = getattr(sampler, "design", None)
    if design not in EXACT_DESIGNS:
        raise ValueError(f"sampler.design must be one of {EXACT_DESIGNS} for an exact law, got "
                         f"{design!r}; check randomized QMC statistically instead")
    R, K = as_int("R", R, minimum=1), as_int("K", K, minimum=1)
    cuts = breakpoints(sampler, n_timesteps)
    w_of_t = _weights_by_t(sampler, cuts)
    T = cuts.size - 1
    blocks = []
    if design == "systematic":
        # Row r shares xi: u_k = (k + xi)/K crosses c_j at xi = K c_j - k.
        xi_cuts = (K * cuts[None, 1:-1] - np.arange(K)[:, None]).ravel()
        xi_cuts = np.unique(np.concatenate([[0.0, 1.0], xi_cuts[(xi_cuts > 0) & (xi_cuts < 1)]]))
        probs = np.diff(xi_cuts)
        keep = probs > 0
        mids = 0.5 * (xi_cuts[:-1] + xi_cuts[1:])[keep]
        u = (np.arange(K)[None, :] + mids[:, None]) / K
        t = np.searchsorted(cuts[1:-1], u, side="right")
        for r in range(R):
            slots = np.stack([np.full(K, r), np.arange(K)], axis=1)
            blocks.append(Block(slots, probs[keep], t, w_of_t[t]))
        return SamplerLaw(R, K, tuple(blocks))
    support = np.arange(T)
    for r in range(R):
        for k in range(K):
            if design == "iid":
                a, b = 0.0, 1.0
            elif design == "stratified":
                a, b = k / K, (k + 1) / K
            else:
                a, b = (r * K + k) / (R * K), (r * K + k + 1) / (R * K)
            law = _interval_law(cuts, a, b)
            nz = law > 0
            blocks.append(Block(np.array([[r, k]]), law[nz], support[nz][:, None],
                                w_of_t[support[nz]][:, None]))
    return SamplerLaw(R, K, tuple(blocks))


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
    r"""$G = \sum_\xi \pi_\xi \sum_t p(t) f(\xi, t)$, shape ``(D,)``."""
    f, pi = _table(table, row_probs)
    p = as_pmf("p", p)
    if p.shape[0] != f.shape[1]:
        raise ValueError(f"p has {p.shape[0]} timesteps, table has {f.shape[1]}")
    return np.einsum("x,t,xtd->d", pi, p, f)


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
    """
    f, pi = _table(table, row_probs)
    R, K = law.R, law.K
    fbar = np.einsum("x,xtd->td", pi, f)             # (T, D)
    M = np.einsum("x,xtd,xsd->ts", pi, f, f)         # (T, T)
    Fdot = fbar @ fbar.T                             # (T, T)
    T = f.shape[1]

    # 1. Per-slot marginals A[s, t] = sum of P * w over the slot's scenarios at t.
    rows, blocks_of, cols, A = [], [], [], []
    for bi, blk in enumerate(law.blocks):
        if blk.t.max() >= T:
            raise ValueError(f"the law puts mass on t = {blk.t.max()}, the table has {T} timesteps")
        for i, (r, _) in enumerate(blk.slots):
            rows.append(int(r))
            blocks_of.append(bi)
            cols.append(i)
            A.append(np.bincount(blk.t[:, i], weights=blk.probs * blk.w[:, i], minlength=T))
    if len(A) != R * K or len({(int(r), int(k)) for b in law.blocks for r, k in b.slots}) != R * K:
        raise ValueError(f"the law must cover each of the R*K = {R * K} slots exactly once")
    A, rows, blocks_of = np.array(A), np.array(rows), np.array(blocks_of)
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


def between_variance(table, p, row_probs=None) -> float:
    r"""$\sigma_B^2 = \operatorname{tr}\operatorname{Cov}_\xi\big(\mu(\xi)\big)$, $\mu(\xi) = \sum_t p(t) f(\xi, t)$."""
    f, pi = _table(table, row_probs)
    mu = np.einsum("t,xtd->xd", as_pmf("p", p), f)
    centred = mu - pi @ mu
    return float(np.einsum("x,xd,xd->", pi, centred, centred))


def within_variance(law: SamplerLaw, table, row_probs=None) -> float:
    r"""$\mathbb E_\xi \operatorname{tr}\operatorname{Cov}(\bar Y_r \mid \xi)$ for row 0 of a per-row law.

    Computed one outcome $\xi$ at a time (a table with a single row has no
    between-variance), so $K$ times this is $\sigma_W^2(K)$ in
    $\operatorname{Var}\hat G = (\sigma_B^2 + \sigma_W^2(K)/K)/R$.
    """
    f, pi = _table(table, row_probs)
    row0 = SamplerLaw(1, law.K, tuple(b for b in law.blocks if np.all(b.slots[:, 0] == 0)))
    return float(sum(pi[x] * exact_moments(row0, f[x:x + 1]).variance for x in range(f.shape[0])))


def check_sampler(sampler, p, table, R: int = 1, K: int = 4, row_probs=None,
                  rtol: float = 1e-10) -> BiasReport:
    r"""Exact bias and variance of ``sampler`` for target ``p`` and integrand ``table``.

    ``unbiased`` is true when $\lVert\mathbb E\hat G - G\rVert \le$ ``rtol`` $\cdot\max(1, \lVert G\rVert)$.

    Example:
        >>> from carv_core import InverseCDFSampler
        >>> p = np.full(4, .25)
        >>> table = np.array([[0., 1., 2., 3.]])
        >>> check_sampler(InverseCDFSampler(p, p, "stratified"), p, table, K=2).unbiased
        True
    """
    p = as_pmf("p", p)
    law = exact_law(sampler, R, K, p.size)
    mom = exact_moments(law, table, row_probs)
    G = target_mean(table, p, row_probs)
    bias = float(np.linalg.norm(mom.mean - G))
    scale = max(1.0, float(np.linalg.norm(G)))
    return BiasReport(mom.mean, G, bias, bias / scale, mom.variance, bias <= rtol * scale)
