"""Per-view control variates and replicated variance estimates, checked exactly by enumeration."""

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from carv_core import IID, PermutedStrata, Stratified, optimal_k  # noqa: E402
from carv_core.sampling import TimestepDraw  # noqa: E402
from carv_core.testing import exact_law  # noqa: E402
from carv_core.upstream import AntipodalPairs  # noqa: E402
from carv_torch.accounting import Accountant  # noqa: E402
from carv_torch.control_variates import (  # noqa: E402
    CellTable,
    cell_index,
    per_view_gradients,
    replicated_components,
)

N_FINE, N_CELLS, DIM = 8, 4, 3  # per-view gradient on 8 azimuth x 2 elevation cells; CV on 4 azimuth cells


class Cells:
    def __init__(self, design, n):
        self.design, self.n = design, n

    def transform(self, u):
        u = np.asarray(u, dtype=np.float64)
        return TimestepDraw(np.minimum(np.floor(u * self.n), self.n - 1).astype(np.int64), np.ones_like(u))


def camera_scenarios(design, R):
    """(probability, fine azimuth cells (R,), elevation cells (R,)) of every outcome of a step.

    Azimuth: the kit's exact law of the design's (1, R) draw on 8 cells (the unshuffled
    layout: every statistic below is a mean over the R views, so the order does not matter).
    Elevation: i.i.d. on 2 cells.
    """
    law = exact_law(Cells(design, N_FINE), 1, R, N_FINE)
    for combo in itertools.product(*[range(len(b.probs)) for b in law.blocks]):
        p_az = np.prod([b.probs[i] for b, i in zip(law.blocks, combo)])
        az = np.concatenate([b.t[i] for b, i in zip(law.blocks, combo)])
        for el in itertools.product(range(2), repeat=R):
            yield p_az / 2**R, az, np.array(el)


def uniforms_of(az, el):
    # A point inside each fine cell: its cell_index on the CV grid is fine // 2.
    return torch.tensor(np.stack([(az + 0.5) / N_FINE, (el + 0.5) / 2], axis=1), dtype=torch.float64)


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    g = torch.tensor(rng.normal(size=(N_FINE, 2, DIM)))          # J^T g(xi) per fine camera cell
    phi = torch.tensor(rng.normal(size=(N_CELLS, DIM)))           # a table fixed before the draw
    return g, phi


def table_with(phi, dtype=torch.float64):
    tab = CellTable(N_CELLS, DIM, dtype=dtype)
    tab.table.copy_(phi.to(dtype))
    return tab


@pytest.mark.parametrize("design,R", [(IID(), 1), (IID(), 2), (PermutedStrata(), 2), (AntipodalPairs(), 2),
                                      (Stratified(), 4)], ids=lambda x: repr(x))
