r"""Device check: carv_torch parity with carv_core, and batched teacher throughput.

(a) Parity: uniforms drawn on the device are fed to both backends; timesteps
must match exactly, weights and estimates to float64 ~1e-12 / float32 ~1e-6.
(b) Throughput: $K$ noise draws of one image through a tiny diffusers
``UNet2DModel`` as one batched teacher call versus $K$ separate calls
(median wall time, device synchronised, warm-up excluded).

Usage: ``python -m benchmarks.gpu_check --device cuda --out gpu_check.json``
(``--device cpu`` runs the same checks on the CPU).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch

import carv_core
from carv_torch.estimator import hierarchical_estimate, variance_components
from carv_torch.sampling import draw_uniforms, timesteps_from_uniforms
from carv_torch.teachers import DiffusersTeacher


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def parity(device: torch.device) -> dict:
    """Max deviations of carv_torch on ``device`` from carv_core, per check."""
    rng = np.random.default_rng(0)
    T = 1000
    p = carv_core.uniform_timesteps(T)
    q = carv_core.weight_heuristic(p, carv_core.sds_weight("sds", carv_core.make_schedule()), 0.1)
    gen = torch.Generator(device=device).manual_seed(0)
    out = {"t_mismatches": 0, "w_max_rel_err_f64": 0.0, "w_max_rel_err_f32": 0.0,
           "estimate_max_rel_err_f64": 0.0, "estimate_max_rel_err_f32": 0.0}
    for design in ("iid", "stratified", "global", "systematic", "sobol"):
        for dtype, key in ((torch.float64, "f64"), (torch.float32, "f32")):
            u = draw_uniforms(design, 8, 16, gen, device=device, dtype=dtype)
            d = timesteps_from_uniforms(u, torch.as_tensor(p, device=device),
                                        torch.as_tensor(q, device=device))
            ref = carv_core.timesteps_from_uniforms(u.double().cpu().numpy(), p, q)
            out["t_mismatches"] += int((d.t.cpu().numpy() != ref.t).sum())
            rel = np.abs(d.w.double().cpu().numpy() - ref.w) / np.abs(ref.w)
            out[f"w_max_rel_err_{key}"] = max(out[f"w_max_rel_err_{key}"], float(rel.max()))
    for dtype, key in ((torch.float64, "f64"), (torch.float32, "f32")):
        vals = rng.standard_normal((8, 16, 3, 4, 4))
        w = rng.uniform(0.5, 2.0, (8, 16))
        tv = torch.as_tensor(vals, device=device, dtype=dtype)
        tw = torch.as_tensor(w, device=device, dtype=dtype)
        est_t, est_c = hierarchical_estimate(tv, tw), carv_core.hierarchical_estimate(vals, w)
        vc_t, vc_c = variance_components(tv, tw), carv_core.variance_components(vals, w)
        pairs = [(est_t.mean.double().cpu().numpy(), est_c.mean),
                 (float(est_t.variance), est_c.variance),
                 (float(vc_t.sigma_b2), vc_c.sigma_b2), (float(vc_t.sigma_w2), vc_c.sigma_w2)]
        # relative to the largest reference entry of each quantity
        err = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)) / np.max(np.abs(b))))
                  for a, b in pairs)
        out[f"estimate_max_rel_err_{key}"] = err
    return out


def tiny_teacher(device, dtype, size):
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=size, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1,
                       norm_num_groups=8).to(device=device, dtype=dtype).eval().requires_grad_(False)
    return DiffusersTeacher(unet, DDPMScheduler(num_train_timesteps=1000), max_batch_size=1024)


def throughput(device, ks, size, reps, dtype=torch.float32) -> list[dict]:
    """Median seconds for K draws: one batched call vs K calls of batch 1."""
    teacher = tiny_teacher(device, dtype, size)
    g = torch.Generator(device=device).manual_seed(0)
    rows = []
    for K in ks:
        x = torch.randn(K, 4, size, size, generator=g, device=device, dtype=dtype)
        t = torch.randint(20, 980, (K,), generator=g, device=device)

        def batched():
            teacher.predict_noise(x, t)

        def separate():
            for k in range(K):
                teacher.predict_noise(x[k:k + 1], t[k:k + 1])

        times = {}
        for name, fn in (("batched", batched), ("separate", separate)):
            with torch.no_grad():
                for _ in range(2):  # warm-up
                    fn()
                samples = []
                for _ in range(reps):
                    _sync(device)
                    t0 = time.perf_counter()
                    fn()
                    _sync(device)
                    samples.append(time.perf_counter() - t0)
            times[name] = statistics.median(samples)
        rows.append({"K": K, "batched_s": times["batched"], "separate_s": times["separate"],
                     "speedup": times["separate"] / times["batched"]})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--ks", default="1,4,8,16")
    ap.add_argument("--size", type=int, default=None, help="latent size (default 32 on GPU, 16 on CPU)")
    ap.add_argument("--reps", type=int, default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    size = args.size or (32 if device.type == "cuda" else 16)
    reps = args.reps or (20 if device.type == "cuda" else 7)
    ks = [int(k) for k in args.ks.split(",")]
    res = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "parity": parity(device),
        "throughput": {"unet": "UNet2DModel (32, 64), 4 ch", "size": size, "reps": reps,
                       "rows": throughput(device, ks, size, reps)},
    }
    print(f"device: {res['device']} ({res['device_name']}), torch {res['torch']}, threads {res['threads']}")
    print("parity:", json.dumps(res["parity"]))
    print(f"{'K':>4} {'batched ms':>11} {'separate ms':>12} {'speedup':>8}")
    for r in res["throughput"]["rows"]:
        print(f"{r['K']:>4} {1e3 * r['batched_s']:>11.2f} {1e3 * r['separate_s']:>12.2f} {r['speedup']:>8.2f}")
    ok = res["parity"]["t_mismatches"] == 0 and res["parity"]["w_max_rel_err_f64"] < 1e-12 \
        and res["parity"]["estimate_max_rel_err_f64"] < 1e-10
    res["parity_ok"] = ok
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(res, fh, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
