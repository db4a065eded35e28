r"""Checks of the sampler protocol that the exact law rests on.

The law :func:`~carv_core.testing.exact_law` computes is that of the *breakpoint
form* $t(u) = \#\{j \ge 1 : c_j \le u\}$, $\tilde w = w_t$. It is the law of the sampler
when the transform is

1. **pure and elementwise**: the output at one entry depends on that uniform alone.
   :func:`check_elementwise` tests this by perturbation (change other entries of a
   batch, compare the unchanged ones bit for bit) on batches of several shapes, and
   by calling entries one at a time. A batch statistic such as ``w / w.mean()``
   fails it;
2. **non-decreasing in u, with weights a function of t**: :func:`check_breakpoint_form`
   compares the transform with its breakpoint form at $2^{16}$ irregular probes plus
   both sides of every cut. For an arbitrary float function this is evidence, not a
   proof (an excursion between probes passes); only a
   :class:`~carv_core.sampling.MonotoneSampler` is monotone by construction, and
   :func:`carv_core.tabulate` turns any sampler into one with exactly the law the kit
   computed.
"""

from __future__ import annotations

import numpy as np

from ..breakpoints import call_transform

__all__ = ["PROBE_SHAPES", "check_elementwise", "check_breakpoint_form"]

#: Batch shapes :func:`check_elementwise` calls the transform with: 1-D, ``(R, K)``-like, 3-D.
PROBE_SHAPES = ((12,), (3, 4), (2, 3, 2))

_PHI = (np.sqrt(5.0) - 1.0) / 2.0
_N_PROBES = 2**16


def _golden(n: int, start: int = 0) -> np.ndarray:
    # Deterministic, irregular points of [0, 1): they align with no grid of cuts.
    return np.mod(0.5 + _PHI * np.arange(start, start + n), 1.0)


def _differs(a, b) -> np.ndarray:
    # Where two (t, w) outputs differ, bit for bit (a NaN weight equals a NaN weight).
    same_w = (a[1] == b[1]) | (np.isnan(a[1]) & np.isnan(b[1]))
    return (a[0] != b[0]) | ~same_w


def _first_change(name, before, after, u, mask, shape):
    i = tuple(int(x) for x in np.argwhere(_differs(before, after) & ~mask)[0])
    return ValueError(
        f"{name}.transform is not elementwise: in a batch of shape {shape}, the output for "
        f"u{list(i)} = {float(u[i])!r} changed (t {before[0][i]} -> {after[0][i]}, w "
        f"{float(before[1][i])!r} -> {float(after[1][i])!r}) when other entries of the batch "
        "changed. A transform must map each uniform on its own: a statistic of the batch "
        "(w / w.mean(), a sort, a rank) makes the law depend on R and K and biases the estimator")


def check_elementwise(sampler) -> None:
    r"""Raise ``ValueError`` unless $(t, \tilde w)_i$ depends on $u_i$ alone, and identically on every call.

    For each shape in :data:`PROBE_SHAPES`: call twice on the same batch (purity),
    change every other entry and then the complementary half (the unchanged
    entries must give bit-identical $t$ and $\tilde w$), flatten the batch (same
    outputs), and call each entry as a batch of one.

    Example:
        >>> import numpy as np
        >>> from carv_core import TimestepDraw
        >>> class SelfNormalised:
        ...     design = "iid"
        ...     def transform(self, u):
        ...         t = np.floor(np.asarray(u) * 4).astype(int)
        ...         w = 1.0 + t
        ...         return TimestepDraw(t, w / w.mean())
        >>> check_elementwise(SelfNormalised())
        Traceback (most recent call last):
        ...
        ValueError: SelfNormalised.transform is not elementwise: ...
    """
    name = type(sampler).__name__
    n = int(np.prod(PROBE_SHAPES[0]))  # every probe shape holds the same n = 12 uniforms
    base, other = _golden(n), _golden(n, start=n)
    for shape in PROBE_SHAPES:
        u = base.reshape(shape)
        ref = call_transform(sampler, u.copy())
        if _differs(ref, call_transform(sampler, u.copy())).any():
            raise ValueError(f"{name}.transform is not pure: two calls on the same uniforms of shape "
                             f"{shape} gave different outputs; keep all randomness in the design "
                             "(the rng), and make transform a function of u")
        flat = (np.arange(n) % 2 == 0).reshape(shape)
        for mask in (flat, ~flat):
            v = u.copy()
            v[mask] = other.reshape(shape)[mask]
            out = call_transform(sampler, v)
            if (_differs(out, ref) & ~mask).any():
                raise _first_change(name, ref, out, u, mask, shape)
        t_flat, w_flat = call_transform(sampler, u.reshape(-1).copy())
        if _differs((t_flat.reshape(shape), w_flat.reshape(shape)), ref).any():
            raise ValueError(f"{name}.transform is not elementwise: a batch of shape {shape} and the "
                             f"same uniforms flattened to shape ({n},) gave different outputs")
    ref = call_transform(sampler, base.copy())
    for i in range(n):
        one = call_transform(sampler, base[i:i + 1].copy())
        if _differs(one, (ref[0][i:i + 1], ref[1][i:i + 1])).any():
            raise ValueError(
                f"{name}.transform is not elementwise: u = {float(base[i])!r} gives (t, w) = "
                f"({one[0][0]}, {float(one[1][0])!r}) alone but ({ref[0][i]}, "
                f"{float(ref[1][i])!r}) in a batch of {n}; a statistic of the batch "
                "(w / w.mean(), a sort, a rank) biases the estimator")


def check_breakpoint_form(sampler, cuts: np.ndarray, weights: np.ndarray) -> int:
    r"""Compare ``sampler.transform`` with its breakpoint form at $2^{16}$ probes and both sides of every cut.

    Checks $t(u) = \#\{j \ge 1: c_j \le u\}$ and $\tilde w(u) = w_{t(u)}$ at each probe and
    returns the number of probes. Raises ``ValueError`` naming the first probe where
    the transform is not non-decreasing (or not constant on a cell) or where the
    weight is not a function of $t$.

    Example:
        >>> from carv_core import InverseCDFSampler, find_breakpoints
        >>> from carv_core.breakpoints import weights_by_t
        >>> s = InverseCDFSampler([.5, .5], [.25, .75])
        >>> cuts = find_breakpoints(s, 2)
        >>> check_breakpoint_form(s, cuts, weights_by_t(s, cuts)) > 2**16
        True
    """
    name = type(sampler).__name__
    top = np.nextafter(1.0, 0.0)
    inner = np.minimum(cuts[1:-1], top)
    u = np.unique(np.concatenate([_golden(_N_PROBES), inner, np.maximum(np.nextafter(inner, 0.0), 0.0)]))
    t, w = call_transform(sampler, u)
    form = np.searchsorted(cuts[1:-1], u, side="right")
    bad = np.flatnonzero(t != form)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{name}.transform is not non-decreasing in u (or not constant between its "
            f"breakpoints): t({float(u[i])!r}) = {t[i]}, but t = {form[i]} on [{float(cuts[form[i]])!r}, "
            f"{float(cuts[form[i] + 1])!r}) by its breakpoints; the exact law needs a monotone "
            "(inverse-CDF type) transform. carv_core.tabulate(sampler, T) gives one")
    bad = np.flatnonzero(w != weights[t])
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{name}.transform weights must be a function of t alone: w({float(u[i])!r}) = "
            f"{float(w[i])!r} at t = {t[i]}, but w = {float(weights[t[i]])!r} at the middle of that "
            "timestep's cell")
    return int(u.size)
