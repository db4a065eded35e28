r"""The benchmark's teacher: a tiny latent diffusion model trained on the scenes' renders.

Images $x \in [0, 1]^{3\times 64\times 64}$ are encoded by an ``AutoencoderKL``
to latents $z = s_{\rm vae}\,\mathcal E(2x - 1) \in \mathbb R^{4\times 16\times 16}$;
a class-conditional ``UNet2DModel`` predicts $\hat\epsilon(z_t, t, y)$ under
$z_t = \alpha_t z + \sigma_t\epsilon$ with the DDPM ``scaled_linear`` schedule,
$T = 1000$ (Stable Diffusion's $\beta \in [0.00085, 0.012]$). The condition $y$ is
the prompt index (``scenes.PROMPTS``); $y = $ ``N_PROMPTS`` is the null prompt
$\varnothing$ for classifier-free guidance (trained by label dropout). Attention
sits only on the 8×8 and 4×4 levels, never on the full 16×16 latent resolution.

:func:`load_teacher` loads the shipped weights (``weights/``, retrained by
``python -m benchmarks.text_to_3d.train_teacher``) when present; otherwise it
builds the same architecture randomly initialised (and warns), so pipelines can
be developed before the weights exist.

``python -m benchmarks.text_to_3d.teacher`` prints the UNet and VAE-encoder costs.
On a CPU shared with other jobs, run timings (and training) with
``OMP_WAIT_POLICY=PASSIVE``: spinning OpenMP threads that lose their core made
the same 2-thread UNet call ~50x slower here (9 ms → 780 ms).

Example:
    >>> import torch
    >>> teacher = load_teacher()
    >>> z = teacher.encode(torch.rand(1, 3, 64, 64))
    >>> eps = teacher.predict_noise(z, torch.tensor([500]), teacher_condition(0),
    ...                             uncond=null_condition(), guidance_scale=5.0)
    >>> eps.shape
    torch.Size([1, 4, 16, 16])
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DModel

from carv_torch.teachers import DiffusersTeacher

from ..timing import median_seconds
from ..checksums import sha256, verify_checksums as _verify
from .scenes import N_PROMPTS, check_scene_index

__all__ = [
    "WEIGHTS_DIR",
    "VAE_CONFIG",
    "UNET_CONFIG",
    "SCHEDULER_CONFIG",
    "GUIDANCE_SCALE",
    "NULL_LABEL",
    "WEIGHT_FILES",
    "build_vae",
    "build_unet",
    "build_scheduler",
    "load_teacher",
    "teacher_condition",
    "null_condition",
    "decode",
    "ddim_sample",
    "sha256",
    "verify_checksums",
    "TeacherCosts",
    "measure_costs",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
"""Where the shipped safetensors, configs and ``SHA256SUMS`` live."""
NULL_LABEL = N_PROMPTS
"""Class label of the null prompt $\\varnothing$."""
GUIDANCE_SCALE = 5.0
"""Default CFG scale $s$ for sampling and SDS."""
WEIGHT_FILES = ("vae.safetensors", "unet.safetensors", "vae_config.json", "unet_config.json",
                "scheduler_config.json")
"""Files written by ``train_teacher`` and listed in ``SHA256SUMS`` (with the classifier's)."""

VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
    down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
    block_out_channels=[32, 64, 64], layers_per_block=1, norm_num_groups=16,
    mid_block_add_attention=False, scaling_factor=1.0,
)
"""64×64×3 → 16×16×4 (two downsamplings). ``scaling_factor`` is set to 1/std of the
training latents by ``train_teacher`` and stored in ``vae_config.json``."""

UNET_CONFIG = dict(
    sample_size=16, in_channels=4, out_channels=4, block_out_channels=[32, 64, 64],
    down_block_types=["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    up_block_types=["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    layers_per_block=1, norm_num_groups=16, attention_head_dim=32,
    num_class_embeds=N_PROMPTS + 1,
)
"""Latent UNet; ``num_class_embeds`` = prompts + the null prompt; attention off the 16×16 level."""

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
    prediction_type="epsilon", clip_sample=False,
)
"""DDPM, $T = 1000$, ``scaled_linear`` $\\beta$, epsilon prediction."""


