r"""The rank side of ``benchmarks/distributed.py``: one DDP training run, its collectives logged.

:func:`train_rank` runs in each process that :func:`carv_torch.local_ranks.run_local` spawns
(so it lives in an importable module). It trains a :class:`~carv_torch.renderers.GridRenderer`
wrapped in ``DistributedDataParallel`` with :class:`~carv_torch.CARVGuidance` on a tiny
pixel-space diffusers UNet teacher, and logs every collective of every step:

* **CARV's** collectives go through the Python functions ``torch.distributed.all_reduce`` /
  ``all_gather``, which :class:`CollectiveLog` wraps for the run: each call's payload
  (``tensor.nbytes``; for an all-gather the gathered output, ``W`` times the input) and its
  wall time, attributed by the call stack to ``rows`` (the row-count all-gather,
  ``carv_torch.distributed.gather_rows``), ``proposal`` (the adaptive proposal's
  ``2 n_bins`` statistics, ``carv_torch.proposal_rules``), ``probe`` (the 5-number reduction
  at a probe call, ``carv_torch.distributed.reduce_probe``), other ``carv_torch`` code
  (``carv_other``) or anything else (``other``).
* **DDP's** gradient all-reduce runs in its C++ reducer, so it is logged by a comm hook
  (:func:`timed_allreduce_hook`) that does what DDP's default hook does (divide the bucket by
  $W$, all-reduce it, asynchronously) and records each bucket's bytes and the time from the
  hook's launch to the future's completion. The bytes are also computed from the parameter
  count times the element size.

After the loop, :func:`replay` issues the same collectives again (same shapes and dtypes),
back to back after a barrier, interleaved with :func:`benchmarks.timing.interleaved`: their
time without the ranks' compute skew.
"""

from __future__ import annotations

import os
import sys
import threading
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: E402

from benchmarks.timing import Contestant, interleaved  # noqa: E402

ROLES = ("rows", "proposal", "probe", "carv_other", "other")
"""Where a logged Python-level collective came from."""


# --------------------------------------------------------------------------- the model and teacher


def tiny_teacher(image_size: int, T: int = 1000):
    """A real (random-weight) pixel-space diffusers ``UNet2DModel`` teacher, the same on every rank."""
    from diffusers import DDPMScheduler, UNet2DModel

    from carv_torch.teachers import DiffusersTeacher

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=image_size, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1,
                       norm_num_groups=4).eval().requires_grad_(False)
    return DiffusersTeacher(unet, DDPMScheduler(num_train_timesteps=T))


def guidance_config(s: dict):
    """The benchmarked configuration: adaptive proposal, ``K="auto"``, fixed costs, global design."""
    from carv_torch import GuidanceConfig

    return GuidanceConfig(proposal="adaptive", K="auto", fixed_costs=tuple(s["fixed_costs"]),
                          sampler="global", k_init=s["k_init"], k_min=s["k_min"], k_max=s["k_max"],
                          probe_every=s["probe_every"], adaptive_bins=s["adaptive_bins"], seed=0)


# --------------------------------------------------------------------------- instrumentation


def _role() -> str:
    # Classify the Python caller of a collective by the carv_torch frames on the stack.
    names, f = [], sys._getframe(2)
    while f is not None:
        module = f.f_globals.get("__name__", "")
        if module.startswith("carv_torch"):
            names.append((module, f.f_code.co_name))
        f = f.f_back
    if not names:
        return "other"
    if any(n == "gather_rows" for _, n in names):
        return "rows"
    if any(n == "reduce_probe" for _, n in names):
        return "probe"
    if any(m == "carv_torch.proposal_rules" for m, _ in names):
        return "proposal"
    return "carv_other"


class CollectiveLog:
    """Wraps ``torch.distributed.all_reduce`` and ``all_gather`` while active; logs each call.

    ``calls``: ``(step, role, op, dtype, shape, payload_bytes, seconds)``; ``buckets``: DDP comm
    hook records ``(step, numel, bytes, seconds)``. ``step`` is set by the training loop.
    """

    def __init__(self):
        self.step = -1
        self.calls: list[tuple] = []
        self.buckets: list[tuple] = []
        self._lock = threading.Lock()
        self._saved = None

    def __enter__(self):
        self._saved = (dist.all_reduce, dist.all_gather)
        all_reduce, all_gather = self._saved

        def logged_all_reduce(tensor, *args, **kwargs):
            role = _role()
            t0 = time.perf_counter()
            out = all_reduce(tensor, *args, **kwargs)
            dt = time.perf_counter() - t0
            self.calls.append((self.step, role, "all_reduce", str(tensor.dtype), list(tensor.shape),
                               tensor.nbytes, dt))
            return out

        def logged_all_gather(tensor_list, tensor, *args, **kwargs):
            role = _role()
            t0 = time.perf_counter()
            out = all_gather(tensor_list, tensor, *args, **kwargs)
            dt = time.perf_counter() - t0
            self.calls.append((self.step, role, "all_gather", str(tensor.dtype), list(tensor.shape),
                               sum(t.nbytes for t in tensor_list), dt))
            return out

        dist.all_reduce, dist.all_gather = logged_all_reduce, logged_all_gather
        return self

    def __exit__(self, *exc):
        dist.all_reduce, dist.all_gather = self._saved
        return False


