"""A failed guidance step loses nothing: injected faults leave the module as it was, and a retry
reproduces the run that never failed, bit for bit (design.md, "Failure-atomic").

Each scenario is a (config, fault) pair from ``fault_injection``: a real diffusers UNet teacher
whose third chunk raises (``RuntimeError``, an out-of-memory error, ``KeyboardInterrupt``),
a NaN output on one input (caught by the teacher's finiteness check), an interrupt between
the draw and the proposal's update, a failure while the accountant folds in a probe, while the
probe's VJPs run, or while a timing is recorded.
"""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fault_injection as fi  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = 4
_REFERENCE = {}


def reference(config):
    if config not in _REFERENCE:
        outs, final, faults, failures = fi.run(config, STEPS)
        assert not failures and not faults.fired
        _REFERENCE[config] = (outs, final, dict(faults.seen))
    return _REFERENCE[config]


# (config, site, occurrence, error): 3 chunks of 4 per call at R*K = 12, so chunk #2 is the
# third chunk of the first call and #5 the third of the second.
SCENARIOS = [
    ("fixed", "chunk", 2, "runtime"),
    ("fixed", "chunk", 5, "oom"),
    ("fixed", "chunk", 8, "interrupt"),
    ("fixed", "nan", 4, None),
    ("fixed", "interval", 1, "interrupt"),
    ("adaptive", "chunk", 2, "oom"),
    ("adaptive", "nan", 6, None),
    ("adaptive", "update", 1, "interrupt"),
    ("adaptive", "update", 2, "runtime"),
    ("weight-antithetic", "chunk", 7, "runtime"),
    ("weight-antithetic", "nan", 3, None),
    ("auto", "observe", 0, "interrupt"),
    ("auto", "vjp", 1, "runtime"),
    ("auto", "update", 2, "interrupt"),
    ("auto", "chunk", 6, "oom"),
    ("auto-single", "vjp", 1, "interrupt"),
    ("auto-single", "observe", 0, "runtime"),
    ("auto-single", "chunk", 1, "runtime"),
    ("cv", "update", 1, "interrupt"),
    ("cv", "chunk", 5, "oom"),
    ("cv-single", "update", 2, "runtime"),
]


@pytest.mark.parametrize("config,site,n,error", SCENARIOS,
                         ids=[f"{c}-{s}{n}-{e}" for c, s, n, e in SCENARIOS])
def test_a_failed_step_changes_nothing_and_its_retry_matches_the_fault_free_run(config, site, n, error):
    ref_outs, ref_final, seen = reference(config)
    assert seen[site] > n, f"the fault-free run reaches {site} only {seen[site]} times"
    outs, final, faults, failures = fi.run(config, STEPS, [(site, n, error or "runtime")])
    assert faults.fired == [(site, n)]
    assert len(failures) == 1
    step, kind, unchanged = failures[0]
    assert unchanged, f"the failed call at step {step} ({kind}) changed the module's state"
    assert fi.same_outputs(outs, ref_outs), "the retried run's draws or parameters differ"
    assert fi.unchanged(final, ref_final), "the retried run ends in another state"


def test_the_nan_fault_is_reported_with_its_timestep():
    g, theta = fi.build("fixed", fi.Faults([("nan", 0, None)]))
    with pytest.raises(FloatingPointError, match=r"at timesteps \[\d+\]"):
        g(theta * fi.images(0, 3))


def test_the_comparison_can_see_a_changed_state():
    # The check used above is not vacuous: one consumed random number is a different state.
    g, _ = fi.build("adaptive", fi.Faults())
    before = fi.state(g)
    torch.rand(1, generator=g.generator)
    assert not fi.unchanged(before, fi.state(g))
    g2, theta = fi.build("adaptive", fi.Faults())
    before = fi.state(g2)
    g2(theta * fi.images(0, 3))
    assert not fi.unchanged(before, fi.state(g2))


fault_lists = st.lists(
    st.tuples(st.sampled_from(fi.SITES), st.integers(0, 15), st.sampled_from(sorted(fi.ERRORS))),
    max_size=3, unique_by=lambda f: f[:2])


@settings(max_examples=12)
@given(config=st.sampled_from(sorted(fi.CONFIGS)), faults=fault_lists)
def test_any_faults_then_retries_end_where_the_fault_free_run_does(config, faults):
    ref_outs, ref_final, _ = reference(config)
    outs, final, f, failures = fi.run(config, STEPS, faults, check_unchanged=True)
    # Faults at one call fail it once (a NaN and a chunk error in one forward: one failure).
    assert bool(failures) == bool(f.fired) and len(failures) <= len(f.fired)
    assert all(u for _, _, u in failures)
    assert fi.same_outputs(outs, ref_outs)
    assert fi.unchanged(final, ref_final)
