r"""Train the attribution benchmark's UNet on the two-class digits (DDPM epsilon loss).

    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.attribution.train_unet --out benchmarks/attribution/weights

Minimises $\mathbb E_{x_0, t\sim U\{0..T-1\}, \epsilon}\lVert\hat\epsilon_\phi(\alpha_t x_0 + \sigma_t\epsilon, t) - \epsilon\rVert^2$
over the training split of :func:`benchmarks.digits.load_digits` (classes
:data:`~benchmarks.attribution.model.CLASSES`, :data:`~benchmarks.attribution.model.N_HELDOUT`
held out, split seed 0) with AdamW, linear warm-up then cosine decay; the shipped weights
are an exponential moving average (EMA) of the iterates. Seeded; 2 CPU threads.
Writes ``unet.safetensors``, ``unet_config.json``, ``scheduler_config.json``,
``training_log.json`` and ``SHA256SUMS``.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from pathlib import Path

import torch

from benchmarks.digits import load_digits, split
from benchmarks.text_to_3d.pipeline import Progress
from benchmarks.timing import argument_parser

from ..checksums import write_checksums
from ..denoising import denoising_loss
from .model import (
    CLASSES,
    N_HELDOUT,
    SCHEDULER_CONFIG,
    UNET_CONFIG,
    build_scheduler,
    build_unet,
    write_json,
)

__all__ = ["heldout_loss", "main", "train"]


def _lr(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    u = (step - warmup) / max(1, steps - warmup)
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * u)))


@torch.no_grad()
def heldout_loss(unet, x0, abar, *, n_draws: int = 8, seed: int = 123) -> float:
    """The epsilon loss on ``x0`` averaged over ``n_draws`` seeded $(t, \\epsilon)$ per image."""
    g = torch.Generator().manual_seed(seed)
    return float(torch.stack([denoising_loss(unet, x0, abar, g) for _ in range(n_draws)]).mean())


def train(x0: torch.Tensor, *, steps: int, batch: int = 64, lr: float = 2e-3, warmup: int = 200,
          ema: float = 0.999, seed: int = 0, heldout=None, progress: bool = True, unet_seed: int = 0):
    """Train from scratch on ``x0`` ``(N, 1, 8, 8)``; returns the EMA model and a log of losses."""
    unet = build_unet(unet_seed).train()
    avg = copy.deepcopy(unet).eval().requires_grad_(False)
    abar = build_scheduler().alphas_cumprod.to(torch.float64)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    bar = Progress(steps, "train UNet", unit=" steps", enabled=progress)
    log, running, t0 = [], 0.0, time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr, warmup)
        idx = torch.randint(0, x0.shape[0], (batch,), generator=g)
        loss = denoising_loss(unet, x0[idx], abar, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(ema, (1 + step) / (10 + step))
            for pa, pu in zip(avg.parameters(), unet.parameters()):
                pa.lerp_(pu, 1 - decay)
        value = float(loss.detach())
        running = 0.98 * running + 0.02 * value if step else value
        if (step + 1) % max(1, steps // 20) == 0 or step + 1 == steps:
            entry = {"step": step + 1, "train_loss_ema": running, "seconds": time.perf_counter() - t0}
            if heldout is not None:
                entry["heldout_loss"] = heldout_loss(avg, heldout, abar)
            log.append(entry)
        bar.update(step + 1, f"loss {running:.4f}")
    bar.close(f"loss {running:.4f}")
    return avg, log


def main(argv=None) -> None:
    parser, arg = argument_parser("benchmarks.attribution.train_unet", __doc__)
    arg("--out", type=Path, default=Path(__file__).resolve().parent / "weights")
    arg("--steps", type=int, default=4000)
    arg("--batch", type=int, default=64)
    arg("--lr", type=float, default=2e-3)
    arg("--threads", type=int, default=2)
    arg("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    train_set, held = split(load_digits(CLASSES), N_HELDOUT, seed=0)
    t0 = time.perf_counter()
    unet, log = train(train_set.images, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
                      heldout=held.images)
    seconds = time.perf_counter() - t0
    from safetensors.torch import save_file

    args.out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(args.out / "unet.safetensors"))
    write_json(args.out / "unet_config.json", UNET_CONFIG)
    write_json(args.out / "scheduler_config.json", SCHEDULER_CONFIG)
    write_json(args.out / "training_log.json", {
        "command": "python -m benchmarks.attribution.train_unet " + " ".join(sys.argv[1:] if argv is None else argv),
        "steps": args.steps, "batch": args.batch, "lr": args.lr, "seed": args.seed,
        "threads": args.threads, "n_train": int(train_set.images.shape[0]), "classes": list(CLASSES),
        "n_params": sum(p.numel() for p in unet.parameters()), "seconds": seconds, "log": log})
    write_checksums(args.out, ["unet.safetensors", "unet_config.json", "scheduler_config.json"])
    print(f"trained in {seconds:.0f}s; final held-out loss {log[-1].get('heldout_loss'):.4f}")


if __name__ == "__main__":
    main()
