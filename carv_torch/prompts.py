r"""Prompt providers: the conditions of $B$ views, as threestudio's ``prompt_utils`` gives them.

:class:`PromptProvider` is the protocol (threestudio's ``PromptProcessorOutput`` meets it
as it is); :class:`FixedPrompt` is a view-independent provider for a fixed pair
$(y, \varnothing)$.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["PromptProvider", "FixedPrompt"]


@runtime_checkable
class PromptProvider(Protocol):
    r"""What :class:`carv_torch.threestudio.ThreestudioGuidance` needs of threestudio's ``prompt_utils`` (a ``PromptProcessorOutput``).

    ``get_text_embeddings(elevation, azimuth, camera_distances, view_dependent_prompting)`` with
    camera tensors of shape ``(B,)`` returns the conditions of the $B$ views stacked **conditional
    first**, $[y_1, \dots, y_B, \varnothing_1, \dots, \varnothing_B]$: shape ``(2B, L, D)`` for text
    embeddings (``(2B,)`` for class labels). threestudio's own output satisfies this protocol as it
    is; an optional ``use_perp_neg`` attribute that is true is refused (Perp-Neg needs four
    predictions per draw, which this adapter does not form).
    """

    def get_text_embeddings(self, elevation: torch.Tensor, azimuth: torch.Tensor,
                            camera_distances: torch.Tensor,
                            view_dependent_prompting: bool = True) -> torch.Tensor:
        r"""$[y_{1..B};\ \varnothing_{1..B}]$, leading dimension ``2B``."""
        ...


class FixedPrompt:
    r"""A view-independent :class:`PromptProvider`: the same $(y, \varnothing)$ for every view.

    ``get_text_embeddings`` returns $[y, \dots, y, \varnothing, \dots, \varnothing]$ ($B$ copies
    each, $B$ = ``elevation.shape[0]``), ignoring the camera and ``view_dependent_prompting``.

    Args:
        condition: $y$ with leading dimension 1: text embeddings ``(1, L, D)`` or a class label ``(1,)``.
        uncond: $\varnothing$, the same shape and dtype as ``condition``.

    A :class:`~carv_torch.stable_diffusion.PromptEmbeddings` unpacks into it:
    ``FixedPrompt(*prompt_embeddings(pipe, "a corgi"))``.

    Example:
        >>> import torch
        >>> prompt = FixedPrompt(torch.tensor([3]), torch.tensor([9]))
        >>> prompt.get_text_embeddings(torch.zeros(2), torch.zeros(2), torch.ones(2)).tolist()
        [3, 3, 9, 9]
    """

    use_perp_neg = False

    def __init__(self, condition: torch.Tensor, uncond: torch.Tensor):
        for name, value in (("condition", condition), ("uncond", uncond)):
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{name} must be a tensor with leading dimension 1, got "
                                f"{type(value).__name__}")
            if value.ndim == 0 or value.shape[0] != 1:
                raise ValueError(f"{name} must have leading dimension 1 (one prompt), got shape "
                                 f"{tuple(value.shape)}; use a prompt provider for per-view prompts")
        if uncond.shape != condition.shape or uncond.dtype != condition.dtype:
            raise ValueError(f"uncond must match condition's shape and dtype, got {tuple(uncond.shape)} "
                             f"{uncond.dtype} against {tuple(condition.shape)} {condition.dtype}")
        self.condition, self.uncond = condition.detach(), uncond.detach()

    def get_text_embeddings(self, elevation, azimuth, camera_distances,
                            view_dependent_prompting: bool = True) -> torch.Tensor:
        r"""$[y \times B;\ \varnothing \times B]$, shape ``(2B, *condition.shape[1:])``."""
        B = elevation.shape[0] if isinstance(elevation, torch.Tensor) and elevation.ndim else 1
        rest = self.condition.shape[1:]
        return torch.cat([self.condition.expand(B, *rest), self.uncond.expand(B, *rest)])
