r"""CARV's own communication per step against DDP's gradient all-reduce, on 1, 2 and 4 CPU ranks.

Each world size runs a real data-parallel training loop on ``W`` local ``gloo`` ranks
(:func:`carv_torch.local_ranks.run_local`): a :class:`~carv_torch.renderers.GridRenderer`
($G = 48$: $4 G^3 = 442\,368$ float32 parameters, 16x16 renders, $R = 2$ per rank) wrapped in
``DistributedDataParallel``, trained with Adam on
``CARVGuidance(teacher, GuidanceConfig(proposal="adaptive", K="auto", fixed_costs=(4, 1),
sampler="global"))`` over a tiny random-weight diffusers ``UNet2DModel`` teacher ($T = 1000$).
What is measured per step (:mod:`benchmarks.distributed_ranks` has the instrumentation):

* **CARV's bytes**: every ``torch.distributed.all_reduce`` / ``all_gather`` the guidance issues,
  logged from inside the rank process with its payload (``tensor.nbytes``; an all-gather
  counts its gathered output, $W$ times its input) and attributed by the call stack:
  the row-count all-gather (``int64``, one per rank), the adaptive proposal's statistics
  (``2 n_bins`` float64) and, at probe steps, the variance-probe reduction (5 float64).
* **DDP's bytes**: its reducer all-reduces every gradient bucket once per step; logged by a
  comm hook equal to the default one, and checked against the parameter count times the
  element size.
* **Time** of each, two ways: in the loop (CARV's calls timed by the wrapper; DDP's buckets
  from the hook's launch to the future's completion, which overlaps the backward pass and
  includes waiting for the slowest rank), and **replayed** after the loop (the same
  collectives, same shapes, issued back to back after an untimed barrier,
  :func:`benchmarks.timing.interleaved`; per round the time of the rank that arrived last,
  which waits least, so it is closest to the collectives' own latency; medians over rounds).
  The time ratios are compared with the same 1 % line for information only: the target is on
  bytes. Small collectives cost a fixed latency each, so their time share is far above
  their byte share.

The headline is ``ratio_bytes`` = CARV's bytes at its heaviest step (a probe step) / DDP's
gradient bytes per step; the target is < 1 %. Byte counts are exact, not timed, so they do not
depend on the machine; the times do (two shared cores here: 4 ranks oversubscribe them).
``ratio_bytes_mean`` averages CARV's bytes over all steps. ``wire_ring`` estimates the bytes
each rank *sends* under ring algorithms ($2(W-1)/W \cdot n$ for an all-reduce of $n$ bytes,
$(W-1) \cdot n$ for an all-gather of $n$ bytes per rank); ``break_even_params`` is the parameter
count (float32) at which CARV's bytes would reach 1 % of DDP's.

Usage (nothing else heavy running)::

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE python -m benchmarks.distributed
    python -m benchmarks.distributed --world-sizes 2 --steps 2 --out /tmp/d.json   # smoke

writes ``benchmarks/results/distributed.json`` and prints the table of ratios.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its thread pool

import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from carv_torch.local_ranks import run_local  # noqa: E402

from .distributed_ranks import train_rank  # noqa: E402
from .timing import argument_parser, compare, machine_info, results, summary  # noqa: E402

TARGET = 0.01
"""Largest acceptable CARV bytes / DDP gradient bytes per step."""
WORLD_SIZES = (1, 2, 4)
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "distributed.json"
SETTINGS = dict(grid_size=48, image_size=16, n_samples=16, R=2, k_init=4, k_min=2, k_max=16,
                probe_every=5, adaptive_bins=20, fixed_costs=(4.0, 1.0))
"""The model, teacher and guidance settings (``--steps`` and the replay counts are added)."""
CARV_ROLES = ("rows", "proposal", "probe")


def _ring_bytes(op: str, payload: int, W: int) -> float:
    # Bytes one rank sends under a ring algorithm (payload: all-reduce tensor; all-gather output).
    if W == 1:
        return 0.0
    return 2 * (W - 1) / W * payload if op == "all_reduce" else (W - 1) * payload / W


def _per_step(calls, steps: int, roles) -> list[float]:
    out = [0.0] * steps
    for step, role, _, _, _, nbytes, _ in calls:
        if role in roles and 0 <= step < steps:
            out[step] += nbytes
    return out


def summarise(W: int, ranks: list[dict], steps: int, warmup: int) -> dict:
    """One world size's row of the results: bytes, times and ratios (from all ranks' logs)."""
    r0 = ranks[0]
    n_params, elt = r0["n_params"], r0["element_size"]
    ddp_bytes_analytic = n_params * elt
    timed = range(min(warmup, steps - 1), steps)  # steps after the warm-up

    # -- CARV: per collective kind (shapes are fixed, so one entry per role)
    kinds = {}
    for step, role, op, dtype, shape, nbytes, dt in r0["calls"]:
        k = kinds.setdefault(role, {"op": op, "dtype": dtype, "shape": shape, "payload_bytes": nbytes,
                                    "calls": 0, "steps": set()})
        k["calls"] += 1
        k["steps"].add(step)
    for k in kinds.values():
        k["calls_per_step"] = k["calls"] / steps
        k["steps"] = len(k["steps"])
        k["wire_ring_bytes"] = _ring_bytes(k["op"], k["payload_bytes"], W)
    carv_steps = _per_step(r0["calls"], steps, CARV_ROLES)
    probe_steps = [i for i, p in enumerate(r0["probe"]) if p]
    plain_steps = [i for i in range(steps) if i not in probe_steps]
    carv_max = max(carv_steps)
    carv_mean = statistics.fmean(carv_steps)
    other = _per_step(r0["calls"], steps, ("carv_other", "other"))

    # -- DDP: buckets per step (the hook), on every rank
    ddp_steps = [0.0] * steps
    ddp_time = [0.0] * steps
    for step, numel, nbytes, dt in r0["buckets"]:
        ddp_steps[step] += nbytes
    for rank in ranks:  # the slowest rank's hook time per step
        per = [0.0] * steps
        for step, _, _, dt in rank["buckets"]:
            per[step] += dt
        ddp_time = [max(a, b) for a, b in zip(ddp_time, per)]
    buckets_last = sorted(numel for step, numel, _, _ in r0["buckets"] if step == steps - 1)
    ddp_measured = statistics.median(ddp_steps[i] for i in timed)
    ddp_bytes = ddp_measured if ddp_measured > 0 else float(ddp_bytes_analytic)

    # -- CARV time in the loop: the slowest rank's sum over its collectives, per step
    carv_time = [0.0] * steps
    for rank in ranks:
        per = [0.0] * steps
        for step, role, _, _, _, _, dt in rank["calls"]:
            if role in CARV_ROLES:
                per[step] += dt
        carv_time = [max(a, b) for a, b in zip(carv_time, per)]
    step_time = [max(rank["step_s"][i] for rank in ranks) for i in range(steps)]

    row = {
        "world_size": W,
        "ratio_bytes": carv_max / ddp_bytes,
        "ratio_bytes_mean": carv_mean / ddp_bytes,
        "meets_target": carv_max / ddp_bytes < TARGET,
        "carv": {
            "bytes_per_step_max": carv_max,
            "bytes_per_step_mean": carv_mean,
            "bytes_plain_step": max((carv_steps[i] for i in plain_steps), default=0.0),
            "bytes_probe_step": max((carv_steps[i] for i in probe_steps), default=0.0),
            "collectives": {k: v for k, v in sorted(kinds.items()) if k in CARV_ROLES},
            "other_python_collectives_bytes": sum(other),
            "time_in_loop_s": summary([carv_time[i] for i in timed]),
            "time_in_loop_probe_steps_s": summary([carv_time[i] for i in probe_steps]
                                                  or [0.0]),
        },
        "ddp": {
            "n_params": n_params,
            "element_size": elt,
            "bytes_per_step_analytic": ddp_bytes_analytic,
            "bytes_per_step_measured": ddp_measured,
            "analytic_matches_hook": ddp_measured == ddp_bytes_analytic,
            "same_bytes_every_step": len(set(ddp_steps)) == 1,
            "buckets_numel": buckets_last,
            "time_in_loop_s": summary([ddp_time[i] for i in timed]),
        },
        "wire_ring": {
            "carv_bytes_per_step_max": sum(_ring_bytes(k["op"], k["payload_bytes"], W)
                                           for r, k in kinds.items() if r in CARV_ROLES),
            "ddp_bytes_per_step": _ring_bytes("all_reduce", ddp_bytes, W),
        },
        "break_even_params": carv_max / (TARGET * elt),
        "step_time_s": summary([step_time[i] for i in timed]),
        "K_per_step": r0["K"],
        "K_identical_on_ranks": all(rank["K"] == r0["K"] for rank in ranks),
        "q_identical_on_ranks": all(rank["q"] == r0["q"] for rank in ranks),
        "params_identical_on_ranks": all(rank["param_digest"] == r0["param_digest"] for rank in ranks),
        "streams_differ": W == 1 or len({tuple(rank["t_first"]) for rank in ranks}) == W,
        "probe_steps": probe_steps,
    }
    w = row["wire_ring"]
    w["ratio"] = w["carv_bytes_per_step_max"] / w["ddp_bytes_per_step"] if w["ddp_bytes_per_step"] else 0.0
    if r0["replay"]:
        rounds = {name: [min(rank["replay"][name][i] for rank in ranks)
                         for i in range(len(r0["replay"][name]))] for name in r0["replay"]}
        rep = {name: summary(times) for name, times in rounds.items()}
        rep["shapes"] = r0["replay_shapes"]
        for name in ("carv_probe_step", "carv_step", "carv_step_world_rows"):
            if W > 1:
                rep[f"time_ratio_{name}"] = compare(rounds[name], rounds["ddp_gradients"], TARGET)
        row["replay"] = rep
    return row


def format_table(rows) -> str:
    head = (f"{'W':>2}{'params':>9}{'DDP B/step':>12}{'CARV B/step':>13}{'ratio':>10}{'mean':>10}"
            f"{'K same':>8}{'DDP ms':>9}{'CARV ms':>9}{'t ratio':>9}{'step ms':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        rep = r.get("replay", {})
        ddp_ms = 1e3 * rep["ddp_gradients"]["median_s"] if rep.get("ddp_gradients") else float("nan")
        carv_ms = 1e3 * rep["carv_probe_step"]["median_s"] if rep.get("carv_probe_step") else float("nan")
        tr = rep.get("time_ratio_carv_probe_step", {}).get("ratio", float("nan"))
        lines.append(f"{r['world_size']:>2}{r['ddp']['n_params']:>9}{r['ddp']['bytes_per_step_measured']:>12.0f}"
                     f"{r['carv']['bytes_per_step_max']:>13.0f}{100 * r['ratio_bytes']:>9.4f}%"
                     f"{100 * r['ratio_bytes_mean']:>9.4f}%{str(r['K_identical_on_ranks']):>8}"
                     f"{ddp_ms:>9.3f}{carv_ms:>9.3f}{tr:>9.3f}{1e3 * r['step_time_s']['median_s']:>9.1f}")
    return "\n".join(lines)


def run(*, world_sizes, steps: int, warmup: int, replay_repeats: int, replay_warmup: int,
        timeout: float = 600.0) -> dict:
    """Run every world size (one ``run_local`` each) and summarise; returns the results dict."""
    settings = dict(SETTINGS, steps=steps, replay_repeats=replay_repeats, replay_warmup=replay_warmup)
    info = machine_info(1)
    rows = []
    for W in world_sizes:
        t0 = time.perf_counter()
        ranks = run_local(train_rank, W, settings, timeout=timeout)
        row = summarise(W, ranks, steps, warmup)
        row["wall_s"] = time.perf_counter() - t0
        rows.append(row)
    info["rank_threads"] = 1
    info["backend"] = "gloo"
    return results(
        "per training step: bytes CARV's own collectives move (row-count all-gather, "
        "adaptive-proposal all-reduce, probe all-reduce at probe steps) against DDP's "
        "gradient all-reduce, and the time of each; ratio_bytes = CARV bytes at its "
        "heaviest (probe) step / DDP gradient bytes per step", TARGET, rows,
        {**settings, "fixed_costs": list(SETTINGS["fixed_costs"]), "warmup_steps": warmup,
         "world_sizes": list(world_sizes), "proposal": "adaptive", "K": "auto",
         "sampler": "global", "model": "GridRenderer", "teacher": "UNet2DModel (8, 16)",
         "optimizer": "Adam", "ddp_comm_hook": "default allreduce (bucket / W), timed"}, info)


def main(argv=None) -> dict:
    parser, add = argument_parser("benchmarks.distributed", __doc__)
    add("--world-sizes", type=int, nargs="+", default=list(WORLD_SIZES), help="ranks (default 1 2 4)")
    add("--steps", type=int, default=40, help="training steps per world size (default 40)")
    add("--warmup", type=int, default=2, help="steps left out of the time medians (default 2)")
    add("--replay-repeats", type=int, default=200, help="replay rounds (default 200; 0: no replay)")
    add("--replay-warmup", type=int, default=5, help="untimed replay rounds (default 5)")
    add("--out", type=Path, default=DEFAULT_OUT, help=f"results json (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.replay_repeats < 0 or any(w < 1 for w in args.world_sizes):
        parser.error("--steps and --world-sizes must be >= 1, --warmup and --replay-repeats >= 0")
    out = run(world_sizes=args.world_sizes, steps=args.steps, warmup=args.warmup,
              replay_repeats=args.replay_repeats, replay_warmup=args.replay_warmup)
    out["settings"]["argv"] = list(argv) if argv is not None else sys.argv[1:]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(format_table(out["rows"]))
    for r in out["rows"]:
        print(f"W = {r['world_size']}: CARV bytes / DDP gradient bytes per step = "
              f"{100 * r['ratio_bytes']:.4f} % (heaviest step), {100 * r['ratio_bytes_mean']:.4f} % (mean)")
    print(f"target < {100 * TARGET:g} %: " + ("met at every world size" if out["all_meet_target"]
                                               else "missed") + f"; wrote {args.out}")
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
