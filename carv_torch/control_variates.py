r"""Per-view control variates for the parameter gradient, and the variance of the estimator actually run.

**The control variate** (SAGA-style). Split the camera space into $C$ cells
$c(\xi)$ (e.g. 16 azimuth $\times$ 2 elevation) of probability $P(c)$ under $p(\xi)$, and
keep a table $\phi_c \in \mathbb R^P$ of recent per-view parameter gradients. With the
table *fixed before the cameras are drawn*,

$$ \hat G_{\rm cv} = \frac1R\sum_r \big(J_r^\top g(\xi_r) - \phi_{c(\xi_r)}\big) + \sum_c P(c)\,\phi_c $$

is unbiased whenever each camera is marginally $p$ (every design of
:mod:`carv_torch.cameras`): $\mathbb E\,\phi_{c(\xi_r)} = \sum_c P(c)\phi_c$. Its between-render
part is $\operatorname{tr}\operatorname{Cov}(\mu(\xi) - \phi_{c(\xi)})$, small when
$\phi_c \approx \mathbb E[\mu(\xi)\mid c]$; the within-render part is unchanged (docs:
maths/upstream). After the step, :meth:`CellTable.refresh` writes the step's per-view
gradients into their cells; the next step's table is then fixed again. At $R = 1$ the
per-view gradient *is* the step's gradient (no extra work); at $R > 1$ it needs $R - 1$
extra vector-Jacobian products (:func:`per_view_gradients`), each about one backward
through one view's render.

**Memory.** The table holds $C \times P$ numbers in ``dtype`` (float32: $4CP$ bytes; 32
cells of a $4 \cdot 64^3$-parameter grid: 134 MB; bfloat16 halves it), bounded by
``max_bytes``. Reduced precision stores rounded gradients; the estimator stays exactly
unbiased because the baseline $\sum_c P(c)\phi_c$ is formed from the same stored values.

**Variance of the estimator run.** Under a camera design the $R$ row means are not
i.i.d., so their sample variance is biased. With $M \ge 2$ *independent replicates* of
the design (e.g. two independent randomisations of $R/2$ cameras),
:func:`replicated_components` estimates $\operatorname{Var}\hat G$ without bias and the
between-render component $\sigma_B^2 = R\operatorname{Var}\hat G - \sigma_W^2/K$ that
:meth:`carv_torch.accounting.Accountant.observe` needs for $K$ = "auto".
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch

from ._validation import (
    as_dtype,
    as_int,
    as_tensor,
    check_finite,
    check_unit_interval,
    describe,
    is_validating,
    resolve_device,
)

__all__ = ["cell_index", "CellTable", "per_view_gradients", "correction_term", "refresh_after_backward",
           "checked_upstream",
           "UpstreamComponents", "replicated_components"]


def cell_index(u: torch.Tensor, shape) -> torch.Tensor:
    r"""Cell $c = \sum_j \lfloor n_j U_{rj}\rfloor \prod_{i>j} n_i$ of each camera from its uniforms, ``(R,)`` int64.

    ``shape`` $= (n_1, \dots, n_m)$ cuts the first $m$ camera coordinates into equal-mass
    slices, so $P(c) = 1/\prod_j n_j$ under $p$ (each camera's uniforms are uniform on
    $[0,1)^d$ under every design of :mod:`carv_torch.cameras`).

    Example:
        >>> cell_index(torch.tensor([[0.1, 0.7], [0.9, 0.2]]), (4, 2)).tolist()
        [1, 6]
    """
    u = as_tensor("u", u, ndim=2)
    check_unit_interval("u", u)
    shape = tuple(as_int(f"shape[{j}]", n, minimum=1) for j, n in enumerate(shape))
    if not shape or len(shape) > u.shape[1]:
        raise ValueError(f"shape must cut 1 to d = {u.shape[1]} coordinates, got {shape}")
    c = torch.zeros(u.shape[0], dtype=torch.int64, device=u.device)
    for j, n in enumerate(shape):
        c = c * n + torch.clamp((u[:, j] * n).floor().long(), 0, n - 1)
    return c


class CellTable:
    r"""The table $\phi \in \mathbb R^{C\times P}$ of a per-view control variate, with $P(c)$ and refresh steps.

    Args:
        n_cells: $C$.
        dim: $P$, the number of parameters (the flattened gradient's length).
        probs: $P(c)$, shape ``(C,)``, summing to 1 (default $1/C$: equal-mass cells, :func:`cell_index`).
        dtype: storage dtype (bfloat16/float16 halve the memory; the estimator computes in the gradient's dtype).
        device: where the table lives.
        max_bytes: bound on $C \cdot P \cdot$ itemsize (``None``: no bound).
        momentum: $\beta \in (0, 1]$: a refresh sets $\phi_c \leftarrow \phi_c + \beta(\bar g_c - \phi_c)$
            (a cell's first refresh takes $\bar g_c$ whole). $\beta = 1$ is SAGA's one-sample table;
            $\beta < 1$ averages past views, trading the table's own inner noise for staleness.
            Any $\beta$ keeps the estimator unbiased (the table is a function of the past).

    The table starts at 0 (the plain estimator); :attr:`refreshed` holds each cell's last
    refresh step (-1: never).

    Example:
        >>> tab = CellTable(2, 3)
        >>> tab.refresh(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([0]), step=0)
        >>> tab.corrected(torch.tensor([2.0, 2.0, 2.0]), torch.tensor([0])).tolist()
        [1.5, 1.0, 0.5]
    """

    def __init__(self, n_cells: int, dim: int, probs=None, *, dtype: torch.dtype = torch.float32,
                 device=None, max_bytes: int | None = 2**30, momentum: float = 1.0):
        if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0 < momentum <= 1:
            raise ValueError(f"momentum must be a real number in (0, 1], got {momentum!r}")
        self.momentum = float(momentum)
        self._baseline_cache: dict = {}
        self.n_cells = as_int("n_cells", n_cells, minimum=1)
        self.dim = as_int("dim", dim, minimum=1)
        self.dtype = as_dtype("dtype", dtype)
        device = resolve_device(device, None)
        nbytes = self.n_cells * self.dim * self.dtype.itemsize
        if max_bytes is not None and nbytes > as_int("max_bytes", max_bytes, minimum=0):
            raise ValueError(f"a CellTable of n_cells x dim = {self.n_cells} x {self.dim} in {self.dtype} "
                             f"takes {nbytes} bytes > max_bytes = {max_bytes}; use fewer cells, "
                             "dtype=torch.bfloat16, or raise max_bytes")
        if probs is None:
            probs = torch.full((self.n_cells,), 1.0 / self.n_cells, dtype=torch.float64)
        probs = as_tensor("probs", probs, ndim=1)
        # A pmf rounded to its dtype sums to 1 within a few ulps; it is renormalised in float64.
        tol = max(1e-9, 4 * probs.numel() * torch.finfo(probs.dtype).eps) if probs.is_floating_point() else 1e-9
        probs = probs.to("cpu", torch.float64)
        if probs.shape != (self.n_cells,) or bool((probs < 0).any()) or abs(float(probs.sum()) - 1) > tol:
            raise ValueError(f"probs must be a pmf of shape (n_cells,) = ({self.n_cells},) with entries "
                             f">= 0 summing to 1, got shape {tuple(probs.shape)}, minimum "
                             f"{float(probs.min())}, sum {float(probs.sum())}")
        self.probs = (probs / probs.sum()).to(device)
        self.table = torch.zeros(self.n_cells, self.dim, dtype=self.dtype, device=device)
        self.refreshed = torch.full((self.n_cells,), -1, dtype=torch.int64, device=device)

    @property
    def nbytes(self) -> int:
        """Bytes held by the table ($C \\cdot P \\cdot$ itemsize)."""
        return self.table.numel() * self.table.element_size()

    def baseline(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        r"""$\sum_c P(c)\,\phi_c$, shape ``(P,)``, from the stored values (cached until the table changes)."""
        key = (dtype, self.table._version)  # any in-place write to the table bumps its version
        if key not in self._baseline_cache:
            self._baseline_cache = {key: self.probs.to(dtype) @ self.table.to(dtype)}
        return self._baseline_cache[key]

    def _cells(self, cells, R: int | None = None) -> torch.Tensor:
        if not isinstance(cells, torch.Tensor) or cells.dtype not in (torch.int32, torch.int64) or cells.ndim != 1:
            raise TypeError(f"cells must be an int64 tensor of shape (R,) (cell_index output), got "
                            f"{describe(cells)}")
        if R is not None and cells.shape[0] != R:
            raise ValueError(f"cells has {cells.shape[0]} entries for {R} views")
        if cells.device != self.table.device:
            raise ValueError(f"cells is on {cells.device}, the table on {self.table.device}")
        if is_validating() and cells.numel() and cells.device.type != "meta" and bool(((cells < 0) | (cells >= self.n_cells)).any()):
            raise ValueError(f"cells must lie in [0, n_cells) = [0, {self.n_cells}), got values in "
                             f"[{int(cells.min())}, {int(cells.max())}]")
        return cells.long()

    def corrected(self, gradient, cells) -> torch.Tensor:
        r"""$\hat G_{\rm cv} = \hat G - \frac1R\sum_r \phi_{c_r} + \sum_c P(c)\phi_c$ for the step's gradient $\hat G$ ``(P,)``.

        Needs only the step's combined gradient $\hat G = \frac1R\sum_r J_r^\top g(\xi_r)$
        and the $R$ cells: the correction is linear.
        """
        g = as_tensor("gradient", gradient, ndim=1, device=self.table.device, other="the table")
        if g.shape[0] != self.dim:
            raise ValueError(f"gradient must have shape (dim,) = ({self.dim},), got {tuple(g.shape)}")
        cells = self._cells(cells)
        return g - self.table[cells].to(g.dtype).mean(0) + self.baseline(g.dtype)

    def refresh(self, per_view, cells, step: int) -> None:
        r"""$\phi_c \leftarrow$ the mean of this step's per-view gradients $J_r^\top g(\xi_r)$ with $c_r = c$.

        All checks (shapes, devices, finiteness when validating) run before the table
        changes; views sharing a cell are averaged first, so the write is deterministic.
        Call it after the step's estimate, so the next step's table is fixed before its draw.
        """
        step = as_int("step", step, minimum=0)
        g = as_tensor("per_view", per_view, ndim=2, device=self.table.device, other="the table")
        if g.shape[1] != self.dim:
            raise ValueError(f"per_view must have shape (R, dim) = (R, {self.dim}), got {tuple(g.shape)}")
        cells = self._cells(cells, g.shape[0])
        check_finite("per_view", g)
        # 1. Average the views of each cell: row r gets the mean over r' with c_r' = c_r.
        same = (cells[:, None] == cells[None, :]).to(g.dtype)
        values = (same / same.sum(1, keepdim=True)) @ g
        # 2. Blend into the table (beta = 1, or a cell's first refresh: replace), then one write per
        #    array (duplicate cells write equal values).
        if self.momentum < 1:
            old = self.table[cells].to(g.dtype)
            beta = torch.where(self.refreshed[cells] >= 0, self.momentum, 1.0).to(g.dtype)[:, None]
            values = old + beta * (values - old)
        self.table.index_copy_(0, cells, values.to(self.dtype))
        self.refreshed.index_fill_(0, cells, step)

    def staleness(self, step: int) -> torch.Tensor:
        """Steps since each cell's last refresh, ``(C,)`` (``step + 1`` for a cell never refreshed)."""
        return as_int("step", step, minimum=0) - self.refreshed

    def state_dict(self) -> dict:
        """The table, refresh steps, $P(c)$ and settings (tensors cloned)."""
        return {"n_cells": self.n_cells, "dim": self.dim, "dtype": str(self.dtype).replace("torch.", ""),
                "momentum": self.momentum,
                "probs": self.probs.detach().cpu().clone(), "table": self.table.detach().clone(),
                "refreshed": self.refreshed.detach().clone()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output; the whole state is checked first and a bad field changes nothing."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict from CellTable.state_dict(), got {type(state).__name__}")
        for key in ("n_cells", "dim", "dtype", "probs", "table", "refreshed"):
            if key not in state:
                raise ValueError(f"state is missing {key!r} (not a CellTable.state_dict())")
        mine = self.state_dict()
        for key in ("n_cells", "dim", "dtype", "momentum"):
            if state.get(key, mine[key]) != mine[key]:  # (states without "momentum" predate it: 1.0)
                raise ValueError(f"state[{key!r}] = {state[key]!r} differs from this table's {mine[key]!r}")
        probs = state["probs"]
        if not isinstance(probs, torch.Tensor) or probs.shape != mine["probs"].shape or \
                not torch.allclose(probs.to("cpu", torch.float64), mine["probs"], rtol=0, atol=1e-12):
            raise ValueError("state['probs'] differs from this table's P(c) (written for other cells)")
        table, refreshed = state["table"], state["refreshed"]
        if not isinstance(table, torch.Tensor) or table.shape != self.table.shape or table.dtype != self.dtype:
            raise ValueError(f"state['table'] must be a {self.dtype} tensor of shape {tuple(self.table.shape)}, "
                             f"got {describe(table)}")
        if not bool(torch.isfinite(table).all()):
            raise ValueError("state['table'] must be finite")
        if not isinstance(refreshed, torch.Tensor) or refreshed.shape != self.refreshed.shape or \
                refreshed.dtype != torch.int64 or bool((refreshed < -1).any()):
            raise ValueError(f"state['refreshed'] must be an int64 tensor of shape ({self.n_cells},) "
                             f"with entries >= -1, got {describe(refreshed)}")
        self.table.copy_(table)
        self.refreshed.copy_(refreshed)


def per_view_gradients(outputs: torch.Tensor, grad_outputs: torch.Tensor, params, total=None) -> torch.Tensor:
    r"""$J_r^\top g_r$ for each view $r$, flattened over ``params``: ``(R, P)``, by $R$ vector-Jacobian products.

    ``outputs`` ``(R, *S)`` are the renders (a function of ``params``), ``grad_outputs``
    ``(R, *S)`` the residuals $g_r$ (e.g. $\tilde w(\hat\epsilon - \epsilon)$ mapped to
    the render); the graph is kept, so the step's own backward can follow. ``total``: the
    step's gradient $\sum_r J_r^\top g_r$ (flattened, ``(P,)``) when it is at hand; the last
    view then follows by linearity, $R - 1$ VJPs instead of $R$.

    Cost: a VJP of one view through a graph that rendered all $R$ views *batched* traverses
    the whole batch. Measured on a $32^3$ :class:`~carv_torch.renderers.GridRenderer` (CPU,
    one thread, $32^2$ pixels, 32 samples per ray): the $R$ VJPs cost 1.3x the step's
    forward + backward at $R = 2$ and 2.7x at $R = 4$. Render the views as separate graphs
    (one forward per view) to make each VJP one view's backward, or use $R = 1$, where the
    step's own gradient is the per-view gradient and the refresh is free.
    """
    params = [params] if isinstance(params, torch.Tensor) else list(params)
    if not params or not all(isinstance(q, torch.Tensor) and q.requires_grad for q in params):
        raise ValueError("params must be a non-empty iterable of tensors that require grad")
    if outputs.shape != grad_outputs.shape or outputs.ndim < 1:
        raise ValueError(f"outputs and grad_outputs must have the same shape (R, *S), got "
                         f"{tuple(outputs.shape)} and {tuple(grad_outputs.shape)}")
    R = outputs.shape[0]
    rows = []
    for r in range(R if total is None else R - 1):
        gs = torch.autograd.grad(outputs[r], params, grad_outputs[r], retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(q) if g is None else g).reshape(-1)
                               for q, g in zip(params, gs)]))
    if total is not None:
        total = as_tensor("total", total, ndim=1, device=outputs.device, other="outputs")
        if rows and total.shape != rows[0].shape or not rows and total.shape[0] != sum(q.numel() for q in params):
            raise ValueError(f"total must be the flattened step gradient of shape (P,), got {tuple(total.shape)}")
        rows.append(total - sum(rows) if rows else total.clone())
    return torch.stack(rows)


