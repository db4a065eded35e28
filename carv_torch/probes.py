r"""Variance probes: $\sigma_B^2$, $\sigma_W^2$ of the *parameter* gradient from a few vector-Jacobian products.

$K^\star = \sqrt{(c_u/c_d)\,\sigma_W^2/\sigma_B^2}$ needs the variance components of
$\hat G = \frac1R\sum_r J_r^\top \bar Y_r$, not of $\bar Y_r$: the render's Jacobian maps
different cameras onto different parameters, so the input-space between-render
variance can be ~0 while in parameter space it dominates (measured on the
text-to-3D benchmark). With i.i.d. inner draws split into halves $A$, $B$ of $h$
draws, :func:`parameter_space_components` forms, by $R + 1$ VJPs,
$V_A = \frac1R\sum_r J_r^\top\bar Y_{rA}$, $V_B$, and the per-row $u_r = J_r^\top\bar Y_r$, and
passes them to :func:`~carv_torch.estimator.split_half_components` (unbiased; $R \ge 2$).

At $R = 1$ (threestudio's default batch) the between part is not identifiable within a
step. :class:`SingleRenderProbe` estimates it *across* probe steps from two VJPs per
step: $\hat\sigma_W^2 = \frac h2\lVert V_A - V_B\rVert^2$ within the step, and the
$p$-th difference of the step means $u_s = \frac12(V_A + V_B)$, which cancels a drift of
$G$ that is a polynomial of degree $< p$ in the step (docs: maths/single-render-probes).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ._validation import as_int, as_tensor, check_finite, describe
from .estimator import VarianceComponents, _split_half

__all__ = ["checked_params", "row_vjps", "components_from_rows", "parameter_space_components",
           "sq_norm_of_mean", "SingleRenderState", "single_render_update", "SingleRenderProbe"]


def _vjp(x: torch.Tensor, params: list[torch.Tensor], grad_x: torch.Tensor) -> torch.Tensor:
    # J^T grad_x over all params, flattened; the graph of x is kept for the step's backward.
    gs = torch.autograd.grad(x, params, grad_outputs=grad_x, retain_graph=True, allow_unused=True)
    return torch.cat([(torch.zeros_like(q) if g is None else g).reshape(-1) for q, g in zip(params, gs)])


def checked_params(params) -> list[torch.Tensor] | None:
    """``params`` for the probes' VJPs as a list of tensors that require grad (``None`` stays ``None``)."""
    if params is None:
        return None
    if isinstance(params, torch.Tensor):
        params = [params]
    try:
        params = list(params)
    except TypeError:
        raise TypeError(f"params must be an iterable of tensors, got {type(params).__name__}") from None
    if not params or not all(isinstance(q, torch.Tensor) and q.requires_grad for q in params):
        raise ValueError("params must be a non-empty iterable of tensors that require grad "
                         "(e.g. nerf.parameters())")
    return params


def row_vjps(x: torch.Tensor, values: torch.Tensor, params):
    r"""The probe's $R + 1$ VJPs: $(V_A, V_B, u, h)$ with $u_r = J_r^\top\bar Y_r$ ``(R, P)``.

    $V_A = \frac1R\sum_r J_r^\top\bar Y_{rA}$ and $V_B$ over the halves of $h = \lfloor K/2\rfloor$
    draws; $R - 1$ rows of $u$ by their own VJP, the last by linearity. The graph of ``x``
    is kept for the step's backward.
    """
    params = list(params)
    R, K = values.shape[:2]
    h = K // 2
    Y = values.to(x.dtype)
    half_a, half_b = Y[:, :h].mean(1), Y[:, h:2 * h].mean(1)
    rows = (half_a + half_b) / 2
    v_a, v_b = _vjp(x, params, half_a / R), _vjp(x, params, half_b / R)
    u = []
    for r in range(R - 1):
        e = torch.zeros_like(rows)
        e[r] = rows[r]
        u.append(_vjp(x, params, e))
    u.append(R * (v_a + v_b) / 2 - sum(u))  # the last row by linearity
    return v_a, v_b, torch.stack(u), h


def sq_norm_of_mean(u: torch.Tensor) -> torch.Tensor:
    r"""Unbiased $\lVert\mathbb E u\rVert^2 = \frac{\lVert\sum_r u_r\rVert^2 - \sum_r\lVert u_r\rVert^2}{R(R-1)}$ of i.i.d. rows ``(R, P)``, $R \ge 2$.

    A 0-dim float64 tensor on ``u``'s device (no host read). On a probe's rows
    $u_r = J_r^\top\bar Y_r$ this is $\lVert G\rVert^2$ at the step's own parameters.
    """
    v = u.to(torch.float64)
    total = v.sum(0)
    return (total @ total - (v * v).sum()) / (v.shape[0] * (v.shape[0] - 1))


