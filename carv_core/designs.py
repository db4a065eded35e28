r"""Uniform designs: the joint law of the uniforms $u \in [0,1)^{R\times K}$ a sampler transforms.

A design is an object. Every design here except :class:`Sobol` is *affine*: it
draws independent jitters $\xi_b \sim U[0,1)$, $b = 0, \dots, n-1$, and sets

$$ u_{rk} = \frac{o_{rk} + s_{rk}\,\xi_{\beta(r,k)}}{d_{rk}}, \qquad s_{rk} \in \{+1, -1\}, $$

so slot $(r,k)$ is uniform on an interval of width $1/d_{rk}$, and slots that share
a jitter ($\beta(r,k) = \beta(r',k')$) move together. The integers
$(\beta, o, s, d)$ are the design's :class:`Layout`. The layout is the whole law:
numpy (:meth:`Design.draw`), torch (:func:`carv_torch.sampling.draw_uniforms`) and the
exact test kit (:mod:`carv_core.testing`) all read it, so the law the kit
certifies is the law every backend draws. Optionally, ``shuffle_rows`` permutes the
$K$ slots of each row uniformly at random; an estimator that averages a row
(every one in this library) has the same law with or without it.

| design | layout ($\xi$ shared by) | $u_{rk}$ |
|---|---|---|
| :class:`IID` (``"iid"``) | own | $\xi_{rk}$ |
| :class:`Stratified` (``"stratified"``) | own | $(k + \xi_{rk})/K$ |
| :class:`GlobalStrata` (``"global"``) | own | $(rK + k + \xi_{rk})/(RK)$ |
| :class:`Systematic` (``"systematic"``) | row | $(k + \xi_r)/K$ |
| :class:`Antithetic` (``"antithetic"``) | pair $(2m, 2m+1)$ | $\xi$, $1 - \xi$ (``stratified=True``: $(m + \xi)/M$, $(M - m - \xi)/M$, $M = K/2$) |
| :class:`PermutedStrata` (``"permuted"``) | own | $(\pi_r(k) + \xi_{rk})/K$, $\pi_r$ a uniform permutation |
| :class:`Sobol` (``"sobol"``) | not affine | $K$ points of a scrambled (linear matrix scramble + digital shift) Sobol sequence per row (randomized QMC) |

A **user design** subclasses :class:`Design` and implements :meth:`Design.layout`
(see the guide *Property-testing a sampler*). Names are shorthands:
:func:`as_design` turns ``"stratified"`` into ``Stratified()``.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

from ._validation import as_float_array, as_int, rng_from

__all__ = [
    "Layout",
    "Design",
    "IID",
    "Stratified",
    "GlobalStrata",
    "Systematic",
    "Antithetic",
    "PermutedStrata",
    "Sobol",
    "DESIGNS",
    "as_design",
    "apply_layout",
]

_BELOW_ONE = float(np.nextafter(1.0, 0.0))
_SOBOL_BITS = 53  # digits of the scrambled Sobol points: the float64 grid of Generator.random


class Layout(NamedTuple):
    r"""$u_{rk} = (o_{rk} + s_{rk}\,\xi_{\beta(r,k)})/d_{rk}$: integer arrays of shape ``(R, K)``.

    Attributes:
        block: $\beta$, the jitter each slot reads, in ``[0, n_blocks)``.
        offset: $o$; ``0 <= o < d`` where $s = +1$, ``1 <= o <= d`` where $s = -1$.
        sign: $s \in \{+1, -1\}$.
        denom: $d \ge 1$.
        n_blocks: $n$, the number of independent jitters drawn.
        shuffle_rows: permute each row's slots uniformly at random after forming $u$.
    """

    block: np.ndarray
    offset: np.ndarray
    sign: np.ndarray
    denom: np.ndarray
    n_blocks: int
    shuffle_rows: bool = False

    def interval(self) -> tuple[np.ndarray, np.ndarray]:
        r"""Each slot's support $[a, b)$ (up to its end points), arrays of shape ``(R, K)``."""
        lo = np.where(self.sign > 0, self.offset, self.offset - 1) / self.denom
        return lo, lo + 1.0 / self.denom


