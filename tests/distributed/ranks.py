"""Rank functions of the multi-process tests (run by :func:`carv_torch.local_ranks.run_local`).

Each ``*_rank`` function is module-level (the *spawn* start method pickles it by name) and
runs in one of ``W`` real processes of a ``gloo`` group; it returns plain data (numpy arrays,
Python numbers), never tensors, so nothing crosses the result queue through shared memory.
:func:`suite_rank` runs every scenario of one world in a single spawn (a spawn costs seconds
of imports per rank): the tests then check its parts.

The same scenario functions also run in the test process itself, without a process group,
as the "single process" or "alone" references (``world=None``).

Teachers: an exact Gaussian-mixture teacher (cheap: no diffusers import) for most scenarios;
the DDP loop uses a real tiny diffusers ``UNet2DModel`` (as in
``tests/reliability/fault_injection.py``), imported only there.
"""

from __future__ import annotations

import os

import numpy as np
import torch

import carv_torch.guidance as guidance_module
from carv_core.world_designs import WorldStrata
from carv_torch.distributed import World, rank_seed, row_weight
from carv_torch.guidance import CARVGuidance, GuidanceConfig
from carv_torch.inner import draw_inner
from carv_torch.objectives import estimate_from_draws
from carv_torch.teachers import GaussianMixtureTeacher

DT = torch.float64
T = 50
SHAPE = (3, 2, 2)
ABAR = torch.linspace(0.99, 0.03, T, dtype=DT)
LR = 0.05

#: Configurations (seed and sizes fixed; uneven rows come from the caller).
CONFIGS = {
    # per-row design, static q: the streams test
    "streams": dict(K=4, proposal="uniform", sampler="stratified", seed=3),
    # strata across ranks, static non-uniform q
    "global": dict(K=4, proposal="weight", sampler="global", seed=3),
    # adaptive q, K="auto" with injected costs, frequent probes and decisions, global strata
    "sync": dict(K="auto", k_init=2, k_min=2, k_max=8, probe_every=2, fixed_costs=(4.0, 1.0),
                 proposal="adaptive", adaptive_bins=5, sampler="global", seed=11),
    # the same without params: the input-space ANOVA path of the probe
    "input": dict(K="auto", k_init=4, k_min=2, k_max=8, probe_every=2, fixed_costs=(4.0, 1.0),
                  proposal="uniform", sampler="stratified", seed=5),
    # distributed="off" under an initialised group
    "off": dict(K=4, proposal="adaptive", adaptive_bins=5, sampler="global", seed=2,
                distributed="off"),
    # the DDP loop (UNet teacher): static q so one process can replay every rank's draws
    "ddp": dict(K=4, proposal="weight", sampler="global", seed=9, max_batch_size=8),
}


def mixture() -> GaussianMixtureTeacher:
    """An exact 3-component Gaussian-mixture teacher over D = 12 coordinates (T = 50)."""
    means = torch.randn(3, 12, generator=torch.Generator().manual_seed(5), dtype=DT)
    return GaussianMixtureTeacher(means, 0.3, ABAR)


def unet_teacher():
    """A real tiny pixel-space diffusers UNet teacher (T = 50), float64, deterministic weights."""
    from carv_torch.teachers import DiffusersTeacher
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=4, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1,
                       norm_num_groups=4).to(DT).eval().requires_grad_(False)
    return DiffusersTeacher(unet, DDPMScheduler(num_train_timesteps=T), max_batch_size=8)


def images(rank: int, step: int, R: int, shape=SHAPE) -> torch.Tensor:
    """Rank ``rank``'s upstream data at ``step`` (each rank its own data, as in data parallelism)."""
    g = torch.Generator().manual_seed(100_000 + 1000 * rank + step)
    return torch.rand(R, *shape, generator=g, dtype=DT)


