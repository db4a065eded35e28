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
| :func:`attribution` | $\nabla_\phi\, w(t)\,\tfrac1D\lVert\hat\epsilon_\phi(x_t, t, y) - \epsilon\rVert^2$ (features, not a gradient in $x$) |

DMD sign: the KL gradient is $\mathbb E[(s_{\rm fake} - s_{\rm real})(x_t)\,\alpha_t\,\partial x/\partial\theta]$
and $s = -\hat\epsilon/\sigma_t$, so $s_{\rm fake} - s_{\rm real} = (\hat\epsilon_{\rm real} - \hat\epsilon_{\rm fake})/\sigma_t$:
descending $g$ moves $x$ toward the real distribution. SDS is the special case
$\hat\epsilon_{\rm fake} = \epsilon$. DMD2's $x_0$-space residual is ``weighting``
$= \sigma_t/\alpha_t$ (times its per-sample normaliser, which we leave to the caller).

Randomness: from ``generator`` the uniforms are drawn first, then the noise.
Diagnostics are in $x$-space: ``components`` are ANOVA estimates of
$\sigma_B^2, \sigma_W^2$ of $Y_{rk} = \tilde w_{rk} f_{rk}$ (a proxy for the
$\theta$-space components; conservative under stratification, see
:mod:`carv_torch.estimator`), and ``sq_norm`` $= \lVert f_{rk}\rVert^2$ is what an
:class:`~carv_torch.proposals.AdaptiveProposal` is updated with.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Union

import torch

from .estimator import hierarchical_estimate, variance_components
from .sampling import draw_uniforms, gaussian_noise, timesteps_from_uniforms
from .schedules import DiscreteSchedule
from .weighting import sds_weight

__all__ = [
    "InnerDraws",
    "GradientEstimate",
    "AttributionEstimate",
    "draw_inner",
    "surrogate_loss",
    "sds",
    "dmd",
    "attribution",
]

Weighting = Union[str, torch.Tensor]


class InnerDraws(NamedTuple):
    r"""Inner draws: timesteps ``t`` ``(R, K)``, weights $\tilde w$ ``(R, K)``, noise ``eps`` ``(R, K, *S)``."""

    t: torch.Tensor
    w: torch.Tensor
    eps: torch.Tensor


