r"""A small CNN that recognises the scenes' objects: the judge of teacher samples and of NeRFs.

$p(y \mid x) = \operatorname{softmax}(f(x))$ for images $x$ ``(B, 3, 64, 64)`` in $[0, 1]$,
trained on ground-truth renders from random cameras. Half of the training
images are turned to grey ($x \leftarrow$ luminance) so that the classifier must
use the shape as well as the colour; :func:`evaluate` reports accuracy on
held-out renders in colour and in grey.

``python -m benchmarks.text_to_3d.classifier`` runs the teacher evaluation:
DDIM samples per prompt (CFG), decoded and classified, written to
``results/teacher_samples.png`` and ``results/teacher_eval.json``.
(The classifier itself is trained by ``train_teacher``.)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..figures import image_strips
from .scenes import N_PROMPTS, PROMPTS, heldout_views, render_views

__all__ = [
    "CLASSIFIER_CONFIG",
    "RESULTS_DIR",
    "Classifier",
    "build_classifier",
    "load_classifier",
    "grey",
    "train_classifier",
    "accuracy",
    "heldout_set",
    "class_probabilities",
    "evaluate_teacher",
]

CLASSIFIER_CONFIG = dict(channels=[16, 32, 64], n_classes=N_PROMPTS)
"""Three stride-2 conv stages, global average pooling, a linear head."""
RESULTS_DIR = Path(__file__).resolve().parent / "results"
_LUMA = (0.299, 0.587, 0.114)


class Classifier(nn.Module):
    """Conv(3×3, stride 2) + GroupNorm + SiLU per stage, then a second 3×3 conv; mean-pool; linear."""

    def __init__(self, channels=(16, 32, 64), n_classes: int = N_PROMPTS):
        super().__init__()
        layers, c_in = [], 3
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(4, c), nn.SiLU(),
                       nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(4, c), nn.SiLU()]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n_classes)`` for images ``(B, 3, H, W)`` in $[0, 1]$."""
        return self.head(self.features(2 * x - 1).mean(dim=(2, 3)))


def build_classifier(config: dict | None = None, *, seed: int = 2) -> Classifier:
    """A :class:`Classifier` of ``config`` (default :data:`CLASSIFIER_CONFIG`), initialised from ``seed``."""
    cfg = dict(CLASSIFIER_CONFIG if config is None else config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Classifier(cfg["channels"], cfg["n_classes"])


def load_classifier(weights_dir: str | Path | None = None) -> Classifier:
    """The shipped classifier (``classifier.safetensors``), frozen, in eval mode."""
    from safetensors.torch import load_file

    from .teacher import WEIGHTS_DIR

    folder = WEIGHTS_DIR if weights_dir is None else Path(weights_dir)
    path = folder / "classifier.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"no classifier at {path} (weights_dir={str(folder)!r}); run "
                                "`python -m benchmarks.text_to_3d.train_teacher`")
    cfg_path = folder / "classifier_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else CLASSIFIER_CONFIG
    model = build_classifier(cfg)
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False)


def grey(images: torch.Tensor) -> torch.Tensor:
    r"""Luminance $0.299 r + 0.587 g + 0.114 b$ copied to three channels, ``(B, 3, H, W)``."""
    w = torch.tensor(_LUMA, dtype=images.dtype, device=images.device).reshape(1, 3, 1, 1)
    return (images * w).sum(1, keepdim=True).expand_as(images)


