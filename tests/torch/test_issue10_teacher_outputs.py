"""The teacher output contract (issue 10): shape, dtype and device always; finiteness
(with validation on) in one host read, reported with the timesteps, whoever produced it."""

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import carv_torch  # noqa: E402
from carv_torch.teachers import GaussianMixtureTeacher  # noqa: E402

DT = torch.float64
T = 10
P = torch.full((T,), 0.1, dtype=DT)
ABAR = torch.linspace(0.99, 0.05, T, dtype=DT)


def gmm(shift=0.0):
    return GaussianMixtureTeacher(torch.full((1, 4), shift, dtype=DT), 1.0, ABAR)


class Out:
    """A teacher whose output is ``fn(x_t, t)``."""

    def __init__(self, fn):
        self.fn, self.alphas_cumprod = fn, ABAR

    def predict_noise(self, x_t, t, condition=None, *, uncond=None, guidance_scale=1.0):
        return self.fn(x_t, t)


def nan_where(steps):
    def fn(x_t, t):
        bad = torch.isin(t, torch.tensor(steps)).reshape(-1, 1, 1, 1)
        return torch.where(bad, torch.full_like(x_t, float("nan")), torch.zeros_like(x_t))
    return fn


X = torch.ones(2, 1, 2, 2, dtype=DT)


def run(objective, gen_seed=0, K=4):
    return carv_torch.estimate(objective, X, K=K, p=P, generator=torch.Generator().manual_seed(gen_seed))


def drawn_t(K=4):
    return run(carv_torch.SDS(gmm()), K=K).t.reshape(-1)


@pytest.mark.parametrize("which", ["real", "fake"])
def test_dmd_names_the_teacher_and_the_timesteps_of_a_nan(which):
    t = drawn_t()
    steps = sorted({int(t[1]), int(t[6])})
    bad = Out(nan_where(steps))
    real, fake = (bad, gmm()) if which == "real" else (gmm(), bad)
    n = int(torch.isin(t, torch.tensor(steps)).sum())
    with pytest.raises(FloatingPointError, match=(rf"^{which}\.predict_noise returned non-finite values "
                                                  rf"\(nan\) at timesteps {re.escape(str(steps))} \({n} of 8 draws\)")):
        run(carv_torch.DMD(real, fake))


def test_a_user_integrand_and_a_user_sds_teacher_are_checked_too():
    t = drawn_t()
    step = int(t[3])
    integrand = carv_torch.Integrand(lambda x_t, t_, eps: nan_where([step])(x_t, t_), ABAR)
    with pytest.raises(FloatingPointError, match=rf"^the integrand returned non-finite values \(nan\) "
                                                 rf"at timesteps \[{step}\]"):
        run(integrand)
    inf = Out(lambda x_t, t_: torch.full_like(x_t, float("inf")))
    with pytest.raises(FloatingPointError, match=r"^teacher\.predict_noise returned non-finite values "
                                                 r"\(inf\) at timesteps \["):
        run(carv_torch.SDS(inf))
    with carv_torch.set_validate_args(False):  # a value check: switched off with the others
        assert not torch.isfinite(run(carv_torch.SDS(inf)).grad).all()


def test_dmd_checks_both_teachers_in_one_host_read(monkeypatch):
    # The fake score's own check is deferred to the objective: DMD's two outputs cost one
    # read, against one per teacher (plus the t-range reads) before.
    obj = carv_torch.DMD(gmm(), gmm(0.5))
    x_t = torch.ones(4, 1, 2, 2, dtype=DT)
    t = torch.tensor([0, 3, 5, 9])
    eps = torch.zeros_like(x_t)
    reads = []
    original = torch.Tensor.tolist
    original_bool = torch.Tensor.__bool__
    monkeypatch.setattr(torch.Tensor, "tolist", lambda s: reads.append("tolist") or original(s))
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda s: reads.append("bool") or original_bool(s))
    obj.integrand(x_t, t, eps)
    monkeypatch.undo()
    # two t-range checks (one per teacher call) and one finiteness check for both outputs
    assert len(reads) == 3, reads


