r"""Score distillation of the benchmark's NeRF from the tiny latent teacher, and its evaluation.

One gradient step (a *method* fixes $R$, $K$, the proposal $q$ and the uniform design):

1. draw $R$ cameras $\xi_r \sim p(\xi)$ (:func:`.scenes.sample_cameras`, or :func:`draw_uniform_cameras`);
2. upstream: $x_r = s_{\rm vae}\mathcal E(2\,\mathrm{render}_\theta(\xi_r) - 1)$ (:mod:`.nerf`);
3. inner: $K$ draws $t_{rk} \sim q$, $\epsilon_{rk}$, one batched CFG teacher call, residuals
   $f_{rk} = w(t)\,\alpha_t\,(\hat\epsilon(x_{t,rk}, t, y) - \epsilon_{rk})$ averaged over $k$ with
   $\tilde w = p/q$ (:class:`carv_torch.guidance.CARVGuidance`);
4. one backward pass of the surrogate loss gives $\hat G = \frac1R\sum_r J_r^\top \bar g_r$
   (``Method.cv_cells``: $\hat G - \frac1R\sum_r\phi_{c(\xi_r)} + \sum_c P(c)\phi_c$, a :class:`carv_torch.CellTable`).

The baseline is threestudio's: $t$ uniform on $[\lfloor 0.02T\rfloor, \lfloor 0.98T\rfloor]$,
$K = 1$, $R = 2$ views per step. The oracle proposal $q^\star \propto p\sqrt{\mathbb E[\lVert f\rVert^2\mid t]}$
is a fixed table measured beforehand (:func:`oracle_from_draws`).

Quality against the known object (:func:`evaluate`): PSNR and mask IoU (opacity > 1/2)
at the held-out cameras of :func:`.scenes.heldout_cameras` against the ground-truth
renderer, and the classifier's probability of the prompt's class on the NeRF's renders.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple, Union

import torch

from carv_torch import FixedProposal, oracle_proposal, uniform_timesteps
from carv_torch.cameras import CameraDraw, draw_cameras
from carv_torch.control_variates import CellTable, cell_index
from carv_torch.guidance import CARVGuidance, GuidanceConfig
from carv_torch.renderers import GridRenderer

from .nerf import GRID_SIZE, IMAGE_SIZE, N_SAMPLES, make_nerf, nerf_parameters, opacity
from .scenes import (ELEVATION_RANGE, RADIUS, check_scene_index, ground_truth_renderer, heldout_cameras,
                     render, sample_cameras)
from .teacher import GUIDANCE_SCALE, null_condition, teacher_condition

__all__ = [
    "T_RANGE",
    "Method",
    "BASELINE",
    "CAMERA_LOW",
    "CAMERA_HIGH",
    "draw_uniform_cameras",
    "make_guidance",
    "oracle_from_draws",
    "StepInfo",
    "gradient_step",
    "EvalReference",
    "Quality",
    "eval_reference",
    "evaluate",
    "TrainSettings",
    "Run",
    "train",
    "Progress",
]

T_RANGE = (0.02, 0.98)
r"""$p$: uniform on $[\lfloor 0.02T\rfloor, \lfloor 0.98T\rfloor]$ (threestudio's default)."""


@dataclass(frozen=True)
class Method:
    r"""One gradient estimator.

    Attributes:
        name: label in tables and figures.
        R: renders per step. K: inner draws per render, or ``"auto"``.
        proposal: ``uniform`` ($q = p$), ``weight`` ($q \propto p\,w_{\rm SDS}$, defensive),
            ``adaptive`` (online $q^\star$), ``oracle`` (measured $q^\star$, needs a table).
        sampler: uniform design (``iid``, ``stratified``, ``global``, ``sobol``).
        antithetic: $(\epsilon, -\epsilon)$ pairs.
        cv_cells: ``(n_azimuth, n_elevation)``: a per-view control variate over that many
            equal-mass camera cells (:func:`carv_torch.cell_index` of the camera uniforms);
            ``None``: none. Needs $R = 1$ in :func:`train` (the table is refreshed from the
            step's own backward, no extra VJP).
    """

    name: str
    R: int = 2
    K: Union[int, str] = 1
    proposal: str = "uniform"
    sampler: str = "iid"
    antithetic: bool = False
    cv_cells: tuple | None = None

    def __post_init__(self):
        c = self.cv_cells
        if c is not None and (not isinstance(c, tuple) or len(c) != 2 or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in c)):
            raise ValueError(f"cv_cells must be None or a tuple (n_azimuth, n_elevation) of integers >= 1, "
                             f"got {c!r}")

    def cost_units(self, c_u: float, c_d: float, K: float | None = None) -> float:
        r"""$R(c_u + K c_d)$ (``K`` overrides an ``"auto"`` K)."""
        k = self.K if K is None else K
        return self.R * (c_u + float(k) * c_d)


