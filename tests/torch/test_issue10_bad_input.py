"""Bad input that used to give silently wrong results in the torch backend (issue 10):
inverse CDF and stratification, Welford, proposal updates and checkpoints."""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import carv_core  # noqa: E402
import carv_torch  # noqa: E402
from carv_torch.objectives import InnerDraws, estimate_from_draws  # noqa: E402

DT = torch.float64
P = torch.full((10,), 0.1, dtype=DT)


# --------------------------------------------------------------------------- inverse CDF, stratify


@pytest.mark.parametrize("cdf, match", [
    ([0.5, float("nan"), 1.0], r"cdf must be finite, got nan at index \(1,\)"),
    ([float("nan"), 0.5, 1.0], r"cdf must be finite"),
])
def test_inverse_cdf_rejects_a_nan_like_the_core(cdf, match):
    u = torch.tensor([0.1, 0.7], dtype=DT)
    with pytest.raises(ValueError, match=match):
        carv_torch.inverse_cdf(torch.tensor(cdf, dtype=DT), u)
    with pytest.raises(ValueError):
        carv_core.inverse_cdf(np.array(cdf), u.numpy())
    with carv_torch.set_validate_args(False):
        carv_torch.inverse_cdf(torch.tensor(cdf, dtype=DT), u)  # a value check: gated


@pytest.mark.parametrize("xi, match", [
    ([0.2, float("nan")], r"xi must be finite, got nan at index \(1,\)"),
    ([-0.1, 0.5], r"xi must lie in \[0, 1\), got values in \[-0\.1, 0\.5\]"),
    ([0.5, 1.0], r"xi must lie in \[0, 1\)"),
])
def test_stratify_rejects_jitters_outside_the_unit_interval(xi, match):
    with pytest.raises(ValueError, match=match):
        carv_torch.stratify(torch.tensor(xi, dtype=DT), torch.arange(2))
    with carv_torch.set_validate_args(False):
        carv_torch.stratify(torch.tensor(xi, dtype=DT), torch.arange(2))


def test_stratify_rejects_offsets_outside_the_strata():
    with pytest.raises(ValueError, match=r"offset must hold stratum indices in \[0, B - 1\] = \[0, 1\]"):
        carv_torch.stratify(torch.tensor([0.5, 0.5], dtype=DT), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"offset must be finite"):
        carv_torch.stratify(torch.tensor([0.5, 0.5], dtype=DT), torch.tensor([0.0, float("nan")]))
    u = carv_torch.stratify(torch.tensor([[0.5, 0.25]], dtype=DT), torch.arange(2))
    assert u.tolist() == [[0.25, 0.625]]


# --------------------------------------------------------------------------- Welford


def test_welford_does_not_keep_the_graph_of_its_inputs():
    # Before, mean and m2 carried the autograd graph of every input: memory grew per update.
    acc = carv_torch.Welford()
    leaf = torch.ones(3, requires_grad=True)
    for k in range(3):
        acc.update(leaf * (k + 1.0))
    assert acc.mean.grad_fn is None and acc.m2.grad_fn is None
    assert not acc.mean.requires_grad and not acc.m2.requires_grad
    assert acc.mean.tolist() == [2.0, 2.0, 2.0]


@pytest.mark.parametrize("change, error, match", [
    (dict(m2=float("nan")), ValueError, r"state\['m2'\] must be finite, got nan"),
    (dict(m2=-1.0), ValueError, r"state\['m2'\] must be >= 0, got -1\.0"),
    (dict(mean=[1.0, float("inf")]), ValueError, r"state\['mean'\] must be finite, got inf"),
    (dict(mean=[[1.0, 2.0]]), ValueError, r"state\['mean'\] must have 1 dimension"),
    (dict(mean=None), ValueError, r"state\['mean'\] must be None exactly when state\['count'\] is 0"),
    (dict(count=0), ValueError, r"state\['mean'\] must be None exactly when"),
])
def test_welford_load_validates_the_whole_state_first(change, error, match):
    acc = carv_torch.Welford()
    acc.update(torch.tensor([[1.0, 0.0], [3.0, 0.0]]))
    good = acc.state_dict()
    before = (acc.count, acc.mean.clone(), acc.m2.clone())
    with pytest.raises(error, match=match):
        acc.load_state_dict({**good, **change})
    assert acc.count == before[0] and torch.equal(acc.mean, before[1]) and torch.equal(acc.m2, before[2])
    fresh = carv_torch.Welford()
    fresh.load_state_dict(good)
    assert fresh.state_dict() == good


