"""Issue 10: AdaptiveProposal.update pairs t with sq_norm by shape, never overflows to a NaN q,
and both update and load_state_dict are failure-atomic with errors naming the field."""

import json

import numpy as np
import pytest

from carv_core import AdaptiveProposal

P10 = np.full(10, 0.1)


def _learnt(p=P10, n_bins=5):
    ap = AdaptiveProposal(p, n_bins=n_bins, decay=0.5, delta=0.1)
    ap.update([0, 3, 9], [1.0, 4.0, 16.0])
    return ap


def _state(ap):
    return json.dumps(ap.state_dict())


def _assert_valid_pmf(q, p):
    assert np.all(np.isfinite(q)) and np.all(q >= 0)
    assert abs(q.sum() - 1.0) < 1e-12
    assert np.all(q[p > 0] > 0)


# --- update ----------------------------------------------------------------------------------

def test_update_rejects_transposed_pairs_instead_of_mis_pairing():
    # (2, 3) and (3, 2) both hold 6 entries; flattening them paired t[0, 1] with sq[0, 1] of a
    # different draw. Entry i of t must pair with entry i of sq_norm: require equal shapes.
    ap = _learnt()
    before = _state(ap)
    t = np.array([[0, 1, 2], [7, 8, 9]])
    with pytest.raises(ValueError, match=r"t and sq_norm must have the same shape, got \(2, 3\) and \(3, 2\)"):
        ap.update(t, np.ones((3, 2)))
    assert _state(ap) == before
    # Equal shapes pair entrywise, whatever the shape.
    a, b = AdaptiveProposal(P10, n_bins=10, decay=0.0), AdaptiveProposal(P10, n_bins=10, decay=0.0)
    sq = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    a.update(t, sq)
    b.update(t.ravel(), sq.ravel())
    assert np.array_equal(a.proposal(), b.proposal())
    assert a.second_moment[[0, 1, 2, 7, 8, 9]].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_update_rejects_bool_timesteps_and_non_finite_norms_before_changing_state():
    ap = _learnt()
    before = _state(ap)
    with pytest.raises(TypeError, match="t must hold integer timesteps, got dtype bool"):
        ap.update(np.array([True, False]), [1.0, 1.0])
    for bad in (np.nan, np.inf):
        with pytest.raises(ValueError, match="sq_norm must be finite"):
            ap.update([1, 2], [1.0, bad])
    assert _state(ap) == before


def test_update_negative_sq_norm_names_the_entry():
    ap = _learnt()
    with pytest.raises(ValueError, match=r"sq_norm must be non-negative, got sq_norm\[1\] = -2.0"):
        ap.update([1, 2], [1.0, -2.0])


def test_two_huge_residuals_in_one_bin_keep_q_a_valid_pmf():
    # The bin mean is 1e308 (representable) although the bin sum overflows.
    p = np.full(4, 0.25)
    ap = AdaptiveProposal(p, n_bins=2, decay=0.5, delta=0.1)
    ap.update([0, 1], [1e308, 1e308])
    assert ap.second_moment[0] == 1e308
    _assert_valid_pmf(ap.proposal(), p)
    # And an EMA of values at the very top of float64 stays finite.
    top = np.finfo(np.float64).max
    ap.update([0, 1, 2, 3], [top] * 4)
    assert np.all(np.isfinite(ap.second_moment)) and ap.second_moment.max() <= top
    _assert_valid_pmf(ap.proposal(), p)
    # The rescaled bin mean is still the plain mean for ordinary values.
    ap = AdaptiveProposal(P10, n_bins=2, decay=0.0, delta=0.5)
    ap.update([0, 1, 4, 9], [1.0, 2.0, 6.0, 10.0])
    assert ap.second_moment.tolist() == [3.0, 10.0]


def test_subnormal_second_moments_never_zero_the_proposal():
    # Bins with p > 0 keep q > 0 even when the observed norms are subnormal or zero.
    p = np.array([0.0, 0.0, 0.5, 0.5])
    ap = AdaptiveProposal(p, n_bins=2, decay=0.0, delta=0.1)
    ap.update([0, 2], [1.0, 0.0])
    ap.update([0, 2], [5e-324, 0.0])
    assert np.all(ap.second_moment > 0)
    _assert_valid_pmf(ap.proposal(), p)


# --- load_state_dict -------------------------------------------------------------------------

# (A wrong p, n_bins, a negative or NaN decay and a non-positive or non-finite second moment
# were already rejected before issue 10; these are the fields that were not, or not atomically.)
BAD_FIELDS = [
    (dict(p=[0.001] * 1000), ValueError, "the checkpoint's p has 1000 entries, this proposal's has 10"),
    (dict(n_bins=2.0), TypeError, "state['n_bins'] must be an integer"),
    (dict(decay=1.0), ValueError, "state['decay'] must be < 1, got 1.0"),
    (dict(delta=0.0), ValueError, "state['delta'] must be > 0"),
    (dict(delta=1.5), ValueError, "state['delta'] must be <= 1.0"),
    (dict(second_moment=[1.0] * 4), ValueError, "state['second_moment'] must have 5 entries"),
    (dict(counts=[1, 2, 3]), ValueError, "state['counts'] must have shape (5,)"),
    (dict(counts=[1, 2, -3, 0, 0]), ValueError, "state['counts'] must be >= 0, got state['counts'][2] = -3"),
    (dict(counts=[1.5, 0, 0, 0, 0]), TypeError, "state['counts'] must hold integers"),
    (dict(counts=[True, False, False, False, False]), TypeError, "state['counts'] must hold integers"),
]


@pytest.mark.parametrize("change,exc,message", BAD_FIELDS, ids=lambda v: str(v)[:40])
def test_failed_load_names_the_field_and_changes_nothing(change, exc, message):
    good = _learnt().state_dict()
    ap = AdaptiveProposal(P10, n_bins=5, decay=0.9, delta=0.2)
    ap.update([5, 6], [7.0, 8.0])
    before = _state(ap)
    with pytest.raises(exc) as info:
        ap.load_state_dict({**good, **change})
    assert message in str(info.value)
    assert _state(ap) == before


def test_load_rejects_missing_fields_and_non_dicts():
    ap = _learnt()
    before = _state(ap)
    state = ap.state_dict()
    del state["counts"]
    with pytest.raises(ValueError, match="counts"):
        ap.load_state_dict(state)
    with pytest.raises(TypeError, match="state must be a dict"):
        ap.load_state_dict([1, 2])
    assert _state(ap) == before


def test_from_state_dict_names_bad_fields():
    state = _learnt().state_dict()
    with pytest.raises(ValueError, match="state\\['p'\\] must be finite"):
        AdaptiveProposal.from_state_dict({**state, "p": [np.nan] + [0.1] * 9})
    with pytest.raises(TypeError, match="state\\['n_bins'\\] must be an integer"):
        AdaptiveProposal.from_state_dict({**state, "n_bins": 2.5})
    with pytest.raises(ValueError, match="n_bins"):
        AdaptiveProposal.from_state_dict({"p": state["p"]})
    clone = AdaptiveProposal.from_state_dict(json.loads(json.dumps(state)))
    assert _state(clone) == json.dumps(state)