def _split_like(flat: torch.Tensor, params) -> list[torch.Tensor]:
    out, start = [], 0
    for q in params:
        out.append(flat[start:start + q.numel()].view_as(q).to(q.dtype))
        start += q.numel()
    return out


def correction_term(table: CellTable, cells, params):
    r"""$(L_{\rm cv}, \Delta)$: a loss term of value 0 whose gradient is the control variate's correction.

    $\Delta = \sum_c P(c)\,\phi_c - \frac1R\sum_r \phi_{c_r}$ (flattened over ``params``, detached)
    and $L_{\rm cv} = \langle\Delta, \theta\rangle - \operatorname{sg}\langle\Delta, \theta\rangle$, so
    adding $L_{\rm cv}$ to the step's loss makes its backward give $\hat G_{\rm cv} = \hat G + \Delta$
    and leaves the logged loss unchanged. The table is read here, before the step's
    backward: refreshing it afterwards does not change this step's estimator.
    """
    params = list(params)
    if sum(q.numel() for q in params) != table.dim:
        raise ValueError(f"params have {sum(q.numel() for q in params)} entries, the control variate's "
                         f"table has dim = {table.dim}")
    dtype = params[0].dtype
    cells = table._cells(cells)
    delta = table.baseline(dtype) - table.table[cells].to(dtype).mean(0)
    term = sum((d * q).sum() for d, q in zip(_split_like(delta, params), params))
    return term - term.detach(), delta