# --------------------------------------------------------------------------- proposal updates


def proposals():
    online = carv_torch.OnlineProposal(n_bins=2)
    online.pmf(P.numpy(), np.ones(10))
    return {"adaptive": carv_torch.AdaptiveProposal(P, n_bins=2), "online": online}


@pytest.mark.parametrize("kind", ["adaptive", "online"])
def test_update_needs_t_and_sq_norm_of_the_same_shape(kind):
    prop = proposals()[kind]
    before = copy.deepcopy(prop.state_dict())
    t = torch.tensor([[0, 1, 2], [3, 4, 5]])
    with pytest.raises(ValueError, match=r"t and sq_norm must have the same shape, got \(2, 3\) and \(3, 2\)"):
        prop.update(t, torch.ones(3, 2, dtype=DT))
    with pytest.raises(TypeError, match=r"t must hold integer timesteps, got dtype torch\.bool"):
        prop.update(torch.tensor([True, False]), torch.ones(2, dtype=DT))
    assert prop.state_dict() == before


def test_numpy_bool_timesteps_are_rejected():
    with pytest.raises(TypeError, match=r"t must hold integer timesteps, got dtype bool"):
        carv_torch.AdaptiveProposal(P, n_bins=2).update(np.array([True]), np.ones(1))


# --------------------------------------------------------------------------- proposal checkpoints


def trained_online():
    prop = proposals()["online"]
    prop.update(torch.tensor([0, 9]), torch.tensor([1.0, 4.0], dtype=DT))
    return prop


BAD_STATES = [
    (dict(counts=[-1, 2]), ValueError, r"state\['counts'\] must be >= 0, got state\['counts'\]\[0\] = -1"),
    (dict(counts=[0.5, 2]), TypeError, r"state\['counts'\] must hold integers, got dtype float64"),
    (dict(counts=[True, False]), TypeError, r"state\['counts'\] must hold integers, got dtype bool"),
    (dict(counts=[1, 2, 3]), ValueError, r"state\['counts'\] must have one entry per bin \(2\), got shape \(3,\)"),
    (dict(second_moment=[float("inf"), 1.0]), ValueError, r"state\['second_moment'\] must be finite"),
    (dict(second_moment=[0.0, 1.0]), ValueError, r"state\['second_moment'\] must be > 0"),
    (dict(decay=1.0), ValueError, r"state\['decay'\] must be < 1, got 1\.0"),
    (dict(decay=float("nan")), ValueError, r"state\['decay'\] must be finite"),
    (dict(delta=0.0), ValueError, r"state\['delta'\] must be > 0"),
    (dict(n_bins=11), ValueError, r"state\['n_bins'\] must be <= len\(p\) = 10, got 11"),
    (dict(p=[0.5, 0.5]), ValueError, r"state\['p'\] has 2 timesteps, expected T = 10 \(the target p\)"),
    (dict(p=[0.5, 0.6] + [0.0] * 8), ValueError, r"state\['p'\] must sum to 1"),
]


@pytest.mark.parametrize("change, error, match", BAD_STATES)
def test_online_proposal_load_validates_everything_first(change, error, match):
    prop = trained_online()
    good = prop.state_dict()
    with pytest.raises(error, match=match):
        prop.validate_state({**good, **change}, T=10)
    with pytest.raises(error, match=match):
        prop.load_state_dict({**good, **change})
    assert prop.state_dict() == good  # unchanged
    assert np.array_equal(prop.pmf(P.numpy(), np.ones(10)), carv_core.AdaptiveProposal.from_state_dict(good).proposal())