def np64(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().clone().numpy()


class Capture:
    """Records the draws (t, w, eps) each guidance call makes (wraps the guidance's draw_inner)."""

    def __init__(self):
        self.draws = []

    def __enter__(self):
        self._orig = guidance_module.draw_inner

        def recorded(*a, **k):
            out = self._orig(*a, **k)
            self.draws.append(out)
            return out

        guidance_module.draw_inner = recorded
        return self

    def __exit__(self, *exc):
        guidance_module.draw_inner = self._orig


def _all_reduce_mean_grad(theta: torch.Tensor, W: int) -> None:
    # What DDP does to a parameter's gradient: sum over ranks, divided by W.
    if W > 1:
        torch.distributed.all_reduce(theta.grad)
        theta.grad /= W


# ----------------------------------------------------------------------------- scenarios


def streams(rank: int, rows, steps: int = 3, config: str = "streams", world_rows=True):
    """Fixed-K calls; records every call's draws (t, w, eps) and the images."""
    g = CARVGuidance(mixture(), GuidanceConfig(**CONFIGS[config]))
    R, out = rows[rank], []
    with Capture() as cap:
        for step in range(steps):
            x = images(rank, step, R)
            g(x, world_rows=tuple(rows) if world_rows else None)
    for d in cap.draws:
        out.append(dict(t=np64(d.t), w=np64(d.w), eps=np64(d.eps)))
    return dict(steps=out, world=tuple(g.world[:2]))


def sync(rank: int, rows, W: int, steps: int, *, config: str = "sync", params: bool = True,
         state_in: str | None = None, state_out: str | None = None, start: int = 0):
    """A manual data-parallel loop on ``theta * images`` (gradients averaged over ranks as DDP
    does), recording at every step what must agree across ranks: t, w, K, q (after the
    step), the accountant's components, the local probe, the gradients before averaging.

    ``state_in``/``state_out``: a directory to load/save this rank's guidance ``state_dict``
    and ``theta`` from/to (before the first step / after the last)."""
    g = CARVGuidance(mixture(), GuidanceConfig(**CONFIGS[config]))
    theta = torch.full((3, 1, 1), 1.0, dtype=DT, requires_grad=True)
    if state_in is not None:
        saved = torch.load(os.path.join(state_in, f"rank{rank}.pt"), weights_only=False)
        g.load_state_dict(saved["guidance"])
        with torch.no_grad():
            theta.copy_(saved["theta"])
    R, recs = rows[rank], []
    for step in range(start, start + steps):
        g.update_step(0, step)
        img = images(rank, step, R)
        x = theta * img
        out = g(x, params=[theta] if params else None)
        loss = out[f"loss_{g.objective.name}"]
        theta.grad = None
        loss.backward()
        grad_local = np64(theta.grad)
        _all_reduce_mean_grad(theta, W)
        grad_avg = np64(theta.grad)
        with torch.no_grad():
            theta -= LR * theta.grad
        est, acc, last = g.last.estimate, g.accountant, g.last
        probe = None if last.probe is None else (float(last.probe.sigma_b2), float(last.probe.sigma_w2))
        dec = last.decision
        recs.append(dict(
            step=step, t=np64(est.t), w=np64(est.w), K=out["K"], q=np64(g.pmfs()[1]),
            sb=acc.sigma_b2, sw=acc.sigma_w2, probe=probe, probes=g.probes,
            decision=None if dec is None else (dec.K, dec.c_u, dec.c_d, dec.sigma_b2, dec.sigma_w2),
            values=np64(est.values), grad=np64(est.grad), sq_norm=np64(est.sq_norm) if est.sq_norm is not None else None,
            img=np64(img),
            grad_local=grad_local, grad_avg=grad_avg, loss=float(loss.detach()), theta=np64(theta)))
    if state_out is not None:
        torch.save({"guidance": g.state_dict(), "theta": theta.detach().clone()},
                   os.path.join(state_out, f"rank{rank}.pt"))
    return recs


def off(rank: int, R: int = 3, steps: int = 3):
    """``distributed="off"``: the same inputs on every rank (rank 0's), adaptive q."""
    g = CARVGuidance(mixture(), GuidanceConfig(**CONFIGS["off"]))
    recs = []
    with Capture() as cap:
        for step in range(steps):
            g(images(0, step, R))
            recs.append(dict(q=np64(g.pmfs()[1]), values=np64(g.last.estimate.values)))
    for rec, d in zip(recs, cap.draws):
        rec.update(t=np64(d.t), w=np64(d.w), eps=np64(d.eps))
    return dict(steps=recs, world=tuple(g.world[:2]), calls=g.calls)


def bad_world_rows(rank: int, rows) -> str:
    """A wrong ``world_rows`` (this rank's entry is not its R) raises on every rank before any
    collective; returns the message."""
    g = CARVGuidance(mixture(), GuidanceConfig(**CONFIGS["streams"]))
    wrong = tuple(r + 1 for r in rows)
    try:
        g(images(rank, 0, rows[rank]), world_rows=wrong)
    except ValueError as err:
        return str(err)
    return "no error"


class Renderer(torch.nn.Module):
    """The tiny upstream model: ``theta * images`` (one parameter, per channel)."""

    def __init__(self):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.full((3, 1, 1), 0.8, dtype=DT))

    def forward(self, img):
        return self.theta * img


