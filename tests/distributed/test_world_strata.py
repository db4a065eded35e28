"""Strata across ranks, exactly, in one process: the layouts of ``WorldStrata(counts, s)`` for all
ranks ``s`` together are one stratified draw over the world's ``n = K * sum(counts)`` draws.

The exact test kit (:func:`carv_core.testing.exact_law`, :func:`~carv_core.testing.exact_moments`)
enumerates the law of the pooled mean over all ranks two ways (one combined layout; per-rank
exact moments combined, the ranks being independent) and compares it with
:class:`carv_core.GlobalStrata` over the same ``n`` draws, for an integrand of ``t`` alone
(a table with one upstream outcome). A single rank's mean is biased, exactly.
"""

import numpy as np
import pytest

from carv_core import GlobalStrata, InverseCDFSampler, WorldStrata, world_strata
from carv_core.designs import Design, Layout
from carv_core.testing import exact_law, exact_moments, integrand_scale, target_mean

CASES = [((2, 2), 1), ((2, 2), 3), ((3, 2), 4), ((1, 4, 2), 2), ((5, 1, 3, 2), 3),
         ((4, 4, 4, 4), 2), ((3,), 2), ((2, 7), 1)]
T = 7


class WorldUnion(Design):
    """All ranks' WorldStrata layouts stacked into one ``(sum(counts), K)`` layout (rank 0's
    rows first), each rank's jitters its own blocks: the joint law of the world's draws, as
    the ranks make them independently."""

    name = "world-union"

    def __init__(self, counts):
        self.counts = tuple(counts)

    def layout(self, R, K):
        assert R == sum(self.counts)
        parts = [WorldStrata(self.counts, s).checked_layout(c, K) for s, c in enumerate(self.counts)]
        first = np.cumsum([0] + [p.n_blocks for p in parts])[:-1]
        cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
        return Layout(np.concatenate([p.block + b for p, b in zip(parts, first)]), cat("offset"),
                      cat("sign"), cat("denom"), int(sum(p.n_blocks for p in parts)))


def pmfs(seed=0):
    rng = np.random.default_rng(seed)
    p, q = rng.random(T) + 0.05, rng.random(T) + 0.3
    return p / p.sum(), q / q.sum()


@pytest.mark.parametrize("counts,K", CASES)
def test_the_ranks_layouts_hold_every_stratum_once_with_denominator_n(counts, K):
    n = K * sum(counts)
    offsets = []
    for s, R in enumerate(counts):
        lay = WorldStrata(counts, s).checked_layout(R, K)
        assert (lay.denom == n).all() and (lay.sign == 1).all() and not lay.shuffle_rows
        # independent jitters: every slot reads its own block
        assert lay.n_blocks == R * K and sorted(lay.block.ravel().tolist()) == list(range(R * K))
        # draw i is slot (i mod R, i // R) and holds world_strata's i-th stratum
        i = np.arange(R * K)
        assert np.array_equal(lay.offset[i % R, i // R], world_strata(counts, K)[s])
        offsets.append(lay.offset.ravel())
    assert np.array_equal(np.sort(np.concatenate(offsets)), np.arange(n))
    if len(set(counts)) == 1:  # k-diffusion's scheme: rank s owns strata s, s + W, ...
        W = len(counts)
        for s, off in enumerate(offsets):
            assert np.array_equal(np.sort(off), np.arange(s, n, W))


@pytest.mark.parametrize("counts,K", CASES)
def test_the_pooled_mean_has_exactly_the_law_of_one_global_stratified_draw(counts, K):
    p, q = pmfs()
    table = np.random.default_rng(1).normal(size=(1, T, 2))  # f(t), 2-dimensional
    n_rows, n = sum(counts), K * sum(counts)
    glob = exact_moments(exact_law(InverseCDFSampler(p, q, GlobalStrata()), n_rows, K, T), table)
    union = exact_moments(exact_law(InverseCDFSampler(p, q, WorldUnion(counts)), n_rows, K, T), table)
    scale = integrand_scale(table, p)
    np.testing.assert_allclose(union.mean, glob.mean, rtol=0, atol=1e-13 * scale)
    np.testing.assert_allclose(union.mean, target_mean(table, p), rtol=0, atol=1e-13 * scale)
    assert union.variance == pytest.approx(glob.variance, rel=1e-12, abs=1e-15 * scale**2)
    # The same from per-rank exact moments: ranks are independent, rank s weighs c_s / n.
    per_rank = [exact_moments(exact_law(InverseCDFSampler(p, q, WorldStrata(counts, s)), R, K, T), table)
                for s, R in enumerate(counts)]
    c = np.array(counts) * K / n
    mean = sum(ci * m.mean for ci, m in zip(c, per_rank))
    var = sum(ci**2 * m.variance for ci, m in zip(c, per_rank))
    np.testing.assert_allclose(mean, glob.mean, rtol=0, atol=1e-13 * scale)
    assert var == pytest.approx(glob.variance, rel=1e-12, abs=1e-15 * scale**2)
    if n > 1:  # and it is a real stratification: below i.i.d. draws' variance
        iid = exact_moments(exact_law(InverseCDFSampler(p, q, "iid"), n_rows, K, T), table)
        assert union.variance < iid.variance


@pytest.mark.parametrize("counts,K", [c for c in CASES if len(c[0]) > 1])
def test_a_single_ranks_mean_is_biased_exactly(counts, K):
    p, q = pmfs()
    table = np.arange(T, dtype=np.float64)[None, :] ** 2  # increasing in t
    target = target_mean(table, p)
    bias = [float(exact_moments(exact_law(InverseCDFSampler(p, q, WorldStrata(counts, s)), R, K, T),
                                table).mean[0] - target[0]) for s, R in enumerate(counts)]
    assert max(abs(b) for b in bias) > 1e-3 * integrand_scale(table, p)
    # ... and the draw-count-weighted average of the ranks' biases is 0 (to rounding)
    c = np.array(counts) / sum(counts)
    assert abs(float(c @ np.array(bias))) < 1e-12 * integrand_scale(table, p)


def test_the_pooled_mean_stays_unbiased_for_row_dependent_integrands():
    """With an integrand that depends on the upstream sample, the pooled mean is still unbiased
    (the rows that share strata differ from GlobalStrata's, so the variance need not match)."""
    p, q = pmfs(3)
    table = np.random.default_rng(4).normal(size=(3, T))
    for counts, K in CASES:
        law = exact_law(InverseCDFSampler(p, q, WorldUnion(counts)), sum(counts), K, T)
        np.testing.assert_allclose(exact_moments(law, table).mean, target_mean(table, p),
                                   rtol=0, atol=1e-13 * integrand_scale(table, p))
