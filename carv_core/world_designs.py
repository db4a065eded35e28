r"""Designs over the draws of many processes: one stratified draw, interleaved across ranks.

With $W$ ranks (data-parallel processes), rank $s$ holding $R_s$ upstream samples with $K$
inner draws each, the whole world makes $n = K\sum_s R_s$ draws. :class:`WorldStrata` gives
rank $s$ its share of **one** global stratified draw,
$u = (j + \xi)/n$ for the strata $j$ it owns, each with its own jitter $\xi \sim U[0,1)$
drawn from the rank's own stream: no communication, only the row counts $(R_s)$, which
every rank must know.

Ownership interleaves the strata (k-diffusion's scheme, "rank $s$ owns strata
$s, s + W, \dots$", when all $R_s$ are equal): the $i$-th of rank $s$'s $c_s = R_s K$ draws has
the key $(i + \tfrac12)/c_s$; sorting all keys (ties by rank) gives the stratum $j$ of every
draw, so each rank's strata are spread evenly over $[0, 1)$ whatever the counts. Within a
rank, draw $i$ is slot $(r, k) = (i \bmod R_s, \lfloor i / R_s\rfloor)$, so each row's $K$
strata are spread too.

Law: the union of all ranks' uniforms holds every stratum of $n$ once, each with an
independent jitter, so the pooled mean $\frac1n\sum$ over all ranks is unbiased for any
integrand; for an integrand of $t$ alone (or $K = 1$) it has exactly the law of one
:class:`~carv_core.designs.GlobalStrata` draw over the $n$ draws. (When the integrand depends on
the row and $K > 1$ the two differ: :class:`WorldStrata` spreads each row's strata over $[0,1)$,
:class:`~carv_core.designs.GlobalStrata` gives each row a block.) A single rank's mean is
**not** unbiased (its strata are a comb, not all of $[0,1)$): average ranks weighted by their
draw counts, as the guidance's distributed mode does.
"""

from __future__ import annotations

import numpy as np

from ._validation import as_int
from .designs import Design, Layout

__all__ = ["WorldStrata", "world_strata"]


def world_strata(counts, K: int) -> list[np.ndarray]:
    r"""The strata each rank owns: for rank $s$, an int64 array of its $R_s K$ strata in draw order $i$."""
    counts = [as_int(f"counts[{s}]", c, minimum=1) for s, c in enumerate(counts)]
    if not counts:
        raise ValueError("counts must hold the row count of at least one rank")
    K = as_int("K", K, minimum=1)
    sizes = np.array(counts, dtype=np.int64) * K
    rank = np.repeat(np.arange(len(counts)), sizes)
    i = np.concatenate([np.arange(c) for c in sizes])
    key = (i + 0.5) / sizes[rank]
    order = np.lexsort((rank, key))  # position j in the sort = stratum j
    stratum = np.empty(order.size, dtype=np.int64)
    stratum[order] = np.arange(order.size)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    return [stratum[a:b] for a, b in zip(starts[:-1], starts[1:])]


class WorldStrata(Design):
    r"""Rank ``rank``'s share of one stratified draw over all ranks' $K\sum_s R_s$ draws.

    Args:
        counts: the row counts $(R_0, \dots, R_{W-1})$ of every rank, in rank order.
        rank: this process's rank $s$.

    Example:
        >>> WorldStrata((2, 2), rank=1).layout(2, 1).offset.ravel().tolist()
        [1, 3]
    """

    name = "world"

    def __init__(self, counts, rank: int):
        self.counts = tuple(as_int(f"counts[{s}]", c, minimum=1) for s, c in enumerate(counts))
        if not self.counts:
            raise ValueError("counts must hold the row count of at least one rank")
        self.rank = as_int("rank", rank, minimum=0)
        if self.rank >= len(self.counts):
            raise ValueError(f"rank must be < len(counts) = {len(self.counts)}, got {self.rank}")

    def layout(self, R, K):
        if R != self.counts[self.rank]:
            raise ValueError(f"R = {R} differs from counts[{self.rank}] = {self.counts[self.rank]}, "
                             f"this rank's row count")
        strata = world_strata(self.counts, K)[self.rank]
        i = np.arange(R * K)
        offset = np.empty((R, K), dtype=np.int64)
        offset[i % R, i // R] = strata
        ones = np.ones((R, K), dtype=np.int64)
        n = K * sum(self.counts)
        return Layout(np.arange(R * K).reshape(R, K), offset, ones, n * ones, R * K)
