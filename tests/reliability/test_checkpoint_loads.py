"""A bad checkpoint changes nothing: ``load_state_dict`` validates the whole checkpoint first,
names the bad field, and leaves the module exactly as it was (it then runs on as if the load
had never been tried)."""

import copy

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from carv_torch.checkpoints import FORMAT  # noqa: E402
from carv_torch.guidance import CARVGuidance, GuidanceConfig  # noqa: E402
from carv_torch.teachers import DiffusersTeacher  # noqa: E402
from diffusers import DDPMScheduler  # noqa: E402

import fault_injection as fi  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def trained(config="auto", steps=3):
    """A module after a few steps (so every part of its state is non-trivial)."""
    g, theta = fi.build(config, fi.Faults())
    for step in range(steps):
        g.update_step(0, step)
        g(theta * fi.images(step, fi.ROWS.get(config, 3)), params=[theta])
    return g, theta


def edit(path, value):
    def apply(sd):
        node = sd["_extra_state"]
        for key in path[:-1]:
            node = node[key]
        if value is DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value(node[path[-1]]) if callable(value) else value
        return sd
    return apply


DELETE = object()
GEN = ("generator",)
ACC = ("accountant",)
PROP = ("proposal",)

BAD = {
    "truncated generator": (edit(GEN, lambda s: s[:100]), "generator"),
    "corrupt generator": (edit(GEN, lambda s: torch.zeros_like(s)), "generator"),
    "generator of another dtype": (edit(GEN, lambda s: s.to(torch.int64)), "generator"),
    "accountant K above the config's k_max": (edit(ACC + ("K",), 1000), "state['K']"),
    "accountant with other bounds": (edit(ACC + ("k_max",), 64), "k_max"),
    "negative measured cost": (edit(ACC + ("samples", "inner"), [-1.0]), "samples"),
    "nan measured cost": (edit(ACC + ("samples", "inner"), [float("nan")]), "samples"),
    "one variance component missing": (edit(ACC + ("sigma_w2",), float("nan")), "sigma"),
    "wrong-length adaptive counts": (edit(PROP + ("counts",), [0, 1]), "counts"),
    "adaptive decay of 1": (edit(PROP + ("decay",), 1.0), "decay"),
    "negative adaptive counts": (edit(PROP + ("counts",), lambda c: [-1] * len(c)), "counts"),
    "nan second moment": (edit(PROP + ("second_moment",), lambda m: [float("nan")] * len(m)),
                          "second_moment"),
    "missing accountant": (edit(ACC, DELETE), "accountant"),
    "future format": (edit(("format",), FORMAT + 1), "format"),
    "negative call counter": (edit(("calls",), -3), "calls"),
    "more probes than calls": (edit(("probes",), 10**6), "probes"),
    "another config": (edit(("config", "K"), 2), "K"),
    "an invalid config": (edit(("config", "delta"), 5.0), "delta"),
    "another T": (edit(("T",), 40), "T"),
    "non-finite probe window": (edit(("single_render", "within"), lambda w: [torch.tensor(float("nan"))]
                                     * len(w)), "single_render"),
}


def _run_once(g, theta, config, step=3):
    g.update_step(0, step)
    g(theta * fi.images(step, fi.ROWS.get(config, 3)), params=[theta])
    return g.last.estimate.t.clone(), fi.state(g, timings=False)


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_checkpoint_is_refused_naming_its_field_and_changes_nothing(name):
    change, field = BAD[name]
    config = "auto-single" if "probe window" in name else "auto"
    source, _ = trained(config)
    sd = change(copy.deepcopy(source.state_dict()))
    target, theta = trained(config)
    twin, twin_theta = trained(config)
    before = fi.state(target)
    with pytest.raises((ValueError, TypeError)) as info:
        target.load_state_dict(sd)
    assert field in str(info.value), f"{name}: the error does not name {field!r}: {info.value}"
    assert fi.unchanged(before, fi.state(target)), f"{name}: the failed load changed the module"
    t1, s1 = _run_once(target, theta, config)
    t2, s2 = _run_once(twin, twin_theta, config)
    assert torch.equal(t1, t2) and fi.unchanged(s1, s2)


def test_a_checkpoint_from_a_teacher_with_another_T_is_refused():
    # The real case, not an edited field: a module over a T = 40 teacher, same config.
    other = CARVGuidance(DiffusersTeacher(fi.FaultyUNet(fi.Faults()), DDPMScheduler(num_train_timesteps=40),
                                          max_batch_size=4),
                         GuidanceConfig(seed=7, max_batch_size=4, **fi.CONFIGS["weight-antithetic"]))
    g, _ = fi.build("weight-antithetic", fi.Faults())
    before = fi.state(g)
    with pytest.raises(ValueError, match=r"checkpoint\['T'\] = 40.*T = 50"):
        g.load_state_dict(other.state_dict())
    assert fi.unchanged(before, fi.state(g))


def test_a_good_checkpoint_still_loads_and_resumes_bit_identically():
    full, theta = trained("auto", steps=5)
    g, _ = trained("auto", steps=3)
    resumed, _ = fi.build("auto", fi.Faults())
    resumed.load_state_dict(g.state_dict())
    assert fi.unchanged(fi.state(resumed), fi.state(g))
    draws = []
    for step in (3, 4):
        resumed.update_step(0, step)
        resumed(theta * fi.images(step, 3), params=[theta])
        draws.append(resumed.last.estimate.t)
    a, b = fi.state(resumed, timings=False), fi.state(full, timings=False)
    # A resumed module cannot time the upstream work before its first call: one fewer count.
    assert b["accountant"]["seen"]["upstream"] - a["accountant"]["seen"]["upstream"] == 1
    a["accountant"]["seen"] = b["accountant"]["seen"] = None
    assert fi.unchanged(a, b)
    assert torch.equal(draws[-1], full.last.estimate.t)
