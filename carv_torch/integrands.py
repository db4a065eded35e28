r"""Objectives: the integrand $f(x, t, \epsilon)$ of a hierarchical estimate, as objects.

An :class:`Objective` has a ``name`` (its loss key is ``loss_<name>``), the
schedule ``alphas_cumprod`` that defines $x_t = \alpha_t x + \sigma_t \epsilon$, a
weight table ``weights`` $= w(t)$ and ``integrand(x_t, t, eps, **conditions)``.

| objective | $f(x, t, \epsilon)$ |
|---|---|
| :class:`SDS` | $w(t)\,\alpha_t\,(\hat\epsilon(x_t, t, y) - \epsilon)$; ``include_alpha=False`` drops $\alpha_t$ (threestudio) |
| :class:`DMD` | $w(t)\,(\hat\epsilon_{\rm real}(x_t, t, y) - \hat\epsilon_{\rm fake}(x_t, t))$ |
| :class:`Integrand` | a user's function |

:func:`carv_torch.objectives.estimate` and :class:`carv_torch.guidance.CARVGuidance`
run any of them. Every teacher or integrand output must have the shape, dtype and
device of ``x_t`` (a same-size channels-last output is an error, not a silently wrong
gradient); with validation on, all outputs of one integrand call are checked for
non-finite values in one host read, and an error names the producer and the timesteps.
"""

from __future__ import annotations

import math
import numbers
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol, Union, runtime_checkable

import numpy as np
import torch

from ._validation import as_tensor, check_finite, is_validating
from .schedules import DiscreteSchedule
from .weighting import sds_weight

__all__ = ["Objective", "SDS", "DMD", "Integrand"]

Weighting = Union[str, torch.Tensor]


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


_DERIVED: dict = {}


def _derived(source: torch.Tensor, tag: str, dtype: torch.dtype, device: torch.device, build):
    # build(source), cached per (source tensor, tag, dtype, device): a per-step table
    # (a cast, a sqrt of the schedule) is then computed once per run. An entry holds
    # the source and its version counter, so an in-place change or a recycled id()
    # rebuilds it; tensors without a version counter (inference mode) are not cached.
    try:
        version = source._version
    except RuntimeError:
        with torch.no_grad():
            return build(source)
    key = (id(source), tag, dtype, device)
    hit = _DERIVED.get(key)
    if hit is not None and hit[0] is source and hit[1] == version:
        return hit[2]
    with torch.inference_mode(False), torch.no_grad():  # a table usable in every mode
        value = build(source)
    if len(_DERIVED) >= 64:
        _DERIVED.clear()
    _DERIVED[key] = (source, version, value)
    return value