def _check_layout(layout, R: int, K: int, owner: str, where: str | None = None) -> Layout:
    # The rules of Layout, each named in its error: a user design gets told which it broke.
    if not isinstance(layout, Layout):
        raise TypeError(f"{owner}.layout(R, K) must return a carv_core.designs.Layout, "
                        f"got {type(layout).__name__}")
    call = f"{owner}.layout({R}, {K})" if where is None else where
    rules = f"{owner}.layout" if where is None else where
    arrays = {}
    for name in ("block", "offset", "sign", "denom"):
        a = np.asarray(getattr(layout, name))
        if a.shape != (R, K) or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{call}.{name} must be an integer array of shape "
                             f"({R}, {K}), got {a.dtype} {a.shape}")
        arrays[name] = a.astype(np.int64)
    n = layout.n_blocks
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{call}.n_blocks must be an integer >= 1, got {n!r}")
    if not isinstance(layout.shuffle_rows, (bool, np.bool_)):
        raise TypeError(f"{call}.shuffle_rows must be True or False, got {layout.shuffle_rows!r}")
    b, o, s, d = arrays["block"], arrays["offset"], arrays["sign"], arrays["denom"]
    if b.min() < 0 or b.max() >= n:
        raise ValueError(f"{rules}: block must lie in [0, n_blocks = {n}), got [{b.min()}, {b.max()}]")
    if not np.all(np.abs(s) == 1):
        raise ValueError(f"{rules}: sign must be +1 or -1, got {np.unique(s).tolist()}")
    if d.min() < 1:
        raise ValueError(f"{rules}: denom must be >= 1, got {d.min()}")
    lo = np.where(s > 0, o, o - 1)
    if lo.min() < 0 or np.any(lo > d - 1):
        raise ValueError(f"{rules}: offset must keep u in [0, 1): need 0 <= offset < denom "
                         "where sign = +1 and 1 <= offset <= denom where sign = -1")
    return Layout(b, o, s, d, int(n), bool(layout.shuffle_rows))


def _apply_layout(layout: Layout, xi: np.ndarray, perm_keys: np.ndarray | None) -> np.ndarray:
    u = (layout.offset + layout.sign * xi[layout.block]) / layout.denom
    u = np.clip(u, 0.0, _BELOW_ONE)
    if layout.shuffle_rows:
        u = np.take_along_axis(u, np.argsort(perm_keys, axis=1, kind="stable"), axis=1)
    return u


def apply_layout(layout: Layout, xi, perm_keys=None) -> np.ndarray:
    r"""$u_{rk} = (o_{rk} + s_{rk}\xi_{\beta(r,k)})/d_{rk}$, clamped below 1; then the optional row shuffle.

    Args:
        layout: a :class:`Layout` of shape ``(R, K)`` (checked against its rules).
        xi: the jitters $\xi_b \in [0, 1)$ (1 is clamped like the rest), shape ``(n_blocks,)``.
        perm_keys: i.i.d. uniforms of shape ``(R, K)`` whose row ``argsort`` is the row
            permutation; required when ``layout.shuffle_rows`` is set, ignored otherwise.

    Example:
        >>> apply_layout(Stratified().layout(1, 2), [0.5, 0.5]).tolist()
        [[0.25, 0.75]]
    """
    if not isinstance(layout, Layout):
        raise TypeError(f"layout must be a carv_core.designs.Layout, got {type(layout).__name__}")
    shape = np.shape(layout.block)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"layout.block must have shape (R, K) with R, K >= 1, got {shape}")
    layout = _check_layout(layout, *shape, "Layout", where="layout")
    xi = as_float_array("xi", xi)
    if xi.min() < 0.0 or xi.max() > 1.0:  # xi = 1 is tolerated: u is clamped below 1 anyway
        raise ValueError(f"xi must lie in [0, 1], got values in [{xi.min()}, {xi.max()}]")
    if xi.shape != (layout.n_blocks,):
        raise ValueError(f"xi must have shape (n_blocks,) = ({layout.n_blocks},), got {xi.shape}")
    if layout.shuffle_rows:
        if perm_keys is None:
            raise ValueError("perm_keys (uniforms of shape (R, K)) are required: "
                             "layout.shuffle_rows is set")
        perm_keys = as_float_array("perm_keys", perm_keys)
        if perm_keys.shape != shape:
            raise ValueError(f"perm_keys must have shape (R, K) = {shape}, got {perm_keys.shape}")
    return _apply_layout(layout, xi, perm_keys)