def timed_allreduce_hook(log: CollectiveLog, all_reduce):
    """A DDP comm hook equal to the default one (bucket / W, async all-reduce SUM) that logs each
    bucket: its numel, bytes and the seconds from launch to completion. ``all_reduce`` is the
    unwrapped function, so these calls are not also counted as Python-level collectives."""
    def hook(state, bucket):
        buf = bucket.buffer()
        step, numel, nbytes = log.step, buf.numel(), buf.nbytes
        t0 = time.perf_counter()
        buf.div_(dist.get_world_size())
        fut = all_reduce(buf, async_op=True).get_future()

        def done(f):
            dt = time.perf_counter() - t0
            with log._lock:
                log.buckets.append((step, numel, nbytes, dt))
            return f.value()[0]

        return fut.then(done)

    return hook


# --------------------------------------------------------------------------- replaying the collectives


def replay(shapes: dict, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per round of each group of collectives, issued again after a barrier (untimed).

    ``shapes``: ``{"carv_step": [(op, dtype, shape), ...], "carv_probe_step": [...],
    "carv_step_world_rows": [...], "ddp_gradients": [...]}``; every rank passes the same.
    """
    W = dist.get_world_size()
    tensors = {name: [(op, torch.ones(shape, dtype=getattr(torch, dtype.split(".")[-1])))
                      for op, dtype, shape in calls] for name, calls in shapes.items()}

    def issue(calls):
        def step():
            for op, t in calls:
                if op == "all_reduce":
                    dist.all_reduce(t)
                else:
                    dist.all_gather([torch.empty_like(t) for _ in range(W)], t)
        return step

    contestants = [Contestant(name, dist.barrier, issue(calls)) for name, calls in tensors.items()]
    return interleaved(contestants, repeats, warmup)


# --------------------------------------------------------------------------- one rank


def train_rank(rank: int, world_size: int, settings: dict) -> dict:
    """Train ``settings["steps"]`` DDP steps with CARV on this rank; return its logs.

    Returns plain data: the per-step K, probe flags and wall times, the logged collectives and
    buckets, the parameter count and element size, the replay timings and a digest of the final
    parameters (equal on every rank under DDP).
    """
    from carv_torch import CARVGuidance
    from carv_torch.renderers import GridRenderer, random_cameras

    torch.set_num_threads(1)
    s = settings
    teacher = tiny_teacher(s["image_size"])
    renderer = GridRenderer(s["grid_size"], s["image_size"], s["n_samples"],
                            generator=torch.Generator().manual_seed(0))
    n_params = sum(p.numel() for p in renderer.parameters())
    element_size = next(renderer.parameters()).element_size()
    log = CollectiveLog()
    model = DDP(renderer)
    model.register_comm_hook(None, timed_allreduce_hook(log, dist.all_reduce))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    guidance = CARVGuidance(teacher, guidance_config(s))  # after init_process_group: distributed
    assert guidance.world.size == world_size and guidance.world.rank == rank
    cameras = torch.Generator().manual_seed(1000 + rank)  # each rank its own data
    Ks, probes, step_s, t_first = [], [], [], []
    with log:
        for step in range(s["steps"]):
            log.step = step
            t0 = time.perf_counter()
            rgb = model(random_cameras(s["R"], generator=cameras))
            out = guidance(rgb, params=list(model.parameters()))
            opt.zero_grad(set_to_none=True)
            out["loss_sds"].backward()
            opt.step()
            step_s.append(time.perf_counter() - t0)
            Ks.append(int(out["K"]))
            probes.append(guidance.last.probe is not None)
            t_first.append(int(guidance.last.estimate.t.reshape(-1)[0]))
    # Replay: the collectives of a non-probe step, of a probe step, of a step with world_rows=
    # given (no row gather), and DDP's buckets (their sizes from the last step).
    last = s["steps"] - 1
    carv = [(op, dt, sh, role) for st, role, op, dt, sh, _, _ in log.calls if role in ROLES[:3]]
    by_role = {role: (op, dt, sh) for op, dt, sh, role in carv}
    shapes = {
        "carv_step": [by_role[r] for r in ("rows", "proposal") if r in by_role],
        "carv_probe_step": [by_role[r] for r in ("rows", "proposal", "probe") if r in by_role],
        "carv_step_world_rows": [by_role[r] for r in ("proposal",) if r in by_role],
        "ddp_gradients": [("all_reduce", "torch.float32", [numel])
                          for st, numel, _, _ in sorted(log.buckets) if st == last],
    }
    timings = replay(shapes, s["replay_repeats"], s["replay_warmup"]) if s["replay_repeats"] else {}
    digest = float(sum(p.detach().double().sum() for p in renderer.parameters()))
    return {"rank": rank, "K": Ks, "probe": probes, "step_s": step_s, "t_first": t_first,
            "calls": log.calls, "buckets": log.buckets, "n_params": n_params,
            "element_size": element_size, "replay": timings, "replay_shapes": shapes,
            "q": guidance.pmfs()[1].numpy(force=True).tolist(), "param_digest": digest}