DDP_SHAPE = (3, 4, 4)


def ddp(rank: int, rows, W: int, steps: int):
    """A real DDP loop: Renderer wrapped in DistributedDataParallel, the UNet teacher, SGD.
    Records each step's draws and the final parameter."""
    teacher = unet_teacher()
    g = CARVGuidance(teacher, GuidanceConfig(**CONFIGS["ddp"]))
    model = Renderer()
    net = torch.nn.parallel.DistributedDataParallel(model) if W > 1 else model
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    R, recs = rows[rank], []
    for step in range(steps):
        g.update_step(0, step)
        x = net(images(rank, step, R, DDP_SHAPE))
        out = g(x)
        opt.zero_grad()
        out[f"loss_{g.objective.name}"].backward()
        opt.step()
        recs.append(dict(t=np64(g.last.estimate.t), w=np64(g.last.estimate.w),
                         grad=np64(g.last.estimate.grad), theta=np64(model.theta)))
    return recs


def ddp_reference(rows, steps: int):
    """The single-process run that sees every rank's renders: one process, no collectives.

    For each step and each rank ``s`` it redraws rank ``s``'s draws itself (a generator seeded
    with ``rank_seed(seed, s, step)`` and the ``WorldStrata(rows, s)`` share of the guidance's
    sampler), evaluates the teacher on ``theta * images(s, step)``, and steps SGD on the mean
    over all ``sum(rows)`` rows of the hierarchical surrogate."""
    cfg = GuidanceConfig(**{**CONFIGS["ddp"], "distributed": "off"})
    g = CARVGuidance(unet_teacher(), cfg)
    base = g.sampler()  # static q ("weight"): the same on every rank and every step
    model = Renderer()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    n, recs = sum(rows), []
    for step in range(steps):
        opt.zero_grad()
        ts, total = [], 0.0
        for s, R in enumerate(rows):
            gen = torch.Generator().manual_seed(rank_seed(cfg.seed, s, step))
            draws = draw_inner(R, cfg.K, DDP_SHAPE, sampler=base.with_design(WorldStrata(rows, s)),
                               generator=gen, dtype=DT)
            x = model(images(s, step, R, DDP_SHAPE))
            est = estimate_from_draws(g.objective, x, draws, diagnostics=False)
            total = total + est.loss * (R / n)
            ts.append(np64(draws.t))
        total.backward()
        opt.step()
        recs.append(dict(t=ts, theta=np64(model.theta)))
    return recs


# ----------------------------------------------------------------------------- entry points


def suite_rank(rank: int, W: int, rows, state_dir: str):
    """Every scenario of one world, in order (the same on every rank: the collectives match)."""
    torch.manual_seed(1234)  # nothing here should depend on the global RNG; make sure it is equal
    assert torch.distributed.is_initialized() and torch.distributed.get_world_size() == W
    return dict(
        streams=streams(rank, rows),
        streams_gathered=streams(rank, rows, world_rows=False),
        global_=streams(rank, rows, config="global"),
        sync=sync(rank, rows, W, steps=6),
        ckpt_first=sync(rank, rows, W, steps=2, state_out=state_dir),
        input=sync(rank, rows, W, steps=3, config="input", params=False),
        off=off(rank),
        bad_world_rows=bad_world_rows(rank, rows),
        ddp=ddp(rank, rows, W, steps=3),
        # the single-process reference, on rank 0 after the DDP loop: it makes no collective
        ddp_reference=ddp_reference(rows, steps=3) if rank == 0 else None,
        weight=row_weight(World(rank, W), rows),
    )


def resume_rank(rank: int, W: int, rows, state_dir: str):
    """Fresh ranks: load the state saved by :func:`suite_rank`'s ``ckpt_first`` and run 2 more steps."""
    return sync(rank, rows, W, steps=2, state_in=state_dir, start=2)



def one_row_rank(rank: int, W: int, rows, steps: int = 4):
    """Uneven rows where a rank holds a single row (the last batch), K="auto" with params."""
    return [dict(K=r["K"], sb=r["sb"], sw=r["sw"], q=r["q"]) for r in sync(rank, rows, W, steps=steps)]
