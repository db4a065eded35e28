"""Issue 10: a vectorised scrambled Sobol design (uniform points, nets, independent rows) and
designs that reject bad arguments instead of clamping or coercing them."""

import time

import numpy as np
import pytest

from carv_core import Antithetic, Design, Layout, PermutedStrata, Sobol, Stratified, apply_layout, draw_uniforms


# --- Sobol -----------------------------------------------------------------------------------

def test_sobol_draws_a_hundred_thousand_rows_fast():
    # One scipy engine per row took ~30 s here; the vectorised scramble takes milliseconds.
    start = time.perf_counter()
    u = Sobol().draw(10**5, 16, rng=0)
    assert time.perf_counter() - start < 1.0
    assert u.shape == (10**5, 16) and u.min() >= 0.0 and u.max() < 1.0


def test_sobol_each_point_is_uniform():
    # Statistical, seeded: every slot k of a row is marginally U[0, 1). Per slot, the mean and
    # second moment within 5 standard errors, and a 16-cell chi-square below its 1e-6 quantile.
    R, K = 40_000, 8
    u = Sobol().draw(R, K, rng=np.random.default_rng(2024))
    se_mean, se_sq = np.sqrt(1 / 12 / R), np.sqrt(4 / 45 / R)
    for k in range(K):
        col = u[:, k]
        assert abs(col.mean() - 0.5) < 5 * se_mean, k
        assert abs((col**2).mean() - 1 / 3) < 5 * se_sq, k
        counts = np.bincount(np.floor(col * 16).astype(int), minlength=16)
        chi2 = np.sum((counts - R / 16) ** 2 / (R / 16))
        assert chi2 < 56.5, (k, chi2)  # P(chi2_15 > 56.5) = 1e-6
    # The points lie on the 53-bit grid of Generator.random.
    assert np.array_equal(np.ldexp(u, 53), np.floor(np.ldexp(u, 53)))


@pytest.mark.parametrize("K", [1, 2, 8, 64])
def test_sobol_rows_are_nets(K):
    # For K = 2**m, every prefix of 2**j points of a row has one point in each interval
    # [i / 2**j, (i + 1) / 2**j): the (0, m, 1)-net property survives the scramble.
    u = Sobol().draw(50, K, rng=3)
    m = K.bit_length() - 1
    for j in range(m + 1):
        n = 2**j
        cells = np.sort(np.floor(u[:, :n] * n), axis=1)
        assert np.array_equal(cells, np.tile(np.arange(n), (50, 1))), j


def test_sobol_rows_are_independent_and_more_than_a_shift():
    R, K = 20_000, 4
    u = Sobol().draw(R, K, rng=11)
    # Independent rows: slot 0 of row r is uncorrelated with slot 0 of row r + 1 (5 SE).
    a, b = u[:-1:2, 0], u[1::2, 0]
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(a.size)
    # A digital shift alone would put every point at the same offset in its cell (systematic
    # sampling); the linear scramble moves the offsets (as scipy's scramble=True does).
    offsets = u * K - np.floor(u * K)
    assert np.mean(np.ptp(offsets, axis=1) > 1e-9) > 0.9


def test_sobol_is_reproducible_from_its_rng_and_warns_off_powers_of_two():
    assert np.array_equal(Sobol().draw(3, 8, rng=5), draw_uniforms("sobol", 3, 8, rng=5))
    with pytest.warns(UserWarning, match="power of 2"):
        u = Sobol().draw(4, 6, rng=0)
    assert u.shape == (4, 6) and np.unique(np.floor(u * 6)).size > 1


# --- apply_layout and design arguments -------------------------------------------------------

LAYOUT = Stratified().layout(2, 2)


@pytest.mark.parametrize("xi,message", [
    (np.array([np.nan, 0.5, 0.5, 0.5]), "xi must be finite"),
    (np.full(4, 1.5), "xi must lie in [0, 1]"),
    (np.array([-0.5, 0.5, 0.5, 0.5]), "xi must lie in [0, 1]"),
    (np.full(2, 0.5), "xi must have shape (n_blocks,) = (4,)"),
])
def test_apply_layout_rejects_bad_jitters(xi, message):
    with pytest.raises(ValueError) as info:
        apply_layout(LAYOUT, xi)
    assert message in str(info.value)


def test_apply_layout_checks_its_layout_and_perm_keys():
    with pytest.raises(TypeError, match="layout must be a carv_core.designs.Layout, got tuple"):
        apply_layout(tuple(LAYOUT)[:4], np.full(4, 0.5))
    with pytest.raises(ValueError, match="layout: offset must keep u in"):
        apply_layout(LAYOUT._replace(offset=LAYOUT.offset + 5), np.full(4, 0.5))
    shuffled = PermutedStrata().layout(2, 2)
    with pytest.raises(ValueError, match="perm_keys"):
        apply_layout(shuffled, np.full(4, 0.5))
    with pytest.raises(ValueError, match=r"perm_keys must have shape \(R, K\) = \(2, 2\)"):
        apply_layout(shuffled, np.full(4, 0.5), np.zeros(3))
    u = apply_layout(shuffled, [0.5] * 4, np.array([[0.9, 0.1], [0.1, 0.9]]))
    assert u.tolist() == [[0.75, 0.25], [0.25, 0.75]]
    assert apply_layout(LAYOUT, np.full(4, 0.5)).tolist() == [[0.25, 0.75], [0.25, 0.75]]


class _ShuffleFlag(Design):
    def layout(self, R, K):
        return Stratified().layout(R, K)._replace(shuffle_rows="yes")


def test_design_flags_must_be_booleans():
    with pytest.raises(TypeError, match="stratified must be True or False, got 'no'"):
        Antithetic(stratified="no")
    with pytest.raises(TypeError, match="shuffle_rows must be True or False"):
        draw_uniforms(_ShuffleFlag(), 2, 4, rng=0)
    assert Antithetic(stratified=np.True_).stratified is True
    assert isinstance(LAYOUT, Layout)
