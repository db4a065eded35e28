r"""Upstream (camera) designs: the law of the uniforms $U \in [0,1)^{R\times d}$ of a step's $R$ cameras.

The camera law of a text-to-3D run is a product of uniforms mapped affinely,
$\xi_j = a_j + (b_j - a_j)\,U_j$ for coordinates $j = 1, \dots, d$ (azimuth on $[0, 2\pi)$,
elevation on $[e_{\min}, e_{\max}]$, distance, light, ...): :func:`cameras_from_uniforms`
is that pure transform. The designs of :mod:`carv_core.designs` are laws on uniforms
too, so the same objects design the cameras; a step is **one row** of $R$ slots:

| function | $U_{rj}$ | randomised by |
|---|---|---|
| :func:`camera_uniforms` | coordinate $j$ is row 0 of ``designs[j].draw(1, R)``, coordinates independent | ``rng`` (each step afresh) |
| :func:`sequence_uniforms` | coordinate $j$: slots $(s \bmod P)R, \dots, (s \bmod P)R + R - 1$ of ``designs[j].draw(1, PR)`` | ``seed`` and the period $\lfloor s/P\rfloor$ |
| :func:`sobol_sequence` | points $sR, \dots, sR + R - 1$ of one scrambled $d$-dimensional Sobol sequence | ``seed`` (once per run) |

With :class:`~carv_core.PermutedStrata` on azimuth, a step's $R$ azimuths cover the
$R$ strata $[i/R, (i+1)/R)$ once each (threestudio's ``batch_uniform_azimuth``, with the
jitter and order randomised); on every coordinate it is a Latin hypercube. With
:class:`AntipodalPairs`, cameras $2m$ and $2m+1$ look from azimuths $\varphi$ and $\varphi + \pi$.
Across steps (:func:`sequence_uniforms`), the $P$ steps of a period share one stratified
(or scrambled van der Corput) draw of $PR$ points, so their azimuths interleave.

**Unbiasedness.** Every design here gives each camera the marginal law $p(\xi)$: an
unshuffled slot is uniform on its stratum and the uniform random order of
:class:`~carv_core.PermutedStrata` / :class:`AntipodalPairs` (``shuffle_rows``) mixes the
strata with equal weights; scrambled Sobol points are each uniform. So
$\frac1R\sum_r J_r^\top g(\xi_r)$ is unbiased for every design (docs: maths/upstream).
The rows of a step are **not** independent, so their sample variance no longer
estimates the estimator's variance: use independent replicates
(:func:`carv_torch.control_variates.replicated_components`).
"""

from __future__ import annotations

import numpy as np

from ._validation import as_float_array, as_int, as_unit_interval, rng_from
from .designs import Design, Layout, as_design

__all__ = ["AntipodalPairs", "camera_uniforms", "sequence_uniforms", "sobol_sequence",
           "cameras_from_uniforms"]


