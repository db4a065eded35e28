"""WorldStrata: the ranks' shares of one stratified draw (exact: the layouts are integers)."""

import numpy as np
import pytest

import carv_core
from carv_core import GlobalStrata, WorldStrata, world_strata


def test_equal_counts_interleave_as_k_diffusion_does():
    # rank s owns strata s, s + W, s + 2W, ...
    for W, c, K in [(2, 3, 1), (4, 2, 2), (3, 1, 5)]:
        owned = world_strata([c] * W, K)
        for s, strata in enumerate(owned):
            assert strata.tolist() == list(range(s, W * c * K, W))


@pytest.mark.parametrize("counts,K", [((3, 2), 2), ((1, 4, 2), 3), ((5,), 4), ((2, 2, 2, 1), 1)])
def test_every_stratum_is_owned_once_and_each_rank_spreads_over_the_unit_interval(counts, K):
    n = K * sum(counts)
    layouts = [WorldStrata(counts, s).checked_layout(c, K) for s, c in enumerate(counts)]
    offsets = np.concatenate([lay.offset.ravel() for lay in layouts])
    assert sorted(offsets.tolist()) == list(range(n))
    assert all((lay.denom == n).all() and lay.n_blocks == c * K and not lay.shuffle_rows
               for lay, c in zip(layouts, counts))
    for lay, c in zip(layouts, counts):  # rank s's i-th stratum is within one slot of n(i + 1/2)/c_s
        strata = np.sort(lay.offset.ravel())
        ideal = n * (np.arange(c * K) + 0.5) / (c * K)
        assert np.all(np.abs(strata + 0.5 - ideal) <= len(counts))
    # One rank alone (the whole world) is GlobalStrata's set of strata.
    if len(counts) == 1:
        assert sorted(layouts[0].offset.ravel().tolist()) == \
            sorted(GlobalStrata().layout(counts[0], K).offset.ravel().tolist())


def test_bad_worlds_are_named():
    with pytest.raises(ValueError, match=r"rank must be < len\(counts\) = 2, got 2"):
        WorldStrata((1, 1), 2)
    with pytest.raises(ValueError, match=r"counts\[1\] must be >= 1, got 0"):
        WorldStrata((1, 0), 0)
    with pytest.raises(ValueError, match=r"R = 3 differs from counts\[0\] = 2"):
        WorldStrata((2, 2), 0).layout(3, 1)


def test_update_is_update_bins_of_the_bin_means():
    p = carv_core.uniform_timesteps(10, 0, 1)
    a, b = carv_core.AdaptiveProposal(p, n_bins=3), carv_core.AdaptiveProposal(p, n_bins=3)
    t, sq = np.array([0, 1, 5, 9, 9]), np.array([1.0, 3.0, 2.0, 4.0, 8.0])
    a.update(t, sq)
    n = np.bincount(a.bin_index[t], minlength=3)
    b.update_bins(n, np.bincount(a.bin_index[t], weights=sq, minlength=3) / np.maximum(n, 1))
    assert np.array_equal(a.second_moment, b.second_moment) and np.array_equal(a.counts, b.counts)
    with pytest.raises(ValueError, match="mean must be finite"):
        b.update_bins(n, np.array([np.nan, 1.0, 1.0]))
    before = b.state_dict()
    with pytest.raises(ValueError, match="n must hold 3 non-negative integer bin counts"):
        b.update_bins(np.array([1, -1, 0]), np.ones(3))
    assert b.state_dict() == before
