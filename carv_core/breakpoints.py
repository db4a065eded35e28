r"""Monotone transforms as breakpoints: $t(u) = j$ on $[c_j, c_{j+1})$.

Over discrete $t$, a transform that is non-decreasing in $u$ is fixed by its
breakpoints $c_j = \inf\{u : t(u) \ge j\}$ and its weights $w(t)$. That makes
three things exact:

1. :func:`find_breakpoints` recovers them from any callable transform (bisection to
   adjacent float64 values);
2. :class:`BreakpointSampler` *is* a transform given by them, monotone by
   construction, which :mod:`carv_torch` runs with the same comparison on any device;
3. :func:`tabulate` turns a sampler into its breakpoint form: the object the exact
   kit certifies and the torch backend runs.

:func:`call_transform` enforces the sampler protocol and names the rule a
transform breaks (a scalar-only function, a dict, float timesteps).
"""

from __future__ import annotations

import numpy as np

from ._validation import as_float_array, as_int, as_unit_interval
from .designs import as_design
from .sampling import MonotoneSampler, TimestepDraw, draw_uniforms

__all__ = ["call_transform", "find_breakpoints", "weights_by_t", "BreakpointSampler", "tabulate"]


def call_transform(sampler, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sampler.transform(u)`` as ``(int64 t, float64 w)``, with an error naming any protocol rule broken.

    The rules: ``transform`` takes uniforms of *any* shape and returns a
    :class:`TimestepDraw` (or a ``(t, w)`` pair) of that shape, with integer
    timesteps (discrete $t$) and real weights.
    """
    name = type(sampler).__name__
    transform = getattr(sampler, "transform", None)
    if not callable(transform):
        raise TypeError(f"{name} has no transform(u) method; a sampler is a design plus a "
                        "transform(u) -> TimestepDraw")
    try:
        out = transform(u)
    except Exception as err:  # noqa: BLE001 - re-raised with the rule it broke
        raise TypeError(f"{name}.transform failed on uniforms of shape {u.shape}: {err!r}. "
                        "A transform must be vectorised: it takes an array of uniforms of any "
                        "shape, not a scalar") from err
    if isinstance(out, dict) or not isinstance(out, tuple) or len(out) != 2:
        raise TypeError(f"{name}.transform must return a TimestepDraw(t, w) (a pair), "
                        f"got {type(out).__name__}")
    t, w = np.asarray(out[0]), np.asarray(out[1])
    if t.shape != u.shape or w.shape != u.shape:
        raise ValueError(f"{name}.transform must be elementwise: u of shape {u.shape} gave "
                         f"t of shape {t.shape} and w of shape {w.shape}")
    if not (np.issubdtype(t.dtype, np.integer) or np.issubdtype(t.dtype, np.floating)):
        raise TypeError(f"{name}.transform must return integer timesteps, got dtype {t.dtype}")
    if np.issubdtype(t.dtype, np.floating):
        if np.any(t != np.round(t)):
            bad = t[t != np.round(t)].ravel()[0]
            raise ValueError(f"{name}.transform returned non-integer timestep {bad}: the exact law "
                             "needs discrete t (integer teacher steps); for continuous t use "
                             "continuous_from_uniforms and check it statistically")
    if not np.issubdtype(w.dtype, np.number) or np.iscomplexobj(w):
        raise TypeError(f"{name}.transform must return real weights, got dtype {w.dtype}")
    return t.astype(np.int64), w.astype(np.float64)


def find_breakpoints(sampler, n_timesteps: int) -> np.ndarray:
    r"""$c_0 = 0 \le c_1 \le \dots \le c_T = 1$ with $t(u) = j$ on $[c_j, c_{j+1})$, by bisection.

    Vectorised bisection on $t(u) \ge j$ down to adjacent float64 values; then checks,
    on a grid of probes and at both sides of every cut, that $t$ is non-decreasing,
    stays in $[0, T)$ and agrees with the cuts. For a transform that is not monotone
    by construction (:class:`MonotoneSampler`) that check is evidence, not proof:
    a non-monotone excursion between probes can pass. :func:`tabulate` removes the doubt
    by replacing the transform with these cuts.
    """
    T = as_int("n_timesteps", n_timesteps, minimum=1)
    top = np.nextafter(1.0, 0.0)
    j = np.arange(1, T)
    lo, hi = np.zeros(T - 1), np.full(T - 1, top)
    never = call_transform(sampler, hi)[0] < j  # t(u) >= j for no u in [0, 1)
    at_zero = call_transform(sampler, lo)[0] >= j  # c_j = 0: nothing to bisect
    # (Bisecting those would walk hi down through ~1075 halvings into the subnormals.)
    lo, hi = np.where(never, top, lo), np.where(at_zero, 0.0, hi)
    # Bisect until lo and hi are adjacent floats (a fixed 64 halvings would leave
    # small breakpoints, near 1e-4, several ulps too high).
    for _ in range(1100):
        open_ = np.nextafter(lo, 1.0) < hi
        if not open_.any():
            break
        mid = np.where(open_, lo + 0.5 * (hi - lo), hi)
        ge = call_transform(sampler, mid)[0] >= j
        hi, lo = np.where(ge, mid, hi), np.where(ge, lo, mid)
    c = np.where(never, 1.0, np.where(at_zero, 0.0, hi))
    cuts = np.concatenate([[0.0], c, [1.0]])
    inner = np.minimum(cuts[1:-1], top)
    grid = np.sort(np.concatenate([np.linspace(0.0, top, 16385), inner,
                                   np.maximum(np.nextafter(inner, 0.0), 0.0)]))
    t_grid = call_transform(sampler, grid)[0]
    if t_grid.min() < 0 or t_grid.max() >= T:
        raise ValueError(f"sampler.transform returned timesteps outside [0, {T}): "
                         f"[{t_grid.min()}, {t_grid.max()}]")
    if np.any(np.diff(t_grid) < 0):
        raise ValueError("sampler.transform is not non-decreasing in u; the exact law needs a "
                         "monotone (inverse-CDF type) transform")
    if not np.array_equal(np.searchsorted(cuts[1:-1], grid, side="right"), t_grid):
        raise ValueError("sampler.transform does not match its breakpoints; is it elementwise?")
    return cuts


def weights_by_t(sampler, cuts: np.ndarray) -> np.ndarray:
    """$w(t)$ for every $t$ with mass, read at three points of its cell (0 elsewhere); raises unless $w$ depends on $t$ alone."""
    T = cuts.size - 1
    w = np.zeros(T)
    has = cuts[1:] > cuts[:-1]
    if has.any():
        a, b = cuts[:-1][has], cuts[1:][has]
        probes = np.stack([a, 0.5 * (a + b), np.maximum(a, np.nextafter(b, 0.0))])
        wp = call_transform(sampler, probes)[1]
        if not np.all(wp == wp[1:2]):
            raise ValueError("sampler weights must be a function of t alone (got different "
                             "weights at the same timestep)")
        w[has] = wp[1]
    return w


class BreakpointSampler(MonotoneSampler):
    r"""A monotone transform given by its breakpoints: $t(u) = j$ on $[c_j, c_{j+1})$, $\tilde w = w_j$.

    ``t(u) = #{j >= 1 : c_j <= u}`` (``searchsorted(cuts[1:-1], u, side="right")``), so it
    is non-decreasing by construction, and the torch backend runs the same
    comparison on the device: the law the kit certifies is the law that runs.
    Subclass it to write a new transform in a few lines (compute ``cuts`` and
    ``weights`` in ``__init__``).

    Args:
        cuts: $0 = c_0 \le c_1 \le \dots \le c_T = 1$, shape ``(T + 1,)``.
        weights: $\tilde w_j$, shape ``(T,)``, finite.
        design: a :class:`~carv_core.designs.Design` or shorthand.

    Example:
        >>> s = BreakpointSampler([0.0, 0.5, 0.5, 1.0], [1.0, 9.0, 2.0], design="stratified")
        >>> s(R=1, K=2, rng=0).t.tolist()
        [[0, 2]]
    """

    def __init__(self, cuts, weights, design="iid"):
        cuts = as_float_array("cuts", cuts, ndim=1)
        if cuts.size < 2 or cuts[0] != 0.0 or cuts[-1] != 1.0 or np.any(np.diff(cuts) < 0):
            raise ValueError("cuts must be non-decreasing from cuts[0] = 0 to cuts[-1] = 1, "
                             f"got {cuts[:3]}...{cuts[-2:]}")
        weights = as_float_array("weights", weights, ndim=1)
        if weights.shape != (cuts.size - 1,):
            raise ValueError(f"weights must have shape ({cuts.size - 1},), one per timestep, "
                             f"got {weights.shape}")
        self.cuts, self.weights = cuts, weights
        self.design = as_design(design)

    @property
    def n_timesteps(self) -> int:
        """$T$."""
        return self.weights.size

    def transform(self, u) -> TimestepDraw:
        """$t = \\#\\{j \\ge 1 : c_j \\le u\\}$, $\\tilde w = w_t$."""
        t = np.searchsorted(self.cuts[1:-1], as_unit_interval("u", u), side="right")
        return TimestepDraw(t, self.weights[t])

    def __call__(self, R: int, K: int, rng=None) -> TimestepDraw:
        """Draw ``(R, K)`` timesteps and weights."""
        return self.transform(draw_uniforms(self.design, R, K, rng))

    def __repr__(self) -> str:
        return f"BreakpointSampler(T={self.n_timesteps}, design={self.design!r})"


def tabulate(sampler, n_timesteps: int) -> BreakpointSampler:
    r"""The :class:`BreakpointSampler` with ``sampler``'s design and its transform's breakpoints and $w(t)$.

    For a monotone transform this is the same law; the returned object is monotone
    by construction, which is what the exact kit certifies and what
    :func:`carv_torch.sampling.as_sampler` runs for any user transform.
    """
    if not hasattr(sampler, "design"):
        raise TypeError(f"sampler must be a sampler with a design and a transform (carv_core sampler "
                        f"protocol), got {type(sampler).__name__} without a design")
    cuts = find_breakpoints(sampler, n_timesteps)
    return BreakpointSampler(cuts, weights_by_t(sampler, cuts), as_design(sampler.design, "sampler.design"))
