r"""The 8×8 handwritten digits that ship with scikit-learn, as diffusion-model data.

``sklearn.datasets.load_digits`` (1797 images, 16 grey levels, no download) scaled
to $x = 2v/16 - 1 \in [-1, 1]^{1\times 8\times 8}$, the range a DDPM is trained on.
Shared by the benchmarks that need real data and a teacher trained in minutes on
two CPU cores (attribution, DMD).

Example:
    >>> data = load_digits(classes=(0, 1))
    >>> data.images.shape[1:], float(data.images.min()), float(data.images.max())
    (torch.Size([1, 8, 8]), -1.0, 1.0)
    >>> train, heldout = split(data, n_heldout=40, seed=0)
    >>> len(train.labels) + len(heldout.labels) == len(data.labels)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["Digits", "load_digits", "split", "to_unit"]

N_CLASSES = 10
"""Digit classes 0..9."""


class Digits(NamedTuple):
    r"""Images ``(N, 1, 8, 8)`` in $[-1, 1]$ (float32), their labels ``(N,)`` and their row in the full set."""

    images: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor


def load_digits(classes: Sequence[int] | None = None) -> Digits:
    r"""All digits, or those whose label is in ``classes`` (e.g. ``(0, 1)``, a two-class subset), in file order."""
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError as err:  # pragma: no cover - an install problem, said plainly
        raise ImportError("benchmarks.digits needs scikit-learn (it ships the digits): "
                          "pip install scikit-learn") from err
    raw = _load()
    labels = np.asarray(raw.target, dtype=np.int64)
    keep = np.arange(labels.size)
    if classes is not None:
        classes = [int(c) for c in classes]
        bad = [c for c in classes if not 0 <= c < N_CLASSES]
        if not classes or bad or len(set(classes)) != len(classes):
            raise ValueError(f"classes must be distinct digits in 0..9, got {classes}")
        keep = np.flatnonzero(np.isin(labels, classes))
    x = torch.from_numpy(raw.images[keep].astype(np.float32) / 16.0 * 2.0 - 1.0)[:, None]
    return Digits(x, torch.from_numpy(labels[keep]), torch.from_numpy(keep))


def split(data: Digits, n_heldout: int, seed: int = 0) -> tuple[Digits, Digits]:
    """A seeded random split into (train, held-out) with ``n_heldout`` held-out images."""
    n = len(data.labels)
    if not 0 < int(n_heldout) < n:
        raise ValueError(f"n_heldout must be in [1, {n - 1}] for {n} images, got {n_heldout}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    held, train = perm[:n_heldout].sort().values, perm[n_heldout:].sort().values
    pick = lambda rows: Digits(data.images[rows], data.labels[rows], data.index[rows])
    return pick(train), pick(held)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    r"""$[-1, 1] \to [0, 1]$, clipped (for figures)."""
    return ((x + 1) / 2).clamp(0, 1)
