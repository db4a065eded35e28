r"""Sample quality against the known $p^\star$, without Inception features.

For $n$ generated samples $x_i$:

- precision: the exact mean $\frac1n\sum_i\log p^\star(x_i)$ (and $p^\star$'s own value, for scale);
- mode coverage: the total variation $\frac12\sum_m\lvert h_m - \pi_m\rvert$ between the histogram
  $h$ of the samples' most responsible components and the true weights $\pi$ (reverse-KL
  training is mode-seeking: a dropped mode shows here);
- the Fréchet distance to $p^\star$'s exact mean and covariance,
  $\lVert\mu - \mu^\star\rVert^2 + \operatorname{tr}(\Sigma + \Sigma^\star - 2(\Sigma^{1/2}\Sigma^\star\Sigma^{1/2})^{1/2})$;
- the sliced Wasserstein distance to $n$ fresh $p^\star$ samples (POT's
  ``ot.sliced_wasserstein_distance``, seeded projections).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import linalg

from .mixture import Mixture, log_prob, mean_and_cov, sample

__all__ = ["METRICS", "frechet", "frechet_to_p_star", "quality"]

#: name -> True when larger is better.
METRICS = {"mean_log_p": True, "mode_tv": False, "frechet": False, "sliced_w": False}


def frechet(mu, cov, mu_s, cov_s) -> float:
    r"""$\lVert\mu - \mu_s\rVert^2 + \operatorname{tr}(\Sigma + \Sigma_s - 2(\Sigma^{1/2}\Sigma_s\Sigma^{1/2})^{1/2})$."""
    half = np.real(linalg.sqrtm(cov))
    root = np.real(linalg.sqrtm(half @ cov_s @ half))
    return float(((mu - mu_s) ** 2).sum() + np.trace(cov + cov_s - 2 * root))


def frechet_to_p_star(x: np.ndarray, mix: Mixture) -> float:
    """Fréchet distance between the Gaussian of ``x``'s moments ``(n, D)`` and $p^\\star$'s exact moments."""
    return frechet(x.mean(0), np.cov(x.T), *mean_and_cov(mix))


def quality(gen_model, mix: Mixture, n: int, generator: torch.Generator) -> dict:
    """The four metrics on ``n`` samples of ``gen_model`` (and ``p_star_mean_log_p`` for scale)."""
    import ot

    with torch.no_grad():
        x = gen_model(torch.randn(n, 1, 8, 8, generator=generator))
    lp, gamma = log_prob(mix, x)
    hist = torch.bincount(gamma.argmax(1), minlength=mix.weights.shape[0]).double() / n
    ref = sample(mix, n, generator)[0]
    ref_lp, _ = log_prob(mix, ref)
    X, Y = x.reshape(n, -1).double().numpy(), ref.reshape(n, -1).double().numpy()
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    return {"mean_log_p": float(lp.mean()), "mean_log_p_se": float(lp.std() / n ** 0.5),
            "p_star_mean_log_p": float(ref_lp.mean()),
            "mode_tv": float(0.5 * (hist - mix.weights).abs().sum()),
            "frechet": frechet_to_p_star(X, mix),
            "sliced_w": float(ot.sliced_wasserstein_distance(X, Y, n_projections=128, seed=seed))}