def test_validate_state_checks_T_and_never_mutates():
    prop = carv_torch.OnlineProposal(n_bins=2)  # nothing learnt yet: T comes from the caller
    good = trained_online().state_dict()
    prop.validate_state(good, T=10)
    with pytest.raises(ValueError, match=r"state\['p'\] has 10 timesteps, expected T = 1000"):
        prop.validate_state(good, T=1000)
    assert prop.state_dict() == {}
    with pytest.raises(ValueError, match=r"UniformProposal has no state, got keys \['p'\]"):
        carv_torch.UniformProposal().validate_state({"p": 1}, T=10)
    with pytest.raises(TypeError, match=r"state must be a dict"):
        carv_torch.UniformProposal().load_state_dict([("p", 1)])
    with pytest.raises(ValueError, match=r"state lacks key\(s\) \['counts'\]"):
        prop.validate_state({k: v for k, v in good.items() if k != "counts"})


# (the p, n_bins, non-finite decay and second-moment cases were already refused before any change)
@pytest.mark.parametrize("change, error, match", [c for c in BAD_STATES if c[0].keys() & {"counts", "delta"}
                                                  or c[0] == dict(decay=1.0)])
def test_adaptive_proposal_load_is_atomic(change, error, match):
    prop = carv_torch.AdaptiveProposal(P, n_bins=2, decay=0.5, delta=0.2)
    prop.update(torch.tensor([0, 9]), torch.tensor([1.0, 4.0], dtype=DT))
    good = prop.state_dict()
    # a valid decay followed by a bad field: nothing may change (decay was set first before)
    with pytest.raises(error, match=match):
        prop.load_state_dict({**good, "decay": 0.1, **change} if "decay" not in change else {**good, **change})
    assert prop.state_dict() == good


def test_oracle_proposal_checks_its_table_at_construction():
    with pytest.raises(ValueError, match=r"second_moment must be finite, got nan at index \(1,\)"):
        carv_torch.OracleProposal([1.0, float("nan")])
    with pytest.raises(ValueError, match=r"second_moment must be non-negative, got second_moment\[0\] = -1\.0"):
        carv_torch.OracleProposal(torch.tensor([-1.0, 2.0]))


# --------------------------------------------------------------------------- objectives


ABAR = torch.linspace(0.99, 0.05, 10, dtype=DT)


def test_estimate_from_draws_rejects_draws_that_would_broadcast():
    obj = carv_torch.Integrand(lambda x_t, t, eps: x_t - eps, ABAR)
    x = torch.ones(2, 3, dtype=DT)
    t, w, eps = torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=DT), torch.zeros(2, 4, 3, dtype=DT)
    estimate_from_draws(obj, x, InnerDraws(t, w, eps))
    with pytest.raises(ValueError, match=r"draws\.t must have shape \(R, K\) with R = 2 like x, got \(1, 4\)"):
        estimate_from_draws(obj, x, InnerDraws(t[:1], w[:1], eps[:1]))
    with pytest.raises(ValueError, match=r"draws\.eps must have shape \(2, 4, 3\)"):
        estimate_from_draws(obj, x, InnerDraws(t, w, eps[:1]))
    with pytest.raises(ValueError, match=r"draws\.w must have shape \(2, 4\) like draws\.t, got \(1, 4\)"):
        estimate_from_draws(obj, x, InnerDraws(t, w[:1], eps))
    with pytest.raises(TypeError, match=r"draws\.t must hold integer timesteps, got dtype torch\.float64"):
        estimate_from_draws(obj, x, InnerDraws(t.double(), w, eps))


def test_numpy_integer_K_is_accepted_and_include_alpha_must_be_a_bool():
    obj = carv_torch.Integrand(lambda x_t, t, eps: x_t - eps, ABAR)
    est = carv_torch.estimate(obj, torch.ones(2, 3, dtype=DT), K=np.int64(2), p=P,
                              generator=torch.Generator().manual_seed(0))
    assert est.K == 2 and type(est.K) is int
    teacher = carv_torch.GaussianMixtureTeacher(torch.zeros(1, 3, dtype=DT), 1.0, ABAR)
    with pytest.raises(TypeError, match=r"include_alpha must be a bool, got 'no'"):
        carv_torch.SDS(teacher, include_alpha="no")


def test_integrand_checks_its_schedule():
    with pytest.raises(ValueError, match=r"alphas_cumprod must lie in \[0, 1\], got values in \[0\.5, 1\.5\]"):
        carv_torch.Integrand(lambda x_t, t, eps: x_t, torch.tensor([1.5, 0.5], dtype=DT))