def test_control_variate_is_exactly_unbiased_on_a_discretised_camera(problem, design, R):
    g, phi = problem
    tab = table_with(phi)
    mean_plain = mean_cv = 0.0
    for prob, az, el in camera_scenarios(design, R):
        plain = g[az, el].mean(0)
        cells = cell_index(uniforms_of(az, el), (N_CELLS,))
        assert cells.tolist() == (az // 2).tolist()
        mean_plain = mean_plain + prob * plain
        mean_cv = mean_cv + prob * tab.corrected(plain, cells)
    target = g.mean((0, 1))
    torch.testing.assert_close(mean_plain, target, rtol=0, atol=1e-12)
    torch.testing.assert_close(mean_cv, target, rtol=0, atol=1e-12)


def test_a_table_refreshed_with_the_steps_own_view_before_use_is_biased(problem):
    # The check above can fail: correcting with a table that already holds this draw's view.
    g, phi = problem
    mean = 0.0
    for prob, az, el in camera_scenarios(IID(), 1):
        tab = table_with(phi)
        cells = cell_index(uniforms_of(az, el), (N_CELLS,))
        tab.refresh(g[az, el], cells, step=0)
        mean = mean + prob * tab.corrected(g[az, el].mean(0), cells)
    assert float((mean - g.mean((0, 1))).abs().max()) > 1e-3


def test_variance_is_that_of_the_residual_and_the_within_cell_part_at_the_conditional_mean(problem):
    g, phi = problem
    # phi_c = E[J^T g | c] (cells of 2 azimuth x 2 elevation fine cells): Var = E tr Cov(J^T g | c).
    cond = g.reshape(N_CELLS, 2, 2, DIM).mean((1, 2))
    within = ((g.reshape(N_CELLS, 4, DIM) - cond[:, None]) ** 2).sum(-1).mean()
    for table, expected_var in ((cond, within), (phi, None)):
        tab = table_with(table)
        m1 = m2 = 0.0
        resid_m1 = resid_m2 = 0.0
        for prob, az, el in camera_scenarios(IID(), 1):
            cells = cell_index(uniforms_of(az, el), (N_CELLS,))
            est = tab.corrected(g[az, el].mean(0), cells)
            m1, m2 = m1 + prob * est, m2 + prob * (est ** 2).sum()
            resid = g[az, el].mean(0) - table[az // 2].mean(0)
            resid_m1, resid_m2 = resid_m1 + prob * resid, resid_m2 + prob * (resid ** 2).sum()
        var = m2 - (m1 ** 2).sum()
        torch.testing.assert_close(var, resid_m2 - (resid_m1 ** 2).sum())   # Var(J^T g - phi_c)
        if expected_var is not None:
            torch.testing.assert_close(var, within)
            plain_var = ((g - g.mean((0, 1))) ** 2).sum(-1).mean()
            assert float(var) < float(plain_var)


def test_reduced_precision_table_stays_unbiased(problem):
    g, phi = problem
    tab = table_with(phi, torch.bfloat16)
    assert tab.nbytes == N_CELLS * DIM * 2
    mean = 0.0
    for prob, az, el in camera_scenarios(PermutedStrata(), 2):
        mean = mean + prob * tab.corrected(g[az, el].mean(0), cell_index(uniforms_of(az, el), (N_CELLS,)))
    torch.testing.assert_close(mean, g.mean((0, 1)), rtol=0, atol=1e-12)


def test_refresh_averages_shared_cells_records_steps_and_is_failure_atomic():
    tab = CellTable(3, 2)
    tab.refresh(torch.tensor([[1.0, 1.0], [3.0, 5.0], [7.0, 0.0]]), torch.tensor([2, 2, 0]), step=4)
    torch.testing.assert_close(tab.table, torch.tensor([[7.0, 0.0], [0.0, 0.0], [2.0, 3.0]]))
    assert tab.refreshed.tolist() == [4, -1, 4] and tab.staleness(6).tolist() == [2, 7, 2]
    before = tab.state_dict()
    for per_view, cells, kind in [
        (torch.tensor([[float("nan"), 0.0]]), torch.tensor([1]), ValueError),
        (torch.ones(1, 3), torch.tensor([1]), ValueError),
        (torch.ones(2, 2), torch.tensor([1]), ValueError),
        (torch.ones(1, 2), torch.tensor([3]), ValueError),
        (torch.ones(1, 2), torch.tensor([1.0]), TypeError),
    ]:
        with pytest.raises(kind):
            tab.refresh(per_view, cells, step=5)
        torch.testing.assert_close(tab.table, before["table"])
        assert tab.refreshed.tolist() == before["refreshed"].tolist()


def test_momentum_blends_refreshes_and_a_first_refresh_takes_the_view_whole():
    tab = CellTable(2, 2, momentum=0.25)
    tab.refresh(torch.tensor([[4.0, 8.0]]), torch.tensor([1]), step=0)      # first: whole
    tab.refresh(torch.tensor([[0.0, 0.0], [8.0, 0.0]]), torch.tensor([1, 0]), step=1)
    # cell 1: 4 + 0.25 (0 - 4) = 3, 8 + 0.25 (0 - 8) = 6; cell 0 first refreshed here: whole
    torch.testing.assert_close(tab.table, torch.tensor([[8.0, 0.0], [3.0, 6.0]]))
    assert tab.state_dict()["momentum"] == 0.25
    with pytest.raises(ValueError, match="momentum"):
        CellTable(2, 2).load_state_dict(tab.state_dict())
    for bad in (0, 1.5, True, "a"):
        with pytest.raises(ValueError, match="momentum must be a real number in \\(0, 1\\]"):
            CellTable(2, 2, momentum=bad)


def test_the_cached_baseline_follows_every_change_of_the_table():
    tab = CellTable(2, 2, probs=torch.tensor([0.25, 0.75], dtype=torch.float32))   # a float32 pmf is accepted
    assert tab.baseline().tolist() == [0.0, 0.0]
    tab.refresh(torch.tensor([[4.0, 8.0]]), torch.tensor([1]), step=0)
    assert tab.baseline().tolist() == [3.0, 6.0]
    tab.table[0] = torch.tensor([4.0, 4.0])                                  # a direct write
    assert tab.baseline().tolist() == [4.0, 7.0]
    other = CellTable(2, 2, probs=torch.tensor([0.25, 0.75]))
    other.load_state_dict(tab.state_dict())
    assert other.baseline().tolist() == [4.0, 7.0]


def test_state_dict_round_trips_and_a_bad_state_changes_nothing():
    tab = CellTable(4, 3, dtype=torch.float16)
    tab.refresh(torch.randn(2, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 3]), step=2)
    other = CellTable(4, 3, dtype=torch.float16)
    other.load_state_dict(tab.state_dict())
    assert torch.equal(other.table, tab.table) and torch.equal(other.refreshed, tab.refreshed)
    good = tab.state_dict()
    fresh = CellTable(4, 3, dtype=torch.float16)
    for key, value, words in [
        ("dim", 5, "state['dim']"), ("dtype", "float32", "state['dtype']"),
        ("table", torch.full((4, 3), float("inf"), dtype=torch.float16), "finite"),
        ("table", torch.zeros(4, 3), "float16"), ("refreshed", torch.full((4,), -2), "refreshed"),
        ("probs", torch.tensor([0.7, 0.1, 0.1, 0.1]), "probs"),
    ]:
        with pytest.raises(ValueError) as err:
            fresh.load_state_dict({**good, key: value})
        assert words in str(err.value)
        assert not fresh.table.any() and fresh.refreshed.tolist() == [-1] * 4
    with pytest.raises(ValueError, match="missing 'table'"):
        fresh.load_state_dict({k: v for k, v in good.items() if k != "table"})


def test_memory_is_bounded():
    with pytest.raises(ValueError, match="max_bytes"):
        CellTable(32, 10**6, max_bytes=10**8)
    assert CellTable(32, 10**6, dtype=torch.bfloat16, max_bytes=10**8, device="meta").nbytes == 64 * 10**6
    with pytest.raises(ValueError, match="probs must be a pmf"):
        CellTable(2, 1, probs=[0.5, 0.6])


def test_per_view_gradients_are_each_views_vjp_and_sum_to_the_step_gradient():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, generator=gen, requires_grad=True)
    b = torch.randn(4, generator=gen, requires_grad=True)
    x = torch.randn(5, 3, generator=gen)
    out = torch.tanh(x @ w + b)                                     # 5 "renders" of 4 pixels
    resid = torch.randn(5, 4, generator=gen)
    rows = per_view_gradients(out, resid, [w, b])
    assert rows.shape == (5, 16)
    for r in range(5):
        gw, gb = torch.autograd.grad((out[r] * resid[r]).sum(), [w, b], retain_graph=True)
        torch.testing.assert_close(rows[r], torch.cat([gw.reshape(-1), gb]))
    gw, gb = torch.autograd.grad((out * resid).sum(), [w, b], retain_graph=True)
    total = torch.cat([gw.reshape(-1), gb])
    torch.testing.assert_close(rows.sum(0), total)
    # R - 1 VJPs and linearity give the same rows
    torch.testing.assert_close(per_view_gradients(out, resid, [w, b], total=total), rows)
    with pytest.raises(ValueError, match="total must be"):
        per_view_gradients(out, resid, [w, b], total=torch.zeros(3))


