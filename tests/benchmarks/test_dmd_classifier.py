"""The DMD benchmark's classifier-feature FID: the classifier learns the digits, and the FID is the
Fréchet distance of its features (against numpy/scipy), stateless across calls, and ranks samples."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("torchmetrics")

from scipy import linalg  # noqa: E402

from benchmarks.digits import load_digits  # noqa: E402
from benchmarks.dmd import mixture  # noqa: E402
from benchmarks.dmd.classifier import (FEATURES, ClassifierFID, DigitClassifier, FeatureExtractor,  # noqa: E402
                                       train_classifier)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(one_thread):
    return train_classifier(seed=0)     # the default epochs: ~1-2 s on one core


@pytest.fixture(scope="module")
def mix():
    return mixture.fit_mixture()


@pytest.fixture(scope="module")
def ref(mix):
    return mixture.sample(mix, 2000, torch.Generator().manual_seed(10))[0]


@pytest.fixture(scope="module")
def fid(trained, ref):
    return ClassifierFID(trained[0], ref)


@pytest.fixture(scope="module")
def fresh(mix):
    return mixture.sample(mix, 1000, torch.Generator().manual_seed(11))[0]


def frechet_numpy(net, x, r):
    """The FID by hand: features from ``net.features``, float64 moments (np.cov, ddof=1), scipy's sqrtm."""
    with torch.no_grad():
        fx, fr = (net.features(a).double().numpy() for a in (x, r))
    # A unit that is zero on every image of both sets adds exactly 0 to every term; dropping it
    # keeps sqrtm away from a needlessly singular product.
    live = (fx != 0).any(0) | (fr != 0).any(0)
    fx, fr = fx[:, live], fr[:, live]
    cx, cr = np.cov(fx, rowvar=False, ddof=1), np.cov(fr, rowvar=False, ddof=1)
    root = linalg.sqrtm(cx @ cr)
    return float(((fx.mean(0) - fr.mean(0)) ** 2).sum() + np.trace(cx + cr) - 2 * np.trace(root).real)


def one_component(mix, m, n, generator):
    """``n`` samples of component ``m`` of p* alone: every image the same digit style (a dropped-modes model)."""
    z = torch.randn(n, mix.means.shape[1], generator=generator, dtype=torch.float64)
    return (mix.means[m] + mix.variances[m].sqrt() * z).float().reshape(n, 1, 8, 8)


# --- the classifier ------------------------------------------------------------------------------

def test_classifier_is_accurate_and_its_record_is_consistent(trained):
    net, rec = trained
    assert rec["test_accuracy"] >= 0.9          # chance is 0.1; ~0.98 in practice
    assert rec["train_accuracy"] >= rec["test_accuracy"] - 0.05
    assert rec["n_train"] + rec["n_test"] == 1797 and 0.15 < rec["n_test"] / 1797 < 0.25
    assert rec["epochs"] >= 1 and rec["features"] == FEATURES == net.num_features and rec["seconds"] > 0
    # Independently: the accuracy on all 1797 digits is the size-weighted mean of the two splits'.
    data = load_digits()
    with torch.no_grad():
        correct = int((net(data.images).argmax(1) == data.labels).sum())
    assert correct == round(rec["train_accuracy"] * rec["n_train"] + rec["test_accuracy"] * rec["n_test"])
    # Returned frozen, in eval mode.
    assert not net.training and not any(p.requires_grad for p in net.parameters())


def test_training_is_deterministic_and_leaves_global_state_alone():
    rng_before, threads_before = torch.get_rng_state(), torch.get_num_threads()
    a, rec_a = train_classifier(seed=3, epochs=1)
    b, _ = train_classifier(seed=3, epochs=1)
    c, _ = train_classifier(seed=4, epochs=1)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.get_num_threads() == threads_before
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["head.weight"], sc["head.weight"])
    assert rec_a["epochs"] == 1 and rec_a["test_accuracy"] > 0.5    # one epoch already learns a lot


def test_features_and_logits_shapes(trained):
    net, _ = trained
    x = torch.zeros(5, 1, 8, 8)
    assert net.features(x).shape == (5, FEATURES) and net(x).shape == (5, 10)
    assert bool((net.features(x) >= 0).all())    # ReLU features
    assert DigitClassifier(num_features=7).features(x).shape == (5, 7)


# --- the feature module and torchmetrics ---------------------------------------------------------

def test_feature_extractor_is_the_classifier_features(trained, fresh):
    net, _ = trained
    ext = FeatureExtractor(net)
    assert ext.num_features == FEATURES
    out = ext(fresh.double())                    # any float input is cast to float32
    assert out.dtype == torch.float32 and torch.equal(out, net.features(fresh))
    ext.train()
    assert not ext.training and not ext.classifier.training


def test_torchmetrics_passes_custom_model_inputs_untouched(trained, ref, fresh, fid):
    # normalize=True would scale images to uint8 for Inception; for a custom model it must do nothing.
    from torchmetrics.image.fid import FrechetInceptionDistance

    other = FrechetInceptionDistance(feature=FeatureExtractor(trained[0]), normalize=True)
    other.update(ref, real=True)
    other.update(fresh, real=False)
    assert float(other.compute()) == fid(fresh)


