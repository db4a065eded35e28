"""More fuzz findings of the torch backend (issue 10): estimates, draws and the surrogate
name their bad argument (value checks gated by validation, no new host read on the guidance
path), the hierarchical estimate survives huge values as carv_core does, Welford loads
check the dimension, and the Sobol design draws all rows at once."""

import time

import carv_core
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import carv_torch  # noqa: E402
from carv_torch.teachers import GaussianMixtureTeacher  # noqa: E402

DT = torch.float64
NAN = float("nan")
T = 50
P = torch.full((T,), 1.0 / T, dtype=DT)
ABAR = torch.linspace(0.99, 0.05, T, dtype=DT)
OBJ = carv_torch.Integrand(lambda x_t, t, eps: x_t - eps, ABAR)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def images():
    return torch.rand(2, 4, 2, 2, generator=gen(1), dtype=DT).requires_grad_(True)


def draws(R=2, **kw):
    return carv_torch.draw_inner(R, 2, (4, 2, 2), P, generator=gen(4), dtype=DT, **kw)


class Reads:
    """Counts tensor-to-host reads (tolist, item, bool) while active."""

    def __init__(self, monkeypatch):
        self.n = 0
        for name in ("tolist", "item", "__bool__"):
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(original))

    def _wrap(self, original):
        def counted(tensor, *a, **k):
            self.n += 1
            return original(tensor, *a, **k)
        return counted


# --------------------------------------------------------------------------- estimate_from_draws


@pytest.mark.parametrize("t", [99, 50, -1])
def test_estimate_from_draws_names_t_out_of_range(t):
    bad = draws()._replace(t=torch.full((2, 2), t))
    with pytest.raises(ValueError, match=r"^draws.t must lie in \[0, 50\)"):
        carv_torch.estimate_from_draws(OBJ, images(), bad)


def test_estimate_from_draws_names_non_finite_weights():
    bad = draws()._replace(w=torch.tensor([[1.0, NAN], [1.0, 1.0]], dtype=DT))
    with pytest.raises(ValueError, match=r"^draws.w must be finite, got nan at index \(0, 1\)"):
        carv_torch.estimate_from_draws(OBJ, images(), bad)
    with carv_torch.set_validate_args(False):  # a value check: off with the others
        assert not torch.isfinite(carv_torch.estimate_from_draws(OBJ, images(), bad).grad).all()


def test_draws_from_a_longer_schedule_are_checked_against_the_objectives_T():
    long = carv_torch.draw_inner(2, 8, (4, 2, 2), torch.full((100,), 0.01, dtype=DT), generator=gen(3),
                                 dtype=DT)
    assert int(long.t.max()) >= T  # would index past the objective's schedule
    with pytest.raises(ValueError, match=r"^draws.t must lie in \[0, 50\)"):
        carv_torch.estimate_from_draws(OBJ, images(), long)


def test_changed_draws_are_checked_again():
    d = draws()
    d.t[0, 0] = 77  # in place, after draw_inner made it
    with pytest.raises(ValueError, match=r"draws.t must lie in \[0, 50\)"):
        carv_torch.estimate_from_draws(OBJ, images(), d)


def test_draws_of_draw_inner_cost_no_read_and_foreign_ones_one(monkeypatch):
    x, own = images(), draws()
    foreign = own._replace(t=own.t.clone(), w=own.w.clone())
    expected = carv_torch.estimate_from_draws(OBJ, x, own).grad
    reads = Reads(monkeypatch)
    carv_torch.estimate_from_draws(OBJ, x, own)
    n_own = reads.n
    got = carv_torch.estimate_from_draws(OBJ, x, foreign).grad
    n_foreign = reads.n - n_own
    monkeypatch.undo()
    assert n_foreign == n_own + 1 and torch.equal(got, expected)


# --------------------------------------------------------------------------- sds, surrogate, draw_inner


