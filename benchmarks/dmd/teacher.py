r"""The trained teacher of the DMD benchmark: the tiny ``UNet2DModel`` denoiser of :mod:`.networks`, shipped.

    python -m benchmarks.dmd.teacher [--steps 1500]     # retrain (about 3 min on one core) and report

Trained by :func:`.networks.pretrain` on exact $p^\star$ samples (seed 0, one thread, so the
run is reproducible bit for bit on one machine) and written as ``weights/denoiser.safetensors``
with ``SHA256SUMS`` and ``training_log.json``. It starts the fake score and the one-step
generator; as a *real* teacher its error against the exact score is what
:func:`score_error` reports per range of $t$:

$$e(t) = \frac{\mathbb E\lVert\hat\epsilon_\phi(x_t, t) - \hat\epsilon^\star(x_t, t)\rVert^2}{\mathbb E\lVert\epsilon - \hat\epsilon^\star(x_t, t)\rVert^2},
\qquad x_t = \alpha_t x_0 + \sigma_t\epsilon,\ x_0 \sim p^\star,$$

the excess error over the irreducible denoising error of the exact $\hat\epsilon^\star$.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..checksums import verify_checksums as _verify, write_checksums
from .mixture import Mixture, fit_mixture, real_teacher, sample
from .networks import make_scheduler, make_unet, pretrain

__all__ = ["WEIGHTS_DIR", "train_denoiser", "load_denoiser", "score_error", "main"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
FILES = ("denoiser.safetensors", "training_log.json")


def train_denoiser(steps: int = 1500, seed: int = 0, out: Path = WEIGHTS_DIR, threads: int = 1) -> dict:
    from safetensors.torch import save_file

    torch.set_num_threads(int(threads))
    mix, sched = fit_mixture(seed=seed), make_scheduler()
    unet = make_unet(seed)
    log = pretrain(unet, mix, sched.alphas_cumprod.to(torch.float64), steps=steps, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(out / FILES[0]))
    record = {"steps": steps, "seed": seed, "threads": threads, "seconds": log["seconds"], "torch": torch.__version__,
              "final_loss": sum(log["loss"][-50:]) / min(50, len(log["loss"])),
              "score_error": score_error(unet, mix, sched.alphas_cumprod.to(torch.float64))}
    (out / FILES[1]).write_text(json.dumps(record, indent=1) + "\n")
    write_checksums(out, FILES)
    return record


def verify_checksums(folder: Path = WEIGHTS_DIR) -> dict[str, str]:
    """Check the denoiser's ``SHA256SUMS``; see :func:`benchmarks.checksums.verify_checksums`."""
    return _verify(folder, "python -m benchmarks.dmd.teacher")


def load_denoiser(folder: Path = WEIGHTS_DIR):
    """The shipped denoiser (checksums verified first), or ``None`` when there is none."""
    from safetensors.torch import load_file

    if not (Path(folder) / "SHA256SUMS").is_file():
        return None
    verify_checksums(folder)
    unet = make_unet()
    unet.load_state_dict(load_file(str(Path(folder) / FILES[0])))
    return unet


@torch.no_grad()
def score_error(unet, mix: Mixture, abar: torch.Tensor, *, n: int = 512, bins: int = 10, seed: int = 0) -> list[dict]:
    r"""Per equal-width bin of $t$: $e(t)$ (module docstring), and both errors alone."""
    gen = torch.Generator().manual_seed(seed)
    exact = real_teacher(mix, abar)
    T = abar.shape[0]
    out = []
    for b in range(bins):
        lo, hi = b * T // bins, (b + 1) * T // bins
        x0 = sample(mix, n, gen)[0]
        t = torch.randint(lo, hi, (n,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        a = abar[t].float().view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        e_star = exact.predict_noise(x_t, t)
        e_hat = unet(x_t, t).sample
        excess = float((e_hat - e_star).pow(2).flatten(1).sum(1).mean())
        floor = float((eps - e_star).pow(2).flatten(1).sum(1).mean())
        out.append({"t_lo": lo, "t_hi": hi, "excess": excess, "floor": floor, "relative": excess / floor})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--out", default=str(WEIGHTS_DIR))
    args = ap.parse_args(argv)
    rec = train_denoiser(args.steps, out=Path(args.out))
    print(f"trained in {rec['seconds']:.0f} s, final loss {rec['final_loss']:.4f}")
    for e in rec["score_error"]:
        print(f"t in [{e['t_lo']}, {e['t_hi']}): excess {e['excess']:.4f}, floor {e['floor']:.4f}, "
              f"relative {e['relative']:.3f}")


if __name__ == "__main__":
    main()
