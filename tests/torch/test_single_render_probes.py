"""Single-render (R = 1) variance probes across steps (docs: maths/single-render-probes).

Statistical claims are checked by seeded Monte Carlo over independent replicas of a
short run, against closed-form truths, within a tolerance in standard errors
(SE = sample standard deviation / sqrt(replicas)):

* Corollary 3: with a linear drift of the mean gradient (no feedback), ``order=2`` is
  unbiased for sigma_B^2 and sigma_W^2 and the lag-1 estimator (``order=1``) is high by
  exactly ||delta||^2 / 2 (many SEs, so a missing correction is caught); ``order=3``
  likewise against a quadratic drift, where ``order=2`` is high by ||Delta^2 G||^2 / 6.
* Proposition 4's exact SGD check: with the optimiser stepping on the probe's own gradient,
  the bias matches the closed form for both orders, and sigma_W^2 stays unbiased.

The VJPs of ``observe`` are checked exactly against the same update fed by hand.
"""

import io
import math

import pytest

torch = pytest.importorskip("torch")

from carv_torch import set_validate_args  # noqa: E402
from carv_torch.probes import SingleRenderProbe, SingleRenderState, single_render_update  # noqa: E402

torch.set_num_threads(1)
DT = torch.float64
TOL = 4.5  # standard errors


def _hierarchical_model(g, D=4, P=3):
    # xi = (mu, J): mu = m + sqrt(b) N(0, I_D), J one of two (D, P) matrices; Y = mu + sqrt(s) N(0, I_D);
    # the mapped draw is Z = J^T Y. Closed-form components of Z (as in tests/torch/test_probe.py).
    Js = torch.randn(2, D, P, generator=g, dtype=DT)
    m = torch.tensor([1.0, -0.5, 0.3, 2.0], dtype=DT)[:D]
    b, s = 0.7, 1.3
    fro = (Js ** 2).sum(dim=(1, 2))
    mapped = torch.einsum("jdp,d->jp", Js, m)
    sigma_w2 = s * fro.mean()
    sigma_b2 = ((mapped ** 2).sum(1) + b * fro).mean() - (mapped.mean(0) ** 2).sum()
    return Js, m, b, s, sigma_b2, sigma_w2


def _mapped_halves(g, model, N, steps, h):
    # (N, steps, P) split-half VJPs V_A, V_B of one render per step (no drift yet).
    Js, m, b, s = model[:4]
    D = m.shape[0]
    J = Js[torch.randint(0, 2, (N, steps), generator=g)]
    mu = m + math.sqrt(b) * torch.randn(N, steps, D, generator=g, dtype=DT)
    Y = mu[:, :, None] + math.sqrt(s) * torch.randn(N, steps, 2 * h, D, generator=g, dtype=DT)
    va = torch.einsum("nsdp,nsd->nsp", J, Y[:, :, :h].mean(2))
    vb = torch.einsum("nsdp,nsd->nsp", J, Y[:, :, h:].mean(2))
    return va, vb


def _run(va, vb, h, order):
    # One estimate per replica from its last order + 1 steps; returns (sigma_b2, sigma_w2), each (N,).
    out_b, out_w = [], []
    steps = va.shape[1]
    with set_validate_args(False):
        for i in range(va.shape[0]):
            st, vc = SingleRenderState(), None
            for j in range(steps - order - 1, steps):
                st, vc = single_render_update(st, va[i, j], vb[i, j], h, order=order)
            out_b.append(vc.sigma_b2)
            out_w.append(vc.sigma_w2)
    return torch.stack(out_b), torch.stack(out_w)


def _assert_mean(est, target, label):
    se = est.std() / math.sqrt(est.numel())
    assert abs(est.mean() - target) < TOL * se, (label, est.mean().item(), float(target), se.item())
    return se


def test_order2_unbiased_under_linear_drift_and_lag1_biased_by_it():
    g = torch.Generator().manual_seed(11)
    model = _hierarchical_model(g)
    sigma_b2, sigma_w2 = model[4], model[5]
    N, h = 2000, 2
    va, vb = _mapped_halves(g, model, N, 3, h)
    delta = torch.tensor([3.0, -2.5, 2.5], dtype=DT)          # G_s = G_0 + s delta
    drift = torch.arange(3, dtype=DT)[None, :, None] * delta
    va, vb = va + drift, vb + drift
    b2, w2 = _run(va, vb, h, order=2)
    _assert_mean(b2, sigma_b2, "order 2 sigma_b2")
    _assert_mean(w2, sigma_w2, "order 2 sigma_w2")
    b1, w1 = _run(va, vb, h, order=1)
    bias = (delta ** 2).sum() / 2                             # D_1 = ||delta||^2 / 2
    se = _assert_mean(b1, sigma_b2 + bias, "order 1 sigma_b2 (with its drift bias)")
    _assert_mean(w1, sigma_w2, "order 1 sigma_w2")
    assert bias > 10 * se                                     # the test sees a missing correction
    assert abs(b1.mean() - sigma_b2) > 6 * se


