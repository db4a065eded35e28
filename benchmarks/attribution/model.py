r"""The attribution benchmark's model: a tiny unconditional DDPM ``UNet2DModel`` on two digit classes.

$\hat\epsilon_\phi(x_t, t)$ with $x_t = \alpha_t x_0 + \sigma_t\epsilon$, $x_0 \in [-1, 1]^{1\times 8\times 8}$
(:mod:`benchmarks.digits`, classes 0 and 1), DDPM's linear schedule
$\beta \in [10^{-4}, 0.02]$, $T = 1000$ (as D-TRAK's CIFAR-2 model). No attention
(8×8 is the full resolution). The attribution features differentiate the loss with
respect to :func:`feature_params`: the last up block and ``conv_out``.

The shipped weights (``weights/unet.safetensors``, checked by ``SHA256SUMS``) are
retrained by::

    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.attribution.train_unet --out benchmarks/attribution/weights
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from carv_torch.teachers import DiffusersTeacher

from ..checksums import sha256, verify_checksums as _verify

__all__ = [
    "CLASSES",
    "N_HELDOUT",
    "SCHEDULER_CONFIG",
    "UNET_CONFIG",
    "WEIGHTS_DIR",
    "build_scheduler",
    "build_unet",
    "feature_params",
    "generate",
    "load_teacher",
    "sha256",
    "verify_checksums",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
CLASSES = (0, 1)
"""The two digit classes of the training set (D-TRAK's CIFAR-2 analogue)."""
N_HELDOUT = 40
"""Held-out images (split seed 0), the source of held-out queries."""

UNET_CONFIG = dict(
    sample_size=8, in_channels=1, out_channels=1, block_out_channels=[32, 64],
    down_block_types=["DownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "UpBlock2D"],
    layers_per_block=1, norm_num_groups=8, add_attention=False,
)
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                        beta_end=0.02, prediction_type="epsilon", clip_sample=False)


def build_unet(seed: int = 0) -> UNet2DModel:
    """The ``UNet2DModel`` of :data:`UNET_CONFIG`, initialised from ``seed`` (the global RNG is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DModel(**UNET_CONFIG)


def build_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULER_CONFIG)


def feature_params(unet: UNet2DModel) -> list[torch.nn.Parameter]:
    r"""The parameter subset $\phi$ of the features: ``up_blocks[-1]`` and ``conv_out`` (in that order)."""
    return list(unet.up_blocks[-1].parameters()) + list(unet.conv_out.parameters())


def load_teacher(weights_dir: str | Path | None = None, *, require_weights: bool = False,
                 dtype: torch.dtype = torch.float32) -> DiffusersTeacher:
    """The trained model as a :class:`~carv_torch.teachers.DiffusersTeacher` (trainable: attribution needs $\\nabla_\\phi$).

    Without weights it is randomly initialised, with a warning (``require_weights=True`` raises).
    """
    folder = WEIGHTS_DIR if weights_dir is None else Path(weights_dir)
    unet = build_unet()
    path = folder / "unet.safetensors"
    if path.exists():
        from safetensors.torch import load_file

        verify_checksums(folder)
        unet.load_state_dict(load_file(path))
    elif require_weights:
        raise FileNotFoundError(f"weights_dir {folder} has no unet.safetensors; retrain with "
                                "`python -m benchmarks.attribution.train_unet`")
    else:
        warnings.warn(f"no trained weights in {folder}: the UNet is randomly initialised", RuntimeWarning)
    unet = unet.to(dtype).eval()
    return DiffusersTeacher(unet, build_scheduler(), max_batch_size=1024)


@torch.no_grad()
def generate(teacher: DiffusersTeacher, n: int, *, steps: int = 50, seed: int = 0) -> torch.Tensor:
    r"""``n`` samples ``(n, 1, 8, 8)`` by DDIM ($\eta = 0$, ``steps`` steps) from $x_T \sim \mathcal N(0, I)$, clipped to $[-1, 1]$."""
    sched = DDIMScheduler(**SCHEDULER_CONFIG)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g, dtype=teacher.dtype)
    for t in sched.timesteps:
        eps = teacher.unet(x, t).sample
        x = sched.step(eps, t, x).prev_sample
    return x.clamp(-1, 1)


def verify_checksums(folder: str | Path | None = None) -> dict[str, str]:
    """Check the UNet's ``SHA256SUMS`` (default: the shipped weights); see :func:`benchmarks.checksums.verify_checksums`."""
    return _verify(WEIGHTS_DIR if folder is None else folder, "python -m benchmarks.attribution.train_unet")


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
