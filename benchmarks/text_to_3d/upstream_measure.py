r"""Upstream (camera) measurements on the text-to-3D benchmark: camera designs, per-view control variates.

A configuration (:class:`Config`) is an inner configuration (a :class:`~.pipeline.Method`:
$K$, proposal, timestep design) at $R$ renders per step, with an upstream method: a camera
design (``iid``, ``strat``, ``antipodal``, ``sobol``, ``sequence``) or the per-view control
variate ``cv``. One replicate is one gradient step at a fixed NeRF (for ``sequence``, the
mean of the $P$ steps of one period). Besides the step's estimate $A$ (timed), each
replicate computes $B$: the same estimator with independent inner draws on the *same*
renders (untimed). Given the cameras $A$ and $B$ are independent with the common mean
$\frac1R\sum_r\mu(\xi_r)$, so (docs: maths/upstream, Proposition 2)

$$ \mathbb E\lVert A - B\rVert^2 = \frac{2\sigma_W^2}{RK}, \qquad
   \mathbb E\langle A - \hat G_{\rm ref},\, B - \hat G_{\rm ref}\rangle
   = \frac{\sigma_B^2(\text{design})}{R} + V_{\rm ref}, $$

unbiased under every design whose cameras are marginally $p$, with no model fit and the
within noise cancelling in the cross product ($\hat G_{\rm ref}$ independent of both).

The control variate $\hat G_{\rm cv} = \hat G - \frac1R\sum_r\phi_{c(\xi_r)} + \sum_c P(c)\phi_c$
(:class:`carv_torch.control_variates.CellTable`) is linear in $\hat G$, so its variance is
measured on the very replicates of the i.i.d. rows (``posthoc``): every table is applied to
each replicate's $A$ and $B$ (the correction is the same for both). The cost of a real
control-variate step (per-view VJPs at $R > 1$, the correction, the refresh) is timed by
the ``cv`` configurations.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from carv_core import IID, PermutedStrata, Welford
from carv_torch import cameras as tcam
from carv_torch.control_variates import CellTable, cell_index, per_view_gradients
from carv_torch.renderers import Cameras

from .nerf import flat_grad, make_nerf, nerf_parameters
from .pipeline import Method, Progress, gradient_step, make_guidance
from .scenes import ELEVATION_RANGE, RADIUS, sample_cameras
from .teacher import null_condition, teacher_condition

__all__ = ["LOW", "HIGH", "CELLS", "DESIGNS", "Config", "check_camera_law", "step_cameras",
           "TableVariant", "cell_pool", "cell_tables", "measure"]

LOW = (0.0, ELEVATION_RANGE[0])
r"""$a$ of the camera transform $\xi = a + (b - a)U$: (azimuth, elevation) lower ends."""
HIGH = (2 * math.pi, ELEVATION_RANGE[1])
r"""$b$: azimuth $< 2\pi$, elevation $\le e_{\max}$ (the law of :func:`.scenes.sample_cameras`)."""
CELLS = (16, 2)
"""Control-variate cells: 16 azimuth $\\times$ 2 elevation slices of equal mass, $P(c) = 1/32$."""
DESIGNS = ("iid", "strat", "antipodal", "sobol", "sequence", "cv", "cv-vjp")
"""Upstream methods: i.i.d. cameras, stratified azimuth, antipodal pairs, scrambled Sobol
(azimuth × elevation, one scramble per step), the run-long stratified sequence, the control
variate with one render graph per view (``cv``) or with VJPs through the batched render
(``cv-vjp``, :func:`carv_torch.control_variates.per_view_gradients`; timed only at $R > 1$)."""


@dataclass(frozen=True)
class Config:
    """One configuration: ``inner`` (label), ``method`` (its $R$ and inner draws), ``upstream`` (in :data:`DESIGNS`)."""

    inner: str
    method: Method
    upstream: str
    period: int = 1      # steps per replicate (the run-long sequence: one period)
    split: bool = True   # compute B (independent inner draws on the same renders)

    def __post_init__(self):
        if self.upstream not in DESIGNS:
            raise ValueError(f"upstream must be one of {DESIGNS}, got {self.upstream!r}")
        if isinstance(self.period, bool) or not isinstance(self.period, int) or self.period < 1 \
                or (self.period > 1 and self.upstream != "sequence"):
            raise ValueError(f"period must be an int >= 1, and > 1 only for upstream='sequence', "
                             f"got period={self.period!r} with upstream={self.upstream!r}")
        if self.upstream.startswith("cv") and self.split:
            raise ValueError(f"split must be False for upstream={self.upstream!r} (a timed control-variate "
                             "step; its variance is measured post hoc on the iid rows)")
        if self.method.K == "auto":
            raise ValueError(f"method.K must be a fixed int here, got 'auto' ({self.method.name})")

    @property
    def name(self) -> str:
        """``<inner> <upstream> R=<R>`` (``P=<period>`` for the sequence)."""
        tail = f" P={self.period}" if self.period > 1 else ""
        return f"{self.inner} {self.upstream} R={self.method.R}{tail}"


def _to_cameras(u: torch.Tensor):
    return tcam.orbit_from_parameters(tcam.cameras_from_uniforms(u, LOW, HIGH), RADIUS)


def check_camera_law(n: int = 64, seed: int = 0) -> None:
    r"""Raise unless the designs' transform is :func:`.scenes.sample_cameras`' law.

    ``sample_cameras`` maps $U \sim U[0,1)^{2}$ to azimuth $2\pi U_1$, elevation
    $e_{\min} + (e_{\max} - e_{\min})U_2$ at radius ``RADIUS``; the designs map their uniforms by
    :func:`carv_torch.cameras.cameras_from_uniforms` with :data:`LOW`, :data:`HIGH` and
    :func:`~carv_torch.cameras.orbit_from_parameters` at ``RADIUS``. Both are compared on the
    same uniforms, so every design with uniform marginals has the marginal $p(\xi)$.
    """
    g = torch.Generator().manual_seed(seed)
    u, cams = _iid(n, g)
    mine = _to_cameras(u)
    for a, b, what in ((mine.origins, cams.origins, "origins"), (mine.rotations, cams.rotations, "rotations")):
        if not torch.allclose(a, b, atol=1e-5, rtol=0):
            raise AssertionError(f"camera {what} of cameras_from_uniforms(LOW={LOW}, HIGH={HIGH}) at radius "
                                 f"{RADIUS} differ from scenes.sample_cameras: the designs' law is not p(xi)")


def _iid(R: int, generator: torch.Generator):
    # scenes.sample_cameras itself, and the uniforms it drew (a twin of the generator reads them).
    twin = torch.Generator().set_state(generator.get_state())
    u = torch.rand(2, R, generator=twin).T.contiguous()
    return u, sample_cameras(R, generator)


def step_cameras(cfg: Config, generator: torch.Generator, *, step: int = 0, seed: int | None = None):
    r"""One step's camera uniforms $U$ ``(R, 2)`` (azimuth, elevation) and cameras under ``cfg.upstream``.

    ``seed`` randomises the run-long designs (``sobol``: one scramble per step; ``sequence``:
    one draw of $PR$ stratified azimuths per period, ``step`` its position in the period).
    """
    R = cfg.method.R
    if cfg.upstream in ("iid", "cv", "cv-vjp"):
        return _iid(R, generator)
    if cfg.upstream == "strat":
        u = tcam.camera_uniforms((PermutedStrata(), IID()), R, generator)
    elif cfg.upstream == "antipodal":
        u = tcam.camera_uniforms((tcam.AntipodalPairs(), IID()), R, generator)
    elif cfg.upstream == "sobol":
        u = tcam.sobol_sequence(2, R, 0, seed)
    else:
        u = tcam.sequence_uniforms((PermutedStrata(), IID()), R, step, cfg.period, seed)
    return u, _to_cameras(u)


class TableVariant(NamedTuple):
    """A control-variate table: built at the NeRF ``staleness`` steps before the checkpoint (``effective``
    when the run is shorter), ``kind`` ``saga`` (one per-view gradient per cell, table ``index``) or ``mean<m>``."""

    staleness: int
    effective: int
    kind: str
    index: int
    table: CellTable


def cell_pool(state: dict, teacher, method: Method, scene_index: int, *, per_cell: int,
              guidance_scale: float, generator: torch.Generator, settings) -> torch.Tensor:
    r"""Per-view gradients $J^\top\bar g(\xi)$ at ``per_cell`` cameras in each cell, ``(per_cell, C, P)`` float32.

    Cell $c = 2a + e$ (:func:`carv_torch.control_variates.cell_index` with :data:`CELLS`) gets
    cameras with uniforms $((a + U_1)/16, (e + U_2)/2)$, $U$ uniform: each is $p$ restricted to
    the cell. The gradient is one $R = 1$ step of ``method``'s inner configuration at the NeRF
    ``state`` (what a SAGA table refreshed by that run's steps holds).
    """
    if isinstance(per_cell, bool) or not isinstance(per_cell, int) or per_cell < 1:
        raise ValueError(f"per_cell must be an int >= 1 (cameras per cell), got {per_cell!r}")
    nerf = make_nerf(settings.grid_size, settings.image_size, settings.n_samples)
    nerf.load_state_dict(state)
    one = Method(f"table {method.name}", 1, method.K, method.proposal, method.sampler, method.antithetic)
    guid = make_guidance(teacher, one, seed=int(torch.randint(0, 2**62, (1,), generator=generator)),
                         guidance_scale=guidance_scale)
    cond, unc = teacher_condition(scene_index), null_condition()
    n_cells = CELLS[0] * CELLS[1]
    grid = torch.tensor([[a, e] for a in range(CELLS[0]) for e in range(CELLS[1])], dtype=torch.float64)
    pool = torch.empty(per_cell, n_cells, sum(p.numel() for p in nerf_parameters(nerf)))
    for m in range(per_cell):
        u = ((grid + torch.rand(n_cells, 2, generator=generator, dtype=torch.float64))
             / torch.tensor(CELLS, dtype=torch.float64)).float().clamp(max=1 - 2**-24)  # float32 u < 1
        if not torch.equal(cell_index(u, CELLS), torch.arange(n_cells)):
            raise AssertionError("cell uniforms do not land in their cells (cell_index disagrees)")
        for c in range(n_cells):
            gradient_step(nerf, guid, _to_cameras(u[c:c + 1]), cond, unc)
            pool[m, c] = flat_grad(nerf)
    return pool


def cell_tables(pool: torch.Tensor, staleness: int, effective: int, step: int) -> list[TableVariant]:
    r"""``saga`` tables $\phi^{(m)}_c$ = ``pool[m, c]``; for $M > 1$, the cell mean $\frac1M\sum_m\phi^{(m)}_c$.

    Each table is written by :meth:`carv_torch.control_variates.CellTable.refresh` at ``step``
    (the step of the NeRF it was built at); ``staleness`` and ``effective`` label it.
    """
    n, C, P = pool.shape
    cells = torch.arange(C)
    out = []
    rows = [("saga", m, pool[m]) for m in range(n)] + ([(f"mean{n}", -1, pool.mean(0))] if n > 1 else [])
    for kind, m, values in rows:
        tab = CellTable(C, P)
        tab.refresh(values, cells, step=max(step, 0))
        out.append(TableVariant(staleness, effective, kind, m, tab))
    return out


def _cv_step(nerf, guid, cams, cells, table: CellTable, scratch: CellTable, cond, unc, step: int,
             batched: bool):
    # A control-variate step: the estimate and the per-view gradients, the correction with the
    # fixed table, the refresh (into a scratch table). At R > 1 the per-view gradients come either
    # from R - 1 VJPs through the batched render (per_view_gradients, the last by linearity), or
    # from one render graph per view, whose backward passes touch only their own view.
    params = nerf_parameters(nerf)
    nerf.zero_grad(set_to_none=True)
    R = cams.origins.shape[0]
    if R == 1 or batched:
        images = nerf(cams)
        views = None
    else:
        views = [nerf(Cameras(cams.origins[r:r + 1], cams.rotations[r:r + 1])) for r in range(R)]
        images = torch.cat(views)
    loss = guid(images, cond, unc, params=params)["loss_sds"]
    if R == 1:
        loss.backward()
        total = flat_grad(nerf)
        per_view = total[None]
    elif batched:
        (g_img,) = torch.autograd.grad(loss, images, retain_graph=True)
        images.backward(g_img, retain_graph=True)
        total = flat_grad(nerf)
        # The loss averages the R views: each VJP is J_r^T g_r / R.
        per_view = R * per_view_gradients(images, g_img, params, total=total)
    else:
        (g_img,) = torch.autograd.grad(loss, images)
        rows = []
        for r, v in enumerate(views):
            nerf.zero_grad(set_to_none=True)
            v.backward(g_img[r:r + 1])
            rows.append(flat_grad(nerf))
        per_view = R * torch.stack(rows)
        total = per_view.mean(0)
    corrected = table.corrected(total, cells)
    scratch.refresh(per_view, cells, step)
    return corrected


def _new_state(cfg: Config, teacher, seeds, guidance_scale: float, tables, posthoc_Rs) -> dict:
    s_a, s_b, s_c = seeds
    st = dict(cfg=cfg, a=make_guidance(teacher, cfg.method, seed=s_a, guidance_scale=guidance_scale),
              b=make_guidance(teacher, cfg.method, seed=s_b, guidance_scale=guidance_scale) if cfg.split else None,
              cams=torch.Generator().manual_seed(s_c), welford=Welford(), err=[], cross=[], dab=[], times=[],
              post=[])
    if cfg.upstream in ("cv", "cv-vjp"):
        if not tables or not tables.get(cfg.inner):
            raise ValueError(f"configuration {cfg.name!r} needs control-variate tables for {cfg.inner!r}")
        st["table"] = tables[cfg.inner][0].table
    elif cfg.upstream == "iid" and cfg.split and tables and cfg.method.R in posthoc_Rs:
        st["post"] = [dict(variant=v, err=[], cross=[]) for v in tables.get(cfg.inner, [])]
    return st


def measure(nerf, teacher, scene_index: int, configs: list[Config], ref, *, reps: int, warmup: int,
            guidance_scale: float, generator: torch.Generator, tables: dict | None = None,
            posthoc_Rs: tuple = (), progress: bool = True, label: str = "") -> list[dict]:
    r"""Replicates of every configuration at the NeRF ``nerf``, interleaved (a fresh random order per sweep).

    Per configuration: a :class:`carv_core.Welford` of $A$ (its MSE to ``ref.grad``), and per
    replicate $e = \lVert A - \hat G_{\rm ref}\rVert^2$,
    $x = \langle A - \hat G_{\rm ref}, B - \hat G_{\rm ref}\rangle$, $d = \lVert A - B\rVert^2$ and the
    step times. ``tables`` maps an inner label to its
    :class:`TableVariant` list (the first is used by the ``cv`` steps); the i.i.d. rows with
    $R$ in ``posthoc_Rs`` get every table applied (``posthoc``: $e$, $x$ per variant).
    """
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 2:
        raise ValueError(f"reps must be an int >= 2 (a standard error needs two), got {reps!r}")
    cond, unc = teacher_condition(scene_index), null_condition()
    G = np.asarray(ref.grad, dtype=np.float64)
    seeds = torch.randint(0, 2**62, (len(configs), 3), generator=generator).tolist()
    states = [_new_state(c, teacher, s, guidance_scale, tables, posthoc_Rs) for c, s in zip(configs, seeds)]
    scratch = None
    if any(c.upstream in ("cv", "cv-vjp") for c in configs):
        scratch = CellTable(CELLS[0] * CELLS[1], G.shape[0])
    bar = Progress(reps + warmup, f"{label}{len(configs)} configurations interleaved", unit=" sweeps",
                   enabled=progress)
    step = 0
    for sweep in range(reps + warmup):
        for i in torch.randperm(len(states), generator=generator).tolist():
            st, cfg = states[i], states[i]["cfg"]
            seed = int(torch.randint(0, 2**62, (1,), generator=st["cams"]))
            A = np.zeros_like(G)
            B = np.zeros_like(G) if cfg.split else None
            times = []
            for p in range(cfg.period):
                u, cams = step_cameras(cfg, st["cams"], step=p, seed=seed)
                cells = cell_index(u, CELLS)
                t0 = time.perf_counter()
                if cfg.upstream in ("cv", "cv-vjp"):   # the flattened per-view gradients are the method's
                    a = _cv_step(nerf, st["a"], cams, cells, st["table"], scratch, cond, unc, step,
                                 batched=cfg.upstream == "cv-vjp")
                    times.append(time.perf_counter() - t0)
                else:                                    # a training step: render, guidance, backward
                    nerf.zero_grad(set_to_none=True)
                    images = nerf(cams)
                    st["a"](images, cond, unc, params=nerf_parameters(nerf))["loss_sds"].backward(
                        retain_graph=cfg.split)
                    times.append(time.perf_counter() - t0)
                    a = flat_grad(nerf)
                step += 1
                A += a.double().numpy() / cfg.period
                if cfg.split:
                    nerf.zero_grad(set_to_none=True)
                    st["b"](images, cond, unc, params=nerf_parameters(nerf))["loss_sds"].backward()
                    B += flat_grad(nerf).double().numpy() / cfg.period
            if sweep < warmup:
                continue
            st["welford"].update(A)
            e = A - G
            st["err"].append(float(e @ e))
            st["times"].extend(times)
            if cfg.split:
                st["cross"].append(float(e @ (B - G)))
                st["dab"].append(float((A - B) @ (A - B)))
            for post in st["post"]:
                ecv = post["variant"].table.corrected(a, cells).double().numpy() - G
                post["err"].append(float(ecv @ ecv))
                post["cross"].append(float(ecv @ (ecv + B - A)))
        bar.update(sweep + 1)
    bar.close()
    nerf.zero_grad(set_to_none=True)
    return [_raw_row(st, G, ref.var_ref) for st in states]


def _raw_row(st: dict, G: np.ndarray, var_ref: float) -> dict:
    cfg, w = st["cfg"], st["welford"]
    m = cfg.method
    n = w.count
    mean_err = float(np.sum((w.mean - G) ** 2))
    expected = w.trace_cov / n + var_ref
    t = np.asarray(st["times"])
    return dict(name=cfg.name, inner=cfg.inner, upstream=cfg.upstream, R=m.R, K=m.K, proposal=m.proposal,
                sampler=m.sampler, antithetic=m.antithetic, period=cfg.period, reps=n, mse=float(w.mse(G)),
                bias_ratio=mean_err / expected if expected > 0 else float("nan"),
                err=st["err"], cross=st["cross"] or None, dab=st["dab"] or None,
                cost=float(np.median(t)), cost_q1=float(np.quantile(t, 0.25)), cost_q3=float(np.quantile(t, 0.75)),
                posthoc=[dict(staleness=p["variant"].staleness, effective=p["variant"].effective,
                              kind=p["variant"].kind, index=p["variant"].index, err=p["err"], cross=p["cross"])
                         for p in st["post"]])