def _seeded(build, seed: int):
    # diffusers initialises from the global RNG; fork it so the caller's state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def build_vae(config: dict | None = None, *, seed: int = 0) -> AutoencoderKL:
    """The ``AutoencoderKL`` of ``config`` (default :data:`VAE_CONFIG`), initialised from ``seed``."""
    cfg = dict(VAE_CONFIG if config is None else config)
    return _seeded(lambda: AutoencoderKL(**cfg), seed)


def build_unet(config: dict | None = None, *, seed: int = 1) -> UNet2DModel:
    """The class-conditional ``UNet2DModel`` of ``config`` (default :data:`UNET_CONFIG`)."""
    cfg = dict(UNET_CONFIG if config is None else config)
    return _seeded(lambda: UNet2DModel(**cfg), seed)


def build_scheduler(config: dict | None = None) -> DDPMScheduler:
    """The ``DDPMScheduler`` of ``config`` (default :data:`SCHEDULER_CONFIG`)."""
    return DDPMScheduler(**dict(SCHEDULER_CONFIG if config is None else config))


def _read_config(folder: Path, name: str, default: dict) -> dict:
    path = folder / name
    if not path.exists():
        return dict(default)
    cfg = json.loads(path.read_text())
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def load_teacher(weights_dir: str | Path | None = None, device="cpu", *, max_batch_size: int = 64,
                 dtype: torch.dtype = torch.float32, require_weights: bool = False) -> DiffusersTeacher:
    r"""The frozen latent teacher as a :class:`~carv_torch.teachers.DiffusersTeacher`.

    Loads ``vae.safetensors`` / ``unet.safetensors`` and their configs from
    ``weights_dir`` (default :data:`WEIGHTS_DIR`). When they are missing it builds
    the same architecture randomly initialised (seeded) and warns, unless
    ``require_weights`` in which case it raises ``FileNotFoundError``.

    Args:
        weights_dir: folder with the shipped files.
        device: where the models go.
        max_batch_size: largest UNet batch (see ``DiffusersTeacher``).
        dtype: parameter dtype.
        require_weights: raise instead of falling back to random weights.

    Returns:
        A teacher with ``unet``/``vae`` in eval mode and ``requires_grad_(False)``;
        condition with :func:`teacher_condition` and :func:`null_condition`.
    """
    from safetensors.torch import load_file

    folder = WEIGHTS_DIR if weights_dir is None else Path(weights_dir)
    files = [folder / "vae.safetensors", folder / "unet.safetensors"]
    have = all(f.exists() for f in files)
    if not have:
        msg = (f"no trained teacher in weights_dir={str(folder)!r} (missing "
               f"{[f.name for f in files if not f.exists()]})")
        if require_weights:
            raise FileNotFoundError(msg + "; run `python -m benchmarks.text_to_3d.train_teacher`")
        warnings.warn(msg + "; using the same architecture randomly initialised", RuntimeWarning,
                      stacklevel=2)
    vae = build_vae(_read_config(folder, "vae_config.json", VAE_CONFIG))
    unet = build_unet(_read_config(folder, "unet_config.json", UNET_CONFIG))
    scheduler = build_scheduler(_read_config(folder, "scheduler_config.json", SCHEDULER_CONFIG))
    if have:
        vae.load_state_dict(load_file(str(files[0])))
        unet.load_state_dict(load_file(str(files[1])))
    for m in (vae, unet):
        m.to(device=device).eval().requires_grad_(False)
        if dtype != torch.float32:
            m.to(dtype=dtype)
    return DiffusersTeacher(unet, scheduler, vae, max_batch_size=max_batch_size)


def teacher_condition(prompt_index: int, device="cpu") -> torch.Tensor:
    """The condition $y$ for prompt ``prompt_index``: a class label of shape ``(1,)``."""
    return torch.tensor([check_scene_index(prompt_index)], dtype=torch.long, device=device)


def null_condition(device="cpu") -> torch.Tensor:
    r"""The null condition $\varnothing$ (``uncond`` for CFG): class label ``NULL_LABEL``, shape ``(1,)``."""
    return torch.tensor([NULL_LABEL], dtype=torch.long, device=device)