def components_from_rows(v_a, v_b, u, h: int, *, replicates: int = 1, control=None) -> VarianceComponents:
    r"""$\hat\sigma_B^2$, $\hat\sigma_W^2$ of the estimator run, from :func:`row_vjps` output.

    ``control`` ``(R, P)``: the per-view control variate $\phi_{c(\xi_r)}$ subtracted from each
    row (:class:`~carv_torch.control_variates.CellTable`; fixed before the draw, it leaves
    $\sigma_W^2$ unchanged and gives the $\sigma_B^2$ of $J^\top g - \phi_c$).
    ``replicates`` $M$: the $R$ rows are $M$ independent replicates of a camera design over
    $R/M$ consecutive rows (not i.i.d. rows), and $\sigma_B^2 = R\,\widehat{\operatorname{Var}}\hat G
    - \sigma_W^2/(2h)$ from the $M$ replicate means
    (:func:`~carv_torch.control_variates.replicated_components`); $M = 1$: i.i.d. rows,
    :func:`~carv_torch.estimator.split_half_components`.
    """
    R = u.shape[0]
    if control is not None:
        u = u - control.to(u.dtype)
    if replicates == 1:
        return _split_half(v_a, v_b, u, h)
    from .control_variates import replicated_components

    sigma_w2 = 0.5 * R * h * torch.sum((v_a - v_b) ** 2)
    reps = replicated_components(u.reshape(replicates, R // replicates, -1).mean(1), R, 2 * h, sigma_w2)
    ms = 2 * h * R * reps.variance
    return VarianceComponents(reps.sigma_b2, sigma_w2, ms, sigma_w2)


def parameter_space_components(x: torch.Tensor, values: torch.Tensor, params, *, replicates: int = 1,
                               control=None) -> VarianceComponents:
    r"""Split-half $\hat\sigma_B^2$, $\hat\sigma_W^2$ of $\frac1R\sum_r J_r^\top \bar Y_r$ from $R + 1$ VJPs of ``x``.

    Args:
        x: the upstream outputs ``(R, *S)``, a differentiable function of ``params``.
        values: the weighted i.i.d. inner draws $Y_{rk}$, ``(R, K, *S)`` ($K \ge 2$; the first
            $2h$, $h = \lfloor K/2\rfloor$, are used).
        params: the tensors $\theta$ the loss is differentiated for.
        replicates, control: a camera design's replicates and a per-view control variate
            (:func:`components_from_rows`).
    """
    # VJPs of finite draws (the teacher's output is checked) through the caller's graph:
    # no second value check here, so a probe adds one host read, not four.
    return components_from_rows(*row_vjps(x, values, params), replicates=replicates, control=control)


# --------------------------------------------------------------------------- R = 1: across steps


class SingleRenderState(NamedTuple):
    r"""The last probe steps of a :class:`SingleRenderProbe`, oldest first (at most ``order`` of them).

    Attributes:
        steps: the step indices $s$ (host ints), equally spaced.
        rows: $R$ of each step (renders averaged into $u_s$; 1 in threestudio's default).
        halves: $h$ of each step (draws per half).
        means: $u_s = \frac12(V_{A,s} + V_{B,s})$, flattened ``(D,)`` tensors.
        within: $\hat\sigma_{W,s}^2 = \frac{Rh}2\lVert V_{A,s} - V_{B,s}\rVert^2$, 0-dim tensors.
    """

    steps: tuple = ()
    rows: tuple = ()
    halves: tuple = ()
    means: tuple = ()
    within: tuple = ()


def _difference_coefficients(order: int) -> list[int]:
    # Delta^p u_s = sum_j c_j u_{s-j}, c_j = (-1)^j C(p, j); sum_j c_j^2 = C(2p, p).
    return [(-1) ** j * math.comb(order, j) for j in range(order + 1)]


def _check_order_spacing(order, spacing) -> tuple[int, int]:
    return as_int("order", order, minimum=1), as_int("spacing", spacing, minimum=1)


def _update(state: SingleRenderState, a: torch.Tensor, b: torch.Tensor, h: int, R: int, step: int,
            order: int, spacing: int):
    # The maths of single_render_update on checked inputs (no host read).
    # 1. This step's within estimate (Proposition 6 with R rows) and mean.
    within = 0.5 * R * h * torch.sum((a - b) ** 2)
    mean = (a + b) / 2
    # 2. The window: the newest run of steps `spacing` apart with the same (R, h).
    entries = list(zip(state.steps, state.rows, state.halves, state.means, state.within))
    entries.append((step, R, h, mean, within))
    keep = 1
    while (keep < len(entries) and entries[-keep - 1][1:3] == (R, h)
           and entries[-keep][0] - entries[-keep - 1][0] == spacing):
        keep += 1
    entries = entries[len(entries) - keep:]
    components = None
    if len(entries) > order:
        # 3. p-th difference of the means, newest first; E||.||^2 = sum_j c_j^2 tau_{s-j} + drift + feedback.
        window = entries[-order - 1:][::-1]
        c = _difference_coefficients(order)
        n = math.comb(2 * order, order)
        diff = sum(cj * e[3] for cj, e in zip(c, window))
        tau = R * torch.sum(diff ** 2) / n                       # per-render sigma_B^2 + sigma_W^2 / (2h)
        sigma_w2 = sum(cj * cj * e[4] for cj, e in zip(c, window)) / n   # same weights c_j^2 / C(2p, p)
        components = VarianceComponents(tau - sigma_w2 / (2 * h), sigma_w2, 2 * h * tau, sigma_w2)
    entries = entries[-order:]
    new = SingleRenderState(*(tuple(col) for col in zip(*entries)))
    return new, components


def single_render_update(state: SingleRenderState, half_a, half_b, h: int, *, order: int = 2,
                         spacing: int = 1, R: int = 1, step: int | None = None):
    r"""Fold one probe step into ``state``; $\hat\sigma_B^2$, $\hat\sigma_W^2$ once $p + 1$ steps are in the window.

    A pure update rule: returns ``(new_state, components)`` and leaves ``state`` as it was.
    With $V_{A,s}$, $V_{B,s}$ the step's split-half VJPs, $u_s = \frac12(V_{A,s} + V_{B,s})$,
    $\hat w_s = \frac{Rh}2\lVert V_{A,s} - V_{B,s}\rVert^2$ and $c_j = (-1)^j\binom pj$:

    $$ \hat\tau = \frac{R}{\binom{2p}{p}}\Big\lVert\sum_{j=0}^p c_j\,u_{s-j\Delta}\Big\rVert^2,\qquad
       \hat\sigma_W^2 = \sum_{j=0}^p \frac{c_j^2}{\binom{2p}{p}}\,\hat w_{s-j\Delta},\qquad
       \hat\sigma_B^2 = \hat\tau - \frac{\hat\sigma_W^2}{2h}, $$

    unbiased for the $c_j^2/\binom{2p}p$-weighted averages of $\sigma_B^2$, $\sigma_W^2$ over the
    window when the mean gradient $G_s$ is a polynomial of degree $< p$ in $s$ and does not
    respond to the probe's own draws; the bias otherwise (drift, the optimiser's feedback) is
    Proposition 2 of docs/maths/single-render-probes. Returned as
    :class:`~carv_torch.estimator.VarianceComponents` with $\mathrm{MS}_B = 2h\hat\tau$,
    $\mathrm{MS}_W = \hat\sigma_W^2$ (the algebra of the $R \ge 2$ probe); ``None`` until the
    window holds $p + 1$ steps.

    Args:
        state: a :class:`SingleRenderState` (``SingleRenderState()`` to start).
        half_a, half_b: $V_A = \frac1R\sum_r J_r^\top\bar Y_{rA}$, $V_B$ (any shape, flattened).
        h: draws per half.
        order: $p \ge 1$ ($p = 1$: lag-1 differences, biased by any drift; $p = 2$ cancels a
            linear drift).
        spacing: $\Delta$: the window holds steps exactly this far apart with the same $R$, $h$;
            a step that breaks the run starts a new window.
        R: renders averaged into $V_A$, $V_B$ at this step.
        step: the step index (default: the last one plus ``spacing``); must increase.

    Example:
        >>> st = SingleRenderState()
        >>> st, vc = single_render_update(st, torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), 1, order=1)
        >>> vc is None
        True
        >>> st, vc = single_render_update(st, torch.tensor([2.0, 1.0]), torch.tensor([2.0, 1.0]), 1, order=1)
        >>> vc.sigma_b2.item(), vc.sigma_w2.item()
        (1.5, 0.25)
    """
    order, spacing = _check_order_spacing(order, spacing)
    h, R = as_int("h", h, minimum=1), as_int("R", R, minimum=1)
    if not isinstance(state, SingleRenderState):
        raise TypeError(f"state must be a SingleRenderState, got {type(state).__name__}")
    ref = state.means[-1] if state.means else None
    a = as_tensor("half_a", half_a, device=None if ref is None else ref.device, other="the state")
    b = as_tensor("half_b", half_b, device=a.device, other="half_a")
    if a.shape != b.shape:
        raise ValueError(f"half_a and half_b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.reshape(-1), b.reshape(-1)
    if ref is not None and a.shape != ref.shape:
        raise ValueError(f"half_a has {a.numel()} entries, the state's means have {ref.numel()} "
                         f"(the parameters changed? start from SingleRenderState())")
    check_finite("half_a", a)
    check_finite("half_b", b)
    last = state.steps[-1] if state.steps else None
    if step is None:
        step = 0 if last is None else last + spacing
    step = as_int("step", step)
    if last is not None and step <= last:
        raise ValueError(f"step must increase: got {step} after {last}")
    return _update(state, a, b, h, R, step, order, spacing)


class SingleRenderProbe:
    r"""$\hat\sigma_B^2$, $\hat\sigma_W^2$ of the parameter gradient at $R = 1$, from two VJPs per probe step.

    Holds a :class:`SingleRenderState` (the last ``order`` step means $u_s$ and within
    estimates, on the device of the gradients) and applies :func:`single_render_update`.
    At a probe step, :meth:`observe` forms $V_A = J^\top\bar Y_A$ and $V_B = J^\top\bar Y_B$
    from the upstream output ``x`` and the i.i.d. draws; once ``order + 1`` probe steps
    ``spacing`` apart are in, every call returns an estimate
    (:class:`~carv_torch.estimator.VarianceComponents`, 0-dim tensors, not clipped).

    Requirements (docs: maths/single-render-probes): i.i.d. inner draws on probe steps, a fresh
    upstream sample (camera) per step, probe steps equally spaced (bursts of consecutive
    steps are best: ``spacing=1``). With ``order=2`` a linear drift of the mean gradient
    cancels; what remains is the optimiser's response to the probe's own draws, which
    makes $\hat\sigma_B^2$ high by about $\kappa_p\operatorname{tr}(A\bar\Sigma)$ (Proposition 4 there;
    $\kappa_p = 1$ under SGD, smaller with momentum). Not stepping the optimiser inside a
    window (accumulating its gradients) removes it, and then ``order=1`` is exact.

    Host reads: none (value checks are skipped in :meth:`observe`, whose inputs are VJPs
    of checked draws). Memory: ``order`` vectors of the parameters' size.

    Args:
        order: $p$, the order of the differences (1 or 2 in practice).
        spacing: steps between the probe steps of one window.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> theta = torch.ones(3, requires_grad=True)
        >>> probe = SingleRenderProbe(order=2)
        >>> for s in range(3):
        ...     x = (theta * torch.randn(3, generator=g))[None]    # one "render", (R, *S) = (1, 3)
        ...     out = probe.observe(x, torch.randn(1, 4, 3, generator=g), [theta])
        >>> out is not None, probe.state.steps
        (True, (1, 2))
    """

    def __init__(self, order: int = 2, *, spacing: int = 1):
        self.order, self.spacing = _check_order_spacing(order, spacing)
        self.state = SingleRenderState()

    def update(self, half_a, half_b, h: int, *, R: int = 1, step: int | None = None):
        """:func:`single_render_update` on the held state (already-mapped $V_A$, $V_B$)."""
        self.state, out = single_render_update(self.state, half_a, half_b, h, order=self.order,
                                               spacing=self.spacing, R=R, step=step)
        return out

    def observe(self, x: torch.Tensor, values: torch.Tensor, params, *, step: int | None = None, control=None):
        r"""Two VJPs of ``x`` at this probe step, then :meth:`update`.

        Args:
            x: the upstream outputs ``(R, *S)`` (``R = 1`` at threestudio's batch size), a
                differentiable function of ``params``; its graph is kept.
            values: the weighted i.i.d. inner draws $Y_{rk}$, ``(R, K, *S)`` ($K \ge 2$; the
                first $2h$, $h = \lfloor K/2\rfloor$, are used).
            params: the tensors $\theta$ the loss is differentiated for.
            step: the call's index (e.g. the guidance's call counter).
            control: ``(P,)``, the per-view control variate $\phi_{c(\xi_s)}$ of this step's
                camera, subtracted from both halves (the within part is unchanged; the
                differences then see $J^\top g - \phi_c$).
        """
        if not isinstance(x, torch.Tensor) or not isinstance(values, torch.Tensor):
            raise TypeError(f"x and values must be tensors, got {describe(x)} and {describe(values)}")
        if values.ndim != x.ndim + 1 or values.shape[0] != x.shape[0] or values.shape[2:] != x.shape[1:]:
            raise ValueError(f"values must have shape (R, K, *S) for x of shape (R, *S) = {tuple(x.shape)}, "
                             f"got {tuple(values.shape)}")
        R, K = values.shape[:2]
        if K < 2:
            raise ValueError(f"values must hold K >= 2 draws per upstream sample to split, got K = {K}")
        if not x.requires_grad:
            raise ValueError("x does not require grad: render with autograd on")
        params = list(params)
        h = K // 2
        Y = values.to(x.dtype)
        v_a = _vjp(x, params, Y[:, :h].mean(1) / R)
        v_b = _vjp(x, params, Y[:, h:2 * h].mean(1) / R)
        if control is not None:
            v_a, v_b = v_a - control.to(v_a.dtype), v_b - control.to(v_b.dtype)
        last = self.state.steps[-1] if self.state.steps else None
        step = (0 if last is None else last + self.spacing) if step is None else as_int("step", step)
        if last is not None and step <= last:
            raise ValueError(f"step must increase: got {step} after {last}")
        if self.state.means and v_a.shape != self.state.means[-1].shape:
            raise ValueError(f"params have {v_a.numel()} entries, the state's means have "
                             f"{self.state.means[-1].numel()} (call reset())")
        # VJPs of finite (checked) draws: no value check, so observe reads nothing back.
        self.state, out = _update(self.state, v_a, v_b, h, R, step, self.order, self.spacing)
        return out

    def reset(self) -> None:
        """Forget the window (e.g. after the parameters were replaced)."""
        self.state = SingleRenderState()

    def state_dict(self) -> dict:
        """``order``, ``spacing`` and the window (host ints and cloned tensors; no host read)."""
        st = self.state
        return {"order": self.order, "spacing": self.spacing, "steps": list(st.steps),
                "rows": list(st.rows), "halves": list(st.halves),
                "means": [m.detach().clone() for m in st.means],
                "within": [w.detach().clone() for w in st.within]}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output; validates all of it before changing anything."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from state_dict(), got {type(state).__name__}")
        missing = sorted({"order", "spacing", "steps", "rows", "halves", "means", "within"} - set(state))
        if missing:
            raise ValueError(f"state is missing {', '.join(missing)}")
        for key, mine in (("order", self.order), ("spacing", self.spacing)):
            if state[key] != mine:
                raise ValueError(f"the checkpoint was written with {key}={state[key]!r}, this probe has {mine!r}")
        cols = [list(state[k]) for k in ("steps", "rows", "halves", "means", "within")]
        n = len(cols[0])
        if any(len(c) != n for c in cols) or n > self.order:
            raise ValueError(f"state's steps, rows, halves, means and within must have one equal length "
                             f"<= order = {self.order}, got lengths {[len(c) for c in cols]}")
        steps = [as_int(f"state['steps'][{i}]", s) for i, s in enumerate(cols[0])]
        rows = [as_int(f"state['rows'][{i}]", r, minimum=1) for i, r in enumerate(cols[1])]
        halves = [as_int(f"state['halves'][{i}]", v, minimum=1) for i, v in enumerate(cols[2])]
        if any(t - s != self.spacing for s, t in zip(steps, steps[1:])):
            raise ValueError(f"state's steps must be {self.spacing} apart, got {steps}")
        if len(set(zip(rows, halves))) > 1:
            raise ValueError(f"state's rows and halves must be constant over the window, got {rows}, {halves}")
        means = [as_tensor(f"state['means'][{i}]", m, ndim=1) for i, m in enumerate(cols[3])]
        within = [as_tensor(f"state['within'][{i}]", w, ndim=0) for i, w in enumerate(cols[4])]
        if len({(m.shape, m.device) for m in means}) > 1:
            raise ValueError("state's means must share one shape and device")
        for key, vals in (("means", means), ("within", within)):
            for i, v in enumerate(vals):
                if not bool(torch.isfinite(v).all()):  # a load, not the hot path: host reads are fine
                    raise ValueError(f"state[{key!r}][{i}] must be finite, got NaN or inf")
        self.state = SingleRenderState(tuple(steps), tuple(rows), tuple(halves),
                                       tuple(m.detach().clone() for m in means),
                                       tuple(w.detach().clone() for w in within))