class GradientEstimate(NamedTuple):
    r"""A hierarchical gradient estimate with respect to the upstream output.

    Attributes:
        grad: $g_r = \frac1K\sum_k \tilde w_{rk} f_{rk}$, shape ``(R, *S)`` like ``x`` (detached).
        loss: the surrogate $L$ (module docstring); ``loss.backward()`` gives $\hat G$.
        grad_norm: $\lVert g\rVert$ over all of ``grad`` (threestudio's ``grad_norm``).
        t: timesteps, ``(R, K)``.
        w: importance weights $\tilde w$, ``(R, K)``.
        sq_norm: $\lVert f_{rk}\rVert^2$ (unweighted), ``(R, K)``.
        variance: unbiased $\operatorname{tr}\widehat{\operatorname{Var}}$ of $\frac1R\sum_r g_r$ (``nan`` when $R = 1$).
        components: ANOVA :class:`~carv_torch.estimator.VarianceComponents` of $Y_{rk}$, or ``None`` unless $R, K \ge 2$.
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


class AttributionEstimate(NamedTuple):
    r"""Per-example features $\phi_r = \nabla_\phi \frac1K\sum_k \tilde w_{rk}\,\ell_{rk}$.

    Attributes:
        features: ``(R, P)``, $P$ the total number of entries of ``params``.
        losses: $\ell_{rk}$ (unweighted, detached), ``(R, K)``.
        t, w: ``(R, K)``; identical rows under common random numbers.
        K: inner draws per example.
    """

    features: torch.Tensor
    losses: torch.Tensor
    t: torch.Tensor
    w: torch.Tensor
    K: int


# --------------------------------------------------------------------------- helpers


def _check_upstream(name: str, x) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2:
        raise TypeError(f"{name} must be a floating tensor of shape (R, C, H, W), got "
                        f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))} {getattr(x, 'dtype', '')}")
    if x.shape[0] < 1:
        raise ValueError(f"{name} must hold at least one upstream sample, got shape {tuple(x.shape)}")


def _check_K(K, antithetic: bool) -> int:
    if isinstance(K, bool) or not isinstance(K, int):
        raise TypeError(f"K must be an integer >= 1, got {K!r} ({type(K).__name__})")
    if K < 1:
        raise ValueError(f"K must be >= 1, got {K}")
    if antithetic and K % 2:
        raise ValueError(f"K must be even for antithetic noise pairs, got K = {K}")
    return K


def _teacher_abar(teacher) -> torch.Tensor:
    abar = getattr(teacher, "alphas_cumprod", None)
    if not isinstance(abar, torch.Tensor) or abar.ndim != 1:
        raise TypeError(f"teacher must follow carv_torch.teachers.Teacher (a 1-D tensor "
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


def _per_draw(value, R: int, K: int, name: str):
    # Conditioning given per upstream sample (leading dim 1 or R) -> one row per draw.
    if value is None or not isinstance(value, torch.Tensor):
        return value
    if value.ndim == 0 or value.shape[0] not in (1, R):
        raise ValueError(f"{name} must have leading dimension 1 or R = {R}, got shape {tuple(value.shape)}")
    return value if value.shape[0] == 1 else value.repeat_interleave(K, dim=0)


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


def draw_inner(R: int, K: int, shape, p, q=None, *, design: str = "stratified",
               antithetic: bool = False, common: bool = False, generator=None,
               device=None, dtype: torch.dtype = torch.float32) -> InnerDraws:
    r"""Draw $t_{rk} = F_q^{-1}(u_{rk})$, $\tilde w_{rk} = p/q$ and $\epsilon_{rk} \sim \mathcal N(0, I)$.

    Args:
        R, K: upstream samples and inner draws per sample.
        shape: the shape $S$ of one upstream output.
        p: target pmf ``(T,)``. q: proposal pmf ``(T,)`` (``None``: $q = p$).
        design: uniform design (:data:`carv_torch.sampling.DESIGNS`).
        antithetic: noise in pairs $(\epsilon, -\epsilon)$ along $K$.
        common: common random numbers: one row of draws shared by all $R$.
        generator: ``torch.Generator`` on ``device``; uniforms first, then noise.
    """
    K = _check_K(K, antithetic)
    rows = 1 if common else R
    p_t = torch.as_tensor(p, dtype=torch.float64, device=device)
    q_t = p_t if q is None else torch.as_tensor(q, dtype=torch.float64, device=device)
    u = draw_uniforms(design, rows, K, generator, device=device)
    draw = timesteps_from_uniforms(u, p_t, q_t)
    eps = gaussian_noise(tuple(shape), K, generator, antithetic, R=rows,
                                  device=device, dtype=dtype)
    if common and R > 1:
        return InnerDraws(draw.t.expand(R, K), draw.w.expand(R, K), eps.expand(R, *eps.shape[1:]))
    return InnerDraws(draw.t, draw.w, eps)


def surrogate_loss(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    r"""$L = \frac{1}{2R}\lVert x - \mathrm{sg}(x - g)\rVert^2$, so $\nabla_x L = g/R$ and $\nabla_\theta L = \frac1R\sum_r J_r^\top g_r$."""
    if grad.shape != x.shape:
        raise ValueError(f"grad must have shape {tuple(x.shape)} like x, got {tuple(grad.shape)}")
    target = (x - grad.to(x.dtype)).detach()
    return 0.5 * (x - target).pow(2).sum() / x.shape[0]


def _noisy(x: torch.Tensor, draws: InnerDraws, abar: torch.Tensor):
    # x_t = alpha_t x + sigma_t eps for every (r, k), flattened to (R K, *S).
    a = abar.to(device=x.device, dtype=torch.float64)[draws.t]
    alpha = _expand(a.sqrt().to(x.dtype), draws.eps)
    sigma = _expand((1.0 - a).sqrt().to(x.dtype), draws.eps)
    x_t = alpha * x.detach()[:, None] + sigma * draws.eps
    return x_t.reshape(-1, *x.shape[1:]), draws.t.reshape(-1)


def _estimate(x: torch.Tensor, f: torch.Tensor, draws: InnerDraws, K: int) -> GradientEstimate:
    # f: (R, K, *S) unweighted integrand. 1. weight, 2. average over K, 3. surrogate.
    R = x.shape[0]
    Y = f * _expand(draws.w.to(f.dtype), f)  # weighted once; both estimates below read Y
    est = hierarchical_estimate(Y)
    grad = est.row_means.to(x.dtype)
    components = variance_components(Y) if (R >= 2 and K >= 2) else None
    sq_norm = f.reshape(R, K, -1).pow(2).sum(-1)
    return GradientEstimate(grad, surrogate_loss(x, grad), grad.norm(), draws.t, draws.w,
                            sq_norm, est.variance, components, K, Y)


# --------------------------------------------------------------------------- objectives


def sds(teacher, x: torch.Tensor, *, K: int, p, q=None, design: str = "stratified",
        weighting: Weighting = "sds", include_alpha: bool = True, condition=None, uncond=None,
        guidance_scale: float = 1.0, antithetic: bool = False, generator=None) -> GradientEstimate:
    r"""Score distillation: $g_r = \frac1K\sum_k \tilde w_{rk}\,w(t_{rk})\,\alpha_{t_{rk}}(\hat\epsilon(x_{t,rk}, t_{rk}, y) - \epsilon_{rk})$.

    $\hat\epsilon$ is the teacher's prediction with classifier-free guidance
    $\hat\epsilon_\varnothing + s(\hat\epsilon_y - \hat\epsilon_\varnothing)$; all $R K$ noisy
    inputs go to the teacher in one batched call (chunked by the teacher).

    Args:
        teacher: a :class:`~carv_torch.teachers.Teacher`.
        x: upstream outputs, ``(R, C, H, W)`` (latents for a latent teacher); may require grad.
        K: inner draws per upstream sample.
        p, q: target and proposal pmfs over the teacher's ``T`` steps.
        design: uniform design of the sampler.
        weighting: preset name or a ``(T,)`` tensor of $w(t)$.
        include_alpha: multiply by $\alpha_t$ (paper); ``False`` is threestudio's $w(t)$ only.
        condition, uncond: per upstream sample (leading dim 1 or ``R``).
        guidance_scale: CFG scale $s$.
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
    _check_upstream("x", x)
    abar = _teacher_abar(teacher)
    R = x.shape[0]
    draws = draw_inner(R, K, x.shape[1:], p, q, design=design, antithetic=antithetic,
                       generator=generator, device=x.device, dtype=x.dtype)
    table = _weight_table(weighting, abar, include_alpha).to(x.device)
    with torch.no_grad():
        x_t, t = _noisy(x, draws, abar)
        eps_hat = teacher.predict_noise(x_t, t, _per_draw(condition, R, K, "condition"),
                                        uncond=_per_draw(uncond, R, K, "uncond"),
                                        guidance_scale=guidance_scale)
        # f = w(t) alpha_t (eps_hat - eps)
        f = _expand(table[draws.t].to(x.dtype), draws.eps) * (eps_hat.reshape(draws.eps.shape) - draws.eps)
    return _estimate(x, f, draws, K)


