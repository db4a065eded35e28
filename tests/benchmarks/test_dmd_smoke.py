"""Smoke test of the DMD benchmark, and exact checks of its p* (density, moments) and its variance bookkeeping."""

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("sklearn")

from benchmarks.dmd import mixture, study  # noqa: E402
from benchmarks.dmd.distill import Arm, sampler_for  # noqa: E402
from benchmarks.dmd.networks import OneStepGenerator, fake_teacher, make_scheduler, make_unet  # noqa: E402
from benchmarks.dmd.variance import measure_arms  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mix():
    return mixture.fit_mixture()


def test_log_prob_is_the_mixture_density(mix):
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    x, _ = mixture.sample(mix, 5, torch.Generator().manual_seed(0))
    lp, gamma = mixture.log_prob(mix, x)
    X = x.reshape(5, -1).double().numpy()
    w, mu, var = (a.numpy() for a in mix)
    comps = np.stack([np.log(w[m]) + multivariate_normal(mu[m], np.diag(var[m])).logpdf(X) for m in range(len(w))], 1)
    assert lp.numpy() == pytest.approx(logsumexp(comps, axis=1), rel=1e-10)
    assert gamma.sum(1).numpy() == pytest.approx(np.ones(5))


def test_samples_have_the_exact_mean(mix):
    x, comp = mixture.sample(mix, 20000, torch.Generator().manual_seed(1))
    mean, cov = mixture.mean_and_cov(mix)
    X = x.reshape(len(x), -1).double().numpy()
    se = np.sqrt(np.diag(cov) / len(X))
    assert np.all(np.abs(X.mean(0) - mean) < 5 * se)
    assert np.trace(np.cov(X.T)) == pytest.approx(np.trace(cov), rel=0.03)


def test_measure_arms_trace_cov_is_the_sample_variance(mix):
    sched = make_scheduler()
    abar = sched.alphas_cumprod.double()
    unet = make_unet()
    gen, real, fake = OneStepGenerator(unet, abar), mixture.real_teacher(mix, abar), fake_teacher(unet, sched)
    arms = [Arm("a", 2, 1), Arm("b", 2, 3, "stratified")]
    samplers = {a.name: sampler_for(a, 1000) for a in arms}
    rows = measure_arms(gen, real, fake, arms, samplers, reps=4, warmup=0, generator=torch.Generator().manual_seed(3))
    # The same draws by hand (same generator, same seeded arm order), then numpy's sample variance.
    from benchmarks.dmd.distill import generator_gradient

    g = torch.Generator().manual_seed(3)
    order = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=g)))
    grads = {a.name: [] for a in arms}
    for _ in range(4):
        for i in order.permutation(len(arms)):
            gen.zero_grad(set_to_none=True)
            generator_gradient(gen, real, fake, arms[i], samplers[arms[i].name], generator=g)
            grads[arms[i].name].append(torch.cat([p.grad.reshape(-1) for p in gen.parameters()]).double().numpy())
    for r in rows:
        G = np.stack(grads[r["name"]])
        assert r["trace_cov"] == pytest.approx(G.var(0, ddof=1).sum(), rel=1e-9)
        assert r["trace_cov_se"] > 0 and r["seconds"] > 0 and math.isfinite(r["x_trace_cov"])