def test_sds_reports_a_nan_x_before_the_teacher_runs():
    teacher = GaussianMixtureTeacher(torch.randn(2, 16, generator=gen(0), dtype=DT), 0.5, ABAR)
    x = torch.full((2, 4, 2, 2), NAN, dtype=DT)
    with pytest.raises(ValueError, match=r"^x must be finite, got nan at index \(0, 0, 0, 0\)"):
        carv_torch.sds(teacher, x, K=2, p=P, generator=gen(5))


@pytest.mark.parametrize("x, grad, error, match", [
    ([0.0], torch.zeros(1, dtype=DT), TypeError, r"^x must be a floating tensor"),
    (torch.zeros(1, dtype=DT), [0.0], TypeError, r"^grad must be a floating tensor"),
    (torch.zeros(2, dtype=DT), torch.zeros(2, dtype=torch.int64), TypeError, r"^grad must be a floating"),
    (torch.zeros(2, 3, dtype=DT), torch.full((2, 3), NAN, dtype=DT), ValueError, r"^grad must be finite"),
    (torch.zeros(2, 3, dtype=DT), torch.zeros(3, 2, dtype=DT), ValueError, r"^grad must have shape"),
])
def test_surrogate_loss_names_its_bad_argument(x, grad, error, match):
    with pytest.raises(error, match=match):
        carv_torch.surrogate_loss(x, grad)


def test_surrogate_loss_is_unchanged_on_good_input():
    x, g = images(), torch.rand(2, 4, 2, 2, generator=gen(2), dtype=DT)
    carv_torch.surrogate_loss(x, g).backward()
    assert torch.allclose(x.grad, g / 2)


@pytest.mark.parametrize("kw", [dict(common="yes"), dict(common=1), dict(antithetic="no")])
def test_draw_inner_flags_must_be_bools(kw):
    name = next(iter(kw))
    with pytest.raises(TypeError, match=rf"^{name} must be a bool"):
        draws(**kw)


def test_draw_inner_common_accepts_numpy_bools():
    d = draws(common=np.bool_(True))
    assert torch.equal(d.t[0], d.t[1])


def test_attribution_names_params_that_are_not_iterable():
    means = torch.randn(2, 16, generator=gen(0), dtype=DT).requires_grad_(True)
    teacher = GaussianMixtureTeacher(means, 0.5, ABAR)
    x0 = torch.rand(2, 4, 2, 2, generator=gen(1), dtype=DT)
    with pytest.raises(TypeError, match=r"^params must be an iterable of tensors"):
        carv_torch.attribution(teacher, x0, 5, K=2, p=P, generator=gen(6))
    out = carv_torch.attribution(teacher, x0, means, K=2, p=P, generator=gen(6))
    assert out.features.shape == (2, 32)


def test_integrand_weights_are_named_weights():
    with pytest.raises(ValueError, match=r"^weights must have shape \(50,\)"):
        carv_torch.Integrand(lambda x_t, t, eps: x_t, ABAR, weights=torch.ones(3, dtype=DT))
    with pytest.raises(ValueError, match=r"^weights must be finite"):
        carv_torch.Integrand(lambda x_t, t, eps: x_t, ABAR, weights=[NAN] * T)
    w = carv_torch.Integrand(lambda x_t, t, eps: x_t, ABAR, weights=np.full(T, 2.0)).weights
    assert torch.equal(w, torch.full((T,), 2.0, dtype=DT))


# --------------------------------------------------------------------------- estimator


@pytest.mark.parametrize("value", [1e308, -1e308, 1.5e308])
def test_hierarchical_estimate_of_huge_values_is_finite_as_in_the_core(value):
    V = torch.full((2, 2), value, dtype=DT)
    est = carv_torch.hierarchical_estimate(V)
    core = carv_core.hierarchical_estimate(V.numpy())
    assert est.mean.item() == float(core.mean) == value and est.variance.item() == core.variance == 0.0