def dmd(real, fake, x: torch.Tensor, *, K: int, p, q=None, design: str = "stratified",
        weighting: Weighting = "uniform", condition=None, uncond=None, guidance_scale: float = 1.0,
        fake_condition=None, antithetic: bool = False, generator=None) -> GradientEstimate:
    r"""Distribution matching: $g_r = \frac1K\sum_k \tilde w_{rk}\,w(t_{rk})\,(\hat\epsilon_{\rm real} - \hat\epsilon_{\rm fake})(x_{t,rk}, t_{rk})$.

    The real teacher gets CFG (``condition``, ``uncond``, ``guidance_scale``); the
    fake score gets ``fake_condition`` and no guidance. Both see the same noisy inputs.
    See the module docstring for the sign.

    Args:
        real, fake: teachers sharing ``alphas_cumprod``.
        x: generator outputs ``(R, C, H, W)``; other arguments as in :func:`sds`.
    """
    _check_upstream("x", x)
    abar = _teacher_abar(real)
    abar_fake = _teacher_abar(fake)
    if abar_fake.shape != abar.shape or not torch.equal(abar_fake.to(abar), abar):
        raise ValueError("real and fake teachers must share alphas_cumprod (the same noise schedule)")
    R = x.shape[0]
    draws = draw_inner(R, K, x.shape[1:], p, q, design=design, antithetic=antithetic,
                       generator=generator, device=x.device, dtype=x.dtype)
    table = _weight_table(weighting, abar, include_alpha=False).to(x.device)
    with torch.no_grad():
        x_t, t = _noisy(x, draws, abar)
        e_real = real.predict_noise(x_t, t, _per_draw(condition, R, K, "condition"),
                                    uncond=_per_draw(uncond, R, K, "uncond"),
                                    guidance_scale=guidance_scale)
        e_fake = fake.predict_noise(x_t, t, _per_draw(fake_condition, R, K, "fake_condition"))
        f = _expand(table[draws.t].to(x.dtype), draws.eps) * (e_real - e_fake).reshape(draws.eps.shape)
    return _estimate(x, f, draws, K)


