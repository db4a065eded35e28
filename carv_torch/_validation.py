"""Input checks shared by the public functions of :mod:`carv_torch`.

Two kinds of check, in the style of ``torch.distributions``:

- *structural* checks (type, dtype, shape, device, generator device) read only
  tensor metadata, never synchronise with an accelerator, and always run;
- *value* checks (finite entries, uniforms in $[0, 1)$, a pmf that sums to 1,
  proposal support) read tensor values, which forces a host sync on a GPU.
  They run while validation is on (the default) and can be switched off with
  :func:`set_validate_args`, globally or as a context manager.

Errors name the argument, the value received and what was expected.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

from carv_core._validation import PMF_ATOL, as_float_array, as_pmf, as_real, reject_foreign_arrays

__all__ = ["set_validate_args", "is_validating"]

_VALIDATE = [True]


class set_validate_args:  # noqa: N801 - a function-like context manager, as torch.set_grad_enabled
    """Switch the value checks that force a host sync on (``True``) or off (``False``).

    Works as a plain call (sets the flag for the process) and as a context
    manager (restores the previous value on exit). Structural checks
    (dtype, shape, device) always run.

    Example:
        >>> import carv_torch
        >>> with carv_torch.set_validate_args(False):
        ...     carv_torch.is_validating()
        False
        >>> carv_torch.is_validating()
        True
    """

    def __init__(self, value: bool):
        if not isinstance(value, bool):
            raise TypeError(f"value must be a bool, got {describe(value)}")
        self.previous = _VALIDATE[0]
        _VALIDATE[0] = value

    def __enter__(self) -> "set_validate_args":
        return self

    def __exit__(self, *exc) -> None:
        _VALIDATE[0] = self.previous


def is_validating() -> bool:
    """Whether the value checks that force a host sync currently run."""
    return _VALIDATE[0]


def describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)}, dtype {value.dtype} on {value.device}"
    if isinstance(value, np.ndarray):
        return f"array of shape {value.shape} and dtype {value.dtype}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------- devices


def as_device(name: str, device) -> torch.device | None:
    """Normalise ``device`` (None, str, int or ``torch.device``)."""
    if device is None:
        return None
    try:
        return torch.device(device)
    except RuntimeError as err:  # a string torch cannot parse, e.g. "gpu0"
        raise ValueError(f"{name} must be a torch.device, a device string such as 'cpu', "
                         f"'cuda' or 'cuda:0', or None, got {describe(device)} ({err})") from None
    except TypeError as err:
        raise TypeError(f"{name} must be a torch.device, a device string or None, "
                        f"got {describe(device)}") from err


def same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` and ``cuda:0`` are the same device when the current device is 0."""
    if a.type != b.type:
        return False
    if a.index is None or b.index is None:
        return True
    return a.index == b.index


def check_device(name: str, tensor: torch.Tensor, device: torch.device, other: str) -> None:
    """Raise if ``tensor`` is not on ``device`` (the device of ``other``)."""
    if not same_device(tensor.device, device):
        raise ValueError(
            f"{name} is on device {tensor.device}, expected {device} (the device of {other}); "
            f"move it first with {name}.to({str(device)!r})"
        )


def resolve_device(device, generator) -> torch.device:
    """The device to draw on: ``device``, else the generator's, else torch's default.

    Raises when a generator lives on another device type than the one asked for:
    torch would otherwise fail late (CUDA) or draw silently on the wrong stream.
    """
    device = as_device("device", device)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {describe(generator)} "
            f"({type(generator).__name__}); numpy Generators belong to carv_core (rng=...)"
        )
    if device is None:
        return generator.device if generator is not None else torch.empty(0).device
    if generator is not None and not same_device(generator.device, device):
        raise ValueError(
            f"generator is on device {generator.device} but device={str(device)!r} was "
            f"requested; create it with torch.Generator(device={str(device)!r})"
        )
    return device


# --------------------------------------------------------------------------- tensors


def as_dtype(name: str, dtype) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"{name} must be a real floating torch.dtype, got {describe(dtype)}")
    return dtype


