"""carv_torch.attribution: batched per-example features against an independent autograd loop, exactly.

The batched path (one ``torch.func.vmap`` over examples) must equal, to float64
rounding, a plain loop that differentiates each example's loss on its own with
``torch.autograd.grad``, on a real diffusers ``UNet2DModel`` with a parameter subset,
class conditioning, importance weights and every design; common random numbers,
chunking and projection are checked by identities that fail if they are wrong.
"""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from diffusers import DDPMScheduler, UNet2DModel

import carv_torch
from carv_core.designs import IID, Stratified, Systematic
from carv_core import FixedGrid
from carv_torch.attribution_features import attribution
from carv_torch.inner import draw_inner
from carv_torch.objectives import attribution as attribution_reexported
from carv_torch.sampling import InverseCDFSampler

DT = torch.float64
T = 100
pytestmark = pytest.mark.usefixtures("one_thread")


def make_teacher(classes=None):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                           down_block_types=("DownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "UpBlock2D"), layers_per_block=1,
                           norm_num_groups=4, add_attention=False, num_class_embeds=classes).to(DT)
    return carv_torch.DiffusersTeacher(unet, DDPMScheduler(num_train_timesteps=T))


def subset(unet):
    return list(unet.up_blocks[-1].resnets[-1].parameters()) + list(unet.conv_out.parameters())


def skewed_sampler(design):
    p = torch.full((T,), 1.0 / T, dtype=DT)
    q = torch.linspace(1.0, 3.0, T, dtype=DT)
    return InverseCDFSampler(p, q / q.sum(), design)      # weights p/q != 1


def loop_features(teacher, x0, params, K, sampler, common, seed, labels=None, weighting=None):
    # Independent computation: the same draws, one example at a time, plain autograd.
    draws = draw_inner(x0.shape[0], K, x0.shape[1:], sampler=sampler, common=common,
                       generator=torch.Generator().manual_seed(seed), dtype=DT)
    abar = teacher.alphas_cumprod
    out = []
    for r in range(x0.shape[0]):
        t, eps = draws.t[r], draws.eps[r]
        x_t = abar[t].sqrt().view(-1, 1, 1, 1) * x0[r] + (1 - abar[t]).sqrt().view(-1, 1, 1, 1) * eps
        y = None if labels is None else labels[r].expand(K)
        eps_hat = teacher.unet(x_t, t, class_labels=y).sample
        ell = (eps_hat - eps).pow(2).flatten(1).mean(1)
        if weighting is not None:
            ell = weighting[t] * ell
        grads = torch.autograd.grad((draws.w[r] * ell).mean(), params)
        out.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(out), draws


@pytest.mark.parametrize("design", [IID(), Stratified(), Systematic(), FixedGrid(T)], ids=repr)
@pytest.mark.parametrize("common", [False, True])
def test_batched_features_equal_a_per_example_autograd_loop(design, common):
    teacher = make_teacher(classes=3)
    params = subset(teacher.unet)
    x0 = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=DT) * 2 - 1
    labels = torch.tensor([0, 2, 1, 1, 0])
    sampler = skewed_sampler(design)
    est = attribution(teacher, x0, params, K=4, sampler=sampler, condition=labels,
                      common_random_numbers=common, generator=torch.Generator().manual_seed(7))
    ref, draws = loop_features(teacher, x0, params, 4, sampler, common, 7, labels)
    assert est.features.shape == (5, sum(p.numel() for p in params))
    assert torch.equal(est.t, draws.t) and torch.equal(est.w, draws.w)
    assert not torch.allclose(est.w, torch.ones_like(est.w))          # IS weights really used
    torch.testing.assert_close(est.features, ref, rtol=1e-10, atol=1e-12)


def test_weighting_table_and_a_shared_condition():
    teacher = make_teacher(classes=3)
    params = subset(teacher.unet)
    x0 = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=DT)
    w = torch.linspace(0.5, 2.0, T, dtype=DT)
    sampler = skewed_sampler(Stratified())
    est = attribution(teacher, x0, params, K=3, sampler=sampler, condition=torch.tensor([2]), weighting=w,
                      generator=torch.Generator().manual_seed(3))
    ref, _ = loop_features(teacher, x0, params, 3, sampler, False, 3, torch.tensor([2, 2, 2]), w)
    torch.testing.assert_close(est.features, ref, rtol=1e-10, atol=1e-12)


def test_common_random_numbers_give_every_example_the_same_t_and_eps():
    # Two copies of one image: identical features iff (t, eps) are identical for both.
    teacher = make_teacher()
    params = subset(teacher.unet)
    img = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(4), dtype=DT)
    x0 = torch.cat([img, torch.zeros_like(img), img])
    kw = dict(K=4, p=torch.full((T,), 1.0 / T, dtype=DT), design="iid")
    crn = attribution(teacher, x0, params, common_random_numbers=True, generator=torch.Generator().manual_seed(5), **kw)
    assert (crn.t == crn.t[0]).all() and (crn.w == crn.w[0]).all()
    assert torch.equal(crn.features[0], crn.features[2]) and torch.equal(crn.losses[0], crn.losses[2])
    ind = attribution(teacher, x0, params, common_random_numbers=False, generator=torch.Generator().manual_seed(5), **kw)
    assert not torch.allclose(ind.features[0], ind.features[2])