BASELINE = Method("baseline (R=2, K=1, uniform)", R=2, K=1, proposal="uniform", sampler="iid")
"""threestudio's estimator."""

CAMERA_LOW = (0.0, ELEVATION_RANGE[0])
r"""$a$ of $\xi = a + (b - a)U$ for (azimuth, elevation): the law of :func:`.scenes.sample_cameras`."""
CAMERA_HIGH = (2 * math.pi, ELEVATION_RANGE[1])
r"""$b$ of $\xi = a + (b - a)U$: azimuth $U[0, 2\pi)$, elevation $U[e_{\min}, e_{\max}]$ (radius ``RADIUS``)."""


def draw_uniform_cameras(R: int, generator: torch.Generator, designs=("iid", "iid")) -> CameraDraw:
    r"""$R$ cameras of :func:`.scenes.sample_cameras`' law through uniforms $U$ ``(R, 2)`` (``.uniforms``):
    :func:`carv_torch.cameras.draw_cameras` with ``designs``, :data:`CAMERA_LOW`, :data:`CAMERA_HIGH`, ``RADIUS``."""
    return draw_cameras(designs, R, CAMERA_LOW, CAMERA_HIGH, generator, radius=RADIUS)


def make_guidance(teacher, method: Method, *, seed: int, guidance_scale: float = GUIDANCE_SCALE,
                  oracle_q: torch.Tensor | None = None, fixed_costs=None,
                  weighting: str = "sds", k_max: int = 32) -> CARVGuidance:
    """A :class:`CARVGuidance` that implements ``method`` (``oracle_q`` for ``proposal="oracle"``).

    ``fixed_costs`` ``(c_u, c_d)`` feeds ``K="auto"`` measured costs instead of its own
    in-loop timing (needed when several guidances are interleaved in one process).
    """
    proposal = method.proposal
    if proposal == "oracle":
        if oracle_q is None:
            raise ValueError(f"method {method.name!r} uses the oracle proposal; pass oracle_q (T,)")
        proposal = FixedProposal(oracle_q)
    auto = method.K == "auto"
    cfg = GuidanceConfig(min_step_percent=T_RANGE[0], max_step_percent=T_RANGE[1],
                         weighting=weighting, include_alpha=True, proposal=proposal,
                         sampler=method.sampler, antithetic=method.antithetic,
                         K="auto" if auto else int(method.K), k_min=2, k_max=k_max, k_init=4,
                         fixed_costs=fixed_costs, guidance_scale=float(guidance_scale),
                         seed=int(seed))
    return CARVGuidance(teacher, cfg)


