"""User designs are checked exactly: any affine Layout, no design names.

Each design is certified by ``check_sampler`` and its exact moments are compared with
two independent computations (``kit_brute_force``): a full joint enumeration that
uses the closed-form CDF, the sampler's own transform and ``apply_layout``; and a
seeded Monte Carlo of the real draw ``sampler(n R, K, rng)`` (row shuffle included),
with a tolerance in standard errors.
"""

import time

import numpy as np
import pytest
from kit_brute_force import enumerate_moments, monte_carlo_moments

from carv_core import IID, Antithetic, Design, InverseCDFSampler, Layout, PermutedStrata, Sobol, Stratified
from carv_core.testing import EXACT_DESIGNS, check_sampler, exact_law, exact_moments, within_variance

T = 6
P = np.array([0.1, 0.25, 0.05, 0.2, 0.3, 0.1])
Q = np.array([0.2, 0.2, 0.1, 0.15, 0.2, 0.15])
TABLE = np.stack([np.linspace(-1.0, 2.0, T), np.cos(np.arange(T)) + 0.5])[:, :, None] * [1.0, 0.5]
R, K = 2, 4


class MirroredRows(Design):
    """A user design: rows 2m and 2m + 1 share their jitters, the second mirrored (antithetic cameras)."""

    name = "mirrored-rows"

    def layout(self, R, K):
        r, k = np.meshgrid(np.arange(R), np.arange(K), indexing="ij")
        second = r % 2
        block = (r // 2) * K + k
        sign = np.where(second == 1, -1, 1)
        offset = np.where(second == 1, k + 1, k)  # (k + xi)/K, then (k + 1 - xi)/K
        return Layout(block, offset, sign, np.full((R, K), K), ((R + 1) // 2) * K)


class LopsidedStrata(Design):
    """A biased user design: stratum 0 is drawn twice and the last stratum never."""

    name = "lopsided"

    def layout(self, R, K):
        return Stratified().layout(R, K)._replace(offset=np.maximum(Stratified().layout(R, K).offset - 1, 0))


UNBIASED = [Antithetic(), Antithetic(stratified=True), PermutedStrata(), MirroredRows()]


def test_exact_designs_are_the_affine_shorthands():
    assert EXACT_DESIGNS == ("iid", "stratified", "global", "systematic", "antithetic", "permuted")


@pytest.mark.parametrize("design", UNBIASED, ids=repr)
def test_design_is_certified(design):
    report = check_sampler(InverseCDFSampler(P, Q, design), P, TABLE, R=R, K=K)
    assert report.verdict == "unbiased" and report.certified, report


@pytest.mark.parametrize("design", UNBIASED + [LopsidedStrata()], ids=repr)
def test_exact_moments_equal_joint_enumeration(design):
    sampler = InverseCDFSampler(P, Q, design)
    mean, var = enumerate_moments(sampler, Q, R, K, TABLE)
    mom = exact_moments(exact_law(sampler, R, K, T), TABLE)
    np.testing.assert_allclose(mom.mean, mean, rtol=1e-12, atol=1e-13)
    assert mom.variance == pytest.approx(var, rel=1e-11, abs=1e-13)


@pytest.mark.parametrize("design", UNBIASED + [LopsidedStrata()], ids=repr)
def test_exact_moments_agree_with_monte_carlo_of_the_real_draw(design):
    sampler = InverseCDFSampler(P, Q, design)
    mom = exact_moments(exact_law(sampler, R, K, T), TABLE)
    mc_mean, mc_se, mc_var, mc_var_se = monte_carlo_moments(sampler, R, K, TABLE, 40_000,
                                                            np.random.default_rng(20240))
    assert np.all(np.abs(mc_mean - mom.mean) <= 4.5 * mc_se), (mc_mean, mom.mean, mc_se)
    assert abs(mc_var - mom.variance) <= 4.5 * mc_var_se, (mc_var, mom.variance, mc_var_se)


def test_biased_user_design_is_flagged():
    report = check_sampler(InverseCDFSampler(P, Q, LopsidedStrata()), P, TABLE, R=R, K=K)
    assert report.verdict == "biased" and not report.certified
    assert report.relative_bias > 0.01


def test_shuffled_design_is_enumerated_unshuffled_and_says_so():
    law = exact_law(InverseCDFSampler(P, Q, PermutedStrata()), R, K, T)
    plain = exact_law(InverseCDFSampler(P, Q, Stratified()), R, K, T)
    assert law.shuffle_rows and not plain.shuffle_rows
    np.testing.assert_array_equal(exact_moments(law, TABLE).mean, exact_moments(plain, TABLE).mean)
    assert exact_moments(law, TABLE).variance == exact_moments(plain, TABLE).variance
    assert within_variance(law, TABLE) == pytest.approx(within_variance(plain, TABLE), rel=1e-14)


def test_antithetic_pairs_share_a_block():
    law = exact_law(InverseCDFSampler(P, Q, Antithetic()), 1, 4, T)
    assert [b.slots.tolist() for b in law.blocks] == [[[0, 0], [0, 1]], [[0, 2], [0, 3]]]
    # u and 1 - u: the pair's timesteps move in opposite directions across scenarios.
    t = law.blocks[0].t
    assert np.all(np.diff(t[:, 0]) >= 0) and np.all(np.diff(t[:, 1]) <= 0)
    assert law.blocks[0].probs.sum() == pytest.approx(1.0, abs=1e-15)


def test_mirrored_rows_block_spans_rows_and_within_variance_uses_its_row_zero_marginal():
    law = exact_law(InverseCDFSampler(P, Q, MirroredRows()), 2, 2, T)
    assert {tuple(b.slots[:, 0]) for b in law.blocks} == {(0, 1)}
    strat = exact_law(InverseCDFSampler(P, Q, Stratified()), 1, 2, T)
    assert within_variance(law, TABLE) == pytest.approx(within_variance(strat, TABLE), rel=1e-13)


def test_non_affine_design_refused():
    with pytest.raises(ValueError, match="not affine: cannot be enumerated exactly; check it statistically"):
        exact_law(InverseCDFSampler(P, Q, Sobol()), 1, 4, T)


def test_single_slot_blocks_are_fast():
    # 4096 one-slot blocks over T = 1000 steps: one vectorised interval law, reused.
    p = np.full(1000, 1e-3)
    start = time.perf_counter()
    law = exact_law(InverseCDFSampler(p, p, IID()), 64, 64, 1000)
    assert len(law.blocks) == 4096
    assert time.perf_counter() - start < 10.0
