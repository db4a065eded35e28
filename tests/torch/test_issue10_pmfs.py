"""pmfs in low precision and pmf lengths (issue 10).

The sum-to-one tolerance is max(PMF_ATOL, eps(dtype)) whatever T: an entrywise-rounded
pmf sums to 1 within eps/2, so a vector summing to 1.5 is no float16 pmf. Weights and
CDFs are computed in float64 from the renormalised pmf.
"""

import inspect

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import carv_core  # noqa: E402
import carv_torch  # noqa: E402
from carv_torch._validation import pmf_atol  # noqa: E402
from carv_torch.teachers import GaussianMixtureTeacher  # noqa: E402

DT = torch.float64


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_tolerance_is_eps_of_the_dtype_whatever_T(dtype):
    assert pmf_atol(dtype) == max(1e-9, torch.finfo(dtype).eps)
    assert pmf_atol(torch.ones(10, dtype=dtype)) == pmf_atol(torch.ones(100000, dtype=dtype))
    assert pmf_atol(DT) == 1e-9


@pytest.mark.parametrize("T", [3, 7, 1000])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_rounded_uniform_pmfs_pass_and_weights_are_exactly_one(T, dtype):
    p = torch.full((T,), 1.0 / T, dtype=DT).to(dtype)  # entrywise rounded
    q = carv_torch.pmf(torch.arange(1, T + 1, dtype=DT), renormalise=True)
    w = carv_torch.importance_weights(p, p)
    assert torch.equal(w, torch.ones(T, dtype=dtype))
    # against float64 q: the weight of the renormalised p, i.e. p / (q * sum(p))
    w64 = carv_torch.importance_weights(p, q)
    p64 = p.double() / p.double().sum()
    assert torch.allclose(w64, p64 / q, rtol=0, atol=1e-15)


def test_a_float16_vector_summing_to_1_5_is_no_pmf():
    p = torch.full((1000,), 0.0015, dtype=torch.float16)  # sums to ~1.5: accepted before (tol 0.98)
    with pytest.raises(ValueError, match=r"p must sum to 1, got sum 1\.500"):
        carv_torch.importance_weights(p, torch.full((1000,), 1e-3, dtype=DT))
    with pytest.raises(ValueError, match=r"q must sum to 1"):
        carv_torch.cdf_from_pmf(torch.full((1000,), 0.0015, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"p must sum to 1"):
        carv_torch.AdaptiveProposal(p)


def test_cdfs_and_draws_use_the_renormalised_pmf():
    q16 = torch.full((7,), 1.0 / 7, dtype=DT).half()
    cdf = carv_torch.cdf_from_pmf(q16)
    assert cdf.dtype == DT and cdf[-1].item() == pytest.approx(1.0, abs=1e-15)
    s = carv_torch.InverseCDFSampler(q16, q16, "stratified")
    assert s.p.dtype == DT and torch.equal(s._weights, torch.ones(7, dtype=DT))


def test_resolve_sampler_validates_a_float32_pmf_at_its_own_tolerance():
    # 1000 float32 entries sum to 1 only to ~1e-6, beyond the float64 tolerance of 1e-9.
    p32 = torch.full((1000,), 1e-3, dtype=torch.float32)
    assert abs(p32.double().sum().item() - 1) > 1e-9
    s = carv_torch.objectives.resolve_sampler(p=p32, n_timesteps=1000)
    assert torch.equal(s._weights, torch.ones(1000, dtype=DT))
    abar = torch.linspace(0.99, 0.05, 1000, dtype=DT)
    teacher = GaussianMixtureTeacher(torch.zeros(1, 4, dtype=DT), 1.0, abar)
    est = carv_torch.sds(teacher, torch.ones(2, 1, 2, 2, dtype=DT), K=2, p=p32,
                         generator=torch.Generator().manual_seed(0))
    assert torch.equal(est.w, torch.ones(2, 2, dtype=DT))
    # a float32 numpy array is also held to float32's tolerance
    carv_torch.importance_weights(p32.numpy(), p32.numpy())


def test_pmf_renormalise_matches_the_core_signature():
    sig = inspect.signature(carv_torch.pmf)
    assert sig.parameters["renormalise"].default is False
    assert sig.parameters["renormalise"].kind is inspect.Parameter.KEYWORD_ONLY
    assert carv_torch.pmf([1.0, 3.0], renormalise=True).tolist() == [0.25, 0.75]
    half = carv_torch.pmf(torch.tensor([2.0, 6.0], dtype=torch.float16), renormalise=True)
    assert half.dtype == torch.float16 and half.tolist() == [0.25, 0.75]
    with pytest.raises(ValueError, match=r"p must sum to 1, got sum 4\.0"):
        carv_torch.pmf([1.0, 3.0])
    with pytest.raises(ValueError, match=r"p has no mass \(every entry is 0\): it cannot be renormalised"):
        carv_torch.pmf(torch.zeros(2, dtype=DT), renormalise=True)
    with pytest.raises(ValueError, match=r"p must be non-negative, got p\[1\] = -1\.0"):
        carv_torch.pmf([2.0, -1.0], renormalise=True)
    with pytest.raises(ValueError, match=r"p must be finite, got nan"):
        carv_torch.pmf([1.0, float("nan")], renormalise=True)
    with pytest.raises(TypeError, match=r"renormalise must be True or False"):
        carv_torch.pmf([1.0], renormalise=1)
    assert carv_torch.pmf(torch.tensor([1.0, 3.0], dtype=DT), renormalise=np.True_).tolist() == [0.25, 0.75]


# --------------------------------------------------------------------------- len(p) == T

ABAR = torch.linspace(0.99, 0.05, 20, dtype=DT)
X = torch.ones(2, 1, 2, 2, dtype=DT)


def teacher():
    return GaussianMixtureTeacher(torch.zeros(1, 4, dtype=DT), 1.0, ABAR)


def p_of(n):
    return torch.full((n,), 1.0 / n, dtype=DT)


CALLS = {
    "sds": lambda **kw: carv_torch.sds(teacher(), X, K=2, **kw),
    "dmd": lambda **kw: carv_torch.dmd(teacher(), teacher(), X, K=2, **kw),
    "estimate": lambda **kw: carv_torch.estimate(carv_torch.SDS(teacher()), X, K=2, **kw),
    "attribution": lambda **kw: carv_torch.attribution(
        teacher(), X, [torch.zeros(1, requires_grad=True)], K=2, **kw),
}


@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.parametrize("n", [10, 30])
def test_p_q_and_sampler_must_have_one_entry_per_teacher_timestep(name, n):
    call = CALLS[name]
    with pytest.raises(ValueError, match=rf"^p must have T = 20 entries \(one per teacher timestep\), got {n}$"):
        call(p=p_of(n))
    with pytest.raises(ValueError, match=rf"^q must have T = 20 entries \(one per teacher timestep\), got {n}$"):
        call(p=p_of(20), q=p_of(n))
    core = carv_core.InverseCDFSampler(np.full(n, 1.0 / n), np.full(n, 1.0 / n), "stratified")
    with pytest.raises(ValueError, match=rf"^sampler must draw from T = 20 timesteps \(one per teacher "
                                         rf"timestep\), got a sampler over {n}$"):
        call(sampler=core)
    with pytest.raises(ValueError, match=r"sampler must draw from T = 20"):
        call(sampler=carv_torch.InverseCDFSampler(p_of(n), p_of(n)))