# --- the FID -------------------------------------------------------------------------------------

# Units dead on every p* sample but woken by noise make the reference covariance singular; scipy
# says so, and its sqrtm is still accurate here (the comparison below is the check).
@pytest.mark.filterwarnings("ignore:Matrix is singular:scipy.linalg.LinAlgWarning")
@pytest.mark.parametrize("case", ["fresh", "bootstrap", "real_digits", "half_noise", "small_n"])
def test_fid_matches_numpy_scipy(trained, ref, fresh, fid, case):
    g = torch.Generator().manual_seed(20)
    x = {"fresh": lambda: fresh,
         "bootstrap": lambda: fresh[torch.randint(0, len(fresh), (len(fresh),), generator=g)],
         "real_digits": lambda: load_digits().images,
         "half_noise": lambda: torch.cat([fresh[:500], torch.randn(500, 1, 8, 8, generator=g)]),
         "small_n": lambda: fresh[:50]}[case]()
    expected = frechet_numpy(trained[0], x, ref)
    assert expected > 0
    assert fid(x) == pytest.approx(expected, rel=1e-4)


def test_calls_do_not_leak_state(trained, ref, fid, mix):
    g = torch.Generator().manual_seed(30)
    a = mixture.sample(mix, 300, g)[0]
    b = torch.randn(700, 1, 8, 8, generator=g)
    first, middle, third = fid(a), fid(b), fid(a)
    assert first == third and middle != first
    assert ClassifierFID(trained[0], ref)(a) == first          # same as on a fresh metric
    assert fid.metric.real_features_num_samples == len(ref)    # the reference side is untouched


def test_reference_features_are_extracted_once(trained, ref):
    rows = []
    hook = trained[0].fc.register_forward_hook(lambda mod, inp, out: rows.append(out.shape[0]))
    try:
        f = ClassifierFID(trained[0], ref)
        assert rows == [len(ref)]
        for n in (10, 200, 10):
            f(ref[:n])
        assert rows == [len(ref), 10, 200, 10]           # each call extracts only its x
    finally:
        hook.remove()


def test_fid_ranks_samples(fid, fresh, mix):
    g = torch.Generator().manual_seed(40)
    noise = torch.randn(1000, 1, 8, 8, generator=g)
    near = fid(fresh)
    assert near < 0.1 * fid(noise)
    assert near < 0.1 * fid(one_component(mix, 0, 1000, g))
    # Replacing a growing fraction of p* samples by noise raises the FID monotonically.
    path = [fid(torch.cat([fresh[: 1000 - k], noise[:k]])) for k in (0, 100, 300, 600, 1000)]
    assert all(u < v for u, v in zip(path, path[1:]))
    # A model that covers fewer components is farther: 1 component vs 3 (same sample size).
    three = torch.cat([one_component(mix, m, 334, g) for m in (0, 1, 2)])[:1000]
    assert fid(three) < fid(one_component(mix, 0, 1000, g))


# --- bad inputs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("x, err, match", [
    (torch.zeros(10, 8, 8), ValueError, r"x must have shape \(n, 1, 8, 8\).*x\[:, None\]"),
    (torch.zeros(10, 64), ValueError, r"x must have shape.*reshape"),
    (torch.zeros(10, 1, 8, 9), ValueError, r"x must have shape.*\(10, 1, 8, 9\)"),
    (torch.zeros(10, 3, 8, 8), ValueError, r"x must have shape"),
    (torch.zeros(1, 1, 8, 8), ValueError, r"x must have shape.*n >= 2"),
    (torch.zeros(10, 1, 8, 8, dtype=torch.int64), TypeError, r"x must be a floating-point tensor"),
    (np.zeros((10, 1, 8, 8), np.float32), TypeError, r"x must be a torch.Tensor"),
    (torch.full((10, 1, 8, 8), float("nan")), ValueError, r"x has 640 non-finite"),
])
def test_bad_x_raises(fid, x, err, match):
    with pytest.raises(err, match=match):
        fid(x)


def test_bad_ref_and_classifier_raise(trained):
    with pytest.raises(ValueError, match=r"ref must have shape"):
        ClassifierFID(trained[0], torch.zeros(10, 64))
    with pytest.raises(ValueError, match=r"ref must have shape.*n >= 2"):
        ClassifierFID(trained[0], torch.zeros(1, 1, 8, 8))
    with pytest.raises(TypeError, match=r"classifier must be a DigitClassifier"):
        ClassifierFID(torch.nn.Linear(64, 10), torch.zeros(10, 1, 8, 8))


@pytest.mark.parametrize("kwargs, match", [
    ({"epochs": 0}, r"epochs must be an int >= 1, got 0"),
    ({"epochs": 2.5}, r"epochs must be an int >= 1, got 2.5"),
    ({"epochs": "3"}, r"epochs must be an int >= 1, got '3'"),
    ({"epochs": True}, r"epochs must be an int >= 1, got True"),
    ({"threads": 0}, r"threads must be an int >= 1"),
    ({"seed": -1}, r"seed must be an int >= 0"),
])
def test_bad_training_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_classifier(**kwargs)