class AntipodalPairs(Design):
    r"""Pairs of slots half a turn apart: $u_{2m} = \xi_m/2$, $u_{2m+1} = (1 + \xi_m)/2$, order shuffled.

    On azimuth ($\varphi = 2\pi u$) the two cameras of a pair look from $\varphi$ and
    $\varphi + \pi$. The row's slots are permuted uniformly at random (``shuffle_rows``),
    so every slot is exactly $U[0, 1)$ and every pair stays half a turn apart (a pair's
    set $\{\xi/2, (1 + \xi)/2\}$ is $\{v, v + \tfrac12 \bmod 1\}$ with $v$ uniform).
    Needs an even number of slots per row. (:class:`~carv_core.Antithetic` is the mirror
    pair $u$, $1 - u$: azimuths $\varphi$ and $-\varphi$.)

    Example:
        >>> AntipodalPairs().layout(1, 4).offset.tolist()
        [[0, 1, 0, 1]]
    """

    name = "antipodal"

    def layout(self, R, K):
        if K % 2:
            raise ValueError(f"K must be even for antipodal pairs (slots per row), got K = {K}")
        r, k = np.meshgrid(np.arange(R), np.arange(K), indexing="ij")
        block = (r * (K // 2) + k // 2).astype(np.int64)
        ones = np.ones((R, K), dtype=np.int64)
        return Layout(block, (k % 2).astype(np.int64), ones, 2 * ones, R * (K // 2), True)


def _designs(designs) -> tuple[Design, ...]:
    if isinstance(designs, (str, Design)):
        designs = (designs,)
    try:
        designs = tuple(designs)
    except TypeError:
        raise TypeError(f"designs must be a sequence of carv_core.Design objects or shorthand "
                        f"names, one per camera coordinate, got {type(designs).__name__}") from None
    if not designs:
        raise ValueError("designs must name at least one camera coordinate, got an empty sequence")
    return tuple(as_design(g, f"designs[{j}]") for j, g in enumerate(designs))


def _check_seed(seed) -> np.random.SeedSequence:
    # The run's randomisation: an int or a SeedSequence, never an advancing Generator (the
    # steps of a period, or of a Sobol run, must all see the same scramble).
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TypeError(f"seed must be a non-negative int or a numpy SeedSequence (the run's "
                        f"randomisation, the same at every step), got {seed!r}")
    return np.random.SeedSequence(int(seed))


def camera_uniforms(designs, R: int, rng=None) -> np.ndarray:
    r"""One step's camera uniforms $U$, shape ``(R, d)``: coordinate $j$ drawn by ``designs[j]``.

    Coordinate $j$ is row 0 of ``designs[j].draw(1, R)``, from the $j$-th child of
    ``rng.spawn(d)``, so coordinates are independent and adding one leaves the others
    unchanged.

    Args:
        designs: one :class:`~carv_core.Design` (or shorthand) per coordinate, e.g.
            ``(PermutedStrata(), "iid")`` for stratified azimuth, i.i.d. elevation.
        R: cameras in the step.
        rng: numpy ``Generator``, seed or ``None``.

    Example:
        >>> from carv_core import PermutedStrata
        >>> u = camera_uniforms((PermutedStrata(), "iid"), 4, rng=0)
        >>> sorted(np.floor(4 * u[:, 0]).astype(int).tolist())
        [0, 1, 2, 3]
    """
    designs = _designs(designs)
    R = as_int("R", R, minimum=1)
    streams = rng_from(rng).spawn(len(designs))
    return np.stack([g.draw(1, R, s)[0] for g, s in zip(designs, streams)], axis=1)


def sequence_uniforms(designs, R: int, step: int, period: int, seed) -> np.ndarray:
    r"""Step $s$'s camera uniforms, shape ``(R, d)``, from one draw per period of $P$ steps.

    Period $p = \lfloor s/P\rfloor$ draws coordinate $j$ as ``designs[j].draw(1, P R)`` from
    the stream ``SeedSequence(seed).spawn``-ed at key $p$ (child $j$); step $s$ takes the
    slots $(s \bmod P)R, \dots, (s \bmod P)R + R - 1$. With
    :class:`~carv_core.PermutedStrata`, the $PR$ azimuths of a period cover $PR$ strata once
    each (each camera still marginally uniform); with :class:`~carv_core.Sobol` they are a
    scrambled van der Corput sequence, balanced over every aligned block of $2^m$ slots.
    Pure: the same ``(step, seed)`` always gives the same cameras, so a resumed run
    continues the sequence.

    Args:
        designs: one design (or shorthand) per coordinate.
        R: cameras per step.
        step: $s \ge 0$.
        period: $P \ge 1$ steps per draw ($P = 1$: independent steps).
        seed: the run's randomisation, an int or ``SeedSequence`` (the same at every step).

    Example:
        >>> from carv_core import PermutedStrata
        >>> az = [sequence_uniforms((PermutedStrata(),), 1, s, 4, seed=0)[0, 0] for s in range(4)]
        >>> sorted(np.floor(4 * np.array(az)).astype(int).tolist())
        [0, 1, 2, 3]
    """
    designs = _designs(designs)
    R = as_int("R", R, minimum=1)
    step = as_int("step", step, minimum=0)
    period = as_int("period", period, minimum=1)
    root = _check_seed(seed)
    block = np.random.SeedSequence(root.entropy, spawn_key=root.spawn_key + (step // period,))
    streams = [np.random.default_rng(c) for c in block.spawn(len(designs))]
    a = (step % period) * R
    return np.stack([g.draw(1, period * R, s)[0, a:a + R] for g, s in zip(designs, streams)], axis=1)


def sobol_sequence(d: int, R: int, step: int, seed) -> np.ndarray:
    r"""Points $sR, \dots, sR + R - 1$ of one scrambled $d$-dimensional Sobol sequence, shape ``(R, d)``.

    ``scipy.stats.qmc.Sobol(d, scramble=True)`` (linear matrix scramble and digital
    shift: each point is uniform on $[0,1)^d$, so every camera has the law $p$) seeded by
    ``seed``; the run's steps walk along one sequence, so any $2^m$ consecutive aligned
    points (e.g. $2^m/R$ steps) form a $(t, m, d)$-net. For independent randomised QMC per
    step, pass a fresh seed each step with ``step=0``. Use $R$ a power of 2.

    Example:
        >>> u = np.concatenate([sobol_sequence(2, 2, s, seed=0) for s in range(4)])
        >>> sorted(np.floor(8 * u[:, 0]).astype(int).tolist())
        [0, 1, 2, 3, 4, 5, 6, 7]
    """
    from scipy.stats import qmc

    d = as_int("d", d, minimum=1)
    R = as_int("R", R, minimum=1)
    step = as_int("step", step, minimum=0)
    engine = qmc.Sobol(d, scramble=True, rng=np.random.default_rng(_check_seed(seed)))
    if step:  # scipy's fast_forward(0) overflows
        engine.fast_forward(step * R)
    return np.minimum(engine.random(R), np.nextafter(1.0, 0.0))


def cameras_from_uniforms(u, low, high) -> np.ndarray:
    r"""The pure transform $\xi_{rj} = a_j + (b_j - a_j)\,U_{rj}$, shape ``(R, d)``.

    Args:
        u: camera uniforms in $[0, 1)$, shape ``(R, d)``.
        low, high: $a_j < b_j$ per coordinate, shape ``(d,)`` (e.g. azimuth ``(0, 2 pi)``,
            elevation ``(e_min, e_max)``, distance ``(r, r)`` for a fixed radius: $a_j = b_j$
            is allowed and gives the constant).

    Example:
        >>> cameras_from_uniforms([[0.5, 0.25]], [0.0, -1.0], [2.0, 1.0]).tolist()
        [[1.0, -0.5]]
    """
    u = as_unit_interval("u", u)
    if u.ndim != 2:
        raise ValueError(f"u must have shape (R, d), got {u.shape}")
    a, b = as_float_array("low", low, ndim=1), as_float_array("high", high, ndim=1)
    d = u.shape[1]
    if a.shape != (d,) or b.shape != (d,):
        raise ValueError(f"low and high must have shape (d,) = ({d},) like u's columns, got "
                         f"{a.shape} and {b.shape}")
    if np.any(b < a):
        j = int(np.flatnonzero(b < a)[0])
        raise ValueError(f"high must be >= low per coordinate, got low[{j}] = {a[j]} > high[{j}] = {b[j]}")
    return a + (b - a) * u
