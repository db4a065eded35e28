"""Input checks shared by the public functions of :mod:`carv_core`.

Every public function validates and normalises its arguments here, then hands
valid float64 arrays to a private function that does the maths. Errors name the
argument, the value received and what was expected.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np

__all__: list[str] = []

#: Absolute tolerance on $|\sum_t p(t) - 1|$ for "sums to one" (fixed; see :func:`as_pmf`).
PMF_ATOL = 1e-9


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} and dtype {value.dtype}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def reject_foreign_arrays(name: str, value) -> None:
    """Raise ``TypeError`` for tensors of other frameworks (torch, jax, cupy).

    The core is the float64 numpy reference; silently calling ``np.asarray`` on
    a CUDA tensor would either fail obscurely or copy it to the host.
    """
    module = type(value).__module__ or ""
    root = module.split(".", 1)[0]
    if root in {"torch", "jax", "jaxlib", "cupy", "tensorflow"}:
        raise TypeError(
            f"{name} must be a numpy array or a Python sequence, got a {root} "
            f"object ({type(value).__name__}); carv_core is the numpy reference. "
            f"Use carv_torch for tensors, or pass {name}.cpu().numpy()."
        )


def as_float_array(name: str, value, *, ndim: int | None = None, min_ndim: int | None = None,
                   allow_empty: bool = False, bool_means: str | None = None) -> np.ndarray:
    """Return ``value`` as a finite float64 array, or raise naming ``name``.

    Booleans count as 0/1 unless ``bool_means`` names what ``value`` must hold
    instead (``"probabilities"``): then a bool array is a ``TypeError``.
    """
    reject_foreign_arrays(name, value)
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be numeric, got {_describe(value)}")
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as err:  # ragged nesting, unconvertible objects
        kind = ValueError if isinstance(err, ValueError) else TypeError
        raise kind(f"{name} must be a real numeric array (a rectangular nesting of numbers), "
                   f"got {_describe(value)}: {err}") from err
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.dtype.kind in "mM":  # timedelta64 counts as a number to numpy, not to us
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if bool_means is not None and arr.dtype == bool:
        raise TypeError(f"{name} must hold {bool_means}, got dtype bool")
    if np.iscomplexobj(arr):
        raise TypeError(f"{name} must be real, got complex dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    if min_ndim is not None and arr.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {arr.shape}")
    if arr.size == 0 and not allow_empty:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise ValueError(
            f"{name} must be finite, got {arr[tuple(bad)]} at index {tuple(int(i) for i in bad)}"
        )
    return arr


def as_pmf(name: str, value, *, renormalise: bool = False) -> np.ndarray:
    r"""Return a 1-D float64 pmf: finite, $\ge 0$, and $|\sum_t p(t) - 1| \le$ ``PMF_ATOL``.

    The tolerance is fixed at ``PMF_ATOL`` $= 10^{-9}$; it does not grow with $T$.
    numpy sums float64 in blocks of 128 and pairwise above them, so the rounding error
    of $\sum_t p(t) \approx 1$ over $T$ non-negative terms is at most about
    $(128 + \log_2 T)\,2^{-53} < 2\times 10^{-14}$ even at $T = 10^9$ (and normalising,
    $p = x / \sum x$, adds at most $2^{-53}$): a pmf normalised in float64 never comes
    near $10^{-9}$. A larger error means the input was not normalised in float64
    (rounding the entries to float32 alone can move the sum by up to
    $2^{-24} \approx 6\times 10^{-8}$, e.g. ``[1/3] * 3``), and a tolerance loose enough
    to hide that would also hide a genuinely unnormalised input. Such input is rejected,
    or renormalised on request:

    With ``renormalise=True`` any finite, non-negative array of positive total mass is
    returned as ``value / value.sum()`` in float64 (where that sum overflows, ``value`` is
    first scaled by a power of two); zero total mass is an error.
    """
    if not isinstance(renormalise, (bool, np.bool_)):
        raise TypeError(f"renormalise must be True or False, got {_describe(renormalise)}")
    renormalise = bool(renormalise)
    arr = as_float_array(name, value, ndim=1, bool_means="probabilities")
    if np.any(arr < 0):
        j = int(np.argmax(arr < 0))
        raise ValueError(f"{name} must be non-negative, got {name}[{j}] = {arr[j]}")
    if renormalise:
        with np.errstate(over="ignore"):
            total = float(arr.sum())
        if not total > 0:
            raise ValueError(f"{name} has no mass (every entry is 0): it cannot be renormalised")
        if total == np.inf:  # the sum overflowed: rescale by a power of two first
            arr = np.ldexp(arr, -int(np.frexp(float(arr.max()))[1]))
            total = float(arr.sum())
        return arr / total
    total = float(arr.sum())
    if abs(total - 1.0) > PMF_ATOL:
        raise ValueError(
            f"{name} must sum to 1, got sum {total!r}; normalise it first "
            f"({name} / {name}.sum(), or renormalise=True)"
        )
    return arr


def as_int(name: str, value, *, minimum: int | None = None) -> int:
    """Return ``value`` as a Python int; reject bools, floats and other types."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {_describe(value)} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def as_real(name: str, value, *, positive: bool = False, nonnegative: bool = False,
            upper: float | None = None) -> float:
    """Return ``value`` as a finite Python float with the requested sign."""
    root = (type(value).__module__ or "").split(".", 1)[0]
    if root in {"torch", "jax", "jaxlib", "cupy", "tensorflow"}:
        raise TypeError(f"{name} must be a real number, got a {root} {type(value).__name__}; "
                        f"pass float({name}) (this is host-side scalar maths)")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {_describe(value)} ({type(value).__name__})")
    try:
        value = float(value)
    except OverflowError:  # an int (or Fraction) beyond float64
        raise ValueError(f"{name} must be finite, got {_describe(value)}, which overflows float64") from None
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if nonnegative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    if upper is not None and value > upper:
        raise ValueError(f"{name} must be <= {upper}, got {value}")
    return value