@pytest.mark.parametrize("common", [False, True])
def test_chunking_and_projection_change_nothing(common):
    teacher = make_teacher()
    params = subset(teacher.unet)
    x0 = torch.randn(7, 1, 8, 8, generator=torch.Generator().manual_seed(6), dtype=DT)
    kw = dict(K=3, p=torch.full((T,), 1.0 / T, dtype=DT), common_random_numbers=common)
    full = attribution(teacher, x0, params, generator=torch.Generator().manual_seed(8), **kw)
    for chunk in (1, 3, 7, 50):
        part = attribution(teacher, x0, params, generator=torch.Generator().manual_seed(8), chunk_size=chunk, **kw)
        torch.testing.assert_close(part.features, full.features, rtol=1e-12, atol=1e-14)
        assert torch.equal(part.t, full.t)
    M = torch.randn(full.features.shape[1], 5, generator=torch.Generator().manual_seed(9), dtype=DT)
    proj = attribution(teacher, x0, params, generator=torch.Generator().manual_seed(8), chunk_size=2,
                       project=lambda g: g @ M, **kw)
    torch.testing.assert_close(proj.features, full.features @ M, rtol=1e-10, atol=1e-12)


def test_reexports_and_validation_off_agree():
    assert attribution_reexported is attribution and carv_torch.attribution is attribution
    teacher = make_teacher()
    params = subset(teacher.unet)
    x0 = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(10), dtype=DT)
    kw = dict(K=2, p=torch.full((T,), 1.0 / T, dtype=DT))
    on = attribution(teacher, x0, params, generator=torch.Generator().manual_seed(1), **kw)
    with carv_torch.set_validate_args(False):
        off = attribution(teacher, x0, params, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(on.features, off.features)


def test_a_non_finite_prediction_is_named():
    teacher = make_teacher()
    params = subset(teacher.unet)
    with torch.no_grad():
        teacher.unet.conv_out.bias.fill_(float("nan"))
    x0 = torch.randn(2, 1, 8, 8, dtype=DT)
    with pytest.raises(FloatingPointError, match="teacher.predict_noise"):
        attribution(teacher, x0, params, K=2, p=torch.full((T,), 1.0 / T, dtype=DT),
                    generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("bad,error,match", [
    (dict(chunk_size=0), ValueError, "chunk_size"),
    (dict(chunk_size=1.5), TypeError, "chunk_size"),
    (dict(project=3), TypeError, "^project must be a callable"),
    (dict(common_random_numbers="yes"), TypeError, "^common_random_numbers must be a bool"),
    (dict(condition=torch.tensor([0, 1, 2])), ValueError, "^condition must have leading dimension 1 or R = 2"),
    (dict(params=[torch.zeros(3, requires_grad=True)]), ValueError, r"^params\[0\] \(shape \(3,\)\) is neither"),
    (dict(params=[]), ValueError, "^params must be a non-empty list"),
    (dict(x0=torch.zeros(2, 1, 8, 8, dtype=torch.long)), TypeError, "^x0 must be a floating tensor"),
    (dict(K=0), ValueError, "K must be >= 1"),
])
def test_bad_input_names_the_argument(bad, error, match):
    teacher = make_teacher(classes=3)
    kw = dict(x0=torch.zeros(2, 1, 8, 8, dtype=DT), params=subset(teacher.unet), K=2,
              p=torch.full((T,), 1.0 / T, dtype=DT))
    kw.update(bad)
    x0, params = kw.pop("x0"), kw.pop("params")
    with pytest.raises(error, match=match):
        attribution(teacher, x0, params, **kw)


def test_params_listed_twice_are_rejected():
    teacher = make_teacher()
    w = teacher.unet.conv_out.weight
    with pytest.raises(ValueError, match="same tensor twice"):
        attribution(teacher, torch.zeros(1, 1, 8, 8, dtype=DT), [w, w], K=1,
                    p=torch.full((T,), 1.0 / T, dtype=DT))


def test_parameters_are_restored_after_the_call():
    teacher = make_teacher()
    params = subset(teacher.unet)
    before = [p for p in teacher.unet.parameters()]
    attribution(teacher, torch.zeros(2, 1, 8, 8, dtype=DT), params, K=1, p=torch.full((T,), 1.0 / T, dtype=DT))
    after = list(teacher.unet.parameters())
    assert len(before) == len(after) and all(a is b for a, b in zip(before, after))
    assert all(isinstance(p, torch.nn.Parameter) for p in after)


def test_a_teacher_whose_parameter_is_a_tensor_attribute():
    # GaussianMixtureTeacher holds `means` as a plain attribute (no nn.Module): the same identity.
    abar = torch.linspace(0.99, 0.05, T, dtype=DT)
    means = torch.randn(2, 4, generator=torch.Generator().manual_seed(11), dtype=DT).requires_grad_(True)
    teacher = carv_torch.GaussianMixtureTeacher(means, 0.5, abar)
    x0 = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(12), dtype=DT)
    sampler = skewed_sampler(Stratified())
    est = attribution(teacher, x0, [means], K=4, sampler=sampler, generator=torch.Generator().manual_seed(13))
    draws = draw_inner(3, 4, (1, 2, 2), sampler=sampler, generator=torch.Generator().manual_seed(13), dtype=DT)
    ref = []
    for r in range(3):
        t, eps = draws.t[r], draws.eps[r]
        x_t = abar[t].sqrt().view(-1, 1, 1, 1) * x0[r] + (1 - abar[t]).sqrt().view(-1, 1, 1, 1) * eps
        ell = (teacher.predict_noise(x_t, t) - eps).pow(2).flatten(1).mean(1)
        ref.append(torch.autograd.grad((draws.w[r] * ell).mean(), [means])[0].reshape(-1))
    torch.testing.assert_close(est.features, torch.stack(ref), rtol=1e-10, atol=1e-12)
    assert teacher.means is means
