"""Bad input to the torch backend: each case raises naming the argument, the value and the expectation.

Structural checks (dtype, shape, device, generator) always run; value checks
that force a host sync (non-finite entries, range of ``u``, pmf sums) can be
switched off with ``carv_torch.set_validate_args(False)``. The mismatching
device is ``meta`` (always available) and, with a GPU, ``cuda``.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import carv_torch  # noqa: E402

P = torch.full((4,), 0.25, dtype=torch.float64)
U = torch.tensor([[0.1, 0.6]], dtype=torch.float64)
OTHER_DEVICES = ["meta"] + (["cuda"] if torch.cuda.is_available() else [])


# --------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("u, match", [
    (torch.tensor([[0, 1]]), r"u must have a real floating dtype, got dtype torch\.int64"),
    (torch.tensor([[0.1 + 0j]]), r"u must be real, got complex dtype torch\.complex"),
    (torch.tensor([[True]]), r"u must have a real floating dtype, got dtype torch\.bool"),
])
def test_uniforms_of_wrong_dtype(u, match):
    with pytest.raises(TypeError, match=match):
        carv_torch.timesteps_from_uniforms(u, P, P)


def test_values_and_weights_of_wrong_dtype():
    with pytest.raises(TypeError, match=r"values must have a real floating dtype, got dtype torch\.int64"):
        carv_torch.hierarchical_estimate(torch.ones(2, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"weights must be real, got complex"):
        carv_torch.hierarchical_estimate(torch.ones(2, 2), torch.ones(2, 2, dtype=torch.complex64))
    with pytest.raises(TypeError, match=r"x must have a real floating dtype"):
        carv_torch.Welford().update(torch.ones(3, dtype=torch.int32))


@pytest.mark.parametrize("dtype", [torch.int64, torch.complex64, "float64", np.float64])
def test_dtype_argument_must_be_a_real_floating_torch_dtype(dtype):
    with pytest.raises(TypeError, match=r"dtype must be a real floating torch\.dtype, got"):
        carv_torch.draw_uniforms("iid", 1, 2, dtype=dtype)


def test_half_precision_uniforms_warn():
    with pytest.warns(UserWarning, match=r"16-bit float"):
        carv_torch.draw_uniforms("iid", 1, 2, dtype=torch.float16)


def test_strings_are_not_numbers():
    with pytest.raises(TypeError, match=r"p must be numeric, got 'abc'"):
        carv_torch.importance_weights("abc", P)


# --------------------------------------------------------------------------- shapes


def test_shapes():
    with pytest.raises(ValueError, match=r"p must have 1 dimension\(s\), got shape \(2, 2\)"):
        carv_torch.timesteps_from_uniforms(U, P.reshape(2, 2), P)
    with pytest.raises(ValueError, match=r"p and q must have the same shape, got \(4,\) and \(3,\)"):
        carv_torch.timesteps_from_uniforms(U, P, torch.full((3,), 1 / 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"values must have at least 2 dimension\(s\), got shape \(3,\)"):
        carv_torch.hierarchical_estimate(torch.ones(3))
    with pytest.raises(ValueError, match=r"weights must have shape \(R, K\) = \(2, 3\) like values, got \(3, 2\)"):
        carv_torch.hierarchical_estimate(torch.ones(2, 3, 5), torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"needs R >= 2 and K >= 2, got values of shape \(1, 3\)"):
        carv_torch.variance_components(torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"values must not be empty"):
        carv_torch.hierarchical_estimate(torch.ones(0, 3))
    acc = carv_torch.Welford()
    acc.update(torch.ones(3))
    with pytest.raises(ValueError, match=r"x has dimension 2, the accumulator has 3"):
        acc.update(torch.ones(2))
    with pytest.raises(ValueError, match=r"reference must have 3 entries, got 4"):
        acc.mse(torch.ones(4))
    with pytest.raises(ValueError, match=r"edges must have one more entry than masses"):
        carv_torch.PiecewiseDensity(torch.tensor([0.0, 1.0]), torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match=r"alphas_cumprod must have 1 dimension"):
        carv_torch.DiscreteSchedule(torch.ones(2, 2))


# --------------------------------------------------------------------------- devices and generators


@pytest.mark.parametrize("other", OTHER_DEVICES)
def test_inputs_on_different_devices(other):
    with pytest.raises(ValueError, match=rf"p is on device {other}.*, expected cpu \(the device of u\)"):
        carv_torch.timesteps_from_uniforms(U, P.to(other), P)
    with pytest.raises(ValueError, match=rf"q is on device {other}.*, expected cpu"):
        carv_torch.timesteps_from_uniforms(U, P, P.to(other))
    with pytest.raises(ValueError, match=rf"weights is on device {other}.*the device of values"):
        carv_torch.hierarchical_estimate(torch.ones(2, 2), torch.ones(2, 2, device=other))
    with pytest.raises(ValueError, match=rf"q is on device {other}"):
        carv_torch.importance_weights(P, P.to(other))
    with pytest.raises(ValueError, match=rf"x is on device cpu, expected {other}"):
        carv_torch.Welford(device=other).update(torch.ones(3))
    sampler = carv_torch.InverseCDFSampler(P, P)
    with pytest.raises(ValueError, match=rf"u is on device {other}.*the sampler's p"):
        sampler.transform(U.to(other))


@pytest.mark.parametrize("other", OTHER_DEVICES)
def test_generator_on_another_device(other):
    g = torch.Generator(device="cpu").manual_seed(0)
    with pytest.raises(ValueError, match=rf"generator is on device cpu but device='{other}' was requested"):
        carv_torch.draw_uniforms("iid", 2, 2, g, device=other)
    with pytest.raises(ValueError, match=r"generator is on device cpu"):
        carv_torch.gaussian_noise((3,), 2, g, device=other)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_generator_with_cpu_device():
    g = torch.Generator(device="cuda").manual_seed(0)
    with pytest.raises(ValueError, match=r"generator is on device cuda.* but device='cpu'"):
        carv_torch.draw_uniforms("iid", 2, 2, g, device="cpu")


@pytest.mark.parametrize("generator", [np.random.default_rng(0), 0, "seed"])
def test_generator_of_wrong_type(generator):
    with pytest.raises(TypeError, match=r"generator must be a torch\.Generator or None, got"):
        carv_torch.draw_uniforms("iid", 2, 2, generator)


def test_bad_device_argument():
    with pytest.raises(TypeError, match=r"device must be a torch\.device, a device string or None"):
        carv_torch.draw_uniforms("iid", 2, 2, device=3.5)


# --------------------------------------------------------------------------- counts


@pytest.mark.parametrize("K, error, match", [
    (0, ValueError, r"K must be >= 1, got 0"),
    (-3, ValueError, r"K must be >= 1, got -3"),
    (2.0, TypeError, r"K must be an integer, got 2\.0 \(float\)"),
    (True, TypeError, r"K must be an integer, got True \(bool\)"),
    (torch.tensor(2), TypeError, r"K must be an integer, got tensor of shape \(\)"),
])
def test_bad_K(K, error, match):
    with pytest.raises(error, match=match):
        carv_torch.draw_uniforms("stratified", 2, K)
    with pytest.raises(error, match=match):
        carv_torch.gaussian_noise((3,), K)


def test_bad_R_and_design():
    with pytest.raises(ValueError, match=r"R must be >= 1, got 0"):
        carv_torch.draw_uniforms("iid", 0, 2)
    with pytest.raises(ValueError, match=r"design must be one of .*got 'lhs'"):
        carv_torch.draw_uniforms("lhs", 1, 2)
    with pytest.raises(ValueError, match=r"K must be even for antithetic noise, got K = 3"):
        carv_torch.gaussian_noise((2,), 3, antithetic=True)


# --------------------------------------------------------------------------- values (sync checks)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values_and_weights(bad):
    values = torch.ones(2, 2, 3)
    values[1, 0, 2] = bad
    with pytest.raises(ValueError, match=rf"values must be finite, got {bad} at index \(1, 0, 2\)"):
        carv_torch.hierarchical_estimate(values)
    with pytest.raises(ValueError, match=r"values must be finite"):
        carv_torch.variance_components(values)
    weights = torch.ones(2, 2)
    weights[0, 1] = bad
    with pytest.raises(ValueError, match=rf"weights must be finite, got {bad} at index \(0, 1\)"):
        carv_torch.hierarchical_estimate(torch.ones(2, 2, 3), weights)
    with pytest.raises(ValueError, match=r"x must be finite"):
        carv_torch.Welford().update(values.reshape(4, 3))


def test_value_checks_can_be_switched_off():
    values = torch.ones(2, 2)
    values[0, 0] = float("nan")
    with carv_torch.set_validate_args(False):
        assert not carv_torch.is_validating()
        assert torch.isnan(carv_torch.hierarchical_estimate(values).mean)
        # out-of-range u is clipped to the last index with mass, as the transform does
        assert carv_torch.timesteps_from_uniforms(torch.tensor([1.5], dtype=torch.float64), P, P).t.tolist() == [3]
    assert carv_torch.is_validating()
    with pytest.raises(ValueError):
        carv_torch.hierarchical_estimate(values)
    with pytest.raises(TypeError, match=r"value must be a bool"):
        carv_torch.set_validate_args(1)


def test_shape_and_dtype_checks_run_without_validation():
    with carv_torch.set_validate_args(False):
        with pytest.raises(TypeError, match=r"u must have a real floating dtype"):
            carv_torch.timesteps_from_uniforms(torch.tensor([[0, 1]]), P, P)
        with pytest.raises(ValueError, match=r"p is on device meta"):
            carv_torch.timesteps_from_uniforms(U, P.to("meta"), P)


@pytest.mark.parametrize("u", [torch.tensor([1.0], dtype=torch.float64), torch.tensor([-0.1]),
                               torch.tensor([float("nan")])])
def test_uniforms_out_of_range(u):
    with pytest.raises(ValueError, match=r"u must (lie in \[0, 1\)|be finite), got"):
        carv_torch.timesteps_from_uniforms(u, P, P)


def test_pmf_checks():
    with pytest.raises(ValueError, match=r"p must sum to 1, got sum 2\.0"):
        carv_torch.timesteps_from_uniforms(U, P * 2, P)
    with pytest.raises(ValueError, match=r"q must be non-negative, got q\[0\] = -0\.25"):
        carv_torch.importance_weights(P, torch.tensor([-0.25, 0.5, 0.5, 0.25], dtype=torch.float64))
    q = torch.tensor([0.5, 0.0, 0.25, 0.25], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"q has zero mass at index 1 where p\[1\] = 0\.25 > 0"):
        carv_torch.timesteps_from_uniforms(U, P, q)
    with pytest.raises(ValueError, match=r"q has zero mass at index 1"):
        carv_torch.InverseCDFSampler(P, q)
    with pytest.raises(ValueError, match=r"p must sum to 1"):
        carv_torch.pmf(torch.tensor([0.5, 0.6]))
    with pytest.raises(ValueError, match=r"delta must be <= 1\.0, got 2\.0"):
        carv_torch.defensive_mixture(P, P, 2.0)


def test_schedules_and_densities():
    with pytest.raises(ValueError, match=r"alphas_cumprod must lie in \[0, 1\], got values in"):
        carv_torch.DiscreteSchedule(torch.tensor([0.5, 1.5], dtype=torch.float64))
    with pytest.raises(TypeError, match=r"schedule must be a DiscreteSchedule, got str"):
        carv_torch.weighting("sds", "linear")
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\], got values in \[0\.0, 2\.0\]"):
        carv_torch.continuous_schedule("flow_matching").alpha(torch.tensor([0.0, 2.0]))
    with pytest.raises(ValueError, match=r"name must be one of"):
        carv_torch.continuous_schedule("edm")
    a = carv_torch.PiecewiseDensity(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0.5, 0.5]))
    b = carv_torch.PiecewiseDensity(torch.tensor([0.0, 1.5, 2.0]), torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match=r"p and q must share the same bin edges"):
        carv_torch.continuous_from_uniforms(torch.tensor([0.5]), a, b)
    with pytest.raises(TypeError, match=r"PiecewiseDensity instances"):
        carv_torch.continuous_from_uniforms(torch.tensor([0.5]), a, "b")


def test_adaptive_proposal_bad_updates():
    ap = carv_torch.AdaptiveProposal(P, n_bins=2)
    with pytest.raises(ValueError, match=r"t must hold integer timesteps in \[0, 4\)"):
        ap.update(torch.tensor([5]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"t and sq_norm must have the same size, got 2 and 1"):
        ap.update(torch.tensor([0, 1]), torch.tensor([1.0]))
    with pytest.raises(TypeError, match=r"sq_norm must have a real floating dtype"):
        ap.update(torch.tensor([0]), torch.tensor([1]))
    with pytest.raises(TypeError, match=r"t must hold integer timesteps, got complex"):
        ap.update(torch.tensor([0j]), torch.tensor([1.0]))