def test_order3_cancels_a_quadratic_drift_that_biases_order2():
    g = torch.Generator().manual_seed(12)
    model = _hierarchical_model(g)
    sigma_b2 = model[4]
    N, h = 2000, 2
    va, vb = _mapped_halves(g, model, N, 4, h)
    gamma = torch.tensor([2.5, 2.0, -2.2], dtype=DT)          # G_s = s delta + s^2 gamma
    s = torch.arange(4, dtype=DT)[None, :, None]
    drift = s * torch.tensor([1.0, 0.0, -1.0], dtype=DT) + s ** 2 * gamma
    va, vb = va + drift, vb + drift
    b3, _ = _run(va, vb, h, order=3)
    _assert_mean(b3, sigma_b2, "order 3 sigma_b2")
    b2, _ = _run(va, vb, h, order=2)
    bias = (2 * gamma).pow(2).sum() / 6                       # D_2 = ||Delta^2 G||^2 / 6
    se = _assert_mean(b2, sigma_b2 + bias, "order 2 sigma_b2 (with its curvature bias)")
    assert bias > 6 * se


@pytest.mark.parametrize("order", [1, 2])
def test_feedback_bias_matches_the_exact_sgd_formula(order):
    # G(theta) = theta, u_s = theta_s + beta_s + (a_A + a_B)/2, theta_{s+1} = theta_s - a u_s, stationary start.
    g = torch.Generator().manual_seed(20 + order)
    N, P, h, a = 2000, 6, 2, 0.3
    b, s = 0.5, 1.2                                           # per coordinate: sigma_B^2 = P b, sigma_W^2 = P s
    tau_c = b + s / (2 * h)
    theta = math.sqrt(a * tau_c / (2 - a)) * torch.randn(N, P, generator=g, dtype=DT)
    va, vb = [], []
    for _ in range(order + 1):
        beta = math.sqrt(b) * torch.randn(N, P, generator=g, dtype=DT)
        ha = theta + beta + math.sqrt(s / h) * torch.randn(N, P, generator=g, dtype=DT)
        hb = theta + beta + math.sqrt(s / h) * torch.randn(N, P, generator=g, dtype=DT)
        va.append(ha)
        vb.append(hb)
        theta = theta - a * (ha + hb) / 2                     # the optimiser steps on the probe's gradient
    b_est, w_est = _run(torch.stack(va, 1), torch.stack(vb, 1), h, order=order)
    factor = {1: a + a ** 2 / 2 + a ** 3 / (2 * (2 - a)),
              2: a + 2 * a ** 2 / 3 + a ** 3 / 3 + a ** 4 / 6 + a ** 5 / (6 * (2 - a))}[order]
    tau = P * tau_c
    se = _assert_mean(b_est, P * b + factor * tau, f"order {order} sigma_b2 with feedback")
    _assert_mean(w_est, P * s, f"order {order} sigma_w2 with feedback")
    assert factor * tau > 8 * se                              # the feedback bias is real and seen


def test_observe_takes_the_vjps_of_the_halves():
    # x = W theta (R = 1), so J^T v = W^T v exactly; observe must equal update fed by hand.
    g = torch.Generator().manual_seed(3)
    W = torch.randn(2, 5, 3, generator=g, dtype=DT)           # x: (1, 2, 5), theta split in two params
    p1 = torch.randn(2, generator=g, dtype=DT, requires_grad=True)
    p2 = torch.randn(1, generator=g, dtype=DT, requires_grad=True)
    by_observe, by_hand = SingleRenderProbe(order=2), SingleRenderProbe(order=2)
    for step in (4, 5, 6, 7):
        x = torch.einsum("cdp,p->cd", W, torch.cat([p1, p2]))[None]
        values = torch.randn(1, 7, 2, 5, generator=g, dtype=DT)   # K = 7: h = 3, the 7th draw unused
        out = by_observe.observe(x, values, [p1, p2], step=step)
        va = torch.einsum("cdp,cd->p", W, values[0, :3].mean(0))
        vb = torch.einsum("cdp,cd->p", W, values[0, 3:6].mean(0))
        ref = by_hand.update(va, vb, 3, step=step)
        assert (out is None) == (ref is None) == (step < 6)
        if ref is not None:
            for got, want in zip(out, ref):
                assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
        assert x.grad_fn is not None                          # the graph is kept for the step


def test_order1_window_and_the_docstring_numbers():
    probe = SingleRenderProbe(order=1)
    assert probe.update(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), 1) is None
    vc = probe.update(torch.tensor([2.0, 1.0]), torch.tensor([2.0, 1.0]), 1)
    # u = (0.5, 0), (2, 1); w = 0.5, 0: tau = 3.25 / 2, sigma_w2 = 0.25, sigma_b2 = tau - 0.25 / 2.
    assert vc.sigma_w2.item() == 0.25 and vc.sigma_b2.item() == 1.5
    assert vc.ms_between.item() == 2 * 1.625 and vc.ms_within.item() == 0.25
    assert torch.allclose(vc.sigma_b2, (vc.ms_between - vc.ms_within) / 2)


