"""Issue 10: explicit pmf renormalisation, and inputs that were silently accepted or failed
with errors that did not name the argument (stratify, gaussian_noise, densities, rng)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from carv_core import (
    PiecewiseDensity,
    best_allocation,
    draw_uniforms,
    gaussian_noise,
    pmf,
    stratify,
    tabulate_density,
)
from carv_core._validation import PMF_ATOL

# --- pmf(renormalise=True) -------------------------------------------------------------------

masses = arrays(np.float64, st.integers(1, 50), elements=st.floats(0.0, 1e6))


@given(masses)
def test_renormalise_returns_values_over_their_float64_sum(values):
    if not values.sum() > 0:
        with pytest.raises(ValueError, match="no mass"):
            pmf(values, renormalise=True)
        return
    out = pmf(values, renormalise=True)
    assert out.dtype == np.float64
    assert np.array_equal(out, values / values.sum())
    assert abs(out.sum() - 1.0) <= PMF_ATOL


def test_renormalise_accepts_sums_far_from_one_and_float32():
    assert pmf([1.0, 3.0], renormalise=True).tolist() == [0.25, 0.75]
    p32 = np.full(3, 1 / 3, dtype=np.float32)  # sums to 1 + 3e-8 in float64
    with pytest.raises(ValueError, match="renormalise=True"):  # float32 rounding misses 1e-9
        pmf(p32)
    out = pmf(p32, renormalise=True)
    assert out.dtype == np.float64 and out.tolist() == [1 / 3] * 3
    # Huge and tiny masses: the float64 sum of the raw values would overflow or underflow.
    assert pmf([1e308, 1e308, 1e308], renormalise=True).tolist() == [1 / 3] * 3
    assert pmf([5e-324, 5e-324], renormalise=True).tolist() == [0.5, 0.5]


def test_renormalise_still_rejects_invalid_masses():
    with pytest.raises(ValueError, match="p has no mass"):
        pmf([0.0, 0.0], renormalise=True)
    with pytest.raises(ValueError, match=r"p must be non-negative, got p\[1\] = -1.0"):
        pmf([2.0, -1.0], renormalise=True)
    with pytest.raises(ValueError, match="p must be finite"):
        pmf([1.0, np.inf], renormalise=True)
    with pytest.raises(TypeError, match="renormalise must be True or False, got 1"):
        pmf([0.5, 0.5], renormalise=1)
    assert pmf([0.5, 0.5], renormalise=np.True_).tolist() == [0.5, 0.5]


def test_the_sum_tolerance_is_fixed_and_documented():
    assert PMF_ATOL == 1e-9
    assert "does not grow" in pmf.__doc__
    # A float64-normalised pmf of a million entries sums to 1 far inside the tolerance.
    big = np.random.default_rng(0).random(10**6)
    pmf(big / big.sum())
    with pytest.raises(ValueError, match="must sum to 1"):
        pmf(np.r_[big / big.sum(), 2e-9])


def test_pmf_rejects_bool_masks_and_ragged_nesting():
    with pytest.raises(TypeError, match="p must hold probabilities, got dtype bool"):
        pmf([True, False])
    with pytest.raises(ValueError, match="p must be a real numeric array"):
        pmf([[0.5], [0.25, 0.25]])
    with pytest.raises(TypeError, match="must be a real numeric array, got dtype timedelta64"):
        pmf(np.array([1, 0], dtype="m8[s]"))


# --- stratify ---------------------------------------------------------------------------------

@pytest.mark.parametrize("xi,message", [
    ([np.nan, 0.5], "xi must be finite, got nan"),
    ([-0.5, 0.5], "xi must lie in [0, 1)"),
    ([1.0, 0.5], "xi must lie in [0, 1)"),
    ([np.inf, 0.5], "xi must be finite"),
    (0.5, "xi must have at least 1 dimension(s)"),
])
def test_stratify_rejects_jitters_outside_the_unit_interval(xi, message):
    with pytest.raises(ValueError) as info:
        stratify(xi, [0, 1])
    assert message in str(info.value)


def test_stratify_checks_offsets():
    with pytest.raises(ValueError, match=r"offset must hold stratum indices in \[0, B - 1\] = \[0, 1\]"):
        stratify([0.5, 0.5], [0, 5])
    with pytest.raises(ValueError, match="offset must be finite"):
        stratify([0.5, 0.5], [np.nan, 1])
    with pytest.raises(ValueError, match="offset of shape"):
        stratify([0.5, 0.5], [0, 1, 2])
    assert stratify([0.5, 0.5], [0, 1]).tolist() == [0.25, 0.75]
    top = np.nextafter(1.0, 0.0)
    assert stratify(np.full(3, top), np.arange(3)).max() < 1.0


# --- gaussian_noise, rng ----------------------------------------------------------------------

def test_gaussian_noise_checks_shape_and_antithetic():
    with pytest.raises(TypeError, match="shape must be a tuple of ints, got 3"):
        gaussian_noise(3, K=2)
    with pytest.raises(TypeError, match="antithetic must be True or False, got 'no'"):
        gaussian_noise((3,), K=2, antithetic="no")
    assert gaussian_noise((), K=2, rng=0).shape == (1, 2)


def test_rng_rejects_bools_and_negative_seeds_by_name():
    with pytest.raises(TypeError, match="rng must be None, an int seed or a numpy Generator, got True"):
        draw_uniforms("iid", 2, 2, rng=True)
    with pytest.raises(ValueError, match="rng must be None, a non-negative int seed"):
        draw_uniforms("iid", 2, 2, rng=-1)


def test_reals_beyond_float64_are_value_errors_naming_the_argument():
    with pytest.raises(ValueError, match="budget must be finite"):
        best_allocation(10**400, c_u=1.0, c_d=1.0, sigma_b2=1.0, sigma_w2=1.0)


# --- densities --------------------------------------------------------------------------------

def test_piecewise_density_rejects_edges_whose_widths_overflow():
    # The width 2e308 was inf: pdf 1/inf = 0 and cdf(0) = 0 instead of 0.5, silently.
    with pytest.raises(ValueError, match="bin widths overflow float64"):
        PiecewiseDensity(np.array([-1e308, 1e308]), np.array([1.0]))
    with pytest.raises(ValueError, match="upper - lower must be finite"):
        tabulate_density(lambda t: np.ones_like(t), -1e308, 1e308)


def test_tabulate_density_of_a_huge_density_and_a_non_callable():
    d = tabulate_density(lambda t: np.full_like(t, 1e308), 0.0, 1.0, 4)
    assert d.masses.tolist() == [0.25] * 4
    with pytest.raises(TypeError, match="density must be a callable"):
        tabulate_density(5, 0.0, 1.0)
