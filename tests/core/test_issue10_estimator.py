"""Issue 10: Welford.load_state_dict validates the whole state before changing anything, and the
estimators return the representable answer (or a clear error) for huge values, never NaN."""

import json

import numpy as np
import pytest

from carv_core import Welford, hierarchical_estimate, variance_components


def _acc():
    acc = Welford()
    acc.update(np.array([[5.0, 5.0], [1.0, 2.0]]))
    return acc


def _snap(acc):
    return json.dumps(acc.state_dict())


GOOD = {"count": 3, "mean": [2.0, 1 / 3], "m2": 8 / 3}

# (A negative, fractional or bool count was already rejected before issue 10.)
BAD_STATES = [
    (dict(m2=float("nan")), ValueError, "state['m2'] must be finite, got nan"),
    (dict(m2=float("inf")), ValueError, "state['m2'] must be finite"),
    (dict(m2=-1.0), ValueError, "state['m2'] must be >= 0, got -1.0"),
    (dict(m2="x"), TypeError, "state['m2'] must be a real number"),
    (dict(mean=[float("nan"), 0.0]), ValueError, "state['mean'] must be finite"),
    (dict(mean="abc"), TypeError, "state['mean'] must be numeric"),
    (dict(mean=[[1.0, 0.0]]), ValueError, "state['mean'] must have 1 dimension(s)"),
    (dict(mean=[]), ValueError, "state['mean'] must not be empty"),
    (dict(count=0), ValueError, "state['mean'] must be None exactly when state['count'] is 0"),
    (dict(mean=None), ValueError, "state['mean'] must be None exactly when state['count'] is 0"),
    (dict(count=0, mean=None, m2=1.0), ValueError, "state['m2'] must be 0 when state['count'] is 0"),
]


@pytest.mark.parametrize("change,exc,message", BAD_STATES, ids=lambda v: str(v)[:30])
def test_failed_load_names_the_field_and_changes_nothing(change, exc, message):
    acc = _acc()
    before = _snap(acc)
    with pytest.raises(exc) as info:
        acc.load_state_dict({**GOOD, **change})
    assert message in str(info.value)
    assert _snap(acc) == before


def test_load_rejects_missing_fields_and_non_dicts_atomically_and_accepts_valid_states():
    acc = _acc()
    before = _snap(acc)
    with pytest.raises(ValueError, match="m2"):
        acc.load_state_dict({"count": 3, "mean": [1.0, 0.0]})
    with pytest.raises(TypeError, match="state must be a dict"):
        acc.load_state_dict([3, [1.0, 0.0], 1.0])
    assert _snap(acc) == before
    # Valid states (numpy scalars and arrays included) load, and are copied.
    acc = Welford()
    acc.load_state_dict({"count": np.int64(3), "mean": np.array([2.0, 1 / 3]), "m2": np.float32(2.5)})
    assert acc.state_dict() == {"count": 3, "mean": [2.0, 1 / 3], "m2": 2.5}
    empty = Welford()
    empty.load_state_dict(Welford().state_dict())
    assert empty.state_dict() == {"count": 0, "mean": None, "m2": 0.0}
    mean = [1.0, 2.0]
    acc.load_state_dict({"count": 1, "mean": mean, "m2": 0.0})
    acc.update([3.0, 4.0])
    assert mean == [1.0, 2.0] and acc.mean.tolist() == [2.0, 3.0]


def test_welford_update_with_huge_values():
    # The mean of [1e308, 1e308] is 1e308; summing first overflowed it to inf.
    acc = Welford()
    acc.update(np.full((2, 2), 1e308))
    assert acc.mean.tolist() == [1e308, 1e308] and acc.m2 == 0.0
    # A batch whose merged mean or M2 cannot be represented is refused; nothing changes.
    before = _snap(acc)
    with pytest.raises(ValueError, match="x is too large"):
        acc.update(np.full((1, 2), -1e308))
    assert _snap(acc) == before


def test_estimators_with_huge_values_are_finite_or_clear():
    # Row means of 1e308s are 1e308 (were inf, then inf - inf = nan in the variance).
    est = hierarchical_estimate(np.full((2, 2), 1e308))
    assert float(est.mean) == 1e308 and est.variance == 0.0
    vc = variance_components(np.full((2, 2), 1e308))
    assert (vc.sigma_b2, vc.sigma_w2) == (0.0, 0.0)
    # A variance beyond float64 is an error naming values, not inf or nan.
    with pytest.raises(ValueError, match="values .* too large"):
        hierarchical_estimate(np.array([[1e308, 1e308], [-1e308, -1e308]]))
    with pytest.raises(ValueError, match="values .* too large"):
        variance_components(np.array([[1e308, -1e308], [-1e308, 1e308]]))
    # values * weights overflowing as a product is handled the same way.
    est = hierarchical_estimate(np.full((2, 2), 1e200), weights=np.full((2, 2), 1e-100))
    assert float(est.mean) == pytest.approx(1e100, rel=1e-15)
    # Ordinary values: unchanged, bit for bit.
    est = hierarchical_estimate([[1.0, 3.0], [5.0, 7.0]])
    assert (float(est.mean), est.variance) == (4.0, 4.0)
    vc = variance_components([[1.0, 3.0], [5.0, 7.0]])
    assert (vc.sigma_w2, vc.sigma_b2) == (2.0, 7.0)