def check_floating(name: str, tensor: torch.Tensor) -> None:
    """Raise ``TypeError`` unless ``tensor`` has a real floating dtype."""
    if tensor.is_complex():
        raise TypeError(f"{name} must be real, got complex dtype {tensor.dtype}")
    if not tensor.is_floating_point():
        raise TypeError(
            f"{name} must have a real floating dtype, got dtype {tensor.dtype}; "
            f"convert it with {name}.double() (or .float())"
        )


def as_tensor(name: str, value, *, device: torch.device | None = None, ndim: int | None = None,
              min_ndim: int | None = None, allow_empty: bool = False, other: str = "the other inputs",
              dtype: torch.dtype | None = None) -> torch.Tensor:
    """Return ``value`` as a real floating tensor, checking only metadata.

    A tensor must already sit on ``device`` (when given) and have a floating
    dtype (an integer tensor is almost always a mix-up, e.g. timesteps passed as
    uniforms). Numpy arrays and sequences are converted as carv_core converts
    them (to float64 unless ``dtype``) and moved to ``device``.
    """
    if isinstance(value, torch.Tensor):
        check_floating(name, value)
        if device is not None:
            check_device(name, value, device, other)
        tensor = value
    else:
        reject_foreign_arrays(name, value)
        if isinstance(value, (str, bytes)):
            raise TypeError(f"{name} must be numeric, got {describe(value)}")
        arr = np.asarray(value)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
        if np.iscomplexobj(arr):
            raise TypeError(f"{name} must be real, got complex dtype {arr.dtype}")
        tensor = from_host(arr, device=device, dtype=dtype or torch.float64)
    if ndim is not None and tensor.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(tensor.shape)}")
    if min_ndim is not None and tensor.ndim < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimension(s), got shape {tuple(tensor.shape)}"
        )
    if tensor.numel() == 0 and not allow_empty:
        raise ValueError(f"{name} must not be empty, got shape {tuple(tensor.shape)}")
    return tensor


def check_not_meta(name: str, tensor: torch.Tensor) -> None:
    """Raise ``ValueError`` for a ``meta`` tensor about to be copied to the host."""
    if tensor.device.type == "meta":
        raise ValueError(f"{name} is on meta (shape {tuple(tensor.shape)}, no data); this is "
                         f"host-side maths and needs real values: pass a CPU or accelerator tensor")


def to_numpy(name: str, value) -> np.ndarray:
    """Host copy of a tensor (or pass-through of anything else) for carv_core."""
    if isinstance(value, torch.Tensor):
        check_floating(name, value)
        check_not_meta(name, value)
        return value.detach().to("cpu", torch.float64).numpy()
    return value


def as_int(name: str, value, *, minimum: int | None = None) -> int:
    """A Python int; rejects bools, floats and tensors (reading a tensor would sync)."""
    if type(value) is not int:  # the common case skips the (slow) ABC check
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(
                f"{name} must be an integer, got {describe(value)} ({type(value).__name__})"
            )
        value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


# --------------------------------------------------------------------------- value checks (sync)


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """Raise naming the first non-finite entry (value check: syncs)."""
    if not _VALIDATE[0] or tensor.device.type == "meta":
        return
    bad = ~torch.isfinite(tensor)
    if bool(bad.any()):
        idx = tuple(int(i) for i in torch.nonzero(bad)[0].tolist())
        raise ValueError(
            f"{name} must be finite, got {tensor[idx].item()} at index {idx} "
            f"({int(bad.sum())} non-finite entries)"
        )


def check_unit_interval(name: str, u: torch.Tensor) -> None:
    """Raise unless every entry of ``u`` lies in [0, 1) (value check: syncs)."""
    if not _VALIDATE[0] or u.numel() == 0 or u.device.type == "meta":
        return
    # One sync on the happy path: NaN fails both comparisons.
    if bool((~((u >= 0) & (u < 1))).any()):
        check_finite(name, u)
        lo, hi = float(u.min()), float(u.max())
        raise ValueError(f"{name} must lie in [0, 1), got values in [{lo}, {hi}]")