def train_classifier(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator, *,
                     steps: int = 600, batch_size: int = 64, lr: float = 2e-3,
                     log_every: int = 100) -> Classifier:
    r"""Minimise cross-entropy on ``images`` ``(N, 3, 64, 64)``, ``labels`` ``(N,)``; half of each batch greyed.

    Augmentation (drawn with ``generator``): greyscale with probability 1/2,
    Gaussian pixel noise of std $U[0, 0.05]$, so that slightly noisy decoded samples
    are in distribution.
    """
    if images.ndim != 4 or labels.shape != images.shape[:1]:
        raise ValueError(f"images must be (N, 3, H, W) and labels (N,), got {tuple(images.shape)} "
                         f"and {tuple(labels.shape)}")
    model = build_classifier().train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=generator)
        x, y = images[idx], labels[idx]
        to_grey = torch.rand(batch_size, 1, 1, 1, generator=generator) < 0.5
        x = torch.where(to_grey, grey(x), x)
        x = x + 0.05 * torch.rand(batch_size, 1, 1, 1, generator=generator) \
            * torch.randn(x.shape, generator=generator)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if log_every and (step + 1) % log_every == 0:
            print(f"  classifier step {step + 1}/{steps}  loss {loss.item():.4f}  "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return model.eval().requires_grad_(False)


def class_probabilities(model: Classifier, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    r"""$p(y \mid x)$ ``(B, n_classes)`` for images ``(B, 3, H, W)`` in $[0, 1]$ (no grad)."""
    with torch.no_grad():
        return torch.cat([torch.softmax(model(images[a:a + batch_size]), dim=-1)
                          for a in range(0, images.shape[0], batch_size)])


def accuracy(model: Classifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` whose most probable class is ``labels``."""
    return float((class_probabilities(model, images).argmax(-1) == labels).float().mean())


def heldout_set(generator: torch.Generator, n_random: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out renders: the fixed :func:`~.scenes.heldout_cameras` views plus ``n_random`` fresh random views per scene."""
    xs, ys = [], []
    for k in range(N_PROMPTS):
        imgs = torch.cat([heldout_views(k).images, render_views(k, n_random, generator).images])
        xs.append(imgs)
        ys.append(torch.full((imgs.shape[0],), k, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)


def load_models(weights_dir: str | Path | None = None, *, allow_random: bool = False):
    """``(teacher, classifier)``: the shipped teacher and classifier of ``weights_dir``.

    With ``allow_random`` (smoke tests), missing weights give a random teacher (it warns)
    and ``None`` for the classifier; otherwise they raise, naming the retraining command.
    """
    from .teacher import load_teacher

    teacher = load_teacher(weights_dir, require_weights=not allow_random)
    try:
        return teacher, load_classifier(weights_dir)
    except FileNotFoundError:
        if not allow_random:
            raise
        return teacher, None


def evaluate_teacher(n_per_prompt: int = 32, *, steps: int = 50, guidance_scale: float | None = None,
                     seed: int = 0, weights_dir=None, out_dir: str | Path | None = None) -> dict:
    """Sample, decode and classify ``n_per_prompt`` teacher images per prompt; write the grid and JSON.

    Returns the JSON record: per prompt the fraction recognised (argmax = prompt)
    in colour and in grey, the mean probability of the prompt, and the
    classifier's held-out accuracy (colour and grey).
    """
    from .teacher import GUIDANCE_SCALE, ddim_sample, decode, load_teacher

    s = GUIDANCE_SCALE if guidance_scale is None else guidance_scale
    out = RESULTS_DIR if out_dir is None else Path(out_dir)
    teacher = load_teacher(weights_dir, require_weights=True)
    model = load_classifier(weights_dir)
    root = torch.Generator().manual_seed(seed)
    # Independent streams: one seed per use, drawn from the root generator.
    g_held, g_sample = (torch.Generator().manual_seed(int(v))
                        for v in torch.randint(0, 2**62, (2,), generator=root))
    x_held, y_held = heldout_set(g_held)
    record = {"guidance_scale": s, "ddim_steps": steps, "n_per_prompt": n_per_prompt,
              "classifier_heldout_accuracy": accuracy(model, x_held, y_held),
              "classifier_heldout_accuracy_grey": accuracy(model, grey(x_held), y_held),
              "n_heldout": int(y_held.numel()), "prompts": {}}
    rows, titles = [], []
    t0 = time.perf_counter()
    for k, prompt in enumerate(PROMPTS):
        with torch.no_grad():
            imgs = decode(teacher, ddim_sample(teacher, k, n_per_prompt, g_sample, steps=steps,
                                               guidance_scale=s))
        p, p_grey = class_probabilities(model, imgs), class_probabilities(model, grey(imgs))
        record["prompts"][prompt] = {
            "recognised": float((p.argmax(-1) == k).float().mean()),
            "recognised_grey": float((p_grey.argmax(-1) == k).float().mean()),
            "mean_probability": float(p[:, k].mean()),
            "predicted_counts": torch.bincount(p.argmax(-1), minlength=N_PROMPTS).tolist(),
        }
        rows.append(imgs[:min(12, n_per_prompt)])
        titles.append(f"{prompt!r}: recognised {record['prompts'][prompt]['recognised']:.0%} "
                      f"(grey {record['prompts'][prompt]['recognised_grey']:.0%})")
        print(f"  {prompt}: {titles[-1]}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    rec = [v["recognised"] for v in record["prompts"].values()]
    record["recognised_overall"] = sum(rec) / len(rec)
    record["recognised_min"] = min(rec)
    image_strips(rows, out / "teacher_samples.png", titles, fontsize=9, width_per_image=1.1)
    (out / "teacher_eval.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=32, help="samples per prompt")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps")
    ap.add_argument("--guidance-scale", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", default=None, help="weights folder (default: the shipped one)")
    ap.add_argument("--out", default=None, help="results folder")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    rec = evaluate_teacher(args.n, steps=args.steps, guidance_scale=args.guidance_scale,
                           seed=args.seed, weights_dir=args.weights, out_dir=args.out)
    print(json.dumps({k: v for k, v in rec.items() if k != "prompts"}, indent=2))
    if math.isfinite(rec["recognised_min"]) and rec["recognised_overall"] < 0.9:
        print("WARNING: fewer than 90% of teacher samples recognised")


if __name__ == "__main__":
    _main()