def test_run_study_smoke(tmp_path):
    study.run_study("smoke", tmp_path, threads=1, docs=False, progress=False)
    saved = json.loads((tmp_path / "study.json").read_text())
    assert saved["size"] == "smoke" and set(saved["teachers"]) == {"exact", "unet"}
    for name, part in saved["teachers"].items():
        assert len(part["checkpoints"]) == (3 if name == "exact" else 2)   # unet: step 0 is G = 0, skipped
        for c in part["checkpoints"]:
            names = [a["name"] for a in c["arms"]]
            assert names[0] == "(8, 1) iid" and "(8, 16) stratified" in names
            assert c["arms"][0]["variance_ratio"] == 1.0
            assert all(a["variance_ratio"] > 0 and a["trace_cov"] > 0 for a in c["arms"])
            assert set(c["quality"]) >= {"mean_log_p", "mode_tv", "fid"}
        assert part["R_eq"] >= 9
        e2e = part["end_to_end"]
        base = [r for r in e2e["runs"] if r["arm"] == "(8, 1) iid"]
        assert len(base) == 2 and all(r["steps"] == 2 for r in base)
        costs = e2e["step_costs"]
        for r in e2e["runs"]:
            if "K" in r:        # K="auto": the baseline's compute in its own seconds
                assert r["train_seconds"] >= e2e["seconds_budget"] and len(r["K"]) == r["steps"]
                assert all(2 <= k <= 64 for k in r["K"])
                continue        # equal compute: steps x (interleaved) step cost = the baseline's 2 steps
            assert r["steps"] == e2e["steps"][r["arm"]] == max(1, round(2 * costs["(8, 1) iid"] / costs[r["arm"]]))
            assert r["curve"][-1]["seconds"] == pytest.approx(r["steps"] * costs[r["arm"]])
            lo, hi = r["final_ci"]["fid"]
            assert lo <= hi and "final_boot" not in r
        strat = e2e["summary"]["(8, 16) stratified"]["fid"]
        assert set(strat) >= {"mean", "boot_lo", "boot_hi", "diff", "diff_lo", "diff_hi"}
        assert len(e2e["predicted"]) == len(part["checkpoints"])
        assert set(e2e["measured"]["(8, 16) stratified"]) == {"mean_log_p", "mode_tv", "frechet", "sliced_w", "fid"}
    assert any("K" in r for r in saved["teachers"]["exact"]["end_to_end"]["runs"])
    assert set(saved["ablation"]) == {"1"} and saved["classifier"]["test_accuracy"] > 0.5
    page = study.write_page.__globals__["render_page"](saved)
    assert "variance ratio over (8, 1)" in page and "python -m benchmarks.dmd.study" in page
    assert "End to end: quality at equal compute" in page and "Ratio 1:" in page and "real score: trained UNet" in page
    from benchmarks.dmd.figures import write_figures

    paths = write_figures(saved, tmp_path / "figures")
    assert [p.name for p in paths] == ["dmd-variance_ratio.png", "dmd-quality_exact.png", "dmd-quality_unet.png",
                                       "dmd-ablation.png"] and all(p.stat().st_size > 1000 for p in paths)


def test_the_trained_real_score_starts_equal_to_the_fake(mix):
    """With the denoiser as both real and fake score, step 0's DMD gradient is exactly 0 (so no checkpoint there)."""
    from benchmarks.dmd.distill import generator_gradient
    from benchmarks.dmd.networks import frozen_teacher

    sched = make_scheduler()
    unet = make_unet()
    gen, real, fake = OneStepGenerator(unet, sched.alphas_cumprod.double()), frozen_teacher(unet, sched), \
        fake_teacher(unet, sched)
    assert not any(p.requires_grad for p in real.unet.parameters())
    arm = Arm("a", 3, 4, "stratified")
    est = generator_gradient(gen, real, fake, arm, sampler_for(arm, 1000), generator=torch.Generator().manual_seed(0))
    assert torch.count_nonzero(est.grad) == 0
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in gen.parameters())


def test_auto_k_arm_runs_the_guidance_and_reports_its_k(mix):
    from benchmarks.dmd.distill import DistillSettings, distill

    sched = make_scheduler()
    abar = sched.alphas_cumprod.double()
    unet = make_unet()
    gen, real, fake = OneStepGenerator(unet, abar), mixture.real_teacher(mix, abar), fake_teacher(unet, sched)
    run = distill(gen, real, fake, Arm("auto", 4, "auto", "stratified"), None,
                  settings=DistillSettings(fake_ratio=1, fake_batch=8), steps=14, seed=0)
    assert len(run["K"]) == 14 and run["K"][0] == 4          # k_init, until the first decision
    assert all(2 <= k <= 64 for k in run["K"])


def test_auto_k_records_the_librarys_diagnostic_from_its_probes(mix):
    """The recorded |G|^2 is the mean of the last probes' values; c_u has the fixed overhead taken out."""
    import carv_core
    from benchmarks.dmd.distill import AutoK

    sched = make_scheduler()
    abar = sched.alphas_cumprod.double()
    unet = make_unet()
    gen, real, fake = OneStepGenerator(unet, abar), mixture.real_teacher(mix, abar), fake_teacher(unet, sched)
    auto = AutoK(real, fake, gen, Arm("auto", 3, "auto", "stratified"), seed=0, probe_every=2, diagnose_every=6)
    g, probes = torch.Generator().manual_seed(1), []
    for _ in range(12):
        gen.zero_grad(set_to_none=True)
        auto.overheads.append(0.01)
        auto(gen, g)
        if auto.guidance.last.grad_sq_norm is not None:
            probes.append(float(auto.guidance.last.grad_sq_norm))
    assert len(probes) == 6 and [d["step"] for d in auto.diagnoses] == [6, 12]
    d = auto.diagnoses[-1]
    assert d["grad_sq_norm"] == pytest.approx(np.mean(probes[-4:]), rel=1e-12)       # window 4
    acc = auto.guidance.accountant
    assert d["overhead"] == 0.01 and d["c_u"] == pytest.approx(max(acc.c_u - 0.01 / 3, 1e-9))
    v1 = carv_core.predicted_variance(3, 1, d["sigma_b2"], d["sigma_w2"])
    assert d["noise_scale"] == pytest.approx(v1 / d["grad_sq_norm"] if d["grad_sq_norm"] > 0 else math.inf)


