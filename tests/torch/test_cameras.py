"""Camera designs on tensors (carv_torch.cameras) against the numpy reference (carv_core.upstream)."""

import inspect
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import carv_core.upstream as core  # noqa: E402
from carv_core import IID, PermutedStrata, Sobol  # noqa: E402
from carv_torch import cameras  # noqa: E402
from carv_torch.renderers import orbit_cameras  # noqa: E402

SHARED = ["camera_uniforms", "sequence_uniforms", "sobol_sequence", "cameras_from_uniforms"]


@pytest.mark.parametrize("name", SHARED)
def test_signatures_match_the_core(name):
    c = list(inspect.signature(getattr(core, name)).parameters.values())
    t = list(inspect.signature(getattr(cameras, name)).parameters.values())
    rename = {"rng": "generator"}
    assert [(rename.get(p.name, p.name), p.kind, p.default) for p in c] == \
        [(p.name, p.kind, p.default) for p in t[:len(c)]]
    assert all(p.kind is p.KEYWORD_ONLY and p.name in ("device", "dtype") for p in t[len(c):])
    assert cameras.AntipodalPairs is core.AntipodalPairs


def test_stratified_and_antipodal_draws_on_the_device(device):
    g = torch.Generator(device=device).manual_seed(0)
    for _ in range(20):
        u = cameras.camera_uniforms((PermutedStrata(), IID()), 8, g)
        assert u.shape == (8, 2) and u.dtype == torch.float32 and u.device.type == device.type
        assert sorted(torch.floor(8 * u[:, 0]).long().tolist()) == list(range(8))
        v = cameras.camera_uniforms((cameras.AntipodalPairs(),), 2, g, dtype=torch.float64)[:, 0]
        assert abs(abs(float(v[1] - v[0])) - 0.5) < 1e-15


@pytest.mark.parametrize("designs", [(IID(),), (PermutedStrata(),), (cameras.AntipodalPairs(),), (Sobol(),)],
                         ids=lambda d: d[0].name)
def test_each_camera_is_marginally_uniform_statistically(designs):
    # 4000 steps of R = 2: per camera, counts of 4 azimuth cells within 5 standard errors of 1000.
    g = torch.Generator().manual_seed(1)
    u = torch.stack([cameras.camera_uniforms(designs, 2, g)[:, 0] for _ in range(4000)])
    for r in range(2):
        counts = torch.bincount(torch.floor(4 * u[:, r]).long(), minlength=4).double()
        assert bool((counts - 1000).abs().max() < 5 * math.sqrt(4000 * 0.25 * 0.75)), counts


def test_run_long_designs_equal_the_core_values(device):
    for s in range(6):
        t = cameras.sequence_uniforms((PermutedStrata(), "iid"), 2, s, 3, 5, device=device, dtype=torch.float64)
        np.testing.assert_array_equal(t.cpu().numpy(), core.sequence_uniforms((PermutedStrata(), "iid"), 2, s, 3, 5))
        q = cameras.sobol_sequence(3, 2, s, 9, device=device)
        assert q.dtype == torch.float32 and bool((q < 1).all())
        np.testing.assert_allclose(q.cpu().numpy(), core.sobol_sequence(3, 2, s, 9), rtol=1e-7, atol=1e-7)


def test_transform_matches_the_core_and_orbit_cameras_sit_where_the_parameters_say(device):
    u = torch.tensor([[0.1, 0.9, 0.5], [0.7, 0.2, 0.0]], dtype=torch.float64, device=device)
    low, high = (0.0, -0.3, 2.0), (2 * math.pi, 0.6, 3.0)
    xi = cameras.cameras_from_uniforms(u, low, high)
    np.testing.assert_allclose(xi.cpu().numpy(), core.cameras_from_uniforms(u.cpu().numpy(), low, high), rtol=1e-15)
    cams = cameras.orbit_from_parameters(xi)
    a, e, d = xi[:, 0], xi[:, 1], xi[:, 2]
    expected = d[:, None] * torch.stack([e.cos() * a.cos(), e.sin(), e.cos() * a.sin()], dim=1)
    torch.testing.assert_close(cams.origins, expected)
    # rotations do not depend on the distance; two columns use the fixed radius
    torch.testing.assert_close(cams.rotations, orbit_cameras(a, e, 1.0).rotations)
    fixed = cameras.orbit_from_parameters(xi[:, :2], radius=2.5)
    torch.testing.assert_close(fixed.origins.norm(dim=1), torch.full((2,), 2.5, dtype=xi.dtype, device=device))


def test_draw_cameras_follows_the_benchmark_law_ranges():
    lo, hi = -0.2, 0.7
    draw = cameras.draw_cameras((PermutedStrata(), "iid"), 4, (0.0, lo), (2 * math.pi, hi),
                                torch.Generator().manual_seed(3), radius=3.0)
    assert draw.uniforms.shape == draw.parameters.shape == (4, 2)
    assert bool((draw.parameters[:, 0] >= 0).all() and (draw.parameters[:, 0] < 2 * math.pi).all())
    assert bool((draw.parameters[:, 1] >= lo).all() and (draw.parameters[:, 1] <= hi).all())
    torch.testing.assert_close(draw.cameras.origins.norm(dim=1), torch.full((4,), 3.0))


@pytest.mark.parametrize("call,kind,words", [
    (lambda: cameras.cameras_from_uniforms(torch.tensor([[0.5]]), (1.0,), (0.0,)), ValueError, "high must be >= low"),
    (lambda: cameras.cameras_from_uniforms(torch.tensor([[0.5, 0.5]]), (0.0,), (1.0,)), ValueError, "(d,) = (2,)"),
    (lambda: cameras.cameras_from_uniforms(torch.tensor([[1.5]]), (0.0,), (1.0,)), ValueError, "[0, 1)"),
    (lambda: cameras.orbit_from_parameters(torch.zeros(2, 1)), ValueError, "azimuth, elevation"),
    (lambda: cameras.orbit_from_parameters(torch.tensor([[0.0, 0.0, -1.0]])), ValueError, "distance"),
    (lambda: cameras.cameras_from_uniforms(torch.tensor([[0.5]]), (-math.inf,), (1.0,)), ValueError,
     "low must be finite"),
    (lambda: cameras.camera_uniforms(("iid",), 2, np.random.default_rng(0)), TypeError, "generator"),
    (lambda: cameras.sequence_uniforms(("iid",), 2, 0, 1, torch.Generator()), TypeError, "seed must be"),
])
def test_bad_input_names_the_argument(call, kind, words):
    with pytest.raises(kind) as err:
        call()
    assert words in str(err.value)
