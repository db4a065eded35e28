"""What the kit proves, what it only checks, and the errors for protocol slips.

- Elementwise-ness is checked by perturbation (other entries of a batch change, the
  unchanged entries' outputs must not): a self-normalised weight is rejected.
- Monotonicity of an arbitrary float function cannot be proved: the report lists it
  in ``unproved`` and is not ``certified``; ``tabulate`` makes a sampler that is.
- Protocol slips (float t, a dict, a scalar-only transform, ...) get errors naming the rule.
"""

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pytest

from carv_core import (
    BreakpointSampler,
    InverseCDFSampler,
    MonotoneSampler,
    Sobol,
    TimestepDraw,
    inverse_cdf,
    tabulate,
    uniform_timesteps,
)
from carv_core.testing import check_elementwise, check_sampler, exact_law
from carv_core.testing.protocol import PROBE_SHAPES

T = 8
P = np.array([0.02, 0.18, 0.05, 0.15, 0.3, 0.05, 0.2, 0.05])
Q_UNIFORM = np.full(T, 1.0 / T)
TABLE = np.stack([np.arange(T) / T, np.cos(np.arange(T))])
CDF = np.cumsum(Q_UNIFORM)
W = P / Q_UNIFORM


class SelfNormalised:
    """w / w.mean() over the batch with q uniform: the case the old kit certified (9 % biased at K = 4 here)."""

    design = "stratified"

    def transform(self, u):
        t = inverse_cdf(CDF, u)
        w = W[t]
        return TimestepDraw(t, w / w.mean())


