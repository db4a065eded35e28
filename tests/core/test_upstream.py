"""Camera designs (carv_core.upstream): each camera's law is p(xi), checked exactly on a discretised azimuth."""

import itertools

import numpy as np
import pytest

from carv_core import IID, PermutedStrata, Sobol, Stratified, Systematic
from carv_core.sampling import TimestepDraw
from carv_core.testing import exact_law
from carv_core.upstream import (
    AntipodalPairs,
    camera_uniforms,
    cameras_from_uniforms,
    sequence_uniforms,
    sobol_sequence,
)


class AzimuthCells:
    """The azimuth on a grid of n cells, c = floor(n u), as a sampler of the kit's protocol."""

    def __init__(self, design, n):
        self.design, self.n = design, n

    def transform(self, u):
        u = np.asarray(u, dtype=np.float64)
        return TimestepDraw(np.minimum(np.floor(u * self.n), self.n - 1).astype(np.int64), np.ones_like(u))


def slot_marginals(design, slots, n):
    """P(cell of slot k = j), shape (slots, n), from the kit's enumeration of a (1, slots) draw."""
    law = exact_law(AzimuthCells(design, n), 1, slots, n)
    out = np.zeros((slots, n))
    for block in law.blocks:
        for i, (_, k) in enumerate(block.slots):
            out[k] += np.bincount(block.t[:, i], weights=block.probs, minlength=n)
    if law.shuffle_rows:  # a uniform random order of the slots, independent of the jitters
        out = np.broadcast_to(out.mean(0), out.shape)
    return out


@pytest.mark.parametrize("design", [IID(), PermutedStrata(), AntipodalPairs()], ids=repr)
@pytest.mark.parametrize("R,n", [(2, 8), (4, 8), (4, 6), (2, 12)])
def test_every_camera_is_marginally_uniform_exactly(design, R, n):
    np.testing.assert_allclose(slot_marginals(design, R, n), 1.0 / n, rtol=0, atol=1e-12)


def test_enumeration_detects_a_design_whose_cameras_are_not_each_uniform():
    # Unshuffled strata: camera k lives in [k/R, (k+1)/R); only the step mean is unbiased.
    m = slot_marginals(Stratified(), 2, 8)
    assert np.abs(m - 1 / 8).max() > 0.1
    np.testing.assert_allclose(m.mean(0), 1 / 8, atol=1e-12)
    assert np.abs(slot_marginals(Systematic(), 2, 8) - 1 / 8).max() > 0.1


