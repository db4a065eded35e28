r"""An analytic teacher: the exact noise prediction of a Gaussian mixture (tests, benchmarks, DMD).

Its $\hat\epsilon$ is exact, so estimators built on it can be checked against closed forms.
It follows the :class:`~carv_torch.teachers.Teacher` protocol (CFG included).
"""

from __future__ import annotations

import torch

from ._validation import check_finite as finite_values
from .integrands import _guidance_scale, checks_itself
from .teachers import NAN_POLICIES, _check_inputs, _coefficients, _rows, check_finite

__all__ = ["GaussianMixtureTeacher"]


class GaussianMixtureTeacher:
    r"""The exact epsilon-prediction of a diagonal Gaussian mixture $p_0 = \sum_m \pi_m \mathcal N(\mu_m, \operatorname{diag} s_m^2)$.

    Noising gives $p_t = \sum_m \pi_m \mathcal N(\alpha_t\mu_m, \operatorname{diag} v_{m,t})$ with
    $v_{m,t} = \alpha_t^2 s_m^2 + \sigma_t^2$, whose score is
    $\nabla\log p_t(x) = -\sum_m \gamma_m(x)\,(x - \alpha_t\mu_m)/v_{m,t}$,
    $\gamma = \operatorname{softmax}_m\big(\log\pi_m - \tfrac12\sum_d[\log v_{m,t,d} + (x_d - \alpha_t\mu_{m,d})^2/v_{m,t,d}]\big)$.
    The minimum-MSE noise prediction is $\hat\epsilon(x, t) = -\sigma_t\nabla\log p_t(x)$.

    Inputs of shape ``(N, *S)`` are flattened to $D = \prod S$ coordinates.
    Differentiable in ``x_t`` (and in ``means``/``log_weights`` if they require grad);
    no parameters of its own.

    Args:
        means: $\mu$, shape ``(M, D)``.
        variances: $s^2$, a float, shape ``(M,)`` (isotropic) or ``(M, D)`` (diagonal).
        alphas_cumprod: $\bar\alpha_t$, shape ``(T,)``.
        log_weights: $\log\pi$ up to a constant, shape ``(M,)``; ``None`` for equal weights.

    ``condition`` (optional, ``(N or 1, M)`` log-weights) replaces $\log\pi$; with CFG the
    unconditional model is the mixture's own weights unless ``uncond`` is given.

    Example:
        >>> import torch
        >>> abar = torch.linspace(0.99, 0.01, 10, dtype=torch.float64)
        >>> g = GaussianMixtureTeacher(torch.zeros(1, 2, dtype=torch.float64), 1.0, abar)
        >>> g.predict_noise(torch.ones(1, 2, dtype=torch.float64), torch.tensor([3])).tolist()
        [[0.5802298395176403, 0.5802298395176403]]
    """

    def __init__(self, means: torch.Tensor, variances, alphas_cumprod: torch.Tensor,
                 log_weights: torch.Tensor | None = None, *, nan_policy: str = "raise"):
        means = torch.as_tensor(means)
        if means.ndim != 2 or not means.is_floating_point():
            raise ValueError(f"means must be a floating tensor of shape (M, D), got "
                             f"{tuple(means.shape)} {means.dtype}")
        M, D = means.shape
        var = torch.as_tensor(variances, dtype=means.dtype, device=means.device)
        if var.ndim == 0:
            var = var.expand(M)
        if var.shape == (M,):
            var = var[:, None].expand(M, D)
        if var.shape != (M, D) or not bool((var > 0).all()):  # NaN fails the comparison
            if var.shape == (M, D):
                finite_values("variances", var)
            raise ValueError(f"variances must be positive with shape (), ({M},) or ({M}, {D}), "
                             f"got shape {tuple(var.shape)}"
                             + (f" and minimum {float(var.min())}" if var.numel() else ""))
        abar = torch.as_tensor(alphas_cumprod).to(device=means.device, dtype=torch.float64)
        if abar.ndim != 1 or not bool(((abar > 0) & (abar <= 1)).all()):  # NaN fails too
            raise ValueError("alphas_cumprod must be 1-D with values in (0, 1]")
        lw = torch.zeros(M, dtype=means.dtype, device=means.device) if log_weights is None \
            else torch.as_tensor(log_weights)
        if lw.shape != (M,):
            raise ValueError(f"log_weights must have shape ({M},), got {tuple(lw.shape)}")
        for name, value in (("means", means), ("variances", var), ("log_weights", lw)):
            finite_values(name, value)  # value check (gated), once at construction
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
        self.means, self.variances, self.log_weights = means, var, lw
        self.alphas_cumprod = abar
        self.nan_policy = nan_policy

    def to(self, device=None, dtype=None) -> "GaussianMixtureTeacher":
        """A copy on another device/dtype (``alphas_cumprod`` stays float64)."""
        kw = {"device": device, "dtype": dtype}
        return GaussianMixtureTeacher(self.means.to(**kw), self.variances.to(**kw),
                                      self.alphas_cumprod.to(device=device),
                                      self.log_weights.to(**kw), nan_policy=self.nan_policy)

    def score(self, x_t: torch.Tensor, t: torch.Tensor, log_weights: torch.Tensor | None = None):
        r"""$\nabla\log p_t(x_t)$, shape like ``x_t`` ``(N, *S)``."""
        _check_inputs(x_t, t, self.alphas_cumprod.shape[0])
        return self._score(x_t, t, log_weights)

    def _score(self, x_t, t, log_weights):
        # score() on checked inputs.
        N = x_t.shape[0]
        x = x_t.reshape(N, 1, -1)
        if x.shape[-1] != self.means.shape[1]:
            raise ValueError(f"x_t has {x.shape[-1]} coordinates per input, the mixture has "
                             f"D = {self.means.shape[1]}")
        alpha, sigma = _coefficients(self.alphas_cumprod, t, x)
        mu = self.means.to(x.dtype)[None]
        v = alpha**2 * self.variances.to(x.dtype)[None] + sigma**2       # (N, M, D)
        diff = x - alpha * mu                                              # (N, M, D)
        lw = self.log_weights.to(x.dtype)[None] if log_weights is None else log_weights.to(x.dtype)
        logits = lw - 0.5 * (v.log() + diff**2 / v).sum(-1)                # (N, M)
        gamma = torch.softmax(logits, dim=-1)
        return -(gamma[..., None] * diff / v).sum(1).reshape(x_t.shape)

    def _log_weights(self, name: str, value, N: int):
        # A condition: log-weights of shape (N or 1, M), broadcast to N rows.
        rows = _rows(value, N, name)
        M = self.means.shape[0]
        if rows is not None and (rows.ndim != 2 or rows.shape[1] != M or not rows.is_floating_point()):
            raise ValueError(f"{name} must be floating log-weights of shape (N or 1, M) = ({N} or 1, "
                             f"{M}), one per mixture component, got {tuple(value.shape)} {value.dtype}")
        return rows

    def _eps(self, x_t, t, log_weights):
        sigma = _coefficients(self.alphas_cumprod, t, x_t)[1]
        return -sigma * self._score(x_t, t, log_weights)

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, condition=None, *, uncond=None,
                      guidance_scale: float = 1.0) -> torch.Tensor:
        r"""$\hat\epsilon(x_t, t) = -\sigma_t\nabla\log p_t(x_t)$ (with CFG on log-weights), shape like ``x_t``.

        Checked first: ``t`` (integer, shape ``(N,)``, in $[0, T)$), ``guidance_scale`` (finite)
        and, with validation on and ``nan_policy="raise"``, that ``x_t`` is finite (one host
        read for both value checks).
        """
        guidance_scale = _guidance_scale(guidance_scale)
        _check_inputs(x_t, t, self.alphas_cumprod.shape[0], finite_x=self.nan_policy == "raise")
        N = x_t.shape[0]
        cond = self._log_weights("condition", condition, N)
        if guidance_scale != 1.0 and cond is None:
            raise ValueError(f"guidance_scale = {guidance_scale} needs a condition "
                             "(log-weights of shape (N or 1, M))")
        eps = self._eps(x_t, t, cond)
        if guidance_scale != 1.0:
            e_u = self._eps(x_t, t, self._log_weights("uncond", uncond, N))
            eps = e_u + guidance_scale * (eps - e_u)
        if checks_itself(self):
            return check_finite(eps, t, self.nan_policy, f"{type(self).__name__}.predict_noise")
        return eps

    __call__ = predict_noise
