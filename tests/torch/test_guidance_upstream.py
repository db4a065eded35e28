"""The guidance with upstream designs: replicated camera designs and a per-view control variate.

Exact checks on a linear scene ($x_r = W_r\\theta$, so $J_r = W_r$ and every per-view
gradient is a matrix product computed here independently of the library):

* the backward of a call with ``control_variate`` gives $\\hat G + \\sum_c P(c)\\phi_c -
  \\frac1R\\sum_r\\phi_{c_r}$, with $\\hat G$ the plain call's gradient on the same draws;
* the table is refreshed with $W_r^\\top g_r$ (at $R = 1$ from the step's own backward,
  at $R \\ge 2$ from the call's VJPs), after the correction was formed from the old table;
* a probe measures $\\sigma_B^2$ of $J^\\top g - \\phi_c$, and with ``replicates=M`` from the
  spread of the $M$ replicate means, $R\\,\\widehat{\\rm Var} - \\hat\\sigma_W^2/(2h)$.
"""

import pytest

torch = pytest.importorskip("torch")

from test_probe import DT, linear_scene, render, teacher  # noqa: E402

from carv_torch.control_variates import CellTable  # noqa: E402
from carv_torch.estimator import split_half_components  # noqa: E402
from carv_torch.guidance import CARVGuidance, GuidanceConfig  # noqa: E402

torch.set_num_threads(1)
P = 7


def table(n_cells=4, seed=1):
    tab = CellTable(n_cells, P, probs=torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=DT), dtype=DT)
    tab.table.copy_(torch.randn(n_cells, P, generator=torch.Generator().manual_seed(seed), dtype=DT))
    return tab


def plain_and_cv(R, cells, cfg, **kw):
    W, theta = linear_scene(R=R, P=P)
    plain = CARVGuidance(teacher(), cfg)
    plain(render(W, theta), params=[theta], **kw)["loss_sds"].backward()
    g_plain, theta.grad = theta.grad.clone(), None
    tab = table()
    old = tab.table.clone()
    cv = CARVGuidance(teacher(), cfg)
    out = cv(render(W, theta), params=[theta], control_variate=tab, cells=cells, **kw)
    assert torch.equal(cv.last.estimate.t, plain.last.estimate.t)        # the same draws
    out["loss_sds"].backward()
    return W, theta, g_plain, tab, old, cv, out


@pytest.mark.parametrize("R", [1, 3])
def test_control_variate_adds_its_exact_correction_and_refreshes_with_per_view_gradients(R):
    cells = torch.tensor([2, 0, 2][:R])
    cfg = GuidanceConfig(K=4, sampler="stratified", seed=3)
    W, theta, g_plain, tab, old, cv, out = plain_and_cv(R, cells, cfg)
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=DT)
    delta = probs @ old - old[cells].mean(0)
    assert torch.allclose(theta.grad, g_plain + delta, rtol=1e-10, atol=1e-12)
    # Per-view gradients W_r^T g_r; cells shared by several views get their mean.
    g = cv.last.estimate.grad.reshape(R, -1)
    per_view = torch.stack([W[r].T @ g[r] for r in range(R)])
    for c in range(4):
        hit = cells == c
        expected = per_view[hit].mean(0) if hit.any() else old[c]
        assert torch.allclose(tab.table[c], expected, rtol=1e-10, atol=1e-12), c
    assert tab.refreshed.tolist() == [0 if (cells == c).any() else -1 for c in range(4)]


def test_a_refresh_whose_backward_never_ran_is_dropped():
    W, theta = linear_scene(R=1, P=P)
    tab = table()
    old = tab.table.clone()
    guid = CARVGuidance(teacher(), GuidanceConfig(K=4, seed=0))
    guid(render(W, theta), params=[theta], control_variate=tab, cells=torch.tensor([1]))
    guid(render(W, theta), params=[theta], control_variate=tab, cells=torch.tensor([3]))["loss_sds"].backward()
    assert torch.equal(tab.table[1], old[1]) and tab.refreshed[1] == -1   # call 0 never back-propagated
    assert tab.refreshed[3] == 1