def as_unit_interval(name: str, value) -> np.ndarray:
    """Return uniforms as float64, checked to lie in [0, 1)."""
    arr = as_float_array(name, value, allow_empty=True)
    if arr.size and (arr.min() < 0.0 or arr.max() >= 1.0):
        raise ValueError(
            f"{name} must lie in [0, 1), got values in [{arr.min()}, {arr.max()}]"
        )
    return arr


def check_support(p: np.ndarray, q: np.ndarray, *, p_name: str = "p", q_name: str = "q") -> None:
    """Raise if ``q`` has zero mass where ``p`` has positive mass."""
    if p.shape != q.shape:
        raise ValueError(f"{p_name} and {q_name} must have the same shape, got {p.shape} and {q.shape}")
    bad = np.flatnonzero((q <= 0) & (p > 0))
    if bad.size:
        j = int(bad[0])
        raise ValueError(
            f"{q_name} has zero mass at index {j} where {p_name}[{j}] = {p[j]} > 0; "
            f"importance weights p/q would be infinite there "
            f"({bad.size} such index(es)). Mix in p (defensive_mixture) to fix."
        )


def rng_from(rng) -> np.random.Generator:
    """Normalise ``rng`` (None, int seed, SeedSequence or Generator) to a Generator."""
    if isinstance(rng, np.random.RandomState):
        raise TypeError("rng must be a numpy Generator (np.random.default_rng), got a legacy RandomState")
    reject_foreign_arrays("rng", rng)
    if isinstance(rng, (bool, np.bool_)):
        raise TypeError(f"rng must be None, an int seed or a numpy Generator, got {rng!r} (bool)")
    try:
        return np.random.default_rng(rng)
    except TypeError as err:
        raise TypeError(f"rng must be None, an int seed or a numpy Generator, got {_describe(rng)}") from err
    except ValueError as err:  # a negative seed
        raise ValueError(f"rng must be None, a non-negative int seed or a numpy Generator, "
                         f"got {_describe(rng)} ({err})") from err


def warn_large_weights(w: np.ndarray, threshold: float = 100.0) -> None:
    """Warn (valid-but-unwise input) when importance weights are very large."""
    if w.size and float(np.max(w)) > threshold:
        warnings.warn(
            f"importance weights reach {float(np.max(w)):.3g} (> {threshold}); the estimator "
            "stays unbiased but its variance may be large. Consider a defensive mixture.",
            RuntimeWarning,
            stacklevel=3,
        )
