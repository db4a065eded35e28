r"""A classifier-feature FID for the 8×8 digits: the Fréchet distance in a digit classifier's feature space.

For samples $x_1, \dots, x_n$ and a reference set $r_1, \dots, r_m$ (e.g. fresh $p^\star$
samples), with $\phi$ the $F = 64$ penultimate activations of :class:`DigitClassifier`,

$$
\mathrm{FID}(x, r) = \lVert\mu_x - \mu_r\rVert^2
  + \operatorname{tr}\bigl(\Sigma_x + \Sigma_r - 2(\Sigma_x\Sigma_r)^{1/2}\bigr),
$$

where $\mu_x = \frac1n\sum_i\phi(x_i)$, $\Sigma_x = \frac1{n-1}\sum_i(\phi(x_i) - \mu_x)(\phi(x_i) - \mu_x)^\top$
(and likewise $\mu_r$, $\Sigma_r$), and $\operatorname{tr}(\Sigma_x\Sigma_r)^{1/2}$ is the sum of
the square roots of the eigenvalues of $\Sigma_x\Sigma_r$ (real and non-negative: the product of
two PSD matrices is similar to the PSD $\Sigma_r^{1/2}\Sigma_x\Sigma_r^{1/2}$).

Why a classifier of our own: FID's Inception-v3 features are learned on 299×299 colour
photographs; an 8×8 grey digit upsampled 37× is far outside what they describe, so they
would measure interpolation artefacts, not digits. A small CNN trained to tell the ten
digit classes apart on the real scikit-learn digits (:mod:`benchmarks.digits`, a seeded
80 / 20 train / held-out split) plays Inception's role: its features separate what
makes a digit a digit, and its held-out accuracy says how far to trust them. It is never
trained on $p^\star$ or on generated samples, so it favours no model under test.

The distance itself is torchmetrics' ``FrechetInceptionDistance`` with the classifier as a
custom ``feature`` module (:class:`FeatureExtractor`); :class:`ClassifierFID` keeps the
reference features and recomputes only the sample side, so it can be called hundreds of
times, e.g. on bootstrap resamples of $x$.

Example:
    >>> from benchmarks.dmd.mixture import fit_mixture, sample
    >>> net, record = train_classifier(seed=0)
    >>> record["test_accuracy"] > 0.95
    True
    >>> mix, g = fit_mixture(), torch.Generator().manual_seed(0)
    >>> fid = ClassifierFID(net, sample(mix, 2000, g)[0])
    >>> fid(sample(mix, 2000, g)[0]) < fid(torch.randn(2000, 1, 8, 8, generator=g))
    True
"""

from __future__ import annotations

import numbers
import time

import torch
import torch.nn.functional as nnf

from ..digits import N_CLASSES, load_digits, split

__all__ = ["FEATURES", "DigitClassifier", "train_classifier", "FeatureExtractor", "ClassifierFID"]