def test_window_restarts_on_a_gap_or_a_change_of_R_or_h():
    one = torch.ones(3, dtype=DT)
    probe = SingleRenderProbe(order=2)
    outs = [probe.update(one * s, one, 2, step=s) for s in (0, 1, 2)]
    assert [o is None for o in outs] == [True, True, False]
    assert probe.update(one, one, 2, step=10) is None          # gap: a new window
    assert probe.state.steps == (10,)
    assert probe.update(one, one, 2, step=11) is None
    assert probe.update(one, one, 3, step=12) is None          # h changed
    assert probe.state.steps == (12,) and probe.state.halves == (3,)
    assert probe.update(one, one, 3, step=13, R=2) is None     # R changed
    assert probe.update(one, one, 3, step=14, R=2) is None
    assert probe.update(one, one, 3, step=15, R=2) is not None
    spaced = SingleRenderProbe(order=1, spacing=20)
    assert spaced.update(one, one, 1, step=0) is None
    assert spaced.update(one, one, 1, step=20) is not None
    assert spaced.update(one, one, 1) is not None              # default step: last + spacing
    assert spaced.state.steps == (40,)


def test_bad_input_names_the_argument():
    one = torch.ones(3, dtype=DT)
    with pytest.raises(ValueError, match="order must be >= 1"):
        SingleRenderProbe(order=0)
    with pytest.raises(TypeError, match="spacing must be an integer"):
        SingleRenderProbe(spacing=1.5)
    probe = SingleRenderProbe()
    probe.update(one, one, 1, step=3)
    with pytest.raises(ValueError, match="step must increase"):
        probe.update(one, one, 1, step=3)
    with pytest.raises(ValueError, match="the state's means have 3"):
        probe.update(torch.ones(4, dtype=DT), torch.ones(4, dtype=DT), 1)
    with pytest.raises(ValueError, match="same shape"):
        probe.update(one, torch.ones(4, dtype=DT), 1)
    with pytest.raises(ValueError, match="half_a must be finite"):
        probe.update(one * float("nan"), one, 1)
    assert probe.state.steps == (3,)                           # failed calls changed nothing
    theta = torch.ones(3, requires_grad=True)
    x = (theta * 2)[None]
    with pytest.raises(ValueError, match="K >= 2"):
        SingleRenderProbe().observe(x, torch.ones(1, 1, 3), [theta])
    with pytest.raises(ValueError, match=r"values must have shape \(R, K, \*S\)"):
        SingleRenderProbe().observe(x, torch.ones(1, 4, 2), [theta])
    with pytest.raises(ValueError, match="does not require grad"):
        SingleRenderProbe().observe(x.detach(), torch.ones(1, 4, 3), [theta])


def test_state_dict_round_trip_resumes_identically():
    g = torch.Generator().manual_seed(5)
    vs = torch.randn(8, 2, 6, generator=g, dtype=DT)
    a = SingleRenderProbe(order=2)
    for s in range(4):
        a.update(vs[s, 0], vs[s, 1], 2, step=s)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = SingleRenderProbe(order=2)
    b.load_state_dict(torch.load(buf))
    assert b.state.steps == a.state.steps == (2, 3)
    for s in range(4, 8):
        oa = a.update(vs[s, 0], vs[s, 1], 2, step=s)
        ob = b.update(vs[s, 0], vs[s, 1], 2, step=s)
        for x, y in zip(oa, ob):
            assert torch.equal(x, y)
    # The saved tensors are copies: later updates do not change a saved checkpoint.
    saved = a.state_dict()
    a.update(vs[0, 0], vs[0, 1], 2)
    assert saved["steps"] == [6, 7] and not torch.equal(saved["means"][-1], a.state.means[-1])


def test_load_state_dict_validates_everything_before_changing_anything():
    one = torch.ones(3, dtype=DT)
    probe = SingleRenderProbe(order=2)
    probe.update(one, one, 1, step=0)
    good = probe.state_dict()
    before = probe.state
    bad_cases = [
        ({**good, "order": 1}, "order=1"),
        ({**good, "spacing": 2}, "spacing=2"),
        ({k: v for k, v in good.items() if k != "within"}, "missing within"),
        ({**good, "steps": [0, 1], "rows": [1, 1], "halves": [1, 1], "means": [one, one],
          "within": [one.sum()]}, "one equal length"),
        ({**good, "steps": [0, 2], "rows": [1, 1], "halves": [1, 1], "means": [one, one],
          "within": [one.sum(), one.sum()]}, "1 apart"),
        ({**good, "means": [torch.ones(2, 3)]}, "1 dimension"),
        ({**good, "rows": [0]}, "must be >= 1"),
    ]
    for state, match in bad_cases:
        with pytest.raises((ValueError, TypeError), match=match):
            probe.load_state_dict(state)
        assert probe.state is before
