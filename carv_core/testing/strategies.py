"""Hypothesis strategies for property-testing samplers and allocations.

Importing this module needs ``hypothesis`` (the ``dev`` extra); the rest of
:mod:`carv_core` does not.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

__all__ = ["pmfs", "proposals_for", "integrand_tables", "costs", "variance_components"]


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


def costs():
    """A positive cost (seconds or any unit)."""
    return st.floats(1e-3, 1e3)


def variance_components():
    """A non-negative variance component."""
    return st.floats(0.0, 1e3)
