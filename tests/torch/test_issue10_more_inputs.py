"""More bad input of the torch backend (issue 10, fuzz findings): errors name the public
argument; numpy integers are accepted where an int is. Renderer and cameras, teachers,
proposals, samplers' devices and meta tensors, the Stable Diffusion resize."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import carv_torch  # noqa: E402
from carv_torch.teachers import DiffusersTeacher, GaussianMixtureTeacher  # noqa: E402

DT = torch.float64
NAN = float("nan")
P4 = torch.full((4,), 0.25, dtype=DT)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- renderer, cameras


def cams():
    return carv_torch.orbit_cameras(torch.zeros(2), torch.zeros(2))


@pytest.mark.parametrize("kw, error, match", [
    (dict(grid_size=0), ValueError, r"grid_size must be >= 1, got 0"),
    (dict(image_size=0), ValueError, r"image_size must be >= 1, got 0"),
    (dict(n_samples=0), ValueError, r"n_samples must be >= 1, got 0"),
    (dict(grid_size=4.0), TypeError, r"grid_size must be an integer"),
    (dict(fov=NAN), ValueError, r"fov must be finite, got nan"),
    (dict(fov=0.0), ValueError, r"fov must be > 0"),
    (dict(fov=4.0), ValueError, r"fov must be < pi"),
    (dict(near=5.0), ValueError, r"near must be < far, got near = 5.0 and far = 4.0"),
    (dict(far=float("inf")), ValueError, r"far must be finite"),
    (dict(near=-1.0), ValueError, r"near must be >= 0"),
    (dict(dtype=torch.int64), TypeError, r"dtype must be a real floating torch.dtype"),
    (dict(generator=np.random.default_rng(0)), TypeError, r"generator must be a torch.Generator"),
])
def test_grid_renderer_checks_its_settings_at_construction(kw, error, match):
    with pytest.raises(error, match=match):
        carv_torch.GridRenderer(**{"grid_size": 4, "image_size": 4, "n_samples": 4, **kw})


def test_grid_renderer_accepts_numpy_sizes_and_renders_as_before():
    a = carv_torch.GridRenderer(np.int64(4), np.int64(4), np.int64(4), fov=np.float64(0.8),
                                generator=gen(8))
    b = carv_torch.GridRenderer(4, 4, 4, generator=gen(8))
    assert torch.equal(a(cams()), b(cams())) and a(cams()).shape == (2, 3, 4, 4)


@pytest.mark.parametrize("kw, error, match", [
    (dict(azimuth=[0.0, 0.0]), TypeError, r"azimuth must be a floating tensor of shape \(n,\)"),
    (dict(elevation=torch.zeros(2, dtype=torch.int64)), TypeError, r"elevation must have a real floating"),
    (dict(radius=NAN), ValueError, r"radius must be finite, got nan"),
    (dict(radius=0.0), ValueError, r"radius must be > 0, got 0.0"),
    (dict(radius="far"), TypeError, r"radius must be a real number"),
    (dict(azimuth=torch.zeros(3)), ValueError, r"azimuth and elevation must both have shape"),
])
def test_orbit_cameras_checks_its_arguments(kw, error, match):
    args = {"azimuth": torch.zeros(2), "elevation": torch.zeros(2), **kw}
    with pytest.raises(error, match=match):
        carv_torch.orbit_cameras(**args)


def test_orbit_cameras_accepts_a_numpy_radius():
    c = carv_torch.orbit_cameras(torch.zeros(2), torch.zeros(2), np.float32(2.5))
    assert torch.allclose(c.origins, torch.tensor([[2.5, 0.0, 0.0]] * 2))


@pytest.mark.parametrize("kw, error, match", [
    (dict(n=0), ValueError, r"n must be >= 1, got 0"),
    (dict(n=2.0), TypeError, r"n must be an integer"),
    (dict(max_elevation=NAN), ValueError, r"max_elevation must be finite, got nan"),
    (dict(max_elevation=-0.1), ValueError, r"max_elevation must be >= 0"),
    (dict(max_elevation=2.0), ValueError, r"max_elevation must be <= pi/2"),
    (dict(radius=NAN), ValueError, r"radius must be finite"),
    (dict(dtype=torch.int64), TypeError, r"dtype must be a real floating torch.dtype"),
    (dict(device="gpu0"), ValueError, r"device must be a torch.device.*got 'gpu0'"),
])
def test_random_cameras_checks_its_arguments(kw, error, match):
    with pytest.raises(error, match=match):
        carv_torch.random_cameras(**{"n": 2, "generator": gen(9), **kw})


def test_random_cameras_accepts_a_numpy_integer_n():
    a = carv_torch.random_cameras(np.int64(2), generator=gen(9))
    b = carv_torch.random_cameras(2, generator=gen(9))
    assert torch.equal(a.origins, b.origins) and torch.isfinite(a.rotations).all()


# --------------------------------------------------------------------------- teachers

ABAR = torch.linspace(0.99, 0.05, 50, dtype=DT)


def gm():
    return GaussianMixtureTeacher(torch.randn(2, 16, generator=gen(0), dtype=DT), 0.5, ABAR)


XT = torch.rand(3, 4, 2, 2, generator=gen(2), dtype=DT)
TT = torch.tensor([1, 20, 40])


@pytest.mark.parametrize("t, match", [
    (torch.tensor([1.0, 20.0, 40.0]), r"t must be an integer tensor of shape \(3,\)"),
    (torch.tensor([1, 20, 50]), r"t must lie in \[0, 50\), got values in \[1, 50\]"),
    (torch.tensor([-1, 20, 40]), r"t must lie in \[0, 50\)"),
])
def test_gaussian_mixture_checks_t_before_indexing_the_schedule(t, match):
    with pytest.raises(ValueError, match=match):
        gm().predict_noise(XT, t)


def test_gaussian_mixture_rejects_a_nan_guidance_scale():
    cond = torch.zeros(1, 2, dtype=DT)
    for bad, error in ((NAN, ValueError), (float("inf"), ValueError), ("7", TypeError)):
        with pytest.raises(error, match="guidance_scale"):
            gm().predict_noise(XT, TT, cond, guidance_scale=bad)
    assert torch.isfinite(gm().predict_noise(XT, TT, cond, guidance_scale=np.float32(3.0))).all()


def test_gaussian_mixture_reports_a_nan_input_as_the_callers():
    x = XT.clone()
    x[1, 2, 0, 1] = NAN
    with pytest.raises(ValueError, match=r"^x_t must be finite, got nan at index \(1, 2, 0, 1\)"):
        gm().predict_noise(x, TT)
    with carv_torch.set_validate_args(False):  # a value check: switched off with the others
        assert not torch.isfinite(gm().predict_noise(x, TT)).all()


def test_gaussian_mixture_checks_the_width_of_its_condition():
    with pytest.raises(ValueError, match=r"condition must be floating log-weights of shape \(N or 1, M\)"):
        gm().predict_noise(XT, TT, torch.zeros(1, 3, dtype=DT))
    with pytest.raises(ValueError, match=r"uncond must be floating log-weights"):
        gm().predict_noise(XT, TT, torch.zeros(1, 2, dtype=DT), uncond=torch.zeros(3, 5, dtype=DT),
                           guidance_scale=2.0)


def test_gaussian_mixture_value_checks_cost_one_host_read(monkeypatch):
    teacher, reads = gm(), []
    original = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda s: reads.append(1) or original(s))
    eps = teacher.predict_noise(XT, TT, torch.zeros(1, 2, dtype=DT), guidance_scale=2.0)
    monkeypatch.undo()
    assert len(reads) == 2 and torch.isfinite(eps).all()  # t and x_t (one), the output (one)


class _Sched:
    alphas_cumprod = ABAR

    class config:
        prediction_type = "epsilon"


@pytest.mark.parametrize("value", ["no", 0, None])
def test_diffusers_teacher_check_finite_must_be_a_bool(value):
    with pytest.raises(TypeError, match=r"check_finite must be a bool"):
        DiffusersTeacher(torch.nn.Linear(1, 1), _Sched(), check_finite=value)
    assert DiffusersTeacher(torch.nn.Linear(1, 1), _Sched(), check_finite=np.bool_(False)).check_finite is False


# --------------------------------------------------------------------------- proposals


@pytest.mark.parametrize("q, match", [
    (np.array([NAN, 0.5, 0.5]), r"q must be finite, got nan at index \(0,\)"),
    (np.array([-0.5, 1.0, 0.5]), r"q must be non-negative, got q\[0\] = -0.5"),
    (np.zeros(3), r"q must have positive mass"),
    (np.ones((2, 2)), r"q must have 1 dimension"),
])
def test_fixed_proposal_checks_its_table_at_construction(q, match):
    with pytest.raises(ValueError, match=match):
        carv_torch.FixedProposal(q)


def test_fixed_proposal_of_a_valid_table_is_unchanged():
    q = np.array([0.25, 0.5, 0.25])
    assert np.array_equal(carv_torch.FixedProposal(q).pmf(np.full(3, 1 / 3), np.ones(3)), q)


def test_online_proposal_checks_n_bins():
    with pytest.raises(ValueError, match=r"n_bins must be >= 1, got 0"):
        carv_torch.OnlineProposal(n_bins=0)
    with pytest.raises(TypeError, match=r"n_bins must be an integer"):
        carv_torch.OnlineProposal(n_bins=2.5)
    assert carv_torch.OnlineProposal(n_bins=np.int64(4)).pmf(np.full(8, 1 / 8), np.ones(8)).shape == (8,)


# --------------------------------------------------------------------------- meta tensors, devices


@pytest.mark.parametrize("which", ["t", "sq_norm"])
def test_adaptive_update_names_a_meta_argument(which):
    ap = carv_torch.AdaptiveProposal(P4, n_bins=2, decay=0.5, delta=0.1)
    before = ap.state_dict()
    args = {"t": torch.tensor([0, 3]), "sq_norm": torch.tensor([1.0, 9.0], dtype=DT)}
    args[which] = args[which].to("meta")
    with pytest.raises(ValueError, match=rf"^{which} is on meta .*host-side maths and needs real values"):
        ap.update(**args)
    assert np.array_equal(ap.state_dict()["second_moment"], before["second_moment"])


def test_online_proposal_update_names_a_meta_argument():
    prop = carv_torch.OnlineProposal(n_bins=2)
    prop.pmf(np.full(4, 0.25), np.ones(4))
    with pytest.raises(ValueError, match=r"^sq_norm is on meta"):
        prop.update(torch.tensor([0, 3]), torch.ones(2, dtype=DT).to("meta"))


def test_breakpoint_sampler_and_pmf_name_a_meta_argument():
    with pytest.raises(ValueError, match=r"^weights is on meta"):
        carv_torch.BreakpointSampler(torch.tensor([0.0, 0.5, 0.5, 1.0], dtype=DT), torch.ones(3, dtype=DT).to("meta"))
    with pytest.raises(ValueError, match=r"^p is on meta"):
        carv_torch.pmf(P4.to("meta"))
    with pytest.raises(ValueError, match=r"^p is on meta"):
        carv_torch.pmf(P4.float().to("meta"))


class _User:
    design = "iid"

    def transform(self, u):
        import carv_core
        u = np.asarray(u)
        return carv_core.TimestepDraw(np.minimum((u * 4).astype(np.int64), 3), np.ones(u.shape))


@pytest.mark.parametrize("make", [
    lambda: carv_torch.BreakpointSampler([0.0, 0.5, 0.5, 1.0], [1.0, 9.0, 2.0], device="gpu0"),
    lambda: carv_torch.as_sampler(_User(), 4, device="gpu0"),
    lambda: carv_torch.as_sampler(carv_torch.InverseCDFSampler(P4, P4), device="gpu0"),
    lambda: carv_torch.AdaptiveProposal(P4, 2, device="gpu0"),
    lambda: carv_torch.Welford(device="gpu0"),
    lambda: carv_torch.InverseCDFSampler(P4, P4).to("gpu0"),
])
def test_a_bogus_device_string_is_a_value_error_naming_device(make):
    with pytest.raises(ValueError, match=r"^device must be a torch.device.*got 'gpu0'"):
        make()


def test_a_device_of_the_wrong_type_is_still_a_type_error():
    with pytest.raises(TypeError, match=r"^device must be a torch.device"):
        carv_torch.Welford(device=1.5)


# --------------------------------------------------------------------------- resize


@pytest.mark.parametrize("size", [np.int64(8), (np.int64(8), np.int32(8)), [8, np.int16(8)]])
def test_resize_to_teacher_accepts_numpy_integers(size):
    rgb = torch.rand(2, 3, 4, 4, generator=gen(1), dtype=DT)
    assert torch.equal(carv_torch.resize_to_teacher(rgb, size), carv_torch.resize_to_teacher(rgb, 8))


@pytest.mark.parametrize("size", [0, (8,), True, 8.0, (8, np.int64(0))])
def test_resize_to_teacher_still_rejects_bad_sizes(size):
    with pytest.raises(ValueError, match="size must be a positive integer"):
        carv_torch.resize_to_teacher(torch.rand(2, 3, 4, 4), size)


def test_pi_bounds_are_in_radians():
    assert carv_torch.GridRenderer(2, 2, 2, fov=math.pi - 1e-3)(cams()).shape == (2, 3, 2, 2)
    assert torch.isfinite(carv_torch.random_cameras(3, max_elevation=math.pi / 2, generator=gen()).origins).all()
