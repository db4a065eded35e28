r"""The attribution pipeline: sampling designs as sampler objects, projected features, scores, metrics.

A *configuration* is a sampler object (a design and the inverse CDF of $p = q =$
uniform on the $T = 1000$ steps, or of an importance proposal $q$) and whether the
draws are common to all data points. The feature of point $r$ at budget $K$ is
:func:`carv_torch.attribution` of the loss gradient with respect to
:func:`~benchmarks.attribution.model.feature_params`, projected by TRAK's
``BasicProjector`` (Rademacher, scaled by $1/\sqrt k$ so norms are kept),

$$ \hat\phi_r = \Pi\,\nabla_\phi\frac1K\sum_k \tilde w_{rk}\,\ell(x_r, t_{rk}, \epsilon_{rk}),\qquad
   s(q, r) = \frac{\langle\hat\phi_q, \hat\phi_r\rangle}{\lVert\hat\phi_q\rVert\,\lVert\hat\phi_r\rVert}. $$

| name | design | $t$ of point $r$ | common to all points |
|---|---|---|---|
| ``iid`` | ``IID`` | i.i.d. uniform | no |
| ``grid`` | :class:`~carv_core.quadrature.FixedGrid` | $k\lfloor T/K\rfloor$ (D-TRAK) | no ($\epsilon$ independent) |
| ``stratified`` | ``Stratified`` | $\lfloor T(k + \xi_{rk})/K\rfloor$ | no |
| ``systematic`` | ``Systematic`` | $\lfloor T(k + \xi_r)/K\rfloor$ (the grid, one random shift) | no |
| ``is+stratified`` | ``Stratified`` under $q \propto p\sqrt{m_2(t)}$ | measured $m_2$ | no |
| ``*+crn`` | the same | | $(t_k, \epsilon_k)$ shared (``grid+crn`` is D-TRAK's per-timestep seeds) |
"""

from __future__ import annotations

import itertools
import math
import time
from typing import NamedTuple

import numpy as np
import torch
from scipy.stats import spearmanr

import carv_torch
from carv_core.designs import IID, Design, Stratified, Systematic
from carv_core import FixedGrid
from carv_torch.sampling import InverseCDFSampler

from .model import feature_params

__all__ = [
    "Config",
    "T",
    "configs",
    "cosine_scores",
    "features",
    "is_proposal",
    "make_projector",
    "spearman_per_query",
]

T = 1000


class Config(NamedTuple):
    name: str
    design: Design
    common: bool
    q: torch.Tensor | None = None  # proposal pmf (None: uniform)

    def sampler(self) -> InverseCDFSampler:
        p = torch.full((T,), 1.0 / T, dtype=torch.float64)
        return InverseCDFSampler(p, p if self.q is None else self.q, self.design)


def configs(q_is: torch.Tensor | None = None) -> list[Config]:
    """The study's configurations (``is+stratified`` only when a proposal is given)."""
    out = []
    for name, design in (("iid", IID()), ("grid", FixedGrid(T)), ("stratified", Stratified()),
                         ("systematic", Systematic())):
        out += [Config(name, design, False), Config(name + "+crn", design, True)]
    if q_is is not None:
        out.append(Config("is+stratified", Stratified(), False, q_is))
    return out


def make_projector(grad_dim: int, proj_dim: int, seed: int = 0):
    r"""TRAK's CPU projector as a map ``(n, P) -> (n, k)``, $\Pi = R/\sqrt k$ with $R$ Rademacher."""
    try:
        from trak.projectors import BasicProjector, ProjectionType
    except ImportError as err:
        raise ImportError("the attribution benchmark projects with TRAK's projector: pip install traker") from err
    proj = BasicProjector(grad_dim=grad_dim, proj_dim=proj_dim, seed=seed, proj_type=ProjectionType.rademacher,
                          device=torch.device("cpu"), block_size=proj_dim, dtype=torch.float32)
    scale = 1.0 / math.sqrt(proj_dim)
    return lambda g: proj.project(g.to(torch.float32), model_id=0) * scale


def features(teacher, x0: torch.Tensor, config: Config, K: int, generator: torch.Generator, project,
             max_inputs: int = 512) -> tuple[torch.Tensor, float]:
    """Projected features ``(R, k)`` (float64) of one configuration at budget ``K``, and the seconds it took."""
    t0 = time.perf_counter()
    est = carv_torch.attribution(teacher, x0, feature_params(teacher.unet), K=K, sampler=config.sampler(),
                                 common_random_numbers=config.common, generator=generator,
                                 chunk_size=max(1, max_inputs // K), project=project)
    return est.features.to(torch.float64), time.perf_counter() - t0


def cosine_scores(queries: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    r"""$s(q, r)$ of shape ``(n_queries, n_train)``."""
    qn = queries / queries.norm(dim=1, keepdim=True).clamp_min(1e-30)
    tn = train / train.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return qn @ tn.T


def spearman_per_query(scores: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    """Spearman correlation of each query's scores with its reference scores, shape ``(n_queries,)``."""
    return np.array([spearmanr(a, b).statistic for a, b in zip(scores.numpy(), reference.numpy())])


def is_proposal(teacher, x0: torch.Tensor, project, *, n_draws: int, n_bins: int, seed: int,
                defensive: float = 0.1) -> tuple[torch.Tensor, dict]:
    r"""The oracle-style proposal $q \propto p\,\sqrt{m_2(t)}$, $m_2(t) = \mathbb E\lVert\hat\phi^{(K=1)}\rVert^2$ per
    equal-width bin of $t$ (measured with ``n_draws`` single-draw features per point), mixed with $p$:
    $q = (1-\delta)\,q_{m} + \delta\,p$. Also returns the measured RMS norm per bin (its flatness
    is why IS helps little here)."""
    cfg = Config("iid", IID(), False)
    g = torch.Generator().manual_seed(seed)
    ts, norms = [], []
    for _ in range(n_draws):
        est = carv_torch.attribution(teacher, x0, feature_params(teacher.unet), K=1, sampler=cfg.sampler(),
                                     generator=g, project=project, chunk_size=512)
        ts.append(est.t[:, 0])
        norms.append(est.features.to(torch.float64).pow(2).sum(1))
    t, m2 = torch.cat(ts), torch.cat(norms)
    edges = torch.linspace(0, T, n_bins + 1).round().long()
    overall = m2.mean().sqrt()
    rms = torch.stack([m2[(t >= a) & (t < b)].mean().sqrt() if bool(((t >= a) & (t < b)).any()) else overall
                       for a, b in itertools.pairwise(edges.tolist())])
    q = torch.zeros(T, dtype=torch.float64)
    for i, (a, b) in enumerate(itertools.pairwise(edges.tolist())):
        q[a:b] = rms[i]
    q = q / q.sum()
    q = (1 - defensive) * q + defensive / T
    q = q / q.sum()
    w = (1.0 / T) / q
    info = {"bin_edges": edges.tolist(), "rms_norm": rms.tolist(), "n_samples": int(t.numel()),
            "max_over_min": float(rms.max() / rms.min()), "defensive": defensive,
            "weight_range": [float(w.min()), float(w.max())]}
    return q, info
