r"""The networks of the DMD benchmark: a tiny diffusers ``UNet2DModel`` as fake score and as one-step generator.

- :func:`make_unet` — 8×8, one channel, two resolution levels, no attention (at 8×8
  attention buys nothing and costs the most), $\epsilon$-prediction under diffusers'
  ``DDPMScheduler`` (linear $\beta$, $T = 1000$). $\epsilon$-prediction is what the
  library's teachers and the mixture teacher speak; the generator below turns it into
  an $x_0$ prediction at one fixed $t^\star$.
- :func:`pretrain` — the denoising loss $\lVert\hat\epsilon_\phi(\alpha_t x_0 + \sigma_t\epsilon, t) - \epsilon\rVert^2$
  on exact $p^\star$ samples, $t$ uniform over the full range. Both the fake score and the
  generator start from it, as DMD2 starts both from its teacher.
- :class:`OneStepGenerator` — $G_\theta(z) = (z - \sigma_{t^\star}\hat\epsilon_\theta(z, t^\star))/\alpha_{t^\star}$,
  $z \sim \mathcal N(0, I)$: the pretrained denoiser's one-step $x_0$ prediction.
"""

from __future__ import annotations

import copy
import time

import torch

from carv_torch import DiffusersTeacher

from ..denoising import denoising_loss
from .mixture import Mixture, sample

__all__ = ["T_STAR", "make_scheduler", "make_unet", "pretrain", "OneStepGenerator", "fake_teacher",
           "frozen_teacher"]

#: The generator's fixed noise level: $\bar\alpha_{500} \approx 0.08$ ($\alpha \approx 0.28$) on the
#: linear schedule, so $z \sim \mathcal N(0, I)$ is close to the law of $x_{t^\star}$ and $1/\alpha$
#: amplifies the network's error by less than 4×.
T_STAR = 500


def make_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")


def make_unet(seed: int = 0):
    """The tiny ``UNet2DModel`` (about 0.16 M parameters), seeded."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=(16, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)


def pretrain(unet, mix: Mixture, abar: torch.Tensor, *, steps: int, batch: int = 256, lr: float = 2e-3,
             seed: int = 0, progress=None) -> dict:
    """Denoising pre-training on fresh $p^\\star$ samples; returns ``{"loss": [...], "seconds": s}``."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(unet.parameters(), lr=lr)
    losses, t0 = [], time.perf_counter()
    for i in range(steps):
        x0, _ = sample(mix, batch, gen)
        loss = denoising_loss(unet, x0, abar, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if progress is not None:
            progress(i + 1, losses[-1])
    return {"loss": losses, "seconds": time.perf_counter() - t0}


class OneStepGenerator(torch.nn.Module):
    r"""$G_\theta(z) = (z - \sigma_{t^\star}\hat\epsilon_\theta(z, t^\star))/\alpha_{t^\star}$ from a copy of ``unet``."""

    def __init__(self, unet, abar: torch.Tensor, t_star: int = T_STAR):
        super().__init__()
        self.unet = copy.deepcopy(unet)
        a = float(abar[t_star])
        self.t_star, self.alpha, self.sigma = int(t_star), a ** 0.5, (1 - a) ** 0.5

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        t = torch.full((z.shape[0],), self.t_star, dtype=torch.long)
        return (z - self.sigma * self.unet(z, t).sample) / self.alpha


def fake_teacher(unet, scheduler) -> DiffusersTeacher:
    """The fake score: a trainable copy of ``unet`` behind the library's teacher protocol."""
    return DiffusersTeacher(copy.deepcopy(unet), scheduler, max_batch_size=4096, check_finite=False)


def frozen_teacher(unet, scheduler) -> DiffusersTeacher:
    """The trained denoiser as the *real* score: a frozen copy (no gradients, eval mode)."""
    frozen = copy.deepcopy(unet).eval().requires_grad_(False)
    return DiffusersTeacher(frozen, scheduler, max_batch_size=4096, check_finite=False)


def fake_update(fake: DiffusersTeacher, opt, x0: torch.Tensor, generator: torch.Generator) -> float:
    """One denoising step of the fake score on detached generator samples ``x0``."""
    loss = denoising_loss(fake.unet, x0.detach(), fake.alphas_cumprod, generator)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()