def refresh_after_backward(table: CellTable, cells, params, delta, step: int):
    r"""At $R = 1$: when the step's backward has computed the gradient $\hat G_{\rm cv}$ of ``params``,
    write its per-view part $\hat G_{\rm cv} - \Delta = J^\top g(\xi)$ into the view's cell.

    No extra VJP: the hook (:func:`torch.autograd.graph.register_multi_grad_hook`) reads the
    gradient that backward produced for this pass (other loss terms on ``params``, e.g.
    regularisers, are included: any table keeps the estimator unbiased; a term common to
    all cells cancels in the correction). Fires once; returns the handle (``.remove()``
    it if the step is abandoned before its backward).
    """
    params, state = list(params), {}

    def hook(grads):
        state["handle"].remove()
        flat = torch.cat([(torch.zeros_like(q) if g is None else g).reshape(-1) for q, g in zip(params, grads)])
        table.refresh((flat - delta.to(flat.dtype))[None], cells, step)

    state["handle"] = torch.autograd.graph.register_multi_grad_hook(params, hook, mode="all")
    return state["handle"]


def checked_upstream(R: int, params, replicates, control_variate, cells):
    r"""Validate a guidance call's upstream arguments; returns ``(replicates, control_variate, cells)``.

    ``replicates`` $M$ divides $R$ (rows $mR/M, \dots, (m+1)R/M - 1$ are replicate $m$);
    ``control_variate`` is a :class:`CellTable` with one cell index per row in ``cells``
    and needs ``params`` (the correction is a gradient over them).
    """
    replicates = as_int("replicates", replicates, minimum=1)
    if R % replicates:
        raise ValueError(f"replicates = {replicates} must divide the {R} upstream samples of the call")
    if control_variate is None:
        if cells is not None:
            raise ValueError("cells were given without a control_variate (a CellTable)")
        return replicates, None, None
    if not isinstance(control_variate, CellTable):
        raise TypeError(f"control_variate must be a carv_torch.CellTable, got {describe(control_variate)}")
    if params is None:
        raise ValueError("control_variate needs params=... (its correction is a gradient over them)")
    if cells is None:
        raise ValueError("control_variate needs cells=... (cell_index of each upstream sample's camera)")
    return replicates, control_variate, control_variate._cells(cells, R)