def test_cell_index_is_the_mixed_radix_of_the_slices():
    u = torch.tensor([[0.0, 0.0], [0.99, 0.99], [0.3, 0.6], [0.5, 0.2]])
    assert cell_index(u, (16, 2)).tolist() == [0, 31, 4 * 2 + 1, 8 * 2 + 0]
    with pytest.raises(ValueError, match="shape must cut"):
        cell_index(u, (2, 2, 2))


def test_replicated_variance_is_exactly_unbiased_and_the_row_variance_is_not():
    # Two independent replicates of a stratified 2-camera design on 4 azimuth cells (R = 4),
    # K = 2 inner draws per camera: Y_rk = mu(c_r) + s_rk v(c_r), s = +-1 equally likely.
    rng = np.random.default_rng(1)
    mu, v = torch.tensor(rng.normal(size=(4, 2))), torch.tensor(rng.normal(size=(4, 2)))
    R, K = 4, 2
    scen = []
    for cells in itertools.product((0, 1), (2, 3), (0, 1), (2, 3)):      # stratum 0: {0,1}, stratum 1: {2,3}
        for signs in itertools.product((-1.0, 1.0), repeat=R * K):
            c = torch.tensor(cells)
            s = torch.tensor(signs, dtype=torch.float64).reshape(R, K)
            Y = mu[c][:, None] + s[..., None] * v[c][:, None]            # (R, K, 2)
            rows = Y.mean(1)
            reps = torch.stack([rows[:2].mean(0), rows[2:].mean(0)])
            sw = 0.5 * R * 1 * ((Y[:, 0].mean(0) - Y[:, 1].mean(0)) ** 2).sum()   # split halves, h = 1
            comp = replicated_components(reps, R=R, K=K, sigma_w2=sw)
            naive = ((rows - rows.mean(0)) ** 2).sum() / (R - 1) / R          # treats rows as i.i.d.
            scen.append((rows.mean(0), comp, naive))
    p = 1.0 / len(scen)
    mean = sum(p * G for G, _, _ in scen)
    true_var = sum(p * ((G - mean) ** 2).sum() for G, _, _ in scen)
    true_sw = (v ** 2).sum(1).mean()
    torch.testing.assert_close(sum(p * c.variance for _, c, _ in scen), true_var)
    torch.testing.assert_close(sum(p * c.sigma_w2 for _, c, _ in scen), true_sw)
    torch.testing.assert_close(sum(p * c.sigma_b2 for _, c, _ in scen), R * true_var - true_sw / K)
    assert abs(float(sum(p * n for _, _, n in scen) - true_var)) > 0.05 * float(true_var)


