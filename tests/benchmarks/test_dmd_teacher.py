"""The shipped DMD denoiser: checksums, loading, and that it is a trained score (against the exact one)."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("safetensors")
pytest.importorskip("sklearn")

from benchmarks.dmd import mixture, teacher  # noqa: E402
from benchmarks.dmd.networks import make_scheduler, make_unet  # noqa: E402
from benchmarks.checksums import sha256  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_shipped_files_match_their_checksums():
    listed = teacher.verify_checksums(teacher.WEIGHTS_DIR)
    assert set(listed) == set(teacher.FILES)
    for name, digest in listed.items():
        assert sha256(teacher.WEIGHTS_DIR / name) == digest


def test_shipped_denoiser_beats_an_untrained_one_at_every_t():
    mix = mixture.fit_mixture()
    abar = make_scheduler().alphas_cumprod.double()
    trained = teacher.score_error(teacher.load_denoiser(), mix, abar, n=128, bins=5)
    untrained = teacher.score_error(make_unet(1), mix, abar, n=128, bins=5)
    for a, b in zip(trained, untrained):
        assert a["floor"] == pytest.approx(b["floor"], rel=1e-6)      # same draws: same irreducible error
        assert a["excess"] < 0.5 * b["excess"]


def test_exact_teacher_has_no_excess_error():
    mix = mixture.fit_mixture()
    abar = make_scheduler().alphas_cumprod.double()

    class Exact(torch.nn.Module):   # the exact score behind the UNet calling convention
        def __init__(self):
            super().__init__()
            self.t = mixture.real_teacher(mix, abar)

        def forward(self, x_t, t):
            return type("Out", (), {"sample": self.t.predict_noise(x_t, t)})()

    for e in teacher.score_error(Exact(), mix, abar, n=64, bins=3):
        assert e["excess"] == pytest.approx(0.0, abs=1e-10) and e["floor"] > 0
