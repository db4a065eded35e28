"""Numbers the maths pages quote, recomputed independently so page and code cannot drift.

Each test parses the number from the page text, so an edit to either side that breaks
the claim fails here.
"""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest

import carv_core as cc

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"


def page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def quoted(text: str, pattern: str) -> float:
    found = re.findall(pattern, text)
    assert len(found) == 1, f"expected one match of {pattern!r}, found {found}"
    return float(found[0])


# --------------------------------------------------------------------------- 1. the alpha ratio

def sd_alphas_cumprod() -> np.ndarray:
    """SD's schedule as diffusers builds it (scaled_linear, 0.00085..0.012, T = 1000)."""
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                                    beta_start=0.00085, beta_end=0.012)
    return sched.alphas_cumprod.double().numpy()


def threestudio_steps(T: int = 1000) -> np.ndarray:
    # threestudio: min_step = int(T * 0.02), max_step = int(T * 0.98), t = randint(min, max + 1).
    return np.arange(int(T * 0.02), int(T * 0.98) + 1)


def test_alpha_ratio_on_the_sd_schedule_matches_the_notation_page():
    abar = sd_alphas_cumprod()
    t = threestudio_steps()
    w = 1.0 - abar[t]                                        # the `sds` weighting, p uniform on t
    ratio = float(np.mean(w * np.sqrt(abar[t])) / np.mean(w))

    # The library's own objects give the same number.
    schedule = cc.make_schedule("scaled_linear", 1000)
    p = cc.uniform_timesteps(1000)
    assert np.array_equal(np.flatnonzero(p), t)
    lib = float((p * cc.sds_weight("sds", schedule, include_alpha=True)).sum()
                / (p * cc.sds_weight("sds", schedule, include_alpha=False)).sum())
    assert lib == pytest.approx(ratio, rel=1e-6)

    text = page("maths/notation.md")
    q = quoted(text, r"\\mathbb E_p\[w\\alpha\]/\\mathbb E_p\[w\] = ([0-9.]+)")
    assert q == pytest.approx(round(ratio, 3), abs=5e-4)
    assert "0.00085" in text and "0.012" in text and "20..980" in text
    # The text-to-3D guide rounds the same number.
    assert quoted(page("guides/text-to-3d.md"), r"rescaled \(by about ([0-9.]+)") == round(ratio, 2)


# --------------------------------------------------------------------------- 2. the reuse bounds

def ecm_bound(rho: float, K: int, K0: int = 1) -> float:
    """Reuse ECM as c_d/c_u -> 0, from the library's own prediction (sigma_B^2 = 1)."""
    return cc.predict(1, K, c_u=1.0, c_d=1e-12, sigma_b2=1.0, sigma_w2=rho, R0=2, K0=K0).ecm


def test_reuse_bound_at_k8_matches_the_hierarchical_page():
    text = page("maths/hierarchical.md")
    paper = quoted(text, r"the paper's ([0-9.]+)× for reuse at\s+\\\(K = 8\\\)")
    K = 8
    rho_min = (paper - 1.0) / (1.0 - paper / K)              # solve (1 + rho)/(1 + rho/K) = paper
    assert ecm_bound(rho_min, K) == pytest.approx(paper, rel=1e-9)
    assert ecm_bound(0.99 * rho_min, K) < paper < ecm_bound(1.01 * rho_min, K)   # monotone: a bound

    rho_q = quoted(text, r"\\sigma_W\^2/\\sigma_B\^2 \\ge ([0-9.]+)\\\) in its SDS setting")
    share_q = quoted(text, r"\\rho/\(1\+\\rho\) \\ge ([0-9.]+)\\\)")
    assert rho_q <= rho_min < rho_q + 0.01                   # quoted as a valid, tight lower bound
    share = rho_min / (1.0 + rho_min)
    assert share_q <= share < share_q + 0.01

    # The looser ceiling-only bound the page contrasts it with.
    rho_ceiling = paper - 1.0
    assert cc.reuse_ceiling(1.0, rho_ceiling) == pytest.approx(paper)
    loose = re.search(r"gives only \\\(\\rho \\ge ([0-9.]+)\\\), share \\\(\\ge ([0-9.]+)\\\)", text)
    assert loose is not None
    assert float(loose.group(1)) == pytest.approx(rho_ceiling)
    assert float(loose.group(2)) == pytest.approx(rho_ceiling / (1 + rho_ceiling), abs=5e-3)
    assert float(loose.group(2)) < share_q


def test_reuse_ceiling_does_not_depend_on_r_under_the_linear_cost_model():
    # "Neither bound depends on R": the ECM of (R, K) against (R0, K0) is the same for R = 1, 2, 4.
    ecms = {R: cc.predict(R, 8, c_u=8.0, c_d=1.0, sigma_b2=1.0, sigma_w2=3.0).ecm for R in (1, 2, 4)}
    assert ecms[1] == pytest.approx(ecms[2]) == pytest.approx(ecms[4])
    assert "Neither bound depends on \\(R\\)" in page("maths/hierarchical.md")


# --------------------------------------------------------------------------- 3. the CFG convention

def test_cfg_threestudio_scale_is_carv_scale_minus_one_on_a_teacher():
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    from carv_torch.teachers import DiffusersTeacher
    from carv_torch.threestudio import CFG_CONVENTIONS, ThreestudioGuidance
    import carv_torch as ct

    torch.set_num_threads(1)
    dt = torch.float64
    torch.manual_seed(1)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
        norm_num_groups=8, cross_attention_dim=16, attention_head_dim=4).to(dt).eval()
    teacher = DiffusersTeacher(unet, diffusers.DDPMScheduler(num_train_timesteps=100))

    text = page("guides/threestudio.md")
    s_ts = quoted(text, r"threestudio's `guidance_scale: ([0-9.]+)`")
    s_page = quoted(text, r"reaches the teacher as \\\(s = ([0-9.]+)\\\)")
    assert set(CFG_CONVENTIONS) == {"threestudio", "carv"}

    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 8, 8, generator=g, dtype=dt)
    t = torch.tensor([7, 60])
    cond = torch.randn(2, 5, 16, generator=g, dtype=dt)
    unc = torch.randn(1, 5, 16, generator=g, dtype=dt)
    with torch.no_grad():
        e_y = unet(x, t, encoder_hidden_states=cond).sample
        e_0 = unet(x, t, encoder_hidden_states=unc.expand(2, 5, 16)).sample
    threestudio_eps = e_y + s_ts * (e_y - e_0)                # threestudio's SDS

    for convention, given in (("threestudio", s_ts), ("carv", s_ts + 1.0)):
        guidance = ThreestudioGuidance(teacher, ct.GuidanceConfig(K=1, seed=0),
                                       guidance_scale=given, cfg_convention=convention)
        s = guidance.teacher_guidance_scale
        assert s == s_page == s_ts + 1.0
        with torch.no_grad():
            carv_eps = teacher.predict_noise(x, t, cond, uncond=unc, guidance_scale=s)
        assert torch.allclose(carv_eps, e_0 + s * (e_y - e_0), rtol=1e-10, atol=1e-11)
        assert torch.allclose(carv_eps, threestudio_eps, rtol=1e-9, atol=1e-9)
    # Without the +1 the two conventions disagree: the test can fail.
    with torch.no_grad():
        wrong = teacher.predict_noise(x, t, cond, uncond=unc, guidance_scale=s_ts)
    assert not torch.allclose(wrong, threestudio_eps, rtol=1e-6, atol=1e-8)