def test_hierarchical_estimate_rescaling_is_exact_and_weights_too():
    g = gen(3)
    for scale in (1.0, 1e150, 1e-150):
        V = torch.randn(4, 3, 2, generator=g, dtype=DT) * scale
        W = torch.rand(4, 3, generator=g, dtype=DT) * 5
        a, b = carv_torch.hierarchical_estimate(V, W), carv_core.hierarchical_estimate(V.numpy(), W.numpy())
        assert np.allclose(a.mean.numpy(), b.mean, rtol=1e-14, atol=0)
        assert a.variance.item() == pytest.approx(b.variance, rel=1e-13)
    huge = carv_torch.hierarchical_estimate(torch.full((2, 2), 1e308, dtype=DT), torch.full((2, 2), 1.5, dtype=DT))
    assert huge.mean.item() == 1.5e308


def test_an_estimate_beyond_float64_raises_like_the_core():
    V = torch.tensor([[1e308, 1e308], [-1e308, -1e308]], dtype=DT)
    with pytest.raises(ValueError, match=r"too large: the variance overflows"):
        carv_core.hierarchical_estimate(V.numpy())
    with pytest.raises(ValueError, match=r"too large: the variance overflows torch.float64"):
        carv_torch.hierarchical_estimate(V)
    with pytest.raises(ValueError, match=r"too large"):
        carv_torch.variance_components(torch.tensor([[1e308, -1e308], [-1e308, 1e308]], dtype=DT))


def test_hierarchical_estimate_value_checks_cost_one_read(monkeypatch):
    V, W = torch.rand(3, 2, generator=gen(), dtype=DT), torch.rand(3, 2, generator=gen(1), dtype=DT)
    reads = Reads(monkeypatch)
    est = carv_torch.hierarchical_estimate(V, W)
    monkeypatch.undo()
    assert reads.n == 1 and torch.isfinite(est.mean)
    with pytest.raises(ValueError, match=r"^weights must be finite"):
        carv_torch.hierarchical_estimate(V, torch.full((3, 2), NAN, dtype=DT))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_hierarchical_estimate_rescales_low_precision_too(dtype):
    big = torch.finfo(dtype).max / 2
    est = carv_torch.hierarchical_estimate(torch.full((2, 2), big, dtype=dtype))
    assert est.mean.dtype == dtype and est.mean.item() == pytest.approx(big) and est.variance.item() == 0


def test_welford_load_checks_the_dimension_of_mean():
    acc = carv_torch.Welford()
    acc.update(torch.tensor([[5.0, 5.0]], dtype=DT))
    before = (acc.count, acc.mean.clone(), acc.m2.clone())
    with pytest.raises(ValueError, match=r"state\['mean'\] has 3 entries, but this accumulator has dimension 2"):
        acc.load_state_dict({"count": 3, "mean": [1.0, 0.0, 0.0], "m2": 1.0})
    assert acc.count == before[0] and torch.equal(acc.mean, before[1]) and torch.equal(acc.m2, before[2])
    fresh = carv_torch.Welford()
    fresh.load_state_dict({"count": 3, "mean": [1.0, 0.0, 0.0], "m2": 1.0})  # no dimension yet: any
    assert fresh.mean.shape == (3,)


# --------------------------------------------------------------------------- Sobol


def test_sobol_draw_is_vectorised():
    start = time.perf_counter()
    u = carv_torch.draw_uniforms("sobol", 10**5, 16, gen())
    assert time.perf_counter() - start < 1.0
    assert u.shape == (10**5, 16) and u.dtype == DT and float(u.min()) >= 0 and float(u.max()) < 1


@pytest.mark.parametrize("K", [1, 2, 8, 32])
def test_sobol_rows_are_nets_and_uniform_on_the_53_bit_grid(K):
    u = carv_torch.draw_uniforms("sobol", 4000, K, gen(K))
    strata = torch.sort(torch.floor(u * K), dim=1).values
    assert torch.equal(strata, torch.arange(K, dtype=DT).expand_as(strata))  # one point per 1/K
    assert torch.equal(u * 2.0**53, torch.floor(u * 2.0**53))  # on the grid of Generator.random
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() * 12 - 1) < 0.03


def test_sobol_draw_is_reproducible_and_its_rows_differ():
    a, b = (carv_torch.draw_uniforms("sobol", 3, 4, gen(7)) for _ in range(2))
    assert torch.equal(a, b) and not torch.equal(a[0], a[1])