class Design:
    r"""Base class of uniform designs: implement :meth:`layout` (affine) or :meth:`draw`.

    Subclasses set ``name``. An affine design needs only :meth:`layout`; drawing,
    the torch backend and the exact test kit then work unchanged. A non-affine
    design (e.g. :class:`Sobol`) overrides :meth:`draw` and sets ``affine = False``;
    the kit cannot enumerate it and says so.
    """

    name: str = "design"
    affine: bool = True

    def layout(self, R: int, K: int) -> Layout:
        """The :class:`Layout` of an ``(R, K)`` draw."""
        raise NotImplementedError(f"{type(self).__name__} must implement layout(R, K) "
                                  "(affine designs) or override draw() and set affine = False")

    def checked_layout(self, R: int, K: int) -> Layout:
        """:meth:`layout`, validated against the rules of :class:`Layout`."""
        R, K = as_int("R", R, minimum=1), as_int("K", K, minimum=1)
        return _check_layout(self.layout(R, K), R, K, type(self).__name__)

    def draw(self, R: int, K: int, rng=None) -> np.ndarray:
        """Draw $u$ of shape ``(R, K)``: first the jitters, then (if shuffled) the permutation keys."""
        layout = self.checked_layout(R, K)
        rng = rng_from(rng)
        xi = rng.random(layout.n_blocks)
        keys = rng.random((R, K)) if layout.shuffle_rows else None
        return _apply_layout(layout, xi, keys)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(vars(self).items()))))


def _grid(R: int, K: int):
    r, k = np.meshgrid(np.arange(R), np.arange(K), indexing="ij")
    return r, k


def _own(R: int, K: int, offset: np.ndarray, denom: int, shuffle: bool = False) -> Layout:
    ones = np.ones((R, K), dtype=np.int64)
    return Layout(np.arange(R * K).reshape(R, K), offset.astype(np.int64), ones, denom * ones,
                  R * K, shuffle)


class IID(Design):
    r"""$u_{rk} = \xi_{rk}$, all independent."""

    name = "iid"

    def layout(self, R, K):
        return _own(R, K, np.zeros((R, K)), 1)


class Stratified(Design):
    r"""$u_{rk} = (k + \xi_{rk})/K$: one jittered point per equal-mass stratum, per row."""

    name = "stratified"

    def layout(self, R, K):
        return _own(R, K, _grid(R, K)[1], K)


class PermutedStrata(Design):
    r"""$u_{rk} = (\pi_r(k) + \xi_{rk})/K$ with $\pi_r$ uniform: a one-dimensional Latin hypercube.

    Slot $k$ no longer sits in stratum $k$ (useful when slots are paired with
    something else, e.g. antithetic noise along $K$); a row's set of uniforms has the
    law of :class:`Stratified`.
    """

    name = "permuted"

    def layout(self, R, K):
        return _own(R, K, _grid(R, K)[1], K, shuffle=True)


class GlobalStrata(Design):
    r"""$u_{rk} = (rK + k + \xi_{rk})/(RK)$: strata across the whole batch (use when $K = 1$).

    Only the batch mean is unbiased: row $r$ sees only its block of strata.
    """

    name = "global"

    def layout(self, R, K):
        r, k = _grid(R, K)
        return _own(R, K, r * K + k, R * K)


class Systematic(Design):
    r"""$u_{rk} = (k + \xi_r)/K$: one shared shift per row."""

    name = "systematic"

    def layout(self, R, K):
        r, k = _grid(R, K)
        ones = np.ones((R, K), dtype=np.int64)
        return Layout(r.astype(np.int64), k.astype(np.int64), ones, K * ones, R)