def pmf_atol(p) -> float:
    r"""Tolerance on $|\sum_j p_j - 1|$ for a pmf held in ``p``'s dtype (a tensor or a dtype).

    $\max(\text{PMF\_ATOL}, \varepsilon)$ with $\varepsilon$ the machine epsilon of the
    dtype ($10^{-9}$ for float64, as the core), whatever $T$. Why it suffices: a pmf
    $\pi$ (summing to 1) rounded entrywise to the dtype has entries
    $p_j = \pi_j(1 + \delta_j)$, $|\delta_j| \le \varepsilon/2$, so
    $|\sum_j p_j - 1| \le \tfrac{\varepsilon}{2}\sum_j \pi_j = \varepsilon/2$; the sum itself is
    taken in float64 (:func:`check_pmf`), whose own error ($\le T\,2^{-53}$) is negligible.
    A tolerance growing with $T$ (say $T\varepsilon$, 0.98 for float16 at $T = 1000$) would
    accept vectors that are no pmf at all. (The bound assumes normal numbers: float16 entries
    below $6 \cdot 10^{-5}$ are subnormal and round more coarsely; hold such a pmf in float32.)
    """
    dtype = p if isinstance(p, torch.dtype) else p.dtype
    if dtype == torch.float64:
        return PMF_ATOL
    return max(PMF_ATOL, torch.finfo(dtype).eps)


def check_pmf(name: str, p: torch.Tensor, *, atol: float | None = None) -> None:
    """Raise unless ``p`` is finite, non-negative and sums to 1 within ``atol``
    (default :func:`pmf_atol` of ``p``). A value check: one host read when ``p`` is valid."""
    if not _VALIDATE[0] or p.device.type == "meta":
        return
    p64 = p.to(torch.float64)
    # 1. Three facts in one transfer: any non-finite entry, any negative one, the float64 sum.
    bad_finite, bad_sign, total = torch.stack(
        [(~torch.isfinite(p64)).any().to(torch.float64), (p64 < 0).any().to(torch.float64),
         p64.sum()]).tolist()
    if bad_finite:
        check_finite(name, p)
    if bad_sign:
        j = int(torch.argmax((p < 0).to(torch.uint8)))
        raise ValueError(f"{name} must be non-negative, got {name}[{j}] = {p[j].item()}")
    if abs(total - 1.0) > (pmf_atol(p) if atol is None else atol):
        raise ValueError(
            f"{name} must sum to 1, got sum {total!r}; normalise it first ({name} / {name}.sum())"
        )


def as_pmf64(name: str, p: torch.Tensor) -> torch.Tensor:
    r"""``p`` (a 1-D floating tensor) as a float64 pmf: cast first (exact), then checked at
    the tolerance of ``p``'s own dtype (:func:`pmf_atol`), then, for a lower-precision ``p``,
    renormalised in float64 so that weights and CDFs computed from it in float64 are
    consistent (a float16 pmf may sum to $1 \pm 10^{-3}$). A float64 ``p`` is kept as it is
    (the core's values exactly). The renormalisation runs on the device: no host read."""
    p64 = p.to(torch.float64)
    check_pmf(name, p64, atol=pmf_atol(p))
    return p64 if p.dtype == torch.float64 else p64 / p64.sum()


def check_same_shape(p_name: str, p: torch.Tensor, q_name: str, q: torch.Tensor) -> None:
    if p.shape != q.shape:
        raise ValueError(
            f"{p_name} and {q_name} must have the same shape, got {tuple(p.shape)} and {tuple(q.shape)}"
        )


def check_support(p: torch.Tensor, q: torch.Tensor, *, p_name: str = "p", q_name: str = "q") -> None:
    """Raise if ``q`` has zero mass where ``p`` has positive mass (value check: syncs)."""
    check_same_shape(p_name, p, q_name, q)
    if not _VALIDATE[0] or p.device.type == "meta":
        return
    bad = torch.nonzero((q <= 0) & (p > 0)).flatten()
    if bad.numel():
        j = int(bad[0])
        raise ValueError(
            f"{q_name} has zero mass at index {j} where {p_name}[{j}] = {p[j].item()} > 0; "
            f"importance weights p/q would be infinite there ({bad.numel()} such index(es)). "
            f"Mix in p (defensive_mixture) to fix."
        )