def _weights_as(weights: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # w(t) in like's dtype and device (cached): one lookup per draw instead of two ops.
    return _derived(weights, "cast", like.dtype, like.device,
                    lambda w: w.to(device=like.device, dtype=like.dtype))


@runtime_checkable
class Objective(Protocol):
    r"""What :func:`estimate` and :class:`~carv_torch.guidance.CARVGuidance` run.

    Attributes:
        name: the loss key is ``"loss_" + name``.
        alphas_cumprod: $\bar\alpha_t$, shape ``(T,)``: defines $x_t = \alpha_t x + \sigma_t\epsilon$.
        weights: $w(t)$, shape ``(T,)``, float64: the factor of $f$ that the weight-heuristic
            proposal $q \propto p\,w$ follows.
    """

    name: str
    alphas_cumprod: torch.Tensor
    weights: torch.Tensor

    def integrand(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, **conditions) -> torch.Tensor:
        r"""The unweighted $f(x, t, \epsilon)$ for ``N`` flattened draws: ``x_t``, ``eps`` ``(N, *S)``, ``t`` ``(N,)``."""
        ...


def _teacher_abar(teacher, name: str = "teacher") -> torch.Tensor:
    abar = getattr(teacher, "alphas_cumprod", None)
    if not isinstance(abar, torch.Tensor) or abar.ndim != 1:
        raise TypeError(f"{name} must follow carv_torch.teachers.Teacher (a 1-D tensor "
                        f"alphas_cumprod), got {type(teacher).__name__}")
    return abar


def _weight_table(weighting: Weighting, abar: torch.Tensor, include_alpha: bool,
                  name: str = "weighting") -> torch.Tensor:
    # w(t) (times alpha_t unless include_alpha is False), float64, shape (T,); errors name `name`.
    schedule = DiscreteSchedule(abar.to(torch.float64))
    if isinstance(weighting, torch.Tensor):
        table = weighting.detach().to(device=abar.device, dtype=torch.float64)
        if table.shape != abar.shape:
            raise ValueError(f"{name} must have shape {tuple(abar.shape)} (one w(t) per step), "
                             f"got {tuple(table.shape)}")
        check_finite(name, table)  # value check, once at construction
        return table * schedule.alpha if include_alpha else table
    return sds_weight(weighting, schedule, include_alpha=include_alpha).to(torch.float64)


_DEFERRED: ContextVar = ContextVar("carv_torch_deferred_finite_check", default=None)


@contextmanager
def defer_finite_check(teacher):
    """While active, ``teacher`` (only that object) skips its own finiteness check: the
    caller (an objective's integrand) checks all its teachers' outputs in one host read."""
    token = _DEFERRED.set(teacher)
    try:
        yield
    finally:
        _DEFERRED.reset(token)


def checks_itself(teacher) -> bool:
    """Whether ``teacher`` runs its own finiteness check now (validation on, not deferred)."""
    return is_validating() and _DEFERRED.get() is not teacher


def _bad_rows(out: torch.Tensor) -> torch.Tensor:
    flat = out.reshape(out.shape[0], -1) if out.numel() else out.new_zeros(out.shape[0], 0)
    return ~torch.isfinite(flat).all(dim=1)


def _report(name: str, out: torch.Tensor, bad: torch.Tensor, t: torch.Tensor, noun: str) -> str:
    # The message of a failed check (a failure path: several reads are fine here).
    kinds = [k for k, hit in (("nan", torch.isnan(out).any()), ("inf", (out == float("inf")).any()),
                              ("-inf", (out == float("-inf")).any())) if bool(hit)]
    tt = t.reshape(-1)
    steps = sorted({int(s) for s in tt[bad].tolist()}) if tt.shape == bad.shape else "?"
    if isinstance(steps, list) and len(steps) > 20:
        steps = f"[{', '.join(map(str, steps[:20]))}, ...]"
    return (f"{name} returned non-finite values ({', '.join(kinds)}) at timesteps {steps} "
            f"({int(bad.sum())} of {out.shape[0]} {noun})")


def check_outputs(t: torch.Tensor, items, *, noun: str = "inputs") -> list:
    r"""Check several predictions at timesteps ``t`` ``(N,)`` in **one** host read.

    ``items`` are ``(name, output, nan_policy)``, each output of shape ``(N, ...)``;
    ``nan_policy`` ``"raise"`` (the message suggests ``"zero"``), ``"zero"`` (zero the
    non-finite rows and warn) or ``None`` (raise, for producers without a policy).
    Returns the outputs (zeroed where asked). Raises ``FloatingPointError`` naming the
    producer, the kind of value and the timesteps involved.
    """
    items = [(n, o, pol) for n, o, pol in items]
    if not items or any(o.device.type == "meta" for _, o, _ in items):
        return [o for _, o, _ in items]
    bads = [_bad_rows(o) for _, o, _ in items]
    flags = torch.stack([b.any() for b in bads]).tolist()  # the one host read
    out = []
    for (name, o, policy), bad, flag in zip(items, bads, flags):
        if not flag:
            out.append(o)
            continue
        msg = _report(name, o, bad, t, noun)
        if policy != "zero":
            hint = "; pass nan_policy='zero' to zero them instead" if policy == "raise" else ""
            raise FloatingPointError(msg + hint)
        warnings.warn(msg + "; zeroed (nan_policy='zero')", RuntimeWarning, stacklevel=4)
        out.append(torch.where(bad.reshape((-1,) + (1,) * (o.ndim - 1)), torch.zeros_like(o), o))
    return out


def _check_output(name: str, out, x_t: torch.Tensor) -> torch.Tensor:
    # Structural contract of a teacher's or integrand's output (metadata only, no sync):
    # shape, dtype and device of x_t. A same-size (N, H, W, C) output must not be silently
    # reshaped into a wrong gradient, nor a (1, ...) one broadcast against the other teacher's.
    if not isinstance(out, torch.Tensor) or out.shape != x_t.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{name} must return a tensor of shape {tuple(x_t.shape)} like x_t, got {got}")
    if out.dtype != x_t.dtype:
        raise TypeError(f"{name} must return dtype {x_t.dtype} like x_t, got {out.dtype}; "
                        f"cast it with .to(x_t.dtype)")
    if out.device != x_t.device:
        raise ValueError(f"{name} must return a tensor on {x_t.device} like x_t, got one on {out.device}")
    return out


def _predict(teacher, name: str, x_t, t, cond, **kw) -> torch.Tensor:
    # The teacher's epsilon, structurally checked. Its finiteness is checked by the caller,
    # once for all outputs of an integrand (_finite): the teacher skips its own check.
    with defer_finite_check(teacher):
        out = teacher.predict_noise(x_t, t, cond, **kw)
    return _check_output(f"{name}.predict_noise", out, x_t)


def _finite(t: torch.Tensor, *named) -> list:
    # named: (name, output, producer). Value check of all outputs in one host read
    # (teachers.check_outputs), honouring each producer's nan_policy and check_finite switch.
    if not is_validating():
        return [out for _, out, _ in named]
    keep = [getattr(who, "check_finite", True) is not False for _, _, who in named]
    items = [(name, out, getattr(who, "nan_policy", None))
             for (name, out, who), k in zip(named, keep) if k]
    checked = iter(check_outputs(t, items, noun="draws"))
    return [next(checked) if k else out for (_, out, _), k in zip(named, keep)]


def _guidance_scale(value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"guidance_scale must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"guidance_scale must be finite, got {value}")
    return value


class SDS:
    r"""Score distillation: $f = w(t)\,\alpha_t\,(\hat\epsilon(x_t, t, y) - \epsilon)$ (``include_alpha=False`` drops $\alpha_t$).

    $\hat\epsilon$ uses CFG $\hat\epsilon_\varnothing + s(\hat\epsilon_y - \hat\epsilon_\varnothing)$ in the
    teacher (threestudio's $s_{\rm ts}$ is $s + 1$; see :mod:`carv_torch.threestudio`).

    Args:
        teacher: a :class:`~carv_torch.teachers.Teacher`.
        weighting: preset name or a ``(T,)`` tensor of $w(t)$.
        include_alpha: multiply by $\alpha_t$ (paper); ``False`` is threestudio's $w(t)$ only.
        guidance_scale: CFG scale $s$.
    """

    name = "sds"

    def __init__(self, teacher, *, weighting: Weighting = "sds", include_alpha: bool = True,
                 guidance_scale: float = 1.0):
        if not isinstance(include_alpha, (bool, np.bool_)):
            raise TypeError(f"include_alpha must be a bool, got {include_alpha!r}")
        self.teacher = teacher
        self.alphas_cumprod = _teacher_abar(teacher)
        self.weights = _weight_table(weighting, self.alphas_cumprod, include_alpha)
        self.guidance_scale = _guidance_scale(guidance_scale)

    @property
    def encode(self):
        """The teacher's image encoder (latent teachers), else ``None``."""
        return self.teacher.encode if getattr(self.teacher, "is_latent", False) else None

    def integrand(self, x_t, t, eps, condition=None, uncond=None):
        eps_hat = _predict(self.teacher, "teacher", x_t, t, condition, uncond=uncond,
                           guidance_scale=self.guidance_scale)
        eps_hat, = _finite(t, ("teacher.predict_noise", eps_hat, self.teacher))
        return _expand(_weights_as(self.weights, x_t)[t], eps) * (eps_hat - eps)


class DMD:
    r"""Distribution matching: $f = w(t)\,(\hat\epsilon_{\rm real}(x_t, t, y) - \hat\epsilon_{\rm fake}(x_t, t))$.

    The real teacher gets CFG (``condition``, ``uncond``, ``guidance_scale``); the fake
    score gets ``fake_condition`` and no guidance. Both see the same noisy inputs.

    Args:
        real, fake: teachers sharing ``alphas_cumprod``.
        weighting: preset name or ``(T,)`` tensor (no $\alpha_t$ factor).
        guidance_scale: CFG scale of the real teacher.
    """

    name = "dmd"

    def __init__(self, real, fake, *, weighting: Weighting = "uniform", guidance_scale: float = 1.0):
        abar, abar_fake = _teacher_abar(real, "real"), _teacher_abar(fake, "fake")
        if abar_fake.shape != abar.shape or not torch.equal(abar_fake.to(abar), abar):
            raise ValueError("real and fake teachers must share alphas_cumprod (the same noise schedule)")
        self.real, self.fake = real, fake
        self.alphas_cumprod = abar
        self.weights = _weight_table(weighting, abar, include_alpha=False)
        self.guidance_scale = _guidance_scale(guidance_scale)

    def integrand(self, x_t, t, eps, condition=None, uncond=None, fake_condition=None):
        e_real = _predict(self.real, "real", x_t, t, condition, uncond=uncond,
                          guidance_scale=self.guidance_scale)
        e_fake = _predict(self.fake, "fake", x_t, t, fake_condition)
        e_real, e_fake = _finite(t, ("real.predict_noise", e_real, self.real),
                                 ("fake.predict_noise", e_fake, self.fake))
        return _expand(_weights_as(self.weights, x_t)[t], eps) * (e_real - e_fake)


class Integrand:
    r"""A user's integrand $f(x_t, t, \epsilon, \dots)$ as an :class:`Objective`.

    Args:
        fn: ``fn(x_t, t, eps, **conditions) -> f`` with ``f`` shaped like ``x_t`` (no grad needed).
        alphas_cumprod: $\bar\alpha_t$, shape ``(T,)``.
        weights: $w(t)$ for the weight heuristic, ``(T,)``; default ones.
        name: loss key suffix.

    Example:
        >>> abar = torch.linspace(0.99, 0.05, 10, dtype=torch.float64)
        >>> from carv_torch.objectives import estimate
        >>> obj = Integrand(lambda x_t, t, eps: x_t - eps, abar)
        >>> est = estimate(obj, torch.ones(2, 3), K=2, p=torch.full((10,), 0.1, dtype=torch.float64),
        ...                generator=torch.Generator().manual_seed(0))
        >>> est.grad.shape
        torch.Size([2, 3])
    """

    def __init__(self, fn, alphas_cumprod: torch.Tensor, weights=None, *, name: str = "custom"):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        self.fn, self.name = fn, str(name)
        self.alphas_cumprod = _teacher_abar(type("A", (), {"alphas_cumprod": alphas_cumprod})(),
                                            "alphas_cumprod")
        DiscreteSchedule(self.alphas_cumprod)  # the core's value checks (gated), as SDS and DMD
        T = self.alphas_cumprod.shape[0]
        if weights is not None and not isinstance(weights, (torch.Tensor, str)) and not callable(weights):
            weights = as_tensor("weights", weights, ndim=1)  # an array or a sequence of w(t)
        self.weights = (torch.ones(T, dtype=torch.float64, device=self.alphas_cumprod.device)
                        if weights is None else _weight_table(weights, self.alphas_cumprod, False, "weights"))

    def integrand(self, x_t, t, eps, **conditions):
        f = _check_output("the integrand", self.fn(x_t, t, eps, **conditions), x_t)
        return _finite(t, ("the integrand", f, None))[0]