def attribution(teacher, x0: torch.Tensor, params, *, K: int, p, q=None,
                design: str = "stratified", weighting: Weighting = "uniform", condition=None,
                common_random_numbers: bool = False, antithetic: bool = False,
                generator=None) -> AttributionEstimate:
    r"""Per-example diffusion-loss gradient features $\phi_r = \frac1K\sum_k \tilde w_{rk}\nabla_\phi\ell(x_{0,r}, t_{rk}, \epsilon_{rk})$.

    $\ell = w(t)\,\frac1D\lVert\hat\epsilon_\phi(\alpha_t x_0 + \sigma_t\epsilon, t, y) - \epsilon\rVert^2$
    (the training loss, $D$ entries per example). The $K$ losses of an example
    are averaged before its one backward pass. With ``common_random_numbers``
    every example sees the same $(t_k, \epsilon_k)$, so differences between
    examples' features carry less noise.

    Args:
        teacher: a teacher differentiable in ``params`` (not frozen).
        x0: examples ``(R, C, H, W)``.
        params: tensors requiring grad (e.g. ``list(unet.parameters())``).
        condition: per example (leading dim 1 or ``R``), or ``None``.
    """
    _check_upstream("x0", x0)
    params = [params] if isinstance(params, torch.Tensor) else list(params)
    if not params or not all(isinstance(v, torch.Tensor) and v.requires_grad for v in params):
        raise ValueError("params must be a non-empty list of tensors that require grad")
    abar = _teacher_abar(teacher)
    R = x0.shape[0]
    draws = draw_inner(R, K, x0.shape[1:], p, q, design=design, antithetic=antithetic,
                       common=common_random_numbers, generator=generator, device=x0.device,
                       dtype=x0.dtype)
    table = _weight_table(weighting, abar, include_alpha=False).to(x0.device)
    feats, losses = [], []
    for r in range(R):
        one = InnerDraws(draws.t[r:r + 1], draws.w[r:r + 1], draws.eps[r:r + 1])
        x_t, t = _noisy(x0[r:r + 1], one, abar)
        cond = None if condition is None else _per_draw(condition, R, K, "condition")
        if isinstance(cond, torch.Tensor) and cond.shape[0] == R * K:
            cond = cond[r * K:(r + 1) * K]
        eps_hat = teacher.predict_noise(x_t, t, cond).reshape(one.eps.shape)
        # 1. per-draw losses, 2. importance-weighted mean over K, 3. one backward.
        ell = table[one.t].to(x0.dtype) * (eps_hat - one.eps).pow(2).flatten(2).mean(-1)
        grads = torch.autograd.grad((one.w.to(ell.dtype) * ell).mean(), params)
        feats.append(torch.cat([g.reshape(-1) for g in grads]))
        losses.append(ell.detach()[0])
    return AttributionEstimate(torch.stack(feats), torch.stack(losses), draws.t, draws.w, K)
