r"""Sample quality against the known $p^\star$, without Inception features.

For $n$ generated samples $x_i$:

- precision: the exact mean $\frac1n\sum_i\log p^\star(x_i)$ (and $p^\star$'s own value, for scale);
- mode coverage: the total variation $\frac12\sum_m\lvert h_m - \pi_m\rvert$ between the histogram
  $h$ of the samples' most responsible components and the true weights $\pi$ (reverse-KL
  training is mode-seeking: a dropped mode shows here);
- the Fréchet distance to $p^\star$'s exact mean and covariance,
  $\lVert\mu - \mu^\star\rVert^2 + \operatorname{tr}(\Sigma + \Sigma^\star - 2(\Sigma^{1/2}\Sigma^\star\Sigma^{1/2})^{1/2})$;
- the sliced Wasserstein distance to $n$ fresh $p^\star$ samples (POT's
  ``ot.sliced_wasserstein_distance``, seeded projections);
- with a trained digits classifier (:mod:`.classifier`), the Fréchet distance in its feature
  space to a fixed set of $p^\star$ samples (``fid``, torchmetrics' FID with that extractor).

:class:`QualityMeter` also gives bootstrap replicates of every metric: the same metric on
$n$ samples drawn with replacement from the $n$ generated ones (the reference sets fixed),
so a run's final value carries its sampling error.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import linalg

from .mixture import Mixture, log_prob, mean_and_cov, sample

__all__ = ["METRICS", "frechet", "frechet_to_p_star", "quality", "QualityMeter"]

#: name -> True when larger is better (``fid`` only with a classifier).
METRICS = {"mean_log_p": True, "mode_tv": False, "frechet": False, "sliced_w": False, "fid": False}


def frechet(mu, cov, mu_s, cov_s) -> float:
    r"""$\lVert\mu - \mu_s\rVert^2 + \operatorname{tr}(\Sigma + \Sigma_s - 2(\Sigma^{1/2}\Sigma_s\Sigma^{1/2})^{1/2})$."""
    half = np.real(linalg.sqrtm(cov))
    root = np.real(linalg.sqrtm(half @ cov_s @ half))
    return float(((mu - mu_s) ** 2).sum() + np.trace(cov + cov_s - 2 * root))


def frechet_to_p_star(x: np.ndarray, mix: Mixture) -> float:
    """Fréchet distance between the Gaussian of ``x``'s moments ``(n, D)`` and $p^\\star$'s exact moments."""
    return frechet(x.mean(0), np.cov(x.T), *mean_and_cov(mix))


def _metrics(x, lp, comp, Y, mix: Mixture, moments, seed: int, fid) -> dict:
    import ot

    n = x.shape[0]
    hist = torch.bincount(comp, minlength=mix.weights.shape[0]).double() / n
    X = x.reshape(n, -1).double().numpy()
    out = {"mean_log_p": float(lp.mean()), "mode_tv": float(0.5 * (hist - mix.weights).abs().sum()),
           "frechet": frechet(X.mean(0), np.cov(X.T), *moments),
           "sliced_w": float(ot.sliced_wasserstein_distance(X, Y, n_projections=128, seed=seed))}
    if fid is not None:
        out["fid"] = float(fid(x))
    return out


class QualityMeter:
    """The metrics of the module docstring on ``n`` generated samples; ``fid`` when given a classifier FID.

    ``fid``: a callable ``x (n, 1, 8, 8) -> float`` with its reference set fixed
    (:class:`.classifier.ClassifierFID`), or ``None``.
    """

    def __init__(self, mix: Mixture, n: int, fid=None):
        if int(n) < 2:
            raise ValueError(f"n must be an integer >= 2 (samples per evaluation), got {n!r}")
        self.mix, self.n, self.fid = mix, int(n), fid
        self.moments = mean_and_cov(mix)   # p*'s exact moments, once (every replicate's Fréchet uses them)

    def __call__(self, gen_model, generator: torch.Generator, *, boot: int = 0) -> dict:
        """The metrics (and ``p_star_mean_log_p``); with ``boot`` > 0, ``boot`` replicates of each under ``"boot"``."""
        n, mix = self.n, self.mix
        with torch.no_grad():
            x = gen_model(torch.randn(n, 1, 8, 8, generator=generator))
        lp, gamma = log_prob(mix, x)
        comp = gamma.argmax(1)
        ref = sample(mix, n, generator)[0]
        ref_lp, _ = log_prob(mix, ref)
        Y = ref.reshape(n, -1).double().numpy()
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        out = _metrics(x, lp, comp, Y, mix, self.moments, seed, self.fid)
        out.update(mean_log_p_se=float(lp.std() / n ** 0.5), p_star_mean_log_p=float(ref_lp.mean()))
        if boot:
            reps = []
            for _ in range(int(boot)):
                i = torch.randint(0, n, (n,), generator=generator)
                reps.append(_metrics(x[i], lp[i], comp[i], Y, mix, self.moments, seed, self.fid))
            out["boot"] = {m: [r[m] for r in reps] for m in reps[0]}
        return out


def quality(gen_model, mix: Mixture, n: int, generator: torch.Generator) -> dict:
    """The metrics without a classifier on ``n`` samples of ``gen_model`` (and ``p_star_mean_log_p``)."""
    return QualityMeter(mix, n)(gen_model, generator)
