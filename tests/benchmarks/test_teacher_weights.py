"""The shipped text-to-3D teacher: checksums, loading, a trained VAE, a working classifier; the scenes."""

import math
import warnings

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("safetensors")

from benchmarks.text_to_3d import scenes  # noqa: E402
from benchmarks.text_to_3d.classifier import class_probabilities, load_classifier  # noqa: E402
from benchmarks.text_to_3d.teacher import (  # noqa: E402
    NULL_LABEL,
    WEIGHTS_DIR,
    decode,
    load_teacher,
    null_condition,
    sha256,
    teacher_condition,
    verify_checksums,
)

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def teacher():
    return load_teacher(require_weights=True)


@pytest.fixture(scope="module")
def views():
    # The fixed held-out cameras, 4 per scene, at the benchmark's resolution.
    return [scenes.heldout_views(k, 4) for k in range(scenes.N_PROMPTS)]


def test_shipped_files_match_sha256sums():
    listed = verify_checksums(WEIGHTS_DIR)
    for name in ("vae.safetensors", "unet.safetensors", "classifier.safetensors",
                 "vae_config.json", "unet_config.json", "scheduler_config.json"):
        assert name in listed and sha256(WEIGHTS_DIR / name) == listed[name]
    assert sum((WEIGHTS_DIR / n).stat().st_size for n in listed) <= 10 * 2**20


def test_checksum_mismatch_is_named(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x")
    (tmp_path / "SHA256SUMS").write_text("0" * 64 + "  a.bin\n")
    with pytest.raises(ValueError, match="a.bin"):
        verify_checksums(tmp_path)


def test_teacher_gives_finite_epsilon_of_the_latent_shape(teacher):
    assert teacher.is_latent and teacher.alphas_cumprod.shape == (1000,)
    assert not any(p.requires_grad for p in teacher.unet.parameters())
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, 16, 16, generator=g)
    t = torch.tensor([20, 500, 979])
    with torch.no_grad():
        eps = teacher.predict_noise(z, t, teacher_condition(2), uncond=null_condition(),
                                    guidance_scale=5.0)
        eps_u = teacher.predict_noise(z, t, null_condition())
    assert eps.shape == z.shape and torch.isfinite(eps).all()
    # Trained, not random: at t = 979 the input is nearly pure noise, so epsilon-hat ~ z_t.
    assert torch.nn.functional.cosine_similarity(eps_u[2].flatten(), z[2].flatten(), dim=0) > 0.9


def test_vae_reconstructs_heldout_renders(teacher, views):
    x = torch.cat([v.images for v in views])
    with torch.no_grad():
        z = teacher.encode(x)
        rec = decode(teacher, z)
    assert z.shape == (x.shape[0], 4, 16, 16)
    # Latents are scaled to about unit variance (scaling_factor = 1/std of training latents).
    assert 0.5 < float(z.std()) < 2.0
    psnr = -10 * math.log10(float(torch.nn.functional.mse_loss(rec, x)))
    assert psnr > 25.0


def test_classifier_recognises_heldout_renders(views):
    model = load_classifier()
    x = torch.cat([v.images for v in views])
    y = torch.arange(scenes.N_PROMPTS).repeat_interleave(4)
    assert (class_probabilities(model, x).argmax(-1) == y).all()


def test_conditions_and_fallback_architecture():
    assert teacher_condition(1).tolist() == [1] and null_condition().tolist() == [NULL_LABEL]
    with pytest.raises(ValueError, match="scene_index"):
        teacher_condition(scenes.N_PROMPTS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        random = load_teacher(weights_dir=WEIGHTS_DIR / "missing")
    assert any("randomly initialised" in str(w.message) for w in caught)
    shipped = load_teacher(require_weights=True)
    for a, b in ((random.unet, shipped.unet), (random.vae, shipped.vae)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)
    with pytest.raises(FileNotFoundError, match="weights_dir"):
        load_teacher(weights_dir=WEIGHTS_DIR / "missing", require_weights=True)


def test_ground_truth_renderer_holds_the_fields():
    density, colour = scenes.scene_fields(2, grid_size=16)
    r = scenes.ground_truth_renderer(2, grid_size=16, image_size=8, n_samples=16)
    sig = torch.nn.functional.softplus(r.density.double())
    assert torch.allclose(sig, density.double().clamp(min=1e-6), rtol=1e-4, atol=1e-5)
    assert torch.allclose(torch.sigmoid(r.colour.double()), colour.double().clamp(1e-3, 1 - 1e-3),
                          atol=1e-6)
    assert float(density.max()) > 30 and float(density.min()) < 1e-3


def test_cameras_follow_the_shared_distribution():
    cams = scenes.sample_cameras(256, torch.Generator().manual_seed(0))
    r = cams.origins.norm(dim=-1)
    assert torch.allclose(r, torch.full_like(r, scenes.RADIUS), atol=1e-5)
    elev = torch.asin(cams.origins[:, 1] / r)
    lo, hi = scenes.ELEVATION_RANGE
    assert float(elev.min()) >= lo - 1e-5 and float(elev.max()) <= hi + 1e-5
    held = scenes.heldout_cameras(8)
    assert torch.equal(held.origins, scenes.heldout_cameras(8).origins)
    with pytest.raises(ValueError, match="n must"):
        scenes.sample_cameras(0)


def test_scenes_are_distinct_and_white_backed(views):
    imgs = torch.stack([v.images.mean(0) for v in views])             # (P, 3, H, W)
    assert torch.allclose(imgs[:, :, 0, 0], torch.ones(scenes.N_PROMPTS, 3), atol=1e-3)
    d = (imgs[:, None] - imgs[None]).pow(2).mean(dim=(2, 3, 4))
    assert float(d[~torch.eye(scenes.N_PROMPTS, dtype=torch.bool)].min()) > 1e-2