#: $F$: the width of the penultimate layer, the feature space of the FID.
FEATURES = 64
#: Held-out digits: 360 of 1797, 20 %.
N_HELDOUT = 360
#: Adam's step size and the minibatch size (20 epochs reach ~99 % held-out accuracy).
LR, BATCH = 3e-3, 64
#: The default number of passes over the 1437 training digits (about 2 s on one core).
EPOCHS = 20
IMAGE_SHAPE = (1, 8, 8)


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_images(x, name: str, min_n: int = 1) -> torch.Tensor:
    """Shape and dtype checks (always cheap): a float tensor ``(n, 1, 8, 8)`` with ``n >= min_n``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (n, 1, 8, 8), got {type(x).__name__}")
    if x.ndim != 4 or tuple(x.shape[1:]) != IMAGE_SHAPE or x.shape[0] < min_n:
        hint = ""
        if x.ndim == 3 and tuple(x.shape[1:]) == (8, 8):
            hint = "; add the channel axis with x[:, None]"
        elif x.ndim == 2 and x.shape[1] == 64:
            hint = "; reshape flat digits with x.reshape(-1, 1, 8, 8)"
        raise ValueError(f"{name} must have shape (n, 1, 8, 8) with n >= {min_n} "
                         f"(one-channel 8×8 digits), got {tuple(x.shape)}{hint}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (digits in [-1, 1]), got {x.dtype}")
    return x


class DigitClassifier(torch.nn.Module):
    r"""A small CNN on 8×8×1 digits: two 3×3 convolutions (16, 32 channels), a 2×2 max-pool, $F$ features, 10 logits.

    ``features(x)`` is $\phi(x)$ ``(n, F)``, the ReLU of the penultimate layer; ``forward(x)`` the
    logits ``(n, 10)``. About 40 k parameters.
    """

    def __init__(self, num_features: int = FEATURES):
        super().__init__()
        self.num_features = _check_int(num_features, "num_features", 1)
        self.conv1 = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.fc = torch.nn.Linear(32 * 4 * 4, self.num_features)
        self.head = torch.nn.Linear(self.num_features, N_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        r"""$\phi(x)$: ``(n, 1, 8, 8)`` → ``(n, F)``."""
        _check_images(x, "x")
        h = nnf.relu(self.conv2(nnf.relu(self.conv1(x))))
        return nnf.relu(self.fc(nnf.max_pool2d(h, 2).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _accuracy(net: DigitClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((net(images).argmax(1) == labels).double().mean())


def train_classifier(seed: int = 0, epochs: int = EPOCHS, threads: int = 1) -> tuple[DigitClassifier, dict]:
    """Train :class:`DigitClassifier` on 80 % of the real digits (cross-entropy, Adam); test on the other 20 %.

    Deterministic for a given ``seed`` (and thread count): one ``torch.Generator`` seeded with
    ``seed`` draws the split, the initialisation and the minibatch order; the global RNG is left
    untouched. ``threads`` is torch's intra-op thread count while training (restored after).

    Returns the network in eval mode with ``requires_grad`` off, and the record
    ``{"test_accuracy", "train_accuracy", "seconds", "epochs", "n_train", "n_test", "features"}``.
    """
    seed = _check_int(seed, "seed", 0)
    epochs = _check_int(epochs, "epochs", 1)
    threads = _check_int(threads, "threads", 1)
    g = torch.Generator().manual_seed(seed)
    # 1. Independent streams for split and init, drawn from the one seeded generator.
    split_seed, init_seed = (int(s) for s in torch.randint(0, 2**62, (2,), generator=g))
    train, test = split(load_digits(), N_HELDOUT, seed=split_seed)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
            torch.manual_seed(init_seed)
            net = DigitClassifier()
        opt = torch.optim.Adam(net.parameters(), lr=LR)
        n = len(train.labels)
        t0 = time.perf_counter()
        # 2. Minibatch cross-entropy, a fresh permutation from g every epoch.
        for _ in range(epochs):
            perm = torch.randperm(n, generator=g)
            for i in range(0, n, BATCH):
                rows = perm[i:i + BATCH]
                loss = nnf.cross_entropy(net(train.images[rows]), train.labels[rows])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        seconds = time.perf_counter() - t0
        net.eval().requires_grad_(False)
        record = {"test_accuracy": _accuracy(net, test.images, test.labels),
                  "train_accuracy": _accuracy(net, train.images, train.labels),
                  "seconds": seconds, "epochs": epochs, "n_train": n, "n_test": len(test.labels),
                  "features": net.num_features}
    finally:
        torch.set_num_threads(before)
    return net, record


class FeatureExtractor(torch.nn.Module):
    r"""$\phi$ as a torchmetrics ``feature`` module: ``forward(x) = classifier.features(x)`` ``(n, F)``, float32.

    What torchmetrics 1.9's ``FrechetInceptionDistance`` does with an ``nn.Module`` ``feature``
    (read in ``torchmetrics/image/fid.py``):

    - it reads the integer attribute ``num_features`` to size its states (without it, it would
      run the module on a dummy uint8 or [0, 1] float image of ``input_img_size`` to find out);
    - ``update(imgs, real)`` passes ``imgs`` to the module untouched: ``normalize`` only
      rescales to uint8 for its own Inception, never for a custom model, so [-1, 1] digits go
      in as they are;
    - the features are cast to float64, and it keeps float64 running sums
      $\sum\phi$, $\sum\phi\phi^\top$ and $n$ per side; ``compute`` forms
      $\Sigma = (\sum\phi\phi^\top - n\mu\mu^\top)/(n - 1)$ (ddof = 1), the trace term by
      ``eigvals(Σ_x Σ_r).sqrt().real.sum()``, and returns the result in the features' dtype
      (here float32);
    - ``reset()`` with ``reset_real_features=False`` keeps the real-side sums.

    It stays in eval mode (``train()`` is a no-op), like torchmetrics' own Inception wrapper.
    """

    def __init__(self, classifier: DigitClassifier):
        if not isinstance(classifier, DigitClassifier):
            raise TypeError(f"classifier must be a DigitClassifier, got {type(classifier).__name__}")
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(x.float())

    def train(self, mode: bool = True) -> FeatureExtractor:
        return super().train(False)


class ClassifierFID:
    r"""$x \mapsto \mathrm{FID}(x, r)$ for a fixed reference set ``ref`` $= r$ ``(m, 1, 8, 8)``, $m \ge 2$.

    The reference features are extracted once, here; each call extracts only $x$'s
    ``(n, 1, 8, 8)``, $n \ge 2$, and returns the FID as a float. One torchmetrics
    ``FrechetInceptionDistance(feature=FeatureExtractor(classifier), reset_real_features=False)``
    on the classifier's device holds the state.
    """

    def __init__(self, classifier: DigitClassifier, ref: torch.Tensor):
        from torchmetrics.image.fid import FrechetInceptionDistance

        ref = _check_images(ref, "ref", min_n=2)
        _check_finite(ref, "ref")
        self.extractor = FeatureExtractor(classifier)
        self.device = next(classifier.parameters()).device
        self.metric = FrechetInceptionDistance(feature=self.extractor, reset_real_features=False).to(self.device)
        self.n_ref = int(ref.shape[0])
        with torch.no_grad():
            self.metric.update(ref.to(self.device, torch.float32), real=True)

    def __call__(self, x: torch.Tensor) -> float:
        x = _check_images(x, "x", min_n=2)
        _check_finite(x, "x")
        self.metric.reset()  # drops the sample side only (reset_real_features=False)
        with torch.no_grad():
            self.metric.update(x.to(self.device, torch.float32), real=False)
            return float(self.metric.compute())


def _check_finite(x: torch.Tensor, name: str) -> None:
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} has {int((~torch.isfinite(x)).sum())} non-finite entries (NaN or inf)")