def oracle_from_draws(t: torch.Tensor, sq_norm: torch.Tensor, T: int, *, n_bins: int = 50,
                      delta: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    r"""$q^\star \propto p\sqrt{\hat m(t)}$ from draws of $t$ uniform on $p$'s support and $\lVert f\rVert^2$.

    $\hat m$ is the mean of $\lVert f\rVert^2$ in ``n_bins`` equal-width bins of $t$
    (piecewise constant), the support and $p$ of :data:`T_RANGE`. Returns ``(q, m)``,
    both ``(T,)``; $\hat m$ is 0 outside the support.
    """
    p = uniform_timesteps(T, *T_RANGE).to(torch.float64)
    t = t.reshape(-1).to(torch.long)
    v = sq_norm.reshape(-1).to(torch.float64)
    edges = torch.linspace(0, T, n_bins + 1)
    b = torch.bucketize(t.to(torch.float64), edges[1:-1].to(torch.float64), right=True)
    sums = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, b, v)
    counts = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, b, torch.ones_like(v))
    means = sums / counts.clamp(min=1)
    # Bins without draws inside the support take the mean of their neighbours' values.
    filled = counts > 0
    if not bool(filled.all()):
        idx = torch.arange(n_bins, dtype=torch.float64)
        means = torch.tensor([float(means[filled][torch.argmin((idx[filled] - i).abs())])
                              if not filled[i] else float(means[i]) for i in range(n_bins)],
                             dtype=torch.float64)
    tb = torch.bucketize(torch.arange(T, dtype=torch.float64), edges[1:-1].to(torch.float64), right=True)
    m = torch.where(p > 0, means[tb].clamp(min=1e-30), torch.zeros(T, dtype=torch.float64))
    return oracle_proposal(p, m, delta), m


class StepInfo(NamedTuple):
    """One gradient step: draws per render used, the timesteps, the renders, and whether it was a variance probe."""

    K: int
    timesteps: torch.Tensor
    images: torch.Tensor
    probe: bool = False


def gradient_step(nerf: GridRenderer, guidance: CARVGuidance, cameras, condition, uncond,
                  **upstream) -> StepInfo:
    r"""Render, guide (``upstream``: e.g. ``control_variate``, ``cells``), backward: $\hat G$ in ``.grad``."""
    nerf.zero_grad(set_to_none=True)
    images = nerf(cameras)
    out = guidance(images, condition, uncond, params=nerf_parameters(nerf), **upstream)
    out["loss_sds"].backward()
    return StepInfo(int(out["K"]), guidance.last.estimate.t, images.detach(), guidance.last.probe is not None)


# --------------------------------------------------------------------------- evaluation


class EvalReference(NamedTuple):
    """Ground truth at the held-out cameras: images ``(n, 3, H, W)``, masks ``(n, H, W)`` (bool), the cameras."""

    scene_index: int
    images: torch.Tensor
    masks: torch.Tensor
    cameras: object


class Quality(NamedTuple):
    """PSNR (dB) and mask IoU averaged over held-out views; classifier probability of the prompt's class."""

    psnr: float
    iou: float
    prob: float


def eval_reference(scene_index: int, *, n_views: int = 8, grid_size: int = GRID_SIZE,
                   image_size: int = IMAGE_SIZE, n_samples: int = N_SAMPLES) -> EvalReference:
    """Render the ground truth of ``scene_index`` at :func:`.scenes.heldout_cameras`."""
    scene_index = check_scene_index(scene_index)
    gt = ground_truth_renderer(scene_index, grid_size, image_size, n_samples)
    cams = heldout_cameras(n_views)
    return EvalReference(scene_index, render(gt, cams), opacity(gt, cams) > 0.5, cams)


def evaluate(nerf: GridRenderer, ref: EvalReference, classifier=None) -> Quality:
    r"""PSNR $= -10\log_{10}\mathrm{MSE}$ per view (averaged), IoU of opacity masks, $p(y\mid x)$ (``nan`` without a classifier)."""
    images = render(nerf, ref.cameras)
    mse = (images - ref.images).pow(2).flatten(1).mean(1).clamp(min=1e-10)
    psnr = float((-10 * torch.log10(mse)).mean())
    masks = opacity(nerf, ref.cameras) > 0.5
    inter = (masks & ref.masks).flatten(1).sum(1).float()
    union = (masks | ref.masks).flatten(1).sum(1).float().clamp(min=1)
    iou = float((inter / union).mean())
    prob = float("nan")
    if classifier is not None:
        with torch.no_grad():
            prob = float(torch.softmax(classifier(images), -1)[:, ref.scene_index].mean())
    return Quality(psnr, iou, prob)


