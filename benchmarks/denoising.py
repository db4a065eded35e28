r"""The DDPM denoising loss the benchmarks train their small UNets with.

$$\mathcal L(\theta) = \frac{1}{n}\sum_{i=1}^{n} \operatorname{mean}\big\lVert
\hat\epsilon_\theta(\sqrt{\bar\alpha_{t_i}}\,x_{0,i} + \sqrt{1-\bar\alpha_{t_i}}\,\epsilon_i,\ t_i)
- \epsilon_i\big\rVert^2,\qquad t_i \sim U\{0,\dots,T-1\},\ \epsilon_i \sim \mathcal N(0, I),$$

one $(t_i, \epsilon_i)$ per example, drawn from ``generator`` (the attribution UNet, the DMD
denoiser and its fake score all train on it).
"""

from __future__ import annotations

import torch

__all__ = ["denoising_loss"]


def denoising_loss(unet, x0: torch.Tensor, abar: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The loss above for a diffusers ``UNet2DModel`` ``unet`` on images ``x0`` ``(n, C, H, W)``.

    ``abar`` is the schedule's $\\bar\\alpha_t$ ``(T,)`` (the square roots are taken in its
    dtype, then cast to ``x0``'s).
    """
    t = torch.randint(0, abar.shape[0], (x0.shape[0],), generator=generator)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    a = abar[t].sqrt().to(x0.dtype).view(-1, 1, 1, 1)
    s = (1 - abar[t]).sqrt().to(x0.dtype).view(-1, 1, 1, 1)
    return (unet(a * x0 + s * eps, t).sample - eps).pow(2).mean()