class UpstreamComponents(NamedTuple):
    r"""$\widehat{\operatorname{Var}}\hat G$ (trace) and the components $\hat\sigma_B^2$, $\hat\sigma_W^2$ of the estimator run (0-dim tensors)."""

    variance: torch.Tensor
    sigma_b2: torch.Tensor
    sigma_w2: torch.Tensor


def replicated_components(replicate_means, R: int, K: int, sigma_w2=0.0) -> UpstreamComponents:
    r"""$\operatorname{Var}\hat G$ and $\sigma_B^2$ of a designed (and/or control-variate) estimator from $M$ independent replicates.

    Each replicate $m$ is the estimate $\hat G_m$ of an *independent* randomisation of the
    design over $R/M$ cameras (with $K$ inner draws each); $\hat G = \frac1M\sum_m \hat G_m$. Then

    $$ \widehat{\operatorname{Var}}\hat G = \frac{1}{M(M-1)}\sum_m \lVert\hat G_m - \hat G\rVert^2, \qquad
       \hat\sigma_B^2 = R\,\widehat{\operatorname{Var}}\hat G - \hat\sigma_W^2/K $$

    are unbiased (traces; $\hat\sigma_B^2$ not clipped), so $\operatorname{Var}\hat G =
    (\sigma_B^2 + \sigma_W^2/K)/R$ holds with the design's own $\sigma_B^2$ and
    :meth:`~carv_torch.accounting.Accountant.observe` can be fed it. ``sigma_w2``: an
    unbiased within estimate (e.g. the split-half
    :func:`~carv_torch.probes.parameter_space_components` ``.sigma_w2``, unbiased under any
    camera design that keeps each camera's marginal $p$); 0 when the inner draws are exact.

    Example:
        >>> c = replicated_components(torch.tensor([[1.0], [3.0]]), R=2, K=1)
        >>> c.variance.item(), c.sigma_b2.item()
        (1.0, 2.0)
    """
    G = as_tensor("replicate_means", replicate_means, min_ndim=1)
    M = G.shape[0]
    if M < 2:
        raise ValueError(f"replicate_means needs M >= 2 independent replicates along dim 0, got shape "
                         f"{tuple(G.shape)}")
    R = as_int("R", R, minimum=M)
    K = as_int("K", K, minimum=1)
    if not isinstance(sigma_w2, (torch.Tensor, numbers.Real)) or isinstance(sigma_w2, bool):
        raise TypeError(f"sigma_w2 must be a real number or a 0-dim tensor, got {describe(sigma_w2)}")
    sw = torch.as_tensor(sigma_w2, dtype=G.dtype, device=G.device)
    if sw.ndim != 0:
        raise ValueError(f"sigma_w2 must be a scalar, got shape {tuple(sw.shape)}")
    if not math.isfinite(float(sw)):  # one host read, off the per-step hot path (a probe step)
        raise ValueError(f"sigma_w2 must be finite, got {float(sw)}")
    G = G.reshape(M, -1)
    var = torch.sum((G - G.mean(0)) ** 2) / (M * (M - 1))
    return UpstreamComponents(var, R * var - sw / K, sw)
