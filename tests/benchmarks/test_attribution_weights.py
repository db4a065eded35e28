"""The shipped attribution UNet: checksums, loading, and that it is trained (not random)."""

import json
import warnings

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("safetensors")
pytest.importorskip("sklearn")

from benchmarks.attribution.model import (
    UNET_CONFIG,
    WEIGHTS_DIR,
    build_scheduler,
    feature_params,
    generate,
    load_teacher,
    sha256,
    verify_checksums,
)
from benchmarks.attribution.train_unet import heldout_loss
from benchmarks.digits import load_digits, split

pytestmark = pytest.mark.usefixtures("one_thread")


def test_shipped_files_match_sha256sums():
    listed = verify_checksums(WEIGHTS_DIR)
    for name in ("unet.safetensors", "unet_config.json", "scheduler_config.json"):
        assert name in listed and sha256(WEIGHTS_DIR / name) == listed[name]
    assert json.loads((WEIGHTS_DIR / "unet_config.json").read_text()) == UNET_CONFIG
    assert sum((WEIGHTS_DIR / n).stat().st_size for n in listed) <= 10 * 2**20


def test_checksum_mismatch_is_named(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x")
    (tmp_path / "SHA256SUMS").write_text("0" * 64 + "  a.bin\n")
    with pytest.raises(ValueError, match="a.bin"):
        verify_checksums(tmp_path)


def test_trained_model_beats_its_initialisation_on_heldout_digits(tmp_path):
    teacher = load_teacher(require_weights=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        random = load_teacher(tmp_path)
    _, held = split(load_digits((0, 1)), 40, seed=0)
    abar = build_scheduler().alphas_cumprod.to(torch.float64)
    trained, untrained = heldout_loss(teacher.unet, held.images, abar), heldout_loss(random.unet, held.images, abar)
    assert trained < 0.5 * untrained, (trained, untrained)
    with pytest.raises(FileNotFoundError, match="weights_dir"):
        load_teacher(tmp_path, require_weights=True)


def test_generated_samples_look_like_the_training_digits():
    # Nearest training image of each DDIM sample is closer than that of Gaussian noise images.
    teacher = load_teacher(require_weights=True)
    train, _ = split(load_digits((0, 1)), 40, seed=0)
    x = generate(teacher, 8, steps=25, seed=3)
    noise = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    near = lambda a: torch.cdist(a.flatten(1), train.images.flatten(1)).min(1).values
    assert float(near(x).mean()) < 0.5 * float(near(noise).mean())
    assert all(p.requires_grad for p in feature_params(teacher.unet))
