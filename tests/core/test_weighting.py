"""Weightings w(t) and the SDS factor w(t) * alpha_t."""

import numpy as np
import pytest

from carv_core import make_schedule, sds_weight, weighting


@pytest.fixture
def schedule():
    return make_schedule("scaled_linear", 1000, 0.00085, 0.012)


def test_presets(schedule):
    abar = schedule.alphas_cumprod
    np.testing.assert_array_equal(weighting("sds", schedule), 1 - abar)
    np.testing.assert_array_equal(weighting("uniform", schedule), np.ones(1000))
    np.testing.assert_array_equal(weighting("fantasia3d", schedule), np.sqrt(abar) * (1 - abar))


def test_sds_weight_folds_alpha(schedule):
    np.testing.assert_array_equal(sds_weight("sds", schedule), (1 - schedule.alphas_cumprod) * schedule.alpha)
    np.testing.assert_array_equal(sds_weight("sds", schedule, include_alpha=False), weighting("sds", schedule))


def test_callable_weighting(schedule):
    w = weighting(lambda abar: abar**2, schedule)
    np.testing.assert_array_equal(w, schedule.alphas_cumprod**2)
    with pytest.raises(ValueError, match="non-negative"):
        weighting(lambda abar: abar - 0.5, schedule)
    with pytest.raises(ValueError, match="must return shape"):
        weighting(lambda abar: abar[:3], schedule)