@pytest.mark.parametrize("n", [4, 8, 10])
def test_antipodal_pairs_are_half_a_turn_apart_in_every_scenario(n):
    law = exact_law(AzimuthCells(AntipodalPairs(), n), 1, 4, n)
    assert len(law.blocks) == 2
    for block in law.blocks:
        assert block.slots[:, 1].tolist() in ([0, 1], [2, 3])
        apart = block.t[:, 1] == (block.t[:, 0] + n // 2) % n
        # (a cut like 1/10 is not a binary fraction: slivers of float64 width may disagree)
        assert block.probs[~apart].sum() < 1e-12
        assert block.probs.sum() == pytest.approx(1.0, abs=1e-15)


def test_antipodal_draws_keep_the_pairs_and_shuffle_their_order():
    u = np.array([camera_uniforms((AntipodalPairs(),), 2, rng=s)[:, 0] for s in range(400)])
    np.testing.assert_allclose(np.abs(u[:, 1] - u[:, 0]), 0.5, atol=1e-15)
    first_low = np.mean(u[:, 0] < u[:, 1])
    assert 0.4 < first_low < 0.6  # each order half the time (400 draws: sd 0.025)


def test_stratified_azimuth_covers_every_stratum_once_and_other_coordinates_are_free():
    for s in range(20):
        u = camera_uniforms((PermutedStrata(), "iid"), 8, rng=s)
        assert u.shape == (8, 2) and (0 <= u).all() and (u < 1).all()
        assert sorted(np.floor(8 * u[:, 0]).astype(int).tolist()) == list(range(8))
    # Coordinates come from independent child streams: adding one leaves the first unchanged.
    a = camera_uniforms((PermutedStrata(),), 4, rng=3)
    b = camera_uniforms((PermutedStrata(), IID()), 4, rng=3)
    np.testing.assert_array_equal(a[:, 0], b[:, 0])


@pytest.mark.parametrize("P,R", [(4, 1), (2, 2), (3, 2)])
def test_sequence_strata_cover_the_period_and_each_step_is_marginally_uniform(P, R):
    n = P * R
    for seed in range(5):
        az = np.concatenate([sequence_uniforms((PermutedStrata(),), R, s, P, seed)[:, 0] for s in range(P)])
        assert sorted(np.floor(n * az).astype(int).tolist()) == list(range(n))
    # The period's draw is one (1, P R) draw of the design: every slot, so every camera of
    # every step, is exactly uniform on a grid of 2n cells.
    np.testing.assert_allclose(slot_marginals(PermutedStrata(), n, 2 * n), 1 / (2 * n), atol=1e-12)


def test_sequence_is_pure_in_step_and_seed_and_periods_are_independent_streams():
    a = sequence_uniforms(("iid", PermutedStrata()), 2, 5, 3, seed=7)
    np.testing.assert_array_equal(a, sequence_uniforms(("iid", PermutedStrata()), 2, 5, 3, seed=7))
    assert not np.array_equal(a, sequence_uniforms(("iid", PermutedStrata()), 2, 5, 3, seed=8))
    # steps 3, 4, 5 are one period; 6 starts a new draw
    period = [sequence_uniforms(("iid",), 1, s, 3, seed=7)[0, 0] for s in range(3, 9)]
    assert len(set(period)) == 6
    ss = np.random.SeedSequence(7)
    np.testing.assert_array_equal(sequence_uniforms(("iid",), 2, 4, 3, ss), sequence_uniforms(("iid",), 2, 4, 3, 7))


def test_scrambled_van_der_corput_sequence_is_balanced_over_each_aligned_block():
    for seed in range(5):
        az = np.concatenate([sequence_uniforms((Sobol(),), 2, s, 4, seed)[:, 0] for s in range(4)])
        for m in (2, 4, 8):  # every aligned block of m consecutive points hits each 1/m once
            for a in range(0, 8, m):
                assert sorted(np.floor(m * az[a:a + m]).astype(int).tolist()) == list(range(m))


def test_sobol_run_is_a_net_and_each_point_is_uniform():
    for seed in range(5):
        u = np.concatenate([sobol_sequence(3, 4, s, seed) for s in range(4)])  # 16 points
        for j in range(3):
            assert sorted(np.floor(16 * u[:, j]).astype(int).tolist()) == list(range(16))
        # a (t, m, d)-net in base 2: the 2-D cells of 4 x 4 each hold exactly one point
        cells = np.floor(4 * u[:, 0]).astype(int) * 4 + np.floor(4 * u[:, 1]).astype(int)
        assert sorted(cells.tolist()) == list(range(16))
    # Step s continues the same sequence: equal to the slice of one long draw.
    long = sobol_sequence(2, 8, 0, seed=11)
    np.testing.assert_array_equal(sobol_sequence(2, 2, 3, seed=11), long[6:8])
    # Marginal of one camera (step 3, camera 1) over scrambles: uniform on 4 cells.
    counts = np.bincount([int(4 * sobol_sequence(2, 2, 3, s)[1, 0]) for s in range(2000)], minlength=4)
    assert np.all(np.abs(counts - 500) < 5 * np.sqrt(2000 * 0.25 * 0.75))


def test_cameras_from_uniforms_is_the_affine_map_and_allows_a_fixed_coordinate():
    u = np.array([[0.0, 0.5, 0.25], [0.75, 0.0, 0.9]])
    xi = cameras_from_uniforms(u, [0.0, -0.2, 2.5], [2 * np.pi, 0.6, 2.5])
    np.testing.assert_allclose(xi[:, 0], 2 * np.pi * u[:, 0])
    np.testing.assert_allclose(xi[:, 1], -0.2 + 0.8 * u[:, 1])
    assert np.all(xi[:, 2] == 2.5)


@pytest.mark.parametrize("call,kind,words", [
    (lambda: cameras_from_uniforms([[0.5]], [1.0], [0.0]), ValueError, "high must be >= low"),
    (lambda: cameras_from_uniforms([[0.5, 0.5]], [0.0], [1.0]), ValueError, "shape (d,) = (2,)"),
    (lambda: cameras_from_uniforms([[1.0]], [0.0], [1.0]), ValueError, "u must lie in [0, 1)"),
    (lambda: cameras_from_uniforms([0.5], [0.0], [1.0]), ValueError, "u must have shape (R, d)"),
    (lambda: camera_uniforms((), 2), ValueError, "at least one camera coordinate"),
    (lambda: camera_uniforms(("nope",), 2), ValueError, "designs[0]"),
    (lambda: camera_uniforms((AntipodalPairs(),), 3), ValueError, "K must be even"),
    (lambda: camera_uniforms(5, 2), TypeError, "designs must be a sequence"),
    (lambda: camera_uniforms(("iid",), 0), ValueError, "R must be >= 1"),
    (lambda: sequence_uniforms(("iid",), 2, 0, 1, np.random.default_rng(0)), TypeError, "seed must be"),
    (lambda: sequence_uniforms(("iid",), 2, -1, 1, 0), ValueError, "step must be >= 0"),
    (lambda: sequence_uniforms(("iid",), 2, 0, 0, 0), ValueError, "period must be >= 1"),
    (lambda: sobol_sequence(0, 2, 0, 0), ValueError, "d must be >= 1"),
    (lambda: sobol_sequence(2, 2, 0, -3), TypeError, "seed must be"),
])
def test_bad_input_names_the_argument(call, kind, words):
    with pytest.raises(kind) as err:
        call()
    assert words in str(err.value)


def test_step_mean_of_any_per_view_function_is_unbiased_by_enumeration():
    # E[(1/R) sum_r f(cell_r)] = mean_j f(j), by enumerating the joint law (blocks independent).
    n, R = 8, 4
    f = np.random.default_rng(0).normal(size=n)
    for design in (IID(), PermutedStrata(), AntipodalPairs(), Stratified()):
        law = exact_law(AzimuthCells(design, n), 1, R, n)
        expectation = 0.0
        for combo in itertools.product(*[range(len(b.probs)) for b in law.blocks]):
            prob = np.prod([b.probs[i] for b, i in zip(law.blocks, combo)])
            cells = np.concatenate([b.t[i] for b, i in zip(law.blocks, combo)])
            expectation += prob * f[cells].mean()
        assert expectation == pytest.approx(f.mean(), abs=1e-12)


def step_mean_variance(design, R, mu):
    """R Var((1/R) sum_r mu(cell_r)) by enumerating the design's law (traces)."""
    n = mu.shape[0]
    law = exact_law(AzimuthCells(design, n), 1, R, n)
    m1, m2 = 0.0, 0.0
    for combo in itertools.product(*[range(len(b.probs)) for b in law.blocks]):
        prob = np.prod([b.probs[i] for b, i in zip(law.blocks, combo)])
        mean = mu[np.concatenate([b.t[i] for b, i in zip(law.blocks, combo)])].mean(0)
        m1, m2 = m1 + prob * mean, m2 + prob * (mean ** 2).sum()
    return R * (m2 - (m1 ** 2).sum())


def test_between_variance_of_the_designs_matches_the_maths_page():
    n = 8
    mu = np.random.default_rng(2).normal(size=(n, 2)) + np.linspace(-2, 2, n)[:, None]
    sigma_b2 = ((mu - mu.mean(0)) ** 2).sum(1).mean()
    assert step_mean_variance(IID(), 2, mu) == pytest.approx(sigma_b2, rel=1e-12)
    # Stratified: sigma_B^2 - tr Cov(E[mu | S]) = E tr Cov(mu | S), strata of n/R cells.
    for R in (2, 4):
        strata = mu.reshape(R, n // R, 2)
        within = ((strata - strata.mean(1, keepdims=True)) ** 2).sum(2).mean()
        between = ((strata.mean(1) - mu.mean(0)) ** 2).sum(1).mean()
        assert within == pytest.approx(sigma_b2 - between, rel=1e-12)
        assert step_mean_variance(PermutedStrata(), R, mu) == pytest.approx(within, rel=1e-10)
    # Antipodal pairs: sigma_B^2 (1 + rho), rho from the covariance of opposite views.
    centred = mu - mu.mean(0)
    cross = (centred * np.roll(centred, -n // 2, axis=0)).sum(1).mean()
    assert step_mean_variance(AntipodalPairs(), 2, mu) == pytest.approx(sigma_b2 + cross, rel=1e-10)
