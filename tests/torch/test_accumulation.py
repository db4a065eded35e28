"""Gradient accumulation: a cycle of micro-steps is one stratified draw, q and K change only at
its end, and a checkpoint taken mid-cycle resumes bit for bit (one process; the multi-rank
versions are in tests/distributed)."""

import io

import pytest

torch = pytest.importorskip("torch")

from carv_torch.guidance import CARVGuidance, GuidanceConfig  # noqa: E402
from carv_torch.teachers import GaussianMixtureTeacher  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
DT = torch.float64
T = 64
ABAR = torch.linspace(0.99, 0.03, T, dtype=DT)


def teacher():
    g = torch.Generator().manual_seed(0)
    return GaussianMixtureTeacher(torch.randn(2, 12, generator=g, dtype=DT), 0.5, ABAR)


def images(i, R=2):
    return torch.rand(R, 3, 2, 2, generator=torch.Generator().manual_seed(100 + i), dtype=DT)


def test_a_cycle_of_micro_steps_is_one_stratified_draw():
    # p = q = uniform on t in [0, 63]: the n = A R K = 16 draws of a cycle fall one in each
    # stratum [4j, 4j + 4) exactly when the cycle is one stratified draw.
    cfg = GuidanceConfig(K=2, sampler="global", accumulation_steps=4, min_step_percent=0.0,
                         max_step_percent=1.0, seed=3)
    g = CARVGuidance(teacher(), cfg)
    for cycle in range(3):
        ts = []
        for a in range(4):
            g(images(4 * cycle + a))
            ts.append(g.last.estimate.t.reshape(-1))
        strata = torch.sort(torch.cat(ts) // 4).values
        assert torch.equal(strata, torch.arange(16)), strata
        # A single micro-step's draws are a comb (4 of the 16 strata), not all of [0, 1).
        assert len(set((ts[0] // 4).tolist())) == 4 and (ts[0] // 16).unique().numel() == 4


def test_q_and_k_change_only_at_the_end_of_a_cycle():
    cfg = GuidanceConfig(K="auto", k_init=2, k_min=2, k_max=16, probe_every=1, fixed_costs=(64.0, 1.0),
                         proposal="adaptive", adaptive_bins=4, sampler="global", accumulation_steps=3)
    g = CARVGuidance(teacher(), cfg)
    qs, ks = [], []
    for i in range(9):
        qs.append(g.pmfs()[1].clone())
        ks.append(g(images(i, R=3))["K"])
    for c in range(3):  # within a cycle: the same q and K at every micro-step
        assert all(torch.equal(qs[3 * c], qs[3 * c + a]) for a in range(3))
        assert len(set(ks[3 * c:3 * c + 3])) == 1
    assert not torch.equal(qs[0], qs[3]) and not torch.equal(qs[3], qs[6])
    assert g.accountant.history and all(d.step % 3 == 2 for d in g.accountant.history)


def test_a_checkpoint_mid_cycle_resumes_bit_identically():
    cfg = GuidanceConfig(K=2, proposal="adaptive", adaptive_bins=4, sampler="global", accumulation_steps=3)
    full = CARVGuidance(teacher(), cfg)
    ref = [full(images(i)) and full.last.estimate.t.clone() for i in range(7)]
    first = CARVGuidance(teacher(), cfg)
    for i in range(4):  # stops after the first micro-step of the second cycle
        first(images(i))
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = CARVGuidance(teacher(), cfg)
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    assert len(resumed._cycle.t) == 1 and resumed._cycle.rows == (2,)
    for i in range(4, 7):
        resumed(images(i))
        assert torch.equal(resumed.last.estimate.t, ref[i])
    assert torch.equal(resumed.pmfs()[1], full.pmfs()[1])


def test_a_micro_step_with_other_rows_is_refused_and_changes_nothing():
    g = CARVGuidance(teacher(), GuidanceConfig(K=2, sampler="global", accumulation_steps=2))
    g(images(0, R=2))
    before = g.generator.get_state()
    with pytest.raises(ValueError, match="every micro-step of a cycle needs the same rows"):
        g(images(1, R=3))
    assert torch.equal(before, g.generator.get_state()) and g.calls == 1
