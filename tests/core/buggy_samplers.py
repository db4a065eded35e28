"""Samplers with known bugs, shared by the test-kit tests (each test must catch them)."""

from dataclasses import dataclass

import numpy as np

from carv_core import InverseCDFSampler, TimestepDraw, inverse_cdf


@dataclass(frozen=True, eq=False)
class PlantedBias(InverseCDFSampler):
    """The exact sampler with every weight scaled by 1 + epsilon: E G_hat = (1 + epsilon) G."""

    epsilon: float = 0.0

    def transform(self, u):
        t, w = super().transform(u)
        return TimestepDraw(t, w * (1.0 + self.epsilon))


@dataclass(frozen=True, eq=False)
class DensityAsWeight:
    """A classic bug: weight by q(t) instead of p(t)/q(t)."""

    q: np.ndarray
    design: str = "stratified"

    def transform(self, u):
        t = inverse_cdf(np.cumsum(self.q), u)
        return TimestepDraw(t, self.q[t])
