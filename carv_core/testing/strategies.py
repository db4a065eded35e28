"""Hypothesis strategies for property-testing samplers and allocations.

Importing this module needs ``hypothesis`` (the ``dev`` extra); the rest of
:mod:`carv_core` does not.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from ..designs import IID, Antithetic, Design, GlobalStrata, Layout, PermutedStrata, Stratified, Systematic

__all__ = ["pmfs", "proposals_for", "integrand_tables", "designs", "LayoutDesign", "layouts",
           "costs", "variance_components"]


@st.composite
def pmfs(draw, min_size: int = 1, max_size: int = 12, allow_zeros: bool = True, size: int | None = None):
    """A pmf as a float64 array: non-negative, sums to 1, some entries possibly zero."""
    n = size if size is not None else draw(st.integers(min_size, max_size))
    lo = 0.0 if allow_zeros else 0.05
    raw = np.array(draw(st.lists(st.one_of(st.just(lo), st.floats(0.05, 10.0)) if allow_zeros
                                 else st.floats(lo, 10.0), min_size=n, max_size=n)))
    if raw.sum() == 0:
        raw[draw(st.integers(0, n - 1))] = 1.0
    return raw / raw.sum()


@st.composite
def proposals_for(draw, p):
    """A proposal ``q`` with ``q > 0`` wherever ``p > 0`` (and possibly elsewhere)."""
    q = draw(pmfs(size=p.size, allow_zeros=True))
    q = np.where(p > 0, np.maximum(q, 0.05 / p.size), q)
    return q / q.sum()


@st.composite
def integrand_tables(draw, n_timesteps: int, max_rows: int = 4, max_dim: int = 2):
    """An integrand table ``f(xi, t)`` of shape ``(X, T, D)`` with bounded entries."""
    X = draw(st.integers(1, max_rows))
    D = draw(st.integers(1, max_dim))
    vals = draw(st.lists(st.floats(-10.0, 10.0), min_size=X * n_timesteps * D,
                         max_size=X * n_timesteps * D))
    return np.array(vals).reshape(X, n_timesteps, D)


def designs(K: int):
    """A built-in affine design valid for ``K`` inner draws (the antithetic ones need even ``K``)."""
    options = [IID(), Stratified(), GlobalStrata(), Systematic(), PermutedStrata()]
    if K % 2 == 0:
        options += [Antithetic(), Antithetic(stratified=True)]
    return st.sampled_from(options)


class LayoutDesign(Design):
    """A user design given by one fixed :class:`~carv_core.designs.Layout` (for one ``(R, K)``)."""

    name = "layout"

    def __init__(self, layout: Layout):
        self.fixed = layout

    def layout(self, R, K):
        if self.fixed.block.shape != (R, K):
            raise ValueError(f"this LayoutDesign is for (R, K) = {self.fixed.block.shape}, got ({R}, {K})")
        return self.fixed

    def __repr__(self):
        return f"LayoutDesign(n_blocks={self.fixed.n_blocks}, shape={self.fixed.block.shape})"

    def __eq__(self, other):
        return self is other

    __hash__ = object.__hash__


@st.composite
def layouts(draw, R: int, K: int, max_denom: int = 4):
    """A random valid user design for ``(R, K)``: shared jitters (also across rows), mirrored slots, any strata.

    Such a design is generally *biased* (its strata need not cover $[0, 1)$ evenly); it
    exercises the exact law, not unbiasedness.
    """
    n = R * K
    n_blocks = draw(st.integers(1, n))
    block = np.array(draw(st.lists(st.integers(0, n_blocks - 1), min_size=n, max_size=n)))
    block[:n_blocks] = np.arange(n_blocks)  # every jitter is read at least once
    denom = np.array(draw(st.lists(st.integers(1, max_denom), min_size=n, max_size=n)))
    sign = np.array(draw(st.lists(st.sampled_from([1, -1]), min_size=n, max_size=n)))
    pos = np.array([draw(st.integers(0, int(dd) - 1)) for dd in denom])  # the stratum
    offset = np.where(sign > 0, pos, pos + 1)
    shape = (R, K)
    return LayoutDesign(Layout(block.reshape(shape), offset.reshape(shape).astype(np.int64),
                               sign.reshape(shape).astype(np.int64), denom.reshape(shape).astype(np.int64),
                               n_blocks))


def costs():
    """A positive cost (seconds or any unit)."""
    return st.floats(1e-3, 1e3)


def variance_components():
    """A non-negative variance component."""
    return st.floats(0.0, 1e3)