# --------------------------------------------------------------------------- training


class Progress:
    """A plain-text progress bar on stderr (``tqdm`` is not required): ``label [####   ] i/n  elapsed  eta``."""

    def __init__(self, total: float, label: str, *, unit: str = "", every_s: float = 5.0,
                 enabled: bool = True):
        self.total, self.label, self.unit = float(total), label, unit
        self.every_s, self.enabled = every_s, enabled
        self.t0 = time.perf_counter()
        self._last = -math.inf
        self.done = 0.0

    def update(self, done: float, extra: str = "", force: bool = False) -> None:
        """Report progress ``done`` (of ``total``), at most every ``every_s`` seconds unless ``force``."""
        import sys

        self.done = float(done)
        now = time.perf_counter()
        if not self.enabled or (not force and now - self._last < self.every_s):
            return
        self._last = now
        frac = min(max(self.done / self.total, 0.0), 1.0) if self.total > 0 else 1.0
        el = now - self.t0
        eta = el / frac - el if frac > 0 else float("nan")
        bar = "#" * int(24 * frac)
        print(f"  {self.label} [{bar:<24}] {self.done:.0f}/{self.total:.0f}{self.unit}  "
              f"{el:.0f}s elapsed, eta {eta:.0f}s  {extra}", file=sys.stderr, flush=True)

    def close(self, extra: str = "") -> None:
        """Print the final state."""
        self.update(self.done, extra, force=True)


@dataclass(frozen=True)
class TrainSettings:
    r"""Optimisation of the NeRF grid: Adam with ``lr``, $\beta = $ ``betas``; the CFG scale; sizes."""

    lr: float = 0.03
    betas: tuple = (0.9, 0.99)
    guidance_scale: float = GUIDANCE_SCALE
    grid_size: int = GRID_SIZE
    image_size: int = IMAGE_SIZE
    n_samples: int = N_SAMPLES

    def replace(self, **kw) -> "TrainSettings":
        """A copy with fields replaced."""
        return dataclasses.replace(self, **kw)


class Run(NamedTuple):
    r"""One SDS run.

    Attributes:
        method, scene_index, seed: what was run.
        steps: gradient steps taken. train_seconds: wall-clock in steps (evaluation excluded).
        curve: ``[(train_seconds, step, psnr, iou, prob), ...]`` at the evaluation points.
        step_seconds: median wall-clock of one step (render, teacher, backward, Adam).
        mean_K: average inner draws per render.
        checkpoints: ``{step: state_dict}`` at the requested steps.
        nerf: the trained NeRF.
        control_variate: the method's :class:`carv_torch.CellTable` after training (``None`` without one).
    """

    method: str
    scene_index: int
    seed: int
    steps: int
    train_seconds: float
    curve: list
    step_seconds: float
    mean_K: float
    checkpoints: dict
    nerf: GridRenderer
    control_variate: CellTable | None = None