def _exact_expectation_self_normalised(K):
    # E[(1/K) sum_k w_k fbar(t_k) / mean(w)] by brute force over the K strata of two steps each.
    strata = [np.flatnonzero((np.arange(T) >= k * T // K) & (np.arange(T) < (k + 1) * T // K)) for k in range(K)]
    fbar = TABLE.mean(axis=0)
    total = 0.0
    for combo in itertools.product(*strata):
        t = np.array(combo)
        w = W[t] / W[t].mean()
        total += np.prod([1.0 / s.size for s in strata]) * float(np.mean(w * fbar[t]))
    return total


def test_self_normalised_weights_are_biased_and_rejected():
    # Independent check that the bug matters (K = 4 strata of two steps each)...
    biased = _exact_expectation_self_normalised(4)
    target = float(P @ TABLE.mean(axis=0))
    assert abs(biased - target) / abs(target) > 0.05
    # ... and that the kit refuses it instead of certifying it.
    with pytest.raises(ValueError, match="not elementwise"):
        check_sampler(SelfNormalised(), P, TABLE, R=1, K=4)


@dataclass(frozen=True)
class Batchy:
    """A family of transforms that look at other entries of the batch."""

    how: str
    design: str = "iid"

    def transform(self, u):
        u = np.asarray(u)
        t = np.minimum((u * T).astype(int), T - 1)
        if self.how == "row-normalised":  # normalises along the last axis only: fine in 1-D probes
            w = W[t] / W[t].mean(axis=-1, keepdims=True)
        elif self.how == "rank":
            w = np.argsort(np.argsort(u.ravel())).reshape(u.shape) + 1.0
        elif self.how == "cumulative":
            w = np.cumsum(W[t].ravel()).reshape(u.shape)
        elif self.how == "batch-size":
            w = W[t] * (u.size / 12.0)
        else:
            w = W[t] * (1.0 + 1e-12 * float(np.sum(u)))  # a tiny leak of the batch sum
        return TimestepDraw(t, w)


@pytest.mark.parametrize("how", ["row-normalised", "rank", "cumulative", "batch-size", "leak"])
def test_non_elementwise_transforms_rejected(how):
    with pytest.raises(ValueError, match="not elementwise"):
        check_elementwise(Batchy(how))
    with pytest.raises(ValueError, match="not elementwise"):
        exact_law(Batchy(how), 1, 4, T)


def test_elementwise_probes_cover_1d_and_2d_batches():
    assert any(len(s) == 1 for s in PROBE_SHAPES) and any(len(s) == 2 for s in PROBE_SHAPES)
    seen = []

    class Recorder:
        design = "iid"

        def transform(self, u):
            seen.append(np.shape(u))
            t = np.minimum((np.asarray(u) * T).astype(int), T - 1)
            return TimestepDraw(t, W[t])

    check_elementwise(Recorder())
    assert set(PROBE_SHAPES) <= set(seen) and (1,) in seen


def test_impure_transform_rejected():
    class Noisy:
        design = "iid"
        rng = np.random.default_rng(0)

        def transform(self, u):
            t = np.minimum((np.asarray(u) * T).astype(int), T - 1)
            return TimestepDraw(t, W[t] * self.rng.uniform(0.5, 1.5, np.shape(u)))

    with pytest.raises(ValueError, match="not pure"):
        check_sampler(Noisy(), P, TABLE)


# --- monotonicity: checked, not proved --------------------------------------------------------

LUT_SIZE = 2**20
LUT = np.minimum((np.arange(LUT_SIZE) + 0.5) / LUT_SIZE * T, T - 1).astype(np.int64)


@dataclass(frozen=True)
class LookupTable:
    """t = table[floor(u * M)]: an inverse CDF of the uniform q written as a lookup table."""

    table: np.ndarray
    design: str = "stratified"

    def transform(self, u):
        t = self.table[np.minimum((np.asarray(u) * LUT_SIZE).astype(np.int64), LUT_SIZE - 1)]
        return TimestepDraw(t, W[t])


def _lut_with_dip(entry):
    lut = LUT.copy()
    lut[entry] = 0  # one entry deep inside t = 5 jumps back to t = 0
    return lut


def test_lookup_table_with_a_hidden_non_monotone_entry_is_not_certified():
    # Entry 700001 of 2**20 (u in [0.66757, 0.66757 + 1e-6)) lies between every probe
    # of the kit: the transform is not monotone, and the kit cannot know.
    sampler = LookupTable(_lut_with_dip(700001))
    report = check_sampler(sampler, P, TABLE, R=2, K=4)
    assert report.unbiased and not report.certified
    (note,) = report.unproved
    assert "monotone in u: checked at" in note and "probes, not proved" in note
    assert "carv_core.tabulate(sampler, 8)" in note
    # Its breakpoint form is monotone by construction, so certified.
    tabulated = tabulate(sampler, T)
    assert isinstance(tabulated, BreakpointSampler) and isinstance(tabulated, MonotoneSampler)
    certified = check_sampler(tabulated, P, TABLE, R=2, K=4)
    assert certified.certified and certified.unproved == ()
    np.testing.assert_array_equal(certified.expectation, report.expectation)


def test_lookup_table_with_a_non_monotone_entry_on_a_probe_is_rejected():
    entry = int(np.floor(0.5 * LUT_SIZE))  # u = 0.5 is a probe
    with pytest.raises(ValueError, match="non-decreasing"):
        check_sampler(LookupTable(_lut_with_dip(entry)), P, TABLE)


def test_monotone_samplers_have_nothing_unproved():
    report = check_sampler(InverseCDFSampler(P, Q_UNIFORM, "stratified"), P, TABLE, K=4)
    assert report.certified and report.unproved == ()
    plain = check_sampler(LookupTable(LUT), P, TABLE, K=4)
    assert plain.unbiased and not plain.certified  # same law, but not monotone by construction


def test_weights_varying_inside_a_timestep_rejected():
    class Wobbly:
        design = "iid"

        def transform(self, u):
            u = np.asarray(u)
            t = np.minimum((u * T).astype(int), T - 1)
            return TimestepDraw(t, W[t] * (1.0 + 0.01 * (u * T - t > 0.9)))

    with pytest.raises(ValueError, match="function of t alone"):
        check_sampler(Wobbly(), P, TABLE)


# --- protocol slips: errors name the rule broken ----------------------------------------------

class FloatT:
    design = "iid"

    def transform(self, u):
        return TimestepDraw(np.asarray(u) * T, np.ones(np.shape(u)))


class DictOut:
    design = "iid"

    def transform(self, u):
        t = np.minimum((np.asarray(u) * T).astype(int), T - 1)
        return {"t": t, "w": W[t]}


class ScalarOnly:
    design = "iid"

    def transform(self, u):
        t = min(math.floor(u * T), T - 1)  # works for one float, not for an array
        return TimestepDraw(t, W[t])


class WrongShape:
    design = "iid"

    def transform(self, u):
        t = np.minimum((np.asarray(u) * T).astype(int), T - 1)
        return TimestepDraw(t.ravel()[:1], W[t].ravel()[:1])


class NoTransform:
    design = "iid"


class OutOfRange:
    design = "iid"

    def transform(self, u):
        t = (np.asarray(u) * (T + 2)).astype(int)
        return TimestepDraw(t, np.ones(np.shape(u)))


@pytest.mark.parametrize("sampler, exc, message", [
    (FloatT(), ValueError, "non-integer timestep"),
    (DictOut(), TypeError, "must return a TimestepDraw"),
    (ScalarOnly(), TypeError, "must be vectorised"),
    (WrongShape(), ValueError, "must be elementwise"),
    (NoTransform(), TypeError, "has no transform"),
    (OutOfRange(), ValueError, "outside"),
], ids=["float-t", "dict", "scalar-only", "wrong-shape", "no-transform", "out-of-range"])
def test_protocol_slips_are_named_through_check_sampler(sampler, exc, message):
    with pytest.raises(exc, match=message) as info:
        check_sampler(sampler, P, TABLE)
    assert type(sampler).__name__ in str(info.value) or message == "outside"


def test_non_affine_design_is_refused_with_advice():
    with pytest.raises(ValueError, match="not affine: cannot be enumerated exactly; check it statistically"):
        check_sampler(InverseCDFSampler(P, Q_UNIFORM, Sobol()), P, TABLE)


def test_unknown_design_name_is_refused():
    class Named:
        design = "lhs"

        def transform(self, u):
            return InverseCDFSampler(P, P).transform(u)

    with pytest.raises(ValueError, match="Named.design must be"):
        check_sampler(Named(), uniform_timesteps(T), TABLE)
