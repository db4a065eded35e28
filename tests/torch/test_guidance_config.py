"""GuidanceConfig is validated when it is built: numpy scalars are numbers, bad fields are
errors naming the field (the error rows are in docs/bad-input.md's carv_torch table)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from carv_torch.guidance import CARVGuidance, GuidanceConfig  # noqa: E402
from carv_torch.teachers import GaussianMixtureTeacher  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ABAR = torch.linspace(0.99, 0.03, 50, dtype=torch.float64)


def test_numpy_scalars_are_accepted_and_become_python_numbers():
    cfg = GuidanceConfig(min_step_percent=np.float32(0.25), max_step_percent=np.float64(0.75),
                         K=np.int64(3), delta=np.float32(0.5), adaptive_bins=np.int32(5),
                         adaptive_decay=np.float16(0.5), fixed_costs=np.array([2.0, 1.0]),
                         guidance_scale=np.float32(1.0), seed=np.uint8(3), antithetic=np.bool_(False))
    assert type(cfg.min_step_percent) is float and type(cfg.K) is int and type(cfg.seed) is int
    assert cfg.fixed_costs == (2.0, 1.0) and cfg.antithetic is False and type(cfg.guidance_scale) is float
    # The case: np.float32 used to fail at the first forward ('not iterable').
    teacher = GaussianMixtureTeacher(torch.zeros(1, 12, dtype=torch.float64), 0.5, ABAR)
    g = CARVGuidance(teacher, cfg)
    out = g(torch.rand(2, 3, 2, 2, dtype=torch.float64))
    assert (out["min_step"], out["max_step"]) == (int(np.float32(0.25) * 50), 37)


def test_schedules_are_normalised_and_checked_at_every_step():
    cfg = GuidanceConfig(min_step_percent=(0.3, 0.02, np.int64(10)),
                         max_step_percent=[0, 0.98, 0.5, 10])
    assert cfg.min_step_percent == [0.0, 0.3, 0.02, 10.0]
    with pytest.raises(ValueError, match=r"at global step 10 they are 0.6 > 0.5"):
        GuidanceConfig(min_step_percent=[0, 0.02, 0.6, 10], max_step_percent=[0, 0.98, 0.5, 10])


def test_an_old_checkpoint_without_a_format_loads_with_a_warning():
    teacher = GaussianMixtureTeacher(torch.zeros(1, 12, dtype=torch.float64), 0.5, ABAR)
    g = CARVGuidance(teacher, GuidanceConfig(K=2))
    g(torch.rand(2, 3, 2, 2, dtype=torch.float64))
    sd = g.state_dict()
    del sd["_extra_state"]["format"], sd["_extra_state"]["T"]
    h = CARVGuidance(teacher, GuidanceConfig(K=2))
    with pytest.warns(UserWarning, match="without a format version"):
        h.load_state_dict(sd)
    assert h.calls == 1 and torch.equal(h.generator.get_state(), g.generator.get_state())