def test_nan_policy_zero_of_a_teacher_is_honoured_through_the_objective():
    teacher = GaussianMixtureTeacher(torch.zeros(1, 4, dtype=DT), 1.0, ABAR, nan_policy="zero")
    teacher.means[0, 0] = float("nan")  # broken after construction (which refuses NaN)
    with pytest.warns(RuntimeWarning, match=r"teacher\.predict_noise returned non-finite values"):
        est = run(carv_torch.SDS(teacher))
    assert torch.isfinite(est.grad).all()


@pytest.mark.parametrize("fn, error, match", [
    (lambda x_t, t: x_t.float(), TypeError,
     r"teacher\.predict_noise must return dtype torch\.float64 like x_t, got torch\.float32"),
    (lambda x_t, t: x_t.to("meta"), ValueError,
     r"teacher\.predict_noise must return a tensor on cpu like x_t, got one on meta"),
    (lambda x_t, t: x_t.numpy(), ValueError, r"must return a tensor of shape .* got ndarray"),
])
def test_teacher_output_structure_is_checked(fn, error, match):
    with pytest.raises(error, match=match):
        run(carv_torch.SDS(Out(fn)))


def test_dmd_real_output_must_match_x_t_and_cannot_broadcast():
    # Leading dim 1 (caught by the shape check before too) and another dtype (new): either
    # would broadcast or promote against the fake's output.
    real = Out(lambda x_t, t: torch.zeros_like(x_t[:1]))
    with pytest.raises(ValueError, match=r"real\.predict_noise must return a tensor of shape \(8, 1, 2, 2\)"):
        run(carv_torch.DMD(real, gmm()))
    real = Out(lambda x_t, t: torch.zeros_like(x_t, dtype=torch.float32))
    with pytest.raises(TypeError, match=r"real\.predict_noise must return dtype torch\.float64"):
        run(carv_torch.DMD(real, gmm()))


def test_integrand_output_dtype_is_checked():
    integrand = carv_torch.Integrand(lambda x_t, t, eps: (x_t - eps).float(), ABAR)
    with pytest.raises(TypeError, match=r"the integrand must return dtype torch\.float64 like x_t"):
        run(integrand)


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -np.inf])
@pytest.mark.parametrize("cls", ["SDS", "DMD"])
def test_non_finite_guidance_scale_is_rejected(cls, scale):
    build = (lambda s: carv_torch.SDS(gmm(), guidance_scale=s)) if cls == "SDS" else \
        (lambda s: carv_torch.DMD(gmm(), gmm(), guidance_scale=s))
    with pytest.raises(ValueError, match=r"guidance_scale must be finite, got"):
        build(scale)
    assert build(np.float32(2.0)).guidance_scale == 2.0 and build(np.int64(3)).guidance_scale == 3.0
    with pytest.raises(TypeError, match="guidance_scale must be a real number"):
        build(True)


def test_non_finite_weighting_table_is_rejected():
    w = torch.ones(T, dtype=DT)
    w[4] = float("nan")
    with pytest.raises(ValueError, match=r"weighting must be finite, got nan at index \(4,\)"):
        carv_torch.SDS(gmm(), weighting=w)


@pytest.mark.parametrize("kw, match", [
    (dict(means=torch.tensor([[0.0, float("nan")]], dtype=DT)), r"means must be finite, got nan at index \(0, 1\)"),
    (dict(variances=float("nan")), r"variances must be finite, got nan"),
    (dict(variances=float("inf")), r"variances must be finite, got inf"),
    (dict(log_weights=torch.tensor([float("nan")], dtype=DT)), r"log_weights must be finite, got nan"),
    (dict(alphas_cumprod=torch.tensor([0.9, float("nan")], dtype=DT)), r"alphas_cumprod must be 1-D with values in \(0, 1\]"),
])
def test_gaussian_mixture_teacher_rejects_non_finite_parameters(kw, match):
    args = dict(means=torch.zeros(1, 2, dtype=DT), variances=1.0, alphas_cumprod=ABAR, log_weights=None)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        GaussianMixtureTeacher(**args)


def test_max_batch_size_may_be_a_numpy_integer():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1,
                                 norm_num_groups=8)
    teacher = carv_torch.DiffusersTeacher(unet, diffusers.DDPMScheduler(num_train_timesteps=10),
                                          max_batch_size=np.int64(4))
    assert teacher.max_batch_size == 4 and type(teacher.max_batch_size) is int
