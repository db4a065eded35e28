"""Comparing and describing values: state snapshots, non-finite search, argument names in messages."""

import math
import numbers
import re
from collections import deque

import numpy as np


def snapshot(obj, depth: int = 0):
    """A comparable, NaN-safe deep copy of a state (dicts, sequences, arrays, tensors)."""
    if depth > 12:
        return ("deep",)
    if isinstance(obj, dict):
        return ("dict", tuple(sorted(((repr(k), snapshot(v, depth + 1)) for k, v in obj.items()),
                                     key=lambda kv: kv[0])))
    if isinstance(obj, (list, tuple, deque)):
        return ("seq", tuple(snapshot(v, depth + 1) for v in obj))
    if isinstance(obj, np.ndarray):
        return ("nd", str(obj.dtype), obj.shape, np.ascontiguousarray(obj).tobytes())
    mod = type(obj).__module__ or ""
    if mod.startswith("torch"):
        import torch
        if isinstance(obj, torch.Tensor):
            if obj.device.type == "meta":
                return ("meta", str(obj.dtype), tuple(obj.shape))
            t = obj.detach().cpu().contiguous()
            return ("tensor", str(t.dtype), tuple(t.shape), str(obj.device), t.numpy().tobytes()
                    if t.dtype not in (torch.bfloat16,) else t.float().numpy().tobytes())
        if isinstance(obj, torch.Generator):
            return ("gen", snapshot(obj.get_state(), depth + 1))
    if isinstance(obj, float):
        return ("nan",) if obj != obj else ("f", obj)
    if isinstance(obj, (int, str, bytes, bool, type(None))):
        return ("v", obj)
    if isinstance(obj, np.generic):
        return snapshot(obj.item(), depth + 1)
    if hasattr(obj, "__dict__") and not isinstance(obj, type) and depth < 4:
        return ("obj", type(obj).__name__, snapshot(dict(vars(obj)), depth + 1))
    return ("repr", type(obj).__name__)


def nonfinite(value, allow_inf: bool = False, depth: int = 0) -> str | None:
    """A description of the first NaN (or inf unless ``allow_inf``) inside ``value``, else ``None``."""
    if depth > 6:
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, np.ndarray):
        v = float(value)
        if v != v:
            return "nan"
        if math.isinf(v) and not allow_inf:
            return repr(v)
        return None
    if isinstance(value, complex):
        return nonfinite(value.real, allow_inf, depth + 1) or nonfinite(value.imag, allow_inf, depth + 1)
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "fc" and value.size:
            if np.isnan(value).any():
                return f"nan in array of shape {value.shape}"
            if not allow_inf and np.isinf(value).any():
                return f"inf in array of shape {value.shape}"
        return None
    mod = type(value).__module__ or ""
    if mod.startswith("torch"):
        import torch
        if isinstance(value, torch.Tensor):
            if value.device.type == "meta" or not (value.is_floating_point() or value.is_complex()):
                return None
            v = value.detach()
            if v.numel() and bool(torch.isnan(v).any()):
                return f"nan in tensor of shape {tuple(v.shape)}"
            if v.numel() and not allow_inf and bool(torch.isinf(v).any()):
                return f"inf in tensor of shape {tuple(v.shape)}"
            return None
    if isinstance(value, dict):
        for k, v in value.items():
            bad = nonfinite(v, allow_inf, depth + 1)
            if bad:
                return f"{k}: {bad}"
        return None
    if isinstance(value, (list, tuple)):
        fields = getattr(value, "_fields", None)
        for i, v in enumerate(value[:64]):
            bad = nonfinite(v, allow_inf, depth + 1)
            if bad:
                return f"{fields[i] if fields else i}: {bad}"
        return None
    return None


def names_match(message: str, names) -> bool:
    """Whether ``message`` names one of ``names`` as a word (``p`` matches "p must", not "shape")."""
    return any(re.search(rf"(?<!\w){re.escape(n)}(?!\w)", message) for n in names)


def _short(text: str, n: int = 300) -> str:
    text = re.sub(r"0x[0-9a-fA-F]{6,}", "0x...", " ".join(str(text).split()))
    return text if len(text) <= n else text[:n - 3] + "..."


def _describe_exc(err: BaseException) -> str:
    return _short(f"{type(err).__name__}: {err}")


def _describe_value(value) -> str:
    mod = type(value).__module__ or ""
    if isinstance(value, np.ndarray):
        return f"array{value.shape} {value.dtype}"
    if mod.startswith("torch") and hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"tensor{tuple(value.shape)} {value.dtype}"
    return _short(repr(value), 120)
