r"""Hierarchical estimators of SDS, DMD and attribution gradients.

One upstream output $x_r$ (a render, a generator sample, a data point) is reused
across $K$ inner draws $(t_{rk}, \epsilon_{rk})$, $t \sim q$ by a stratified
inverse CDF (:mod:`carv_torch.sampling`), importance weight $\tilde w = p(t)/q(t)$:

$$ g_r = \frac1K\sum_{k=1}^K \tilde w_{rk}\, f(x_r, t_{rk}, \epsilon_{rk}), \qquad
   \hat G = \frac1R\sum_r J_r^\top g_r, \quad J_r = \partial x_r/\partial\theta. $$

The $K$ residuals are averaged *before* the single backward pass: the caller
backpropagates the surrogate

$$ L = \frac{1}{2R}\sum_r \lVert x_r - \mathrm{sg}(x_r - g_r)\rVert^2, \qquad \nabla_{x_r} L = g_r/R, $$

so $\nabla_\theta L = \hat G$. This is threestudio's
``0.5 * F.mse_loss(x, (x - grad).detach(), reduction="sum") / batch_size`` with
``grad`` $= g$; because $g_r$ is a *mean* over $K$, the scale is the $K = 1$ scale.

Integrands, with $x_t = \alpha_t x + \sigma_t\epsilon$ and the teacher's $\bar\alpha$:

| objective | $f(x, t, \epsilon)$ |
|---|---|
| :func:`sds` | $w(t)\,\alpha_t\,(\hat\epsilon(x_t, t, y) - \epsilon)$; ``include_alpha=False`` drops $\alpha_t$ (threestudio) |
| :func:`dmd` | $w(t)\,(\hat\epsilon_{\rm real}(x_t, t, y) - \hat\epsilon_{\rm fake}(x_t, t))$ |
| :func:`attribution` | $\nabla_\phi\, w(t)\,\tfrac1D\lVert\hat\epsilon_\phi(x_t, t, y) - \epsilon\rVert^2$ (features, not a gradient in $x$; in :mod:`carv_torch.attribution_features`, re-exported here) |

DMD sign: the KL gradient is $\mathbb E[(s_{\rm fake} - s_{\rm real})(x_t)\,\alpha_t\,\partial x/\partial\theta]$
and $s = -\hat\epsilon/\sigma_t$, so $s_{\rm fake} - s_{\rm real} = (\hat\epsilon_{\rm real} - \hat\epsilon_{\rm fake})/\sigma_t$:
descending $g$ moves $x$ toward the real distribution. SDS is the special case
$\hat\epsilon_{\rm fake} = \epsilon$. DMD2's $x_0$-space residual is ``weighting``
$= \sigma_t/\alpha_t$ (times its per-sample normaliser, which we leave to the caller).

**Objectives are objects.** :class:`SDS`, :class:`DMD` and :class:`Integrand` (a
user's $f$) follow the :class:`Objective` protocol: an ``alphas_cumprod``, a weight
table ``weights`` $= w(t)$ (what the weight-heuristic proposal multiplies $p$ by), a
``name`` (the loss key ``loss_<name>``) and ``integrand(x_t, t, eps, **conditions)``.
:func:`estimate` runs any of them; :func:`sds` and :func:`dmd` are shorthands, and
:class:`~carv_torch.guidance.CARVGuidance` runs the same objects.

**Samplers are objects.** Every function takes ``sampler=`` (any sampler of the
core protocol, e.g. one certified by :mod:`carv_core.testing`; converted by
:func:`carv_torch.breakpoints.as_sampler`), or ``p``, ``q`` and a ``design`` as a
shorthand for the inverse-CDF sampler.

Randomness: from ``generator`` the uniforms are drawn first, then the noise.
Diagnostics are in $x$-space: ``components`` are ANOVA estimates of
$\sigma_B^2, \sigma_W^2$ of $Y_{rk} = \tilde w_{rk} f_{rk}$ (a proxy for the
$\theta$-space components; conservative under stratification, see
:mod:`carv_torch.estimator`), and ``sq_norm`` $= \lVert f_{rk}\rVert^2$ is what an
:class:`~carv_torch.proposals.AdaptiveProposal` is updated with.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from ._validation import check_finite, describe
from .attribution_features import AttributionEstimate, attribution
from .estimator import _anova, _between, _hierarchical
from .inner import (InnerDraws, _expand, _noisy, _per_draw, check_draw_values, draw_inner,
                    resolve_sampler, restoring)
from .integrands import DMD, SDS, Integrand, Objective, Weighting

__all__ = [
    "InnerDraws",
    "GradientEstimate",
    "AttributionEstimate",
    "Objective",
    "SDS",
    "DMD",
    "Integrand",
    "resolve_sampler",
    "draw_inner",
    "surrogate_loss",
    "estimate",
    "estimate_from_draws",
    "sds",
    "dmd",
    "attribution",
]

class GradientEstimate(NamedTuple):
    r"""A hierarchical gradient estimate with respect to the upstream output.

    Attributes:
        grad: $g_r = \frac1K\sum_k \tilde w_{rk} f_{rk}$, shape ``(R, *S)`` like ``x`` (detached).
        loss: the surrogate $L$ (module docstring); ``loss.backward()`` gives $\hat G$.
        grad_norm: $\lVert g\rVert$ over all of ``grad`` (threestudio's ``grad_norm``).
        t: timesteps, ``(R, K)``.
        w: importance weights $\tilde w$, ``(R, K)``.
        sq_norm: $\lVert f_{rk}\rVert^2$ (unweighted), ``(R, K)``; ``None`` without diagnostics.
        variance: unbiased $\operatorname{tr}\widehat{\operatorname{Var}}$ of $\frac1R\sum_r g_r$, 0-dim (``nan`` when $R = 1$).
        components: ANOVA :class:`~carv_torch.estimator.VarianceComponents` of $Y_{rk}$, or ``None`` unless
            $R, K \ge 2$ (and without diagnostics).
        K: inner draws per upstream sample.
        values: the weighted draws $Y_{rk} = \tilde w_{rk} f_{rk}$, ``(R, K, *S)`` (detached), from
            which parameter-space variance components are probed (:mod:`carv_torch.guidance`).
    """

    grad: torch.Tensor
    loss: torch.Tensor
    grad_norm: torch.Tensor
    t: torch.Tensor
    w: torch.Tensor
    sq_norm: torch.Tensor
    variance: Any
    components: Any
    K: int
    values: Any = None


def _check_upstream(name: str, x) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2:
        raise TypeError(f"{name} must be a floating tensor of shape (R, C, H, W), got "
                        f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))} {getattr(x, 'dtype', '')}")
    if x.shape[0] < 1:
        raise ValueError(f"{name} must hold at least one upstream sample, got shape {tuple(x.shape)}")


def surrogate_loss(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    r"""$L = \frac{1}{2R}\lVert x - \mathrm{sg}(x - g)\rVert^2$, so $\nabla_x L = g/R$ and $\nabla_\theta L = \frac1R\sum_r J_r^\top g_r$."""
    for name, value in (("x", x), ("grad", grad)):
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {describe(value)} "
                            f"({type(value).__name__})")
    if x.ndim == 0:
        raise ValueError("x must have a leading batch dimension (R, ...), got shape ()")
    if grad.shape != x.shape:
        raise ValueError(f"grad must have shape {tuple(x.shape)} like x, got {tuple(grad.shape)}")
    if grad.device != x.device:
        raise ValueError(f"grad is on {grad.device} but x is on {x.device}")
    check_finite("grad", grad)  # value check (gated): a NaN grad would poison every parameter
    return _surrogate(x, grad)


def _surrogate(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    # surrogate_loss on checked inputs (the estimate's own grad: no further host read).
    target = (x - grad.to(x.dtype)).detach()
    # threestudio's form: one fused autograd node, where (x - target).pow(2).sum() is three.
    return 0.5 * torch.nn.functional.mse_loss(x, target, reduction="sum") / x.shape[0]


def _estimate(x: torch.Tensor, f: torch.Tensor, draws: InnerDraws, K: int, *,
              diagnostics: bool = True) -> GradientEstimate:
    # f: (R, K, *S) unweighted integrand. 1. weight, 2. average over K, 3. surrogate;
    # the ANOVA components and sq_norm only when diagnostics are wanted.
    R = x.shape[0]
    # Weighted once; both estimates below read Y. Y is finite when the teacher's output
    # was (its own check) and the weights are (finite by construction): no second check.
    Y = f * _expand(draws.w.to(f.dtype), f)
    parts = _between(Y)  # row means, G, S_B: shared by the estimate and the ANOVA
    est = _hierarchical(Y, parts)
    grad = est.row_means.to(x.dtype)
    components = _anova(Y, parts) if (diagnostics and R >= 2 and K >= 2) else None
    sq_norm = f.reshape(R, K, -1).pow(2).sum(-1) if diagnostics else None
    return GradientEstimate(grad, _surrogate(x, grad), grad.norm(), draws.t, draws.w,
                            sq_norm, est.variance, components, K, Y)


def _check_draws(x: torch.Tensor, draws) -> None:
    # Structural (metadata only): draws that do not match x would broadcast silently.
    if not isinstance(draws, tuple) or len(draws) != 3 or \
            not all(isinstance(v, torch.Tensor) for v in draws):
        raise TypeError(f"draws must be carv_torch.InnerDraws (t, w, eps tensors), got {type(draws).__name__}")
    t, w, eps = draws
    if t.ndim != 2 or t.shape[0] != x.shape[0]:
        raise ValueError(f"draws.t must have shape (R, K) with R = {x.shape[0]} like x, got {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"draws.t must hold integer timesteps, got dtype {t.dtype}")
    if w.shape != t.shape:
        raise ValueError(f"draws.w must have shape {tuple(t.shape)} like draws.t, got {tuple(w.shape)}")
    if eps.shape != t.shape + x.shape[1:]:
        raise ValueError(f"draws.eps must have shape {tuple(t.shape + x.shape[1:])} ((R, K) + x.shape[1:]), "
                         f"got {tuple(eps.shape)}")


def estimate_from_draws(objective, x: torch.Tensor, draws: InnerDraws, *, diagnostics: bool = True,
                        **conditions) -> GradientEstimate:
    r"""$g_r = \frac1K\sum_k \tilde w_{rk} f(x_r, t_{rk}, \epsilon_{rk})$ for given draws (all $RK$ teacher inputs in one call).

    With ``diagnostics=False`` the estimate's ``components`` and ``sq_norm`` are ``None``
    (they cost a few tensor ops a step; the guidance asks for them only when it uses them).
    With validation on, draws not made by :func:`draw_inner` are checked first (``draws.t``
    in $[0, T)$, ``draws.w`` finite; one host read).
    """
    _check_draws(x, draws)
    check_draw_values(draws, objective.alphas_cumprod.shape[0])
    R, K = draws.t.shape
    per_draw = {k: _per_draw(v, R, K, k) for k, v in conditions.items()}
    with torch.no_grad():
        x_t, t = _noisy(x, draws, objective.alphas_cumprod)
        f = objective.integrand(x_t, t, draws.eps.reshape(x_t.shape), **per_draw)
    return _estimate(x, f.reshape(draws.eps.shape), draws, K, diagnostics=diagnostics)


def estimate(objective, x: torch.Tensor, *, K: int, sampler=None, p=None, q=None,
             design="stratified", antithetic: bool = False, generator=None,
             **conditions) -> GradientEstimate:
    r"""The hierarchical estimate of any :class:`Objective` at upstream outputs ``x`` ``(R, *S)``.

    Args:
        objective: :class:`SDS`, :class:`DMD`, :class:`Integrand` or any :class:`Objective`.
        x: upstream outputs (latents for a latent teacher); may require grad.
        K: inner draws per upstream sample.
        sampler: any core-protocol sampler; or ``p``, ``q``, ``design`` (shorthand).
        antithetic: $(\epsilon, -\epsilon)$ pairs along $K$.
        generator: ``torch.Generator`` on ``x``'s device.
        conditions: keyword tensors for ``objective.integrand`` (leading dim 1 or ``R``).
    """
    _check_upstream("x", x)
    if not isinstance(objective, Objective):
        raise TypeError(f"objective must follow carv_torch.objectives.Objective (name, "
                        f"alphas_cumprod, weights, integrand), got {type(objective).__name__}")
    check_finite("x", x)  # value check (gated): a NaN x is the caller's, not the teacher's
    T = objective.alphas_cumprod.shape[0]
    sampler = resolve_sampler(sampler, p, q, design, n_timesteps=T, device=x.device)
    # Failure-atomic: whatever raises (a teacher, a value check, KeyboardInterrupt), the
    # generator is left as it was, so a retry reproduces the fault-free call.
    with restoring(generator, x.device):
        draws = draw_inner(x.shape[0], K, x.shape[1:], sampler=sampler, antithetic=antithetic,
                           generator=generator, device=x.device, dtype=x.dtype)
        return estimate_from_draws(objective, x, draws, **conditions)


def sds(teacher, x: torch.Tensor, *, K: int, p=None, q=None, design="stratified", sampler=None,
        weighting: Weighting = "sds", include_alpha: bool = True, condition=None, uncond=None,
        guidance_scale: float = 1.0, antithetic: bool = False, generator=None) -> GradientEstimate:
    r"""Score distillation, $g_r = \frac1K\sum_k \tilde w_{rk}\,w(t_{rk})\,\alpha_{t_{rk}}(\hat\epsilon(x_{t,rk}, t_{rk}, y) - \epsilon_{rk})$: :func:`estimate` of :class:`SDS`.

    Args:
        teacher: a :class:`~carv_torch.teachers.Teacher`.
        x: upstream outputs, ``(R, C, H, W)`` (latents for a latent teacher); may require grad.
        K: inner draws per upstream sample.
        p, q, design: target and proposal pmfs over the teacher's ``T`` steps and the design;
            or ``sampler`` (any core-protocol sampler).
        weighting, include_alpha, guidance_scale: as in :class:`SDS`.
        condition, uncond: per upstream sample (leading dim 1 or ``R``).
        antithetic: $(\epsilon, -\epsilon)$ pairs along $K$.
        generator: ``torch.Generator`` on ``x``'s device.

    Example:
        >>> import torch
        >>> from carv_torch.teachers import GaussianMixtureTeacher
        >>> abar = torch.linspace(0.99, 0.05, 50, dtype=torch.float64)
        >>> teacher = GaussianMixtureTeacher(torch.zeros(1, 4, dtype=torch.float64), 1.0, abar)
        >>> x = torch.ones(2, 1, 2, 2, dtype=torch.float64, requires_grad=True)
        >>> est = sds(teacher, x, K=4, p=torch.full((50,), 0.02, dtype=torch.float64),
        ...           generator=torch.Generator().manual_seed(0))
        >>> est.grad.shape, est.t.shape, est.K
        (torch.Size([2, 1, 2, 2]), torch.Size([2, 4]), 4)
    """
    objective = SDS(teacher, weighting=weighting, include_alpha=include_alpha,
                    guidance_scale=guidance_scale)
    return estimate(objective, x, K=K, sampler=sampler, p=p, q=q, design=design,
                    antithetic=antithetic, generator=generator, condition=condition, uncond=uncond)


def dmd(real, fake, x: torch.Tensor, *, K: int, p=None, q=None, design="stratified", sampler=None,
        weighting: Weighting = "uniform", condition=None, uncond=None, guidance_scale: float = 1.0,
        fake_condition=None, antithetic: bool = False, generator=None) -> GradientEstimate:
    r"""Distribution matching, $g_r = \frac1K\sum_k \tilde w_{rk}\,w(t_{rk})\,(\hat\epsilon_{\rm real} - \hat\epsilon_{\rm fake})(x_{t,rk}, t_{rk})$: :func:`estimate` of :class:`DMD`.

    See the module docstring for the sign. Arguments as in :func:`sds`; ``x`` are
    generator outputs ``(R, C, H, W)``.
    """
    objective = DMD(real, fake, weighting=weighting, guidance_scale=guidance_scale)
    return estimate(objective, x, K=K, sampler=sampler, p=p, q=q, design=design,
                    antithetic=antithetic, generator=generator, condition=condition,
                    uncond=uncond, fake_condition=fake_condition)
