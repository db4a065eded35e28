"""Mutation lists: the bad and edge values of one argument (reals, ints, pmfs, arrays, tensors)."""

import numpy as np

from .cases import Lazy, _torch, mut

NAN, INF = float("nan"), float("inf")


def _merge(out, extra):
    """``out`` + ``extra``, an extra mutation replacing one of the same label."""
    labels = {m.label for m in extra}
    return [m for m in out if m.label not in labels] + list(extra)


def _in(v, lo, hi, lo_open, hi_open) -> bool:
    if v != v:
        return False
    if lo is not None and (v < lo or (lo_open and v == lo)):
        return False
    if hi is not None and (v > hi or (hi_open and v == hi)):
        return False
    return True


def reals(base: float, lo=None, hi=None, *, lo_open=False, hi_open=False, none_ok=False, full=False,
          huge=None, inf_ok=False, tensor=None, only=None, extra=()):
    """Mutations of a real scalar argument valid on [lo, hi] (open ends with ``lo_open``/``hi_open``).

    The light set is nan, inf, neg, zero, bool, np_float32; ``full`` adds -inf, huge (1e308),
    str, None, complex, list and np_int64. ``huge``: the expectation at 1e308 (default: by range,
    inf allowed in the result); ``tensor``: the expectation of a 0-dim torch tensor (None: not
    generated); ``only``: keep just these labels.
    """
    def exp(v):
        return "ok" if _in(v, lo, hi, lo_open, hi_open) else "error"
    as_int = round(base) if _in(round(base), lo, hi, lo_open, hi_open) and round(base) else 1
    out = [mut("nan", NAN, "error"), mut("inf", INF, "ok" if inf_ok else "error", allow_inf=True),
           mut("neg", -1.0, exp(-1.0)), mut("zero", 0.0, exp(0.0)), mut("bool", True, "error"),
           mut("np_float32", np.float32(base), "ok")]
    if full:
        out += [mut("-inf", -INF, "error"),
                mut("huge", 1e308, huge or exp(1e308), allow_inf=True),
                mut("str", str(base), "error"),
                mut("none", None, "ok" if none_ok else "error"),
                mut("complex", complex(base, 1.0), "error"),
                mut("list", [base], "error"),
                mut("np_int64", np.int64(as_int), exp(as_int))]
    if tensor is not None:
        out.append(mut("tensor", Lazy(lambda: _torch().tensor(float(base))), tensor))
    out = _merge(out, extra)
    return [m for m in out if m.label in only] if only else out


def ints(base: int, minimum=None, maximum=None, *, none_ok=False, full=False, huge="ok", only=None,
         extra=()):
    """Mutations of an integer argument valid on [minimum, maximum]; ``huge``: expectation at 10**9.

    The light set is nan, float (2.5), neg, zero, bool, np_int64, huge; ``full`` adds str, None
    and an integral float (3.0).
    """
    def exp(v):
        return "ok" if _in(v, minimum, maximum, False, False) else "error"
    out = [mut("nan", NAN, "error"), mut("float", 2.5, "error"), mut("neg", -1, exp(-1)),
           mut("zero", 0, exp(0)), mut("bool", True, "error"), mut("np_int64", np.int64(base), "ok"),
           mut("huge", 10**9, huge if exp(10**9) == "ok" else "error")]
    if full:
        out += [mut("str", str(base), "error"), mut("none", None, "ok" if none_ok else "error"),
                mut("float_integral", float(base), "error")]
    out = _merge(out, extra)
    return [m for m in out if m.label in only] if only else out


def pmfs(T: int = 4, *, pair: bool = False, full: bool = False, only=None, extra=()):
    """Mutations of a numpy pmf argument of length T (``pair``: also a wrong length)."""
    u = np.full(T, 1.0 / T)

    def at0(v):
        a = u.copy()
        a[0] = v
        return a
    onehot = np.zeros(T, dtype=np.int64)
    onehot[-1] = 1
    out = [mut("nan", at0(NAN), "error"), mut("inf", at0(INF), "error"),
           mut("negative", np.concatenate([[-1.0 / T], u[1:] + 2.0 / T / (T - 1)]), "error"),
           mut("sum2", 2 * u, "error"), mut("zeros", np.zeros(T), "error"),
           mut("2d", u.reshape(2, -1), "error"), mut("empty", np.zeros(0), "error"),
           mut("float32", u.astype(np.float32), "ok"), mut("str", "abc", "error"),
           mut("none", None, "error")]
    if full:
        out += [mut("int_onehot", onehot, "ok"), mut("float16", u.astype(np.float16), "ok"),
                mut("complex", u.astype(complex), "error"),
                mut("ragged", [[0.5], [0.25, 0.25]], "error"), mut("scalar", 1.0, "error"),
                mut("list", u.tolist(), "ok"),
                mut("torch", Lazy(lambda: _torch().tensor(u)), "error")]
    if pair:
        out.append(mut("short", np.full(T - 1, 1.0 / (T - 1)), "error"))
    out = _merge(out, extra)
    return [m for m in out if m.label in only] if only else out


def arrays(base: np.ndarray, *, full=False, empty="error", torch_expect="error", only=None, extra=()):
    """Mutations of a real float array argument (values, weights, edges, ...)."""
    def at0(v):
        a = np.array(base, dtype=np.float64)
        a.flat[0] = v
        return a
    out = [mut("nan", at0(NAN), "error"), mut("inf", at0(INF), "error"),
           mut("empty", np.zeros((0,) + base.shape[1:]), empty), mut("str", "abc", "error"),
           mut("none", None, "error")]
    if full:
        out += [mut("complex", base.astype(complex), "error"),
                mut("ragged", [[1.0], [1.0, 2.0]], "error"),
                mut("int", base.astype(np.int64), "ok"),
                mut("torch", Lazy(lambda: _torch().tensor(base)), torch_expect)]
    out = _merge(out, extra)
    return [m for m in out if m.label in only] if only else out


def tensors(base_fn, *, meta="error", int_expect="error", half="ok", full=False, nan="error",
            only=None, extra=()):
    """Mutations of a floating tensor argument; ``base_fn()`` builds the valid tensor."""
    def at0(v):
        def make():
            t = base_fn().clone()
            t.view(-1)[0] = v
            return t
        return Lazy(make)

    def cast(dtype):
        return Lazy(lambda: base_fn().to(dtype))
    torch = _torch()
    out = [mut("nan", at0(NAN), nan), mut("inf", at0(INF), nan),
           mut("int", Lazy(lambda: base_fn().round().to(torch.int64)), int_expect),
           mut("complex", cast(torch.complex128), "error"),
           mut("meta", Lazy(lambda: base_fn().to("meta")), meta),
           mut("numpy", Lazy(lambda: base_fn().numpy()), "ok")]
    if full:
        out += [mut("float16", cast(torch.float16), half),
                mut("bool", Lazy(lambda: base_fn() > 0), int_expect),
                mut("requires_grad", Lazy(lambda: base_fn().clone().requires_grad_(True)), "ok"),
                mut("str", "abc", "error"), mut("none", None, "error")]
    out = _merge(out, extra)
    return [m for m in out if m.label in only] if only else out


# The specs live in two functions below (core_cases, torch_cases).