def test_bootstrap_replicates_are_the_metrics_of_resampled_samples(mix):
    """Replicate b of mean_log_p is the mean exact log p* over the b-th resample of the same generated samples."""
    from benchmarks.dmd.quality import QualityMeter

    class Fixed(torch.nn.Module):
        def forward(self, z):
            return mixture.sample(mix, z.shape[0], torch.Generator().manual_seed(5))[0]

    n, g = 200, torch.Generator().manual_seed(4)
    q = QualityMeter(mix, n)(Fixed(), g, boot=3)
    x = Fixed()(torch.zeros(n))
    lp, _ = mixture.log_prob(mix, x)
    # Replay the meter's draws: z, the reference sample, the projection seed, then the resamples.
    g2 = torch.Generator().manual_seed(4)
    torch.randn(n, 1, 8, 8, generator=g2)
    mixture.sample(mix, n, g2)
    torch.randint(0, 2**31 - 1, (1,), generator=g2)
    want = [float(lp[torch.randint(0, n, (n,), generator=g2)].mean()) for _ in range(3)]
    assert q["boot"]["mean_log_p"] == pytest.approx(want, rel=1e-12)
    assert q["mean_log_p"] == pytest.approx(float(lp.mean()), rel=1e-12)
    assert len(q["boot"]["sliced_w"]) == 3 and "fid" not in q



def test_frechet_of_diagonal_gaussians_is_the_closed_form():
    from benchmarks.dmd.quality import frechet

    a, b = np.array([0.5, 2.0, 1.0]), np.array([1.5, 0.5, 1.0])
    mu, mu_s = np.array([0.0, 1.0, -1.0]), np.array([0.5, 1.0, 0.0])
    want = ((mu - mu_s) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet(mu, np.diag(a), mu_s, np.diag(b)) == pytest.approx(want, rel=1e-10)
    assert frechet(mu, np.diag(a), mu, np.diag(a)) == pytest.approx(0.0, abs=1e-10)


def test_quality_of_p_star_itself_is_near_perfect(mix):
    from benchmarks.dmd.quality import quality

    class Exact(torch.nn.Module):   # a "generator" that returns exact p* samples
        def forward(self, z):
            return mixture.sample(mix, z.shape[0], torch.Generator().manual_seed(9))[0]

    q = quality(Exact(), mix, 4000, torch.Generator().manual_seed(2))
    assert abs(q["mean_log_p"] - q["p_star_mean_log_p"]) < 4 * q["mean_log_p_se"] * 2 ** 0.5
    assert q["mode_tv"] < 0.08 and q["frechet"] < 0.5


def test_paired_summary():
    from benchmarks.dmd.end_to_end import paired_summary

    def run(arm, seed, v):
        return {"arm": arm, "seed": seed, "curve": [{"mean_log_p": v, "mode_tv": 0.1, "frechet": 1.0, "sliced_w": 0.2}]}

    runs = [run("b", 0, 1.0), run("b", 1, 2.0), run("c", 0, 2.0), run("c", 1, 4.0)]
    s = paired_summary(runs, "b")
    assert s["b"]["mean_log_p"]["mean"] == 1.5 and "diff" not in s["b"]["mean_log_p"]
    d = s["c"]["mean_log_p"]          # differences 1 and 2: mean 1.5, sd 0.707, t(0.975, 1) = 12.706
    assert d["diff"] == 1.5 and d["diff_hi"] - d["diff"] == pytest.approx(12.706 * 0.7071 / 2 ** 0.5, rel=1e-3)


def test_speedups_of_a_twice_as_fast_arm():
    from benchmarks.dmd.end_to_end import speedups

    def curve(rate):   # frechet falls linearly from 10 at `rate` per second; mean_log_p flat
        return [{"seconds": s, "frechet": 10.0 - rate * s, "mean_log_p": 1.0} for s in range(0, 11, 2)]

    runs = [{"arm": a, "seed": s, "curve": curve(r)} for s in (0, 1) for a, r in (("b", 0.5), ("c", 1.0))]
    got = speedups(runs, "b", "c", "frechet")
    assert got["0.5"]["median"] == pytest.approx(2.0) and got["0.9"]["values"] == pytest.approx([2.0, 2.0])
    assert speedups(runs, "b", "c", "mean_log_p")["0.5"]["values"] == []   # no gain to reach
