"""The guidance hot path: host reads per step are counted, and K="auto" times the encoder.

Every tensor-to-host call (``item``, ``tolist``, ``__bool__``, ``__float__``,
``__int__``, ``__index__``, ``numpy``, ``cpu``) is intercepted during one
guidance step on the shipped latent teacher (a real diffusers UNet and VAE), so a
new sync anywhere in the step -- CARV or diffusers -- fails these tests. The
budget is the one documented in :mod:`carv_torch.guidance`.
"""

import time

import pytest

torch = pytest.importorskip("torch")

from benchmarks.text_to_3d.teacher import load_teacher, null_condition, teacher_condition  # noqa: E402
from carv_torch import CARVGuidance, GuidanceConfig, set_validate_args  # noqa: E402

READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu")


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return load_teacher()


class HostReads:
    """Counts tensor-to-host calls while active, with the calling line of each."""

    def __init__(self, monkeypatch):
        self.monkeypatch, self.calls, self.active = monkeypatch, [], False
        for name in READS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, original))

    def _wrap(self, name, original):
        def counted(tensor, *args, **kwargs):
            if self.active:
                import traceback
                self.calls.append((name, traceback.extract_stack(limit=3)[0]))
            return original(tensor, *args, **kwargs)
        return counted

    def count(self, fn):
        self.calls.clear()
        self.active = True
        try:
            fn()
        finally:
            self.active = False
        return len(self.calls)


def test_the_counter_sees_a_read(monkeypatch):
    reads = HostReads(monkeypatch)
    x = torch.ones(3)
    assert reads.count(lambda: float(x.sum())) == 1
    assert reads.count(lambda: bool(x.any()) and x.tolist()) == 2
    assert reads.count(lambda: x + 1) == 0


CASES = [
    # (config, reads with validation off, reads with validation on)
    (dict(K=4, proposal="uniform", sampler="iid"), 0, 3),
    (dict(K=8, proposal="weight", sampler="stratified"), 0, 3),
    (dict(K=4, proposal="adaptive", sampler="stratified"), 1, 4),
    (dict(K="auto", probe_every=1, k_init=4, fixed_costs=(10.0, 1.0)), 1, 4),
]


@pytest.mark.parametrize("settings,off,on", CASES)
@pytest.mark.parametrize("latent", [True, False])
def test_host_reads_per_guidance_step(teacher, monkeypatch, settings, off, on, latent):
    g = CARVGuidance(teacher, GuidanceConfig(guidance_scale=5.0, **settings))
    cond, unc = teacher_condition(0), null_condition()
    shape = (2, 4, 16, 16) if latent else (2, 3, 64, 64)
    x = torch.rand(shape).requires_grad_(True)

    def step():
        out = g(x, cond, unc, rgb_as_latents=latent, params=[x])
        assert torch.isfinite(out["loss_sds"].detach())  # read outside the counted call

    for validate, budget in ((False, off), (True, on)):
        with set_validate_args(validate):
            g(x, cond, unc, rgb_as_latents=latent, params=[x])  # warm caches (first p, q)
            reads = HostReads(monkeypatch)
            n = reads.count(lambda: g(x, cond, unc, rgb_as_latents=latent, params=[x]))
        assert n == budget, (validate, [(name, f"{f.filename}:{f.lineno}") for name, f in reads.calls])
        monkeypatch.undo()
    step()


def test_annealed_schedule_rebuilds_tables_only_when_a_bound_moves(teacher):
    # threestudio anneals max_step_percent; the p/q cache is keyed on the integer range.
    g = CARVGuidance(teacher, GuidanceConfig(K=2, proposal="weight",
                                             max_step_percent=[0, 0.98, 0.5, 1000]))
    x = torch.randn(1, 4, 16, 16)
    built = []
    for step in range(40):
        g.update_step(0, step)
        g(x, teacher_condition(0), null_condition(), rgb_as_latents=True)
        built.append(g._tables[1])  # kept alive, so ids are distinct objects
    # max step moves by 0.48 * 1000 / 1000 = 0.48 integer steps per global step.
    expected = len({min(int((0.98 - 0.48 * s / 1000) * 1000), 999) for s in range(40)})
    assert len({id(b) for b in built}) == expected < 40


def test_k_auto_upstream_cost_includes_the_encoder(teacher):
    """A slow encoder must show up in c_u: it is upstream work (render -> encode)."""
    sleep = 0.2

    def run(slow: bool) -> float:
        g = CARVGuidance(teacher, GuidanceConfig(K="auto", k_init=2, warmup=0, probe_every=1000))
        encode = teacher.encode
        if slow:
            def slow_encode(images, generator=None):
                time.sleep(sleep)
                return encode(images, generator)
            teacher.encode = slow_encode
        try:
            img = torch.rand(2, 3, 64, 64)
            for _ in range(4):
                g(img, teacher_condition(0), null_condition())
        finally:
            teacher.__dict__.pop("encode", None)
        return g.accountant.c_u

    fast, slow = run(False), run(True)
    # c_u is per upstream sample: the sleep adds at least sleep / R to every interval.
    assert slow >= sleep / 2
    assert slow - fast >= 0.8 * sleep / 2
