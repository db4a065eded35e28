"""Online accounting: timing with warm-up, running estimates, K decisions against the allocator."""

import pytest

torch = pytest.importorskip("torch")

import carv_core  # noqa: E402
from carv_torch.accounting import Accountant, KDecision  # noqa: E402


def test_warmup_excluded_and_running_median():
    acc = Accountant(K=2, warmup=2, window=3)
    for s in [100.0, 50.0, 1.0, 3.0, 2.0]:
        acc.record("upstream", s)
    assert acc.c_u == 2.0  # the two warm-up values are dropped
    for s in [10.0, 20.0]:
        acc.record("inner", s)
    assert acc.c_d != acc.c_d  # nan: still warming up
    acc.record("upstream", 9.0)
    assert acc.c_u == 3.0  # window of 3: [3, 2, 9]


def test_measure_times_the_block_per_unit():
    acc = Accountant(K=2, warmup=0)
    with acc.measure("inner", n=4):
        torch.ones(10).sum()
    assert 0 <= acc.c_d < 1.0
    with pytest.raises(ValueError, match="kind must be one of"):
        acc.record("render", 1.0)


@pytest.mark.parametrize("c_u,c_d,sb,sw", [(8.0, 1.0, 1.0, 8.0), (100.0, 1.0, 0.5, 3.0),
                                           (1.0, 1.0, 2.0, 1.0), (50.0, 0.1, 1e-3, 10.0)])
def test_decision_equals_clipped_allocator(c_u, c_d, sb, sw):
    acc = Accountant(K=2, k_min=2, k_max=16, fixed_costs=(c_u, c_d))
    acc.observe(sb, sw)
    dec = acc.decide(step=7)
    expected = min(max(carv_core.optimal_k(c_u, c_d, sb, sw, k_max=16), 2), 16)
    assert isinstance(dec, KDecision) and dec.K == expected == acc.K and dec.step == 7
    assert dec.k_star == pytest.approx(carv_core.k_star(c_u, c_d, sb, sw))
    assert acc.history[-1] == dec


def test_keeps_k_until_everything_is_known():
    acc = Accountant(K=3, k_min=2, k_max=8)
    dec = acc.decide(0)
    assert dec.K == 3 and "c_u" in dec.reason and "sigma_b2" in dec.reason


def test_negative_sigma_b2_means_k_max_and_ema():
    acc = Accountant(K=2, k_min=2, k_max=8, decay=0.5, fixed_costs=(1.0, 1.0))
    acc.observe(-1.0, 4.0)
    assert acc.decide(0).K == 8
    acc.observe(3.0, 0.0)
    assert (acc.sigma_b2, acc.sigma_w2) == (1.0, 2.0)


def test_state_dict_round_trip():
    acc = Accountant(K=2, k_max=8, warmup=1)
    for s in [5.0, 1.0, 2.0]:
        acc.record("upstream", s)
        acc.record("inner", s / 10)
    acc.observe(1.0, 3.0)
    acc.decide(0)
    other = Accountant(K=2, k_max=8, warmup=1)
    other.load_state_dict(acc.state_dict())
    assert other.state_dict() == acc.state_dict()
    assert (other.c_u, other.c_d, other.K) == (acc.c_u, acc.c_d, acc.K)
    # State, not settings: an accountant built with other bounds refuses it, unchanged.
    wider = Accountant(K=2)
    before = wider.state_dict()
    with pytest.raises(ValueError, match=r"state\['k_max'\] = 8 differs from this accountant's k_max = 32"):
        wider.load_state_dict(acc.state_dict())
    assert wider.state_dict() == before


def test_snapshot_and_rollback_undo_a_step():
    acc = Accountant(K=2, k_max=8, warmup=0, fixed_costs=(4.0, 1.0))
    acc.record("upstream", 1.0)
    before = acc.state_dict()
    snap = acc.snapshot()
    acc.record("inner", 0.5)
    acc.observe(1.0, 3.0)
    acc.decide(0)
    assert acc.state_dict() != before
    acc.rollback(snap)
    assert acc.state_dict() == before


def test_bad_arguments():
    with pytest.raises(ValueError, match="K must lie in"):
        Accountant(K=1, k_min=2)
    with pytest.raises(ValueError, match="k_max"):
        Accountant(K=2, k_min=4, k_max=3)
    with pytest.raises(ValueError, match="fixed_costs"):
        Accountant(K=2, fixed_costs=(1.0, 0.0))
    with pytest.raises(ValueError, match="finite"):
        Accountant(K=2).observe(float("nan"), 1.0)
