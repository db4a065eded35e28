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
    assert saved["size"] == "smoke" and len(saved["checkpoints"]) == 3
    for c in saved["checkpoints"]:
        names = [a["name"] for a in c["arms"]]
        assert names[0] == "(8, 1) iid" and "(8, 16) stratified" in names
        assert c["arms"][0]["variance_ratio"] == 1.0
        assert all(a["variance_ratio"] > 0 and a["trace_cov"] > 0 for a in c["arms"])
        assert set(c["quality"]) >= {"mean_log_p", "mode_tv"}
    assert saved["R_eq"] >= 9
    page = study.write_page.__globals__["render_page"](saved)
    assert "variance ratio over (8, 1)" in page and "python -m benchmarks.dmd.study" in page