class Antithetic(Design):
    r"""Antithetic uniform pairs along $K$ (even $K$): slots $2m$, $2m+1$ share one $\xi$.

    ``stratified=False``: $(\xi, 1 - \xi)$ for every pair. ``stratified=True``: pair $m$
    of $M = K/2$ takes $(m + \xi)/M \cdot \tfrac12$ and its mirror $1 - (m + \xi)/(2M)$, so
    the $K$ points cover the $K$ equal strata once each.
    """

    name = "antithetic"

    def __init__(self, stratified: bool = False):
        if not isinstance(stratified, (bool, np.bool_)):
            raise TypeError(f"stratified must be True or False, got {stratified!r}")
        self.stratified = bool(stratified)

    def layout(self, R, K):
        if K % 2:
            raise ValueError(f"K must be even for antithetic pairs, got K = {K}")
        r, k = _grid(R, K)
        m, second = k // 2, k % 2
        block = (r * (K // 2) + m).astype(np.int64)
        sign = np.where(second == 1, -1, 1).astype(np.int64)
        if self.stratified:
            # first: (m + xi)/K in stratum m; second: (K - m - xi)/K in stratum K-1-m.
            offset, denom = np.where(second == 1, K - m, m), K
        else:
            offset, denom = second, 1
        return Layout(block, offset.astype(np.int64), sign, np.full((R, K), denom, dtype=np.int64),
                      R * (K // 2))


class Sobol(Design):
    r"""$K$ points of a scrambled one-dimensional Sobol sequence per row (randomized QMC).

    Row $r$ is the first $K$ points of the base-2 van der Corput sequence (the Sobol
    sequence in one dimension), $x_i = \sum_{j \ge 0} a_j(i)\,2^{-j-1}$ for the binary
    digits $a_j(i)$ of $i$, randomised as scipy's ``qmc.Sobol(scramble=True)`` does, by a
    *linear matrix scramble plus a random digital shift* on $b = 53$ digits:
    $y_i = M_r\,x_i \oplus D_r$, $u_{ri} = y_i\,2^{-53}$, with $M_r$ a uniformly random
    lower-triangular binary matrix with unit diagonal and $D_r$ a uniform 53-bit integer,
    independent across rows. Hence:

    - each $u_{ri}$ is exactly uniform on the 53-bit grid $\{0, 2^{-53}, \dots, 1 - 2^{-53}\}$
      (the law of ``Generator.random``): $\oplus D_r$ with uniform $D_r$ makes it so,
      whatever $M_r$ is; so the design is unbiased;
    - the net property survives: $M_r$ is invertible on the leading $m$ digits and
      $\oplus D_r$ permutes them, so for $K = 2^m$ each interval $[j/K, (j+1)/K)$ holds
      exactly one point of each row;
    - rows are independent.

    All rows are drawn at once (vectorised; $R = 10^5$, $K = 16$ takes milliseconds).
    Not affine: the exact kit cannot enumerate it (check it statistically).
    """

    name = "sobol"
    affine = False

    def layout(self, R, K):
        raise NotImplementedError("the Sobol design is not affine; it has no Layout")

    def draw(self, R, K, rng=None):
        R, K = as_int("R", R, minimum=1), as_int("K", K, minimum=1)
        warn_sobol_length(K)
        rng = rng_from(rng)
        m = max(K - 1, 0).bit_length()  # digits used by the indices 0..K-1
        if m > _SOBOL_BITS:
            raise ValueError(f"K must be <= 2**{_SOBOL_BITS} for a {_SOBOL_BITS}-digit Sobol design, got {K}")
        # 1. Column j of M_r (digit j of x feeds digits j, j+1, ...): bit (b-1-j) set,
        #    uniform bits below it. Only the columns of the m leading digits are needed.
        top = np.uint64(1) << (np.uint64(_SOBOL_BITS - 1) - np.arange(m, dtype=np.uint64))
        low = rng.integers(0, 1 << _SOBOL_BITS, size=(R, m), dtype=np.uint64)
        cols = top | (low & (top - np.uint64(1)))
        shift = rng.integers(0, 1 << _SOBOL_BITS, size=(R, 1), dtype=np.uint64)
        # 2. y_i = M_r x_i xor D_r: x_i has digit j equal to bit j of i, so M_r x_i is the
        #    xor of the columns j over the set bits of i.
        i = np.arange(K, dtype=np.uint64)
        y = np.broadcast_to(shift, (R, K)).copy()
        for j in range(m):
            y ^= np.where((i >> np.uint64(j)) & np.uint64(1), cols[:, j:j + 1], np.uint64(0))
        # 3. y < 2**53, so y * 2**-53 is exact and < 1.
        return np.ldexp(y.astype(np.float64), -_SOBOL_BITS)


def warn_sobol_length(K: int) -> None:
    """Warn that a Sobol prefix of non-power-of-2 length loses its balance."""
    if K & (K - 1):
        warnings.warn(
            f"K = {K} is not a power of 2: a scrambled Sobol prefix of that length loses "
            "its balance properties (scipy.stats.qmc). Prefer K in {1, 2, 4, 8, ...}.",
            UserWarning,
            stacklevel=3,
        )


_SHORTHANDS = {cls.name: cls for cls in (IID, Stratified, GlobalStrata, Systematic, Sobol,
                                          Antithetic, PermutedStrata)}

#: The shorthand names :func:`as_design` accepts.
DESIGNS = tuple(_SHORTHANDS)


def as_design(design, name: str = "design") -> Design:
    """A :class:`Design` from a design object or a shorthand name in :data:`DESIGNS`.

    Example:
        >>> as_design("stratified")
        Stratified()
    """
    if isinstance(design, Design):
        return design
    if isinstance(design, str):
        if design not in _SHORTHANDS:
            raise ValueError(f"{name} must be one of {DESIGNS} or a carv_core.designs.Design, "
                             f"got {design!r}")
        return _SHORTHANDS[design]()
    if callable(getattr(design, "layout", None)):
        raise TypeError(f"{name} has a layout() but is not a carv_core.designs.Design subclass "
                        f"({type(design).__name__}); subclass Design so every backend accepts it")
    raise TypeError(f"{name} must be one of {DESIGNS} or a carv_core.designs.Design, "
                    f"got {type(design).__name__}")