def test_accountant_chooses_k_from_the_reduced_between_render_variance():
    # A design that removes most of sigma_B^2 makes more inner draws worth their cost.
    reps = torch.tensor([[1.0, 0.0], [1.2, 0.1], [0.9, -0.1], [1.1, 0.0]])
    comp = replicated_components(reps, R=4, K=4, sigma_w2=0.05)
    plain_b2 = 0.5
    reduced = float(comp.sigma_b2)
    assert 0 < reduced < plain_b2
    decisions = []
    for sb in (plain_b2, reduced):
        acc = Accountant(K=4, k_min=1, k_max=64, fixed_costs=(8.0, 1.0))
        acc.observe(sigma_b2=sb, sigma_w2=float(comp.sigma_w2))
        decisions.append(acc.decide(step=0).K)
    assert decisions[1] == optimal_k(8.0, 1.0, reduced, 0.05, k_max=64)
    assert decisions[1] > decisions[0] == optimal_k(8.0, 1.0, plain_b2, 0.05, k_max=64)


@pytest.mark.parametrize("call,kind,words", [
    (lambda: replicated_components(torch.ones(1, 3), R=2, K=1), ValueError, "M >= 2"),
    (lambda: replicated_components(torch.ones(2, 3), R=1, K=1), ValueError, "R must be >= 2"),
    (lambda: replicated_components(torch.ones(2, 3), R=2, K=1, sigma_w2=float("nan")), ValueError, "sigma_w2"),
    (lambda: replicated_components(torch.ones(2, 3), R=2, K=1, sigma_w2="a"), TypeError, "sigma_w2"),
    (lambda: CellTable(0, 3), ValueError, "n_cells must be >= 1"),
    (lambda: CellTable(2, 1, probs=[1.5, -0.5]), ValueError, "entries >= 0"),
    (lambda: cell_index(torch.tensor([[float("nan")]]), (4,)), ValueError, "u must be finite"),
    (lambda: cell_index(torch.tensor([[1.0]]), (4,)), ValueError, "[0, 1)"),
    (lambda: CellTable(2, 3).corrected(torch.ones(4), torch.tensor([0])), ValueError, "gradient must have shape"),
    (lambda: per_view_gradients(torch.ones(2, 3), torch.ones(2, 3), [torch.ones(2)]), ValueError, "require grad"),
])
def test_bad_input_names_the_argument(call, kind, words):
    with pytest.raises(kind) as err:
        call()
    assert words in str(err.value)