def train(teacher, scene_index: int, method: Method, *, seed: int, settings: TrainSettings = TrainSettings(),
          steps: int | None = None, seconds: float | None = None, eval_every_s: float | None = None,
          eval_steps: tuple = (), ref: EvalReference | None = None, classifier=None,
          checkpoint_steps: tuple = (), oracle_q=None, progress: bool = True,
          nerf: GridRenderer | None = None, on_eval: Callable | None = None) -> Run:
    r"""SDS on prompt ``scene_index`` with ``method`` until ``steps`` steps or ``seconds`` of training time.

    Evaluates (when ``ref`` is given) at step 0, every ``eval_every_s`` seconds of
    training time, at ``eval_steps`` and at the end. Randomness: ``seed`` seeds a root
    generator whose draws seed the camera stream and the guidance (independent streams).
    With ``method.cv_cells`` ($R = 1$), a fresh zero :class:`carv_torch.CellTable` of
    ``prod(cv_cells)`` cells $\times$ the grid's parameters is the control variate.
    """
    scene_index = check_scene_index(scene_index)
    if steps is None and seconds is None:
        raise ValueError("give steps or seconds (the training budget), got neither")
    if method.cv_cells is not None and method.R != 1:
        raise ValueError(f"method {method.name!r}: cv_cells needs R = 1 in train (the refresh is the "
                         f"step's own backward), got R = {method.R}")
    root = torch.Generator().manual_seed(int(seed))
    s_cam, s_guid = (int(v) for v in torch.randint(0, 2**62, (2,), generator=root))
    g_cam = torch.Generator().manual_seed(s_cam)
    s = settings
    nerf = nerf if nerf is not None else make_nerf(s.grid_size, s.image_size, s.n_samples)
    guidance = make_guidance(teacher, method, seed=s_guid, guidance_scale=s.guidance_scale,
                             oracle_q=oracle_q)
    opt = torch.optim.Adam(nerf_parameters(nerf), lr=s.lr, betas=tuple(s.betas))
    table = None if method.cv_cells is None else \
        CellTable(math.prod(method.cv_cells), sum(q.numel() for q in nerf_parameters(nerf)))
    cond, unc = teacher_condition(scene_index), null_condition()
    curve, times, ks, ckpts = [], [], [], {}
    clock, step, next_eval = 0.0, 0, 0.0
    total = steps if steps is not None else seconds
    bar = Progress(total, f"{method.name} prompt {scene_index} seed {seed}",
                   unit=" steps" if steps is not None else " s", enabled=progress)

    def do_eval():
        q = evaluate(nerf, ref, classifier)
        curve.append((clock, step, q.psnr, q.iou, q.prob))
        if on_eval is not None:
            on_eval(step, clock, q, nerf)
        return q

    while True:
        if step in checkpoint_steps:
            ckpts[step] = {k: v.detach().clone() for k, v in nerf.state_dict().items()}
        if ref is not None and (clock >= next_eval or step in eval_steps):
            do_eval()
            if eval_every_s:
                while next_eval <= clock:
                    next_eval += eval_every_s
            else:
                next_eval = math.inf
        if (steps is not None and step >= steps) or (seconds is not None and clock >= seconds):
            break
        t0 = time.perf_counter()
        guidance.update_step(0, step)
        if table is None:
            info = gradient_step(nerf, guidance, sample_cameras(method.R, g_cam), cond, unc)
        else:
            draw = draw_uniform_cameras(method.R, g_cam)
            info = gradient_step(nerf, guidance, draw.cameras, cond, unc, control_variate=table,
                                 cells=cell_index(draw.uniforms, method.cv_cells))
        opt.step()
        dt = time.perf_counter() - t0
        clock += dt
        times.append(dt)
        ks.append(info.K)
        step += 1
        last = curve[-1] if curve else None
        bar.update(step if steps is not None else clock,
                   "" if last is None else f"psnr {last[2]:.2f} iou {last[3]:.2f} p {last[4]:.2f}")
    if ref is not None and (not curve or curve[-1][1] != step):
        do_eval()
    bar.close()
    med = sorted(times)[len(times) // 2] if times else float("nan")
    mean_k = sum(ks) / len(ks) if ks else float("nan")
    return Run(method.name, scene_index, int(seed), step, clock, curve, med, mean_k, ckpts, nerf, table)


def write_json(result: dict, path) -> None:
    """Write a study's result dict to ``path`` (if given) and say so."""
    if path:
        with open(path, "w") as fh:
            json.dump(result, fh, indent=1)
        print(f"written: {path}")