@pytest.mark.parametrize("replicates", [1, 2])
def test_probe_measures_the_estimator_run(replicates):
    R, K, h = 4, 4, 2
    cells = torch.tensor([0, 1, 2, 3])
    cfg = GuidanceConfig(K="auto", k_init=K, k_min=2, k_max=8, probe_every=1, fixed_costs=(4.0, 1.0), seed=5)
    W, theta, g_plain, tab, old, cv, out = plain_and_cv(R, cells, cfg, replicates=replicates)
    Y = cv.last.estimate.values.reshape(R, K, -1)
    za = torch.stack([W[r].T @ Y[r, :h].mean(0) for r in range(R)])
    zc = torch.stack([W[r].T @ Y[r, h:].mean(0) for r in range(R)])
    u = (za + zc) / 2 - old[cells]                                   # J_r^T Ybar_r - phi_{c_r}
    sw = 0.5 * R * h * ((za.mean(0) - zc.mean(0)) ** 2).sum()
    if replicates == 1:
        sb = split_half_components(za.mean(0), zc.mean(0), u, h).sigma_b2
    else:
        G = u.reshape(replicates, R // replicates, P).mean(1)
        var = ((G - G.mean(0)) ** 2).sum() / (replicates * (replicates - 1))
        sb = R * var - sw / (2 * h)
    assert torch.allclose(cv.last.probe.sigma_w2, sw, rtol=1e-10)
    assert torch.allclose(cv.last.probe.sigma_b2, sb, rtol=1e-10)
    assert (out["variance"].isnan().item()) == (replicates > 1)      # designed rows: no i.i.d. variance
    # the probe's VJPs refreshed the table (no second set)
    assert torch.allclose(tab.table, (za + zc) / 2, rtol=1e-10)


def test_upstream_arguments_are_checked():
    W, theta = linear_scene(R=3, P=P)
    guid = CARVGuidance(teacher(), GuidanceConfig(K=4))
    x = render(W, theta)
    with pytest.raises(ValueError, match="replicates = 2 must divide the 3"):
        guid(x, replicates=2)
    with pytest.raises(ValueError, match="cells were given without a control_variate"):
        guid(x, cells=torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="control_variate must be a carv_torch.CellTable"):
        guid(x, params=[theta], control_variate=torch.zeros(4, P), cells=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="control_variate needs params"):
        guid(x, control_variate=table(), cells=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="control_variate needs cells"):
        guid(x, params=[theta], control_variate=table())
    with pytest.raises(ValueError, match="cells has 2 entries for 3 views"):
        guid(x, params=[theta], control_variate=table(), cells=torch.tensor([0, 1]))
    small = CellTable(4, P - 1, dtype=DT)
    with pytest.raises(ValueError, match="the control variate's table has dim = 6"):
        guid(x, params=[theta], control_variate=small, cells=torch.tensor([0, 1, 2]))
    auto = CARVGuidance(teacher(), GuidanceConfig(K="auto", fixed_costs=(4.0, 1.0)))
    with pytest.raises(ValueError, match="replicates > 1 needs params"):
        auto(render(*linear_scene(R=4, P=P)), replicates=2)
    assert guid.calls == 0 and auto.calls == 0                        # nothing ran


def test_a_failed_call_leaves_the_table_as_it_was():
    W, theta = linear_scene(R=3, P=P)
    tab = table()
    old = tab.table.clone()
    guid = CARVGuidance(teacher(), GuidanceConfig(K=4))
    x = render(W, theta)
    with pytest.raises(ValueError):
        guid(x, params=[theta], control_variate=tab, cells=torch.tensor([0, 1, 2]),
             condition=torch.zeros(5, 1, dtype=DT))                   # a bad condition: the teacher raises
    assert torch.equal(tab.table, old) and guid.calls == 0