def from_host(array, *, device=None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A tensor copy of a carv_core result (core arrays may be read-only) on ``device``."""
    host = torch.from_numpy(np.array(array, dtype=np.float64, copy=True))
    return host.to(device=device, dtype=dtype)


_ADAPTIVE_KEYS = ("p", "n_bins", "decay", "delta", "second_moment", "counts")


def check_adaptive_state(state, T: int | None = None, *, name: str = "state") -> dict:
    r"""Validate a :meth:`carv_core.AdaptiveProposal.state_dict` snapshot without changing anything.

    Checks every field (``p`` a pmf with ``T`` entries when ``T`` is given, ``n_bins`` an
    integer in $[1, T]$, ``decay`` in $[0, 1)$, ``delta`` in $(0, 1]$, ``second_moment``
    finite and positive and ``counts`` integers >= 0, one per bin) and returns the fields
    normalised (numpy arrays, Python numbers). Raises naming the field.
    """
    if not isinstance(state, dict):
        raise TypeError(f"{name} must be a dict (a proposal's state_dict()), got {describe(state)}")
    missing = [k for k in _ADAPTIVE_KEYS if k not in state]
    if missing:
        raise ValueError(f"{name} lacks key(s) {missing}; expected {list(_ADAPTIVE_KEYS)}")
    p = as_pmf(f"{name}['p']", state["p"])
    if T is not None and p.size != T:
        raise ValueError(f"{name}['p'] has {p.size} timesteps, expected T = {T} (the target p)")
    n_bins = as_int(f"{name}['n_bins']", state["n_bins"], minimum=1)
    if n_bins > p.size:
        raise ValueError(f"{name}['n_bins'] must be <= len(p) = {p.size}, got {n_bins}")
    decay = as_real(f"{name}['decay']", state["decay"], nonnegative=True)
    if decay >= 1:
        raise ValueError(f"{name}['decay'] must be < 1, got {decay}")
    delta = as_real(f"{name}['delta']", state["delta"], positive=True, upper=1.0)
    m = as_float_array(f"{name}['second_moment']", state["second_moment"], ndim=1)
    counts = np.asarray(state["counts"])
    if counts.dtype == bool or not np.issubdtype(counts.dtype, np.integer):  # as the core
        raise TypeError(f"{name}['counts'] must hold integers, got dtype {counts.dtype}")
    for key, arr, bad, what in (("second_moment", m, m <= 0, "> 0"), ("counts", counts, counts < 0, ">= 0")):
        if arr.shape != (n_bins,):
            raise ValueError(f"{name}[{key!r}] must have one entry per bin ({n_bins}), got shape {arr.shape}")
        if bad.any():
            j = int(np.argmax(bad))
            raise ValueError(f"{name}[{key!r}] must be {what}, got {name}[{key!r}][{j}] = {arr[j]}")
    return {"p": p, "n_bins": n_bins, "decay": decay, "delta": delta, "second_moment": m,
            "counts": counts.astype(np.int64)}


def low_precision(value):
    """A float16/float32 numpy array as a tensor of its own dtype (so a pmf is checked at
    that dtype's tolerance); anything else unchanged."""
    if isinstance(value, np.ndarray) and value.dtype in (np.float16, np.float32):
        return torch.from_numpy(np.array(value, copy=True))
    return value


def host_pmf(name: str, p):
    """A pmf for carv_core: float64 tensors are copied as they are (the core checks
    them); lower-precision tensors (and arrays) are checked here at their own tolerance
    (:func:`pmf_atol`) and renormalised in float64 (:func:`as_pmf64`), since the core's
    1e-9 sum tolerance assumes float64."""
    p = low_precision(p)
    if not isinstance(p, torch.Tensor) or p.dtype == torch.float64:
        return to_numpy(name, p)
    check_floating(name, p)
    check_not_meta(name, p)
    if p.ndim != 1:
        raise ValueError(f"{name} must have 1 dimension(s), got shape {tuple(p.shape)}")
    with set_validate_args(True):
        p64 = as_pmf64(name, p)
    return p64.detach().cpu().numpy()
