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
run any of them. Teacher outputs are shape-checked (a same-size channels-last
output is an error, not a silently wrong gradient).
"""

from __future__ import annotations

from typing import Protocol, Union, runtime_checkable

import torch

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


def _weight_table(weighting: Weighting, abar: torch.Tensor, include_alpha: bool) -> torch.Tensor:
    # w(t) (times alpha_t unless include_alpha is False), float64, shape (T,).
    schedule = DiscreteSchedule(abar.to(torch.float64))
    if isinstance(weighting, torch.Tensor):
        table = weighting.to(device=abar.device, dtype=torch.float64)
        if table.shape != abar.shape:
            raise ValueError(f"weighting must have shape {tuple(abar.shape)} (one w(t) per step), "
                             f"got {tuple(table.shape)}")
        return table * schedule.alpha if include_alpha else table
    return sds_weight(weighting, schedule, include_alpha=include_alpha).to(torch.float64)


def _predict(teacher, name: str, x_t, t, cond, **kw) -> torch.Tensor:
    # The teacher's epsilon, shape-checked: a same-size (N, H, W, C) output must not be
    # silently reshaped into a wrong gradient.
    out = teacher.predict_noise(x_t, t, cond, **kw)
    if not isinstance(out, torch.Tensor) or out.shape != x_t.shape:
        raise ValueError(f"{name}.predict_noise must return a tensor of shape {tuple(x_t.shape)} "
                         f"like x_t, got {tuple(getattr(out, 'shape', ()))}")
    return out


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
        self.teacher = teacher
        self.alphas_cumprod = _teacher_abar(teacher)
        self.weights = _weight_table(weighting, self.alphas_cumprod, include_alpha)
        self.guidance_scale = float(guidance_scale)
        if self.guidance_scale != self.guidance_scale:
            raise ValueError(f"guidance_scale must be a number, got {guidance_scale!r}")

    @property
    def encode(self):
        """The teacher's image encoder (latent teachers), else ``None``."""
        return self.teacher.encode if getattr(self.teacher, "is_latent", False) else None

    def integrand(self, x_t, t, eps, condition=None, uncond=None):
        eps_hat = _predict(self.teacher, "teacher", x_t, t, condition, uncond=uncond,
                           guidance_scale=self.guidance_scale)
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
        self.guidance_scale = float(guidance_scale)

    def integrand(self, x_t, t, eps, condition=None, uncond=None, fake_condition=None):
        e_real = _predict(self.real, "real", x_t, t, condition, uncond=uncond,
                          guidance_scale=self.guidance_scale)
        e_fake = _predict(self.fake, "fake", x_t, t, fake_condition)
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
        T = self.alphas_cumprod.shape[0]
        self.weights = (torch.ones(T, dtype=torch.float64, device=self.alphas_cumprod.device)
                        if weights is None else _weight_table(weights, self.alphas_cumprod, False))

    def integrand(self, x_t, t, eps, **conditions):
        f = self.fn(x_t, t, eps, **conditions)
        if not isinstance(f, torch.Tensor) or f.shape != x_t.shape:
            raise ValueError(f"the integrand must return a tensor of shape {tuple(x_t.shape)} like "
                             f"x_t, got {tuple(getattr(f, 'shape', ()))}")
        return f
