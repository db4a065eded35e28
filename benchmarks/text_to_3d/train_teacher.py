r"""Train the benchmark's teacher (VAE + latent UNet) and the judging classifier from scratch.

    python -m benchmarks.text_to_3d.train_teacher --out benchmarks/text_to_3d/weights

Steps (all seeded; 2 CPU threads; about 35 minutes on 2 cores; on a shared machine
set ``OMP_WAIT_POLICY=PASSIVE`` so idle OpenMP threads yield instead of spinning):

1. Render ``--views`` random views per scene (``scenes.sample_cameras``), kept in memory.
2. VAE: minimise $\lVert \mathcal D(z) - x\rVert^2 + \beta\,\mathrm{KL}(q(z\mid x)\,\Vert\,\mathcal N(0, I))$
   (per-element means, $z \sim q$), then set $s_{\rm vae} = 1/\operatorname{std}(\mathbb E[z\mid x])$.
3. Latent UNet: DDPM epsilon loss
   $\mathbb E_{t \sim U\{0..T-1\}, \epsilon}\lVert \hat\epsilon(\alpha_t z + \sigma_t\epsilon, t, y) - \epsilon\rVert^2$
   on $z = s_{\rm vae}\,\mathbb E[z\mid x]$ (the same deterministic encode SDS uses),
   with $y$ replaced by the null label with probability ``--p-uncond``; the shipped
   weights are an exponential moving average (EMA) of the iterates.
4. Classifier on the same renders (see ``classifier.train_classifier``).
5. Write ``vae.safetensors``, ``unet.safetensors``, ``classifier.safetensors``, their
   JSON configs, ``training_log.json`` and ``SHA256SUMS``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checksums import write_checksums
from .classifier import CLASSIFIER_CONFIG, accuracy, grey, heldout_set, train_classifier
from .scenes import N_PROMPTS, PROMPTS, render_views
from .teacher import (NULL_LABEL, SCHEDULER_CONFIG, UNET_CONFIG, VAE_CONFIG, WEIGHTS_DIR, build_scheduler,
                      build_unet, build_vae)

__all__ = ["render_dataset", "train_vae", "encode_dataset", "reconstruct", "train_unet", "main"]


def _seeds(generator: torch.Generator, n: int) -> list[torch.Generator]:
    # Independent child streams drawn from the parent (never seed + i).
    return [torch.Generator().manual_seed(int(s)) for s in torch.randint(0, 2**62, (n,), generator=generator)]


def _lr(step: int, steps: int, lr: float, warmup: int) -> float:
    # Linear warm-up, then cosine decay to 5% of lr.
    if step < warmup:
        return lr * (step + 1) / warmup
    u = (step - warmup) / max(1, steps - warmup)
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * u)))


def render_dataset(views_per_scene: int, generator: torch.Generator):
    """Images ``(P * views, 3, 64, 64)`` and labels ``(P * views,)`` from random cameras."""
    xs, ys = [], []
    t0 = time.perf_counter()
    for k, g in enumerate(_seeds(generator, N_PROMPTS)):
        xs.append(render_views(k, views_per_scene, g).images)
        ys.append(torch.full((views_per_scene,), k, dtype=torch.long))
        print(f"  rendered {views_per_scene} views of {PROMPTS[k]!r} ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    return torch.cat(xs), torch.cat(ys)


def train_vae(images: torch.Tensor, generator: torch.Generator, *, steps: int, batch_size: int = 16,
              lr: float = 1e-3, kl_weight: float = 1e-4, log_every: int = 100):
    """Train the AutoencoderKL on ``images`` in $[0, 1]$; returns the model (eval mode)."""
    vae = build_vae().train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    t0 = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr, 50)
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=generator)
        x = 2 * images[idx] - 1
        post = vae.encode(x).latent_dist
        z = post.sample(generator=generator)
        rec = F.mse_loss(vae.decode(z).sample, x)
        kl = 0.5 * (post.mean**2 + post.var - 1 - post.logvar).mean()
        loss = rec + kl_weight * kl
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if log_every and (step + 1) % log_every == 0:
            el = time.perf_counter() - t0
            print(f"  vae step {step + 1}/{steps}  mse[-1,1] {rec.item():.5f}  kl {kl.item():.3f}  "
                  f"({el:.0f} s, eta {el / (step + 1) * (steps - step - 1):.0f} s)", flush=True)
    return vae.eval()


def encode_dataset(vae, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    r"""Posterior means $\mathbb E[z\mid x]$ ``(N, 4, 16, 16)`` (unscaled)."""
    with torch.no_grad():
        return torch.cat([vae.encode(2 * images[a:a + batch_size] - 1).latent_dist.mean
                          for a in range(0, images.shape[0], batch_size)])


def reconstruct(vae, images: torch.Tensor) -> torch.Tensor:
    """$\\tfrac12(\\mathcal D(\\mathbb E[z\\mid x]) + 1)$ clamped to $[0, 1]$."""
    with torch.no_grad():
        return ((vae.decode(encode_dataset(vae, images)).sample + 1) / 2).clamp(0, 1)


def train_unet(latents: torch.Tensor, labels: torch.Tensor, generator: torch.Generator, *, steps: int,
               batch_size: int = 64, lr: float = 1e-3, p_uncond: float = 0.15, ema_decay: float = 0.999,
               log_every: int = 100):
    """Train the class-conditional latent UNet with label dropout; returns the EMA model (eval mode)."""
    unet = build_unet().train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    abar = build_scheduler().alphas_cumprod.to(torch.float32)
    T = abar.shape[0]
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    t0, running = time.perf_counter(), 0.0
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr, 100)
        idx = torch.randint(0, latents.shape[0], (batch_size,), generator=generator)
        z0, y = latents[idx], labels[idx].clone()
        # 1. Label dropout: the null label trains the unconditional model for CFG.
        y[torch.rand(batch_size, generator=generator) < p_uncond] = NULL_LABEL
        # 2. Forward process z_t = alpha_t z0 + sigma_t eps, t uniform on {0, ..., T-1}.
        t = torch.randint(0, T, (batch_size,), generator=generator)
        eps = torch.randn(z0.shape, generator=generator)
        a = abar[t].sqrt().reshape(-1, 1, 1, 1)
        s = (1 - abar[t]).sqrt().reshape(-1, 1, 1, 1)
        loss = F.mse_loss(unet(a * z0 + s * eps, t, class_labels=y).sample, eps)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        # 3. EMA with warm-up (decay min(d, (1 + n)/(10 + n))).
        d = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - d)
        running = loss.item() if step == 0 else 0.98 * running + 0.02 * loss.item()
        if log_every and (step + 1) % log_every == 0:
            el = time.perf_counter() - t0
            print(f"  unet step {step + 1}/{steps}  loss(ema) {running:.4f}  "
                  f"({el:.0f} s, eta {el / (step + 1) * (steps - step - 1):.0f} s)", flush=True)
    return ema, running


def _save(model, path: Path):
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))


def main(argv=None):
    ap = argparse.ArgumentParser(description="Train the text-to-3D teacher (VAE + latent UNet) and classifier.")
    ap.add_argument("--out", default=str(WEIGHTS_DIR), help="output folder")
    ap.add_argument("--views", type=int, default=1000, help="training views per scene")
    ap.add_argument("--vae-steps", type=int, default=600)
    ap.add_argument("--unet-steps", type=int, default=3000)
    ap.add_argument("--classifier-steps", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default=None,
                    help="optional .pt file caching the rendered training set between runs")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    g_data, g_vae, g_unet, g_cls, g_held = _seeds(torch.Generator().manual_seed(args.seed), 5)
    log = {"args": vars(args), "prompts": list(PROMPTS), "seconds": {}}
    t_all = time.perf_counter()

    print(f"1/4 rendering {args.views} views x {N_PROMPTS} scenes", flush=True)
    t0 = time.perf_counter()
    cache = Path(args.cache) if args.cache else None
    key = {"views": args.views, "seed": args.seed}
    cached = torch.load(cache) if cache is not None and cache.exists() else None
    if cached is not None and cached["key"] == key:
        images, labels = cached["images"], cached["labels"]
        print(f"  loaded the rendered training set from {cache}", flush=True)
    else:
        images, labels = render_dataset(args.views, g_data)
        if cache is not None:
            torch.save({"key": key, "images": images, "labels": labels}, cache)
    x_held, y_held = heldout_set(g_held, n_random=32)
    log["seconds"]["render"] = time.perf_counter() - t0

    print(f"2/4 VAE, {args.vae_steps} steps", flush=True)
    t0 = time.perf_counter()
    vae = train_vae(images, g_vae, steps=args.vae_steps)
    log["seconds"]["vae"] = time.perf_counter() - t0
    mu = encode_dataset(vae, images)
    scaling = float(1.0 / mu.std())
    vae.register_to_config(scaling_factor=scaling)
    rec = reconstruct(vae, x_held)
    mse = float(F.mse_loss(rec, x_held))
    log["vae"] = {"scaling_factor": scaling, "heldout_mse_01": mse,
                  "heldout_psnr_db": -10 * math.log10(mse),
                  "latent_mean": float(mu.mean()), "latent_std": float(mu.std())}
    print(f"  held-out reconstruction MSE {mse:.5f} (PSNR {-10 * math.log10(mse):.1f} dB), "
          f"scaling factor {scaling:.4f}", flush=True)

    print(f"3/4 latent UNet, {args.unet_steps} steps", flush=True)
    t0 = time.perf_counter()
    unet, final_loss = train_unet(mu * scaling, labels, g_unet, steps=args.unet_steps)
    log["seconds"]["unet"] = time.perf_counter() - t0
    log["unet"] = {"final_loss_ema": final_loss}

    print(f"4/4 classifier, {args.classifier_steps} steps", flush=True)
    t0 = time.perf_counter()
    cls = train_classifier(images, labels, g_cls, steps=args.classifier_steps)
    log["seconds"]["classifier"] = time.perf_counter() - t0
    log["classifier"] = {"heldout_accuracy": accuracy(cls, x_held, y_held),
                         "heldout_accuracy_grey": accuracy(cls, grey(x_held), y_held),
                         "heldout_accuracy_vae_reconstructions": accuracy(cls, rec, y_held),
                         "n_heldout": int(y_held.numel())}
    print(f"  classifier held-out accuracy {log['classifier']}", flush=True)

    _save(vae, out / "vae.safetensors")
    _save(unet, out / "unet.safetensors")
    _save(cls, out / "classifier.safetensors")
    configs = {"vae_config.json": dict(VAE_CONFIG, scaling_factor=scaling),
               "unet_config.json": UNET_CONFIG, "scheduler_config.json": SCHEDULER_CONFIG,
               "classifier_config.json": CLASSIFIER_CONFIG}
    for name, cfg in configs.items():
        (out / name).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    log["seconds"]["total"] = time.perf_counter() - t_all
    log["torch_version"] = torch.__version__
    (out / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")
    names = ["vae.safetensors", "unet.safetensors", "classifier.safetensors", *configs]
    write_checksums(out, names)
    size = sum((out / n).stat().st_size for n in names)
    print(f"done in {log['seconds']['total'] / 60:.1f} min; {size / 1e6:.2f} MB written to {out}",
          flush=True)


if __name__ == "__main__":
    main()
