"""Two fuzz findings in carv_core: a string include_alpha was taken as True, a sampler without
a design failed with an AttributeError."""

import types

import numpy as np
import pytest

import carv_core


def test_sds_weight_needs_a_bool_include_alpha():
    s = carv_core.make_schedule("linear", 10, 1e-4, 0.02)
    with pytest.raises(TypeError, match="include_alpha must be a bool, got 'no'"):
        carv_core.sds_weight("sds", s, include_alpha="no")
    assert np.array_equal(carv_core.sds_weight("sds", s, include_alpha=np.bool_(False)),
                          carv_core.weighting("sds", s))


def test_tabulate_names_a_sampler_without_a_design():
    good = carv_core.InverseCDFSampler(carv_core.uniform_timesteps(4, 0, 1), carv_core.uniform_timesteps(4, 0, 1))
    with pytest.raises(TypeError, match="sampler must be a sampler with a design"):
        carv_core.tabulate(types.SimpleNamespace(transform=good.transform), 4)
