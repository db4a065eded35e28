"""Figure helpers shared by the benchmarks' reports (matplotlib, headless)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

__all__ = ["pyplot", "figure", "image_strips"]


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def figure(path: str | Path, *, figsize=(6, 4), dpi: int = 120, **subplots):
    """``with figure(path) as ax:`` draws on new axes, then saves ``path`` (PNG) and closes.

    ``subplots`` go to ``plt.subplots`` (e.g. ``ncols=3, squeeze=False``); the figure is
    saved only when the block finishes without an error, and closed either way.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=figsize, **subplots)
    try:
        yield ax
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)


def image_strips(rows, path: Path, titles, *, fontsize: int = 8, width_per_image: float = 1.2) -> None:
    """One horizontal strip of ``(n, 3, H, W)`` images per row, titled, saved as a PNG."""
    import torch

    plt = pyplot()
    fig, axes = plt.subplots(len(rows), 1, figsize=(width_per_image * rows[0].shape[0], 1.45 * len(rows)),
                             squeeze=False)
    try:
        for ax, row, title in zip(axes[:, 0], rows, titles):
            ax.imshow(torch.cat(list(row.permute(0, 2, 3, 1)), dim=1).numpy().clip(0, 1))
            ax.set_title(title, fontsize=fontsize, loc="left")
            ax.axis("off")
        fig.tight_layout()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
