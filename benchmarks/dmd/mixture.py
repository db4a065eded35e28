r"""$p^\star$: a diagonal Gaussian mixture fitted to the digits, declared the true distribution.

$p^\star(x) = \sum_m \pi_m\,\mathcal N(x; \mu_m, \operatorname{diag} s_m^2)$ on $D = 64$ coordinates
(the 8×8 digits in $[-1, 1]$), fitted by scikit-learn's EM (``GaussianMixture``,
``covariance_type="diag"``, a fixed ``random_state``). It gives unlimited exact samples,
the exact $\log p^\star$, and, through :class:`carv_torch.GaussianMixtureTeacher`, the exact
noise prediction at every $\bar\alpha_t$ (the real score of DMD, free of teacher error).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from carv_torch import GaussianMixtureTeacher

from ..digits import load_digits

__all__ = ["Mixture", "fit_mixture", "sample", "log_prob", "real_teacher", "mean_and_cov"]

#: A floor on the fitted variances (sklearn's reg_covar): keeps every component proper.
REG_COVAR = 1e-3


class Mixture(NamedTuple):
    """Weights ``(M,)``, means ``(M, D)`` and variances ``(M, D)`` (float64)."""

    weights: torch.Tensor
    means: torch.Tensor
    variances: torch.Tensor


def fit_mixture(n_components: int = 10, seed: int = 0) -> Mixture:
    """EM fit to all 1797 digits (scikit-learn), deterministic for a given ``seed``."""
    from sklearn.mixture import GaussianMixture

    x = load_digits().images.reshape(-1, 64).double().numpy()
    gm = GaussianMixture(n_components, covariance_type="diag", reg_covar=REG_COVAR, random_state=seed,
                         max_iter=500).fit(x)
    return Mixture(torch.from_numpy(gm.weights_), torch.from_numpy(gm.means_), torch.from_numpy(gm.covariances_))


def sample(mix: Mixture, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    r"""$n$ exact samples ``(n, 1, 8, 8)`` (float32) and their components ``(n,)``."""
    comp = torch.multinomial(mix.weights, n, replacement=True, generator=generator)
    z = torch.randn(n, mix.means.shape[1], generator=generator, dtype=torch.float64)
    x = mix.means[comp] + mix.variances[comp].sqrt() * z
    return x.float().reshape(n, 1, 8, 8), comp


def log_prob(mix: Mixture, x: torch.Tensor) -> torch.Tensor:
    r"""Exact $\log p^\star(x)$ per sample, and the responsibilities: returns ``(log_p (n,), gamma (n, M))``."""
    v = x.reshape(x.shape[0], 1, -1).double()
    var = mix.variances[None]
    logits = (mix.weights.log()[None] - 0.5 * ((v - mix.means[None]) ** 2 / var + var.log()
                                               + math.log(2 * math.pi)).sum(-1))
    lp = torch.logsumexp(logits, -1)
    return lp, (logits - lp[:, None]).exp()


def real_teacher(mix: Mixture, alphas_cumprod: torch.Tensor, dtype=torch.float32) -> GaussianMixtureTeacher:
    r"""The exact $\hat\epsilon$ of $p^\star$ under the schedule ``alphas_cumprod``."""
    return GaussianMixtureTeacher(mix.means.to(dtype), mix.variances.to(dtype), alphas_cumprod,
                                  mix.weights.log().to(dtype))


def mean_and_cov(mix: Mixture) -> tuple[np.ndarray, np.ndarray]:
    r"""$p^\star$'s exact mean and covariance (law of total covariance), for the Fréchet distance."""
    w, mu, var = (a.numpy() for a in mix)
    mean = w @ mu
    cov = np.einsum("m,md,me->de", w, mu - mean, mu - mean) + np.diag(w @ var)
    return mean, cov
