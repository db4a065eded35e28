r"""The exact joint law of a sampler's $(R, K)$ draw over discrete $t$, for any affine design.

A sampler is a design plus a transform. For an *affine* design
(:class:`~carv_core.designs.Layout`) each slot reads one jitter,

$$ u_{rk} = \frac{o_{rk} + s_{rk}\,\xi_{\beta(r,k)}}{d_{rk}}, \qquad \xi_b \sim U[0,1)\ \text{independent}, $$

and a monotone transform over $T$ timesteps is fixed by its breakpoints,
$t(u) = j$ on $[c_j, c_{j+1})$. So each block $b$ (the slots reading $\xi_b$) has a
finite law: cut $[0,1)$ at every $\xi$ where one of its slots crosses a breakpoint,

$$ \xi = (d\,c_j - o)/s, $$

and each sub-interval is a scenario with probability its length and timesteps read
at its midpoint. A block of one slot (most blocks) is the interval law
$P(t = j) = d\,\lvert [a, a + 1/d) \cap [c_j, c_{j+1}) \rvert$, computed for all such
slots at once. Blocks are independent, which is all
:func:`~carv_core.testing.exact_moments` needs.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._validation import as_int
from ..breakpoints import find_breakpoints, weights_by_t
from ..designs import DESIGNS, Design, as_design
from .protocol import check_breakpoint_form, check_elementwise

__all__ = ["EXACT_DESIGNS", "Block", "SamplerLaw", "exact_law"]

#: The shorthand names (:data:`carv_core.DESIGNS`) whose design is affine, so enumerable
#: exactly. Any affine :class:`~carv_core.Design` is, named or not; kept for compatibility.
EXACT_DESIGNS = tuple(name for name in DESIGNS if as_design(name).affine)


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
    r"""The exact joint law of a sampler's ``(R, K)`` draw, as independent blocks.

    Attributes:
        R, K: the draw's shape.
        blocks: :class:`Block` s covering each slot once.
        design: the :class:`~carv_core.Design` enumerated (``None`` for a hand-built law).
        shuffle_rows: the design permutes each row's slots at random. The law here is
            of the unshuffled layout: a row's *set* of draws has the same law either way,
            so every row-symmetric statistic (row means, $\hat G$, all the kit computes)
            does too; slot-by-slot marginals do not.
        cuts: the breakpoints $c_0 = 0 \le \dots \le c_T = 1$ the law was built from.
        weights: $w_j$, shape ``(T,)`` (0 where $t = j$ has no mass).
        probes: points at which the transform was compared with its breakpoint form.
    """

    R: int
    K: int
    blocks: tuple
    design: Design | None = None
    shuffle_rows: bool = False
    cuts: np.ndarray | None = None
    weights: np.ndarray | None = None
    probes: int = 0


def _interval_laws(lo: np.ndarray, d: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    # P(t = j) for u ~ U[lo, lo + 1/d): d * |[lo, lo + 1/d) ∩ [c_j, c_{j+1})|, shape (n, T).
    hi = lo + 1.0 / d
    overlap = np.minimum(cuts[None, 1:], hi[:, None]) - np.maximum(cuts[None, :-1], lo[:, None])
    return d[:, None] * np.clip(overlap, 0.0, None)


def _block_scenarios(o: np.ndarray, s: np.ndarray, d: np.ndarray, cuts: np.ndarray):
    # 1. Slot i crosses c_j where o_i + s_i xi = d_i c_j, i.e. xi = s_i (d_i c_j - o_i).
    inner = cuts[1:-1]
    xi = (s[:, None] * (d[:, None] * inner[None, :] - o[:, None])).ravel()
    edges = np.unique(np.concatenate([[0.0, 1.0], xi[(xi > 0.0) & (xi < 1.0)]]))
    # 2. Each sub-interval of [0, 1) is a scenario: probability its length, t at its midpoint.
    probs = np.diff(edges)
    keep = probs > 0
    mids = 0.5 * (edges[:-1] + edges[1:])[keep]
    u = (o[None, :] + s[None, :] * mids[:, None]) / d[None, :]
    return probs[keep], np.searchsorted(inner, u, side="right")


def _blocks(layout, cuts: np.ndarray, w_of_t: np.ndarray) -> tuple:
    R, K = layout.block.shape
    r, k = np.meshgrid(np.arange(R), np.arange(K), indexing="ij")
    flat = {name: getattr(layout, name).ravel() for name in ("block", "offset", "sign", "denom")}
    slots = np.stack([r.ravel(), k.ravel()], axis=1)
    count = np.bincount(flat["block"], minlength=layout.n_blocks)
    single = count[flat["block"]] == 1
    out = {}

    # 1. One-slot blocks, vectorised (and computed once per distinct interval).
    lo_all = layout.interval()[0].ravel()
    idx = np.flatnonzero(single)
    if idx.size:
        key = np.stack([lo_all[idx], flat["denom"][idx].astype(np.float64)], axis=1)
        uniq, inv = np.unique(key, axis=0, return_inverse=True)
        laws = _interval_laws(uniq[:, 0], uniq[:, 1], cuts)
        for i, law_id in zip(idx, inv.ravel()):
            law = laws[law_id]
            nz = np.flatnonzero(law > 0)
            out[int(i)] = Block(slots[i:i + 1], law[nz], nz[:, None], w_of_t[nz][:, None])

    # 2. Shared-jitter blocks: enumerate the sub-intervals of xi (once per distinct slot pattern).
    cache = {}
    members = np.argsort(flat["block"], kind="stable")
    starts = np.concatenate([[0], np.cumsum(count)])
    for b in np.flatnonzero(count > 1):
        sl = members[starts[b]:starts[b + 1]]
        o, s, d = flat["offset"][sl], flat["sign"][sl], flat["denom"][sl]
        sig = (o.tobytes(), s.tobytes(), d.tobytes())
        if sig not in cache:
            cache[sig] = _block_scenarios(o, s, d, cuts)
        probs, t = cache[sig]
        out[int(sl[0])] = Block(slots[sl], probs, t, w_of_t[t])
    return tuple(out[i] for i in sorted(out))


def exact_law(sampler, R: int, K: int, n_timesteps: int) -> SamplerLaw:
    r"""The exact joint law of ``sampler``'s ``(R, K)`` draw, for any affine design.

    Reads ``sampler.design`` (a :class:`~carv_core.Design` or a shorthand) and its
    :class:`~carv_core.designs.Layout`: no design name is special, so a user design is
    enumerated like a built-in one. Steps:

    1. check that ``transform`` is pure and elementwise (:func:`check_elementwise`);
    2. breakpoints by bisection (:func:`carv_core.find_breakpoints`) and $w(t)$
       (:func:`carv_core.weights_by_t`), then the transform is compared with that
       breakpoint form on $2^{16}$ probes (:func:`check_breakpoint_form`);
    3. each block's law by cutting its jitter at every breakpoint crossing (module docs).

    A design with ``shuffle_rows`` (e.g. :class:`~carv_core.PermutedStrata`) is enumerated
    without the shuffle: the row mean, and so every estimator the kit computes, has
    the same law; the law records it (``shuffle_rows=True``).

    Args:
        sampler: a ``design`` and a ``transform(u) -> TimestepDraw``.
        R, K: upstream samples and inner draws per upstream sample.
        n_timesteps: $T$; ``transform`` must return $t \in [0, T)$.

    Raises:
        ValueError: the design is not affine (:class:`~carv_core.Sobol`), or the
            transform breaks the protocol (the message names the rule).

    Example:
        >>> from carv_core import Antithetic, InverseCDFSampler
        >>> s = InverseCDFSampler(np.full(4, .25), np.full(4, .25), Antithetic())
        >>> law = exact_law(s, R=1, K=2, n_timesteps=4)
        >>> law.blocks[0].probs.round(3).tolist(), law.blocks[0].t.tolist()
        ([0.25, 0.25, 0.25, 0.25], [[0, 3], [1, 2], [2, 1], [3, 0]])
    """
    design = as_design(getattr(sampler, "design", None), f"{type(sampler).__name__}.design")
    if not design.affine:
        raise ValueError(f"{design!r} is not affine: cannot be enumerated exactly; check it "
                         "statistically (seeded estimates, a tolerance in standard errors)")
    R, K = as_int("R", R, minimum=1), as_int("K", K, minimum=1)
    layout = design.checked_layout(R, K)
    check_elementwise(sampler)
    cuts = find_breakpoints(sampler, n_timesteps)
    w_of_t = weights_by_t(sampler, cuts)
    probes = check_breakpoint_form(sampler, cuts, w_of_t)
    return SamplerLaw(R, K, _blocks(layout, cuts, w_of_t), design, layout.shuffle_rows,
                      cuts, w_of_t, probes)