def decode(teacher: DiffusersTeacher, z: torch.Tensor) -> torch.Tensor:
    r"""Images $x = \tfrac12(\mathcal D(z / s_{\rm vae}) + 1)$ ``(B, 3, 64, 64)``, clamped to $[0, 1]$."""
    if teacher.vae is None:
        raise ValueError("decode needs a latent teacher (teacher.vae is None)")
    x = teacher.vae.decode(z.to(teacher.vae.dtype) / teacher.vae.config.scaling_factor).sample
    return ((x + 1) / 2).clamp(0, 1)


def ddim_sample(teacher: DiffusersTeacher, prompt_index: int, n: int, generator: torch.Generator, *,
                steps: int = 50, guidance_scale: float = GUIDANCE_SCALE) -> torch.Tensor:
    r"""``n`` latents ``(n, 4, 16, 16)`` from deterministic DDIM ($\eta = 0$) with CFG scale $s$.

    $z_T \sim \mathcal N(0, I)$ drawn with ``generator``; each step uses
    $\hat\epsilon = \hat\epsilon_\varnothing + s(\hat\epsilon_y - \hat\epsilon_\varnothing)$.
    Decode with :func:`decode`.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    sched = DDIMScheduler.from_config(teacher.scheduler.config)
    sched.set_timesteps(steps)
    cfg = teacher.unet.config
    z = torch.randn(n, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=generator,
                    dtype=teacher.dtype).to(teacher.device)
    y, u = teacher_condition(prompt_index, teacher.device), null_condition(teacher.device)
    with torch.no_grad():
        for t in sched.timesteps:
            tt = torch.full((n,), int(t), dtype=torch.long, device=teacher.device)
            eps = teacher.predict_noise(z, tt, y, uncond=u, guidance_scale=guidance_scale)
            z = sched.step(eps, t, z, eta=0.0).prev_sample
    return z


def verify_checksums(folder: str | Path | None = None) -> dict[str, str]:
    """Check the teacher's ``SHA256SUMS`` (default: the shipped weights); see :func:`benchmarks.checksums.verify_checksums`."""
    return _verify(WEIGHTS_DIR if folder is None else folder, "python -m benchmarks.text_to_3d.train_teacher")


class TeacherCosts(NamedTuple):
    """Median wall-clock seconds of the teacher's parts (CPU, current thread count)."""

    unet_b1: float          # one UNet forward, batch 1
    unet_cfg: float         # one CFG call (batch 2: uncond + cond)
    vae_encode_fwd_bwd: float  # encoder forward + backward to a 64×64 image, batch 1
    n_unet_params: int
    n_vae_params: int
    n_encoder_params: int


def measure_costs(teacher: DiffusersTeacher, repeats: int = 20) -> TeacherCosts:
    """Median timings of the UNet (batch 1 and a CFG pair) and of the VAE encoder forward + backward."""
    def median(f):
        return median_seconds(f, repeats, warmup=3)

    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 16, 16, generator=g, dtype=teacher.dtype)
    t = torch.tensor([500])
    y, u = teacher_condition(0), null_condition()
    img = torch.rand(1, 3, 64, 64, generator=g, dtype=teacher.dtype, requires_grad=True)

    def encode():
        teacher.encode(img).sum().backward()

    with torch.no_grad():
        b1 = median(lambda: teacher.predict_noise(z, t, y))
        cfg = median(lambda: teacher.predict_noise(z, t, y, uncond=u, guidance_scale=GUIDANCE_SCALE))
    enc = median(encode)
    vae = teacher.vae
    n_enc = sum(p.numel() for m in (vae.encoder, vae.quant_conv) for p in m.parameters())
    return TeacherCosts(b1, cfg, enc, sum(p.numel() for p in teacher.unet.parameters()),
                        sum(p.numel() for p in vae.parameters()), n_enc)


if __name__ == "__main__":
    torch.set_num_threads(2)
    costs = measure_costs(load_teacher())
    print(f"UNet {costs.n_unet_params:,} params: batch 1 {1e3 * costs.unet_b1:.1f} ms, "
          f"CFG pair {1e3 * costs.unet_cfg:.1f} ms")
    print(f"VAE {costs.n_vae_params:,} params (encoder {costs.n_encoder_params:,}): "
          f"encode fwd+bwd 64x64 {1e3 * costs.vae_encode_fwd_bwd:.1f} ms")
