"""torch.distributed with real processes: ``gloo`` ranks on the CPU, spawned by
:func:`carv_torch.local_ranks.run_local` (file store, one thread per rank).

One spawn per world runs every scenario (:func:`ranks.suite_rank`; a spawn costs seconds of
imports per rank) and a second spawn of fresh ranks resumes from the first one's checkpoints;
the tests below check the recorded results against references computed here, in this
process, without any process group. The 2-rank world (rows 3 and 2) runs in the default
suite; the 4-rank world (rows 3, 2, 4, 2) is marked ``slow`` (``pytest -m slow``).

What is compared, and how exactly:

- streams: bit for bit (a fresh ``torch.Generator`` seeded with ``rank_seed``);
- q, K, the accountant's components: bit for bit across ranks; the reduction of the
  components against this process's R-weighted mean of the per-rank probes, and the probes
  against a numpy recomputation from the draws, to 1e-12 (relative to the components' scale);
- gradients (row weights; the DDP loop): to 1e-12 relative, the difference being the order of
  float64 reductions (gloo's sum over ranks against one process's sum over rows);
- checkpoints: bit for bit (t, w, K, q, theta and the accountant's components).
"""

import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, os.path.dirname(__file__))  # ranks.py, importable by the spawned ranks too
import ranks  # noqa: E402
from carv_core import AdaptiveProposal, uniform_timesteps  # noqa: E402
from carv_core.world_designs import WorldStrata  # noqa: E402
from carv_torch.distributed import World, rank_seed, row_weight  # noqa: E402
from carv_torch.guidance import CARVGuidance, GuidanceConfig  # noqa: E402
from carv_torch.local_ranks import run_local  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

WORLDS = [pytest.param((3, 2), id="2-ranks"),
          pytest.param((3, 2, 4, 2), id="4-ranks", marks=pytest.mark.slow)]
TIMEOUT = 240.0


@pytest.fixture(scope="module", params=WORLDS)
def world(request, tmp_path_factory):
    """(rows, the suite's per-rank results, the resumed ranks' results)."""
    rows = request.param
    state = str(tmp_path_factory.mktemp(f"ckpt{len(rows)}"))
    first = run_local(ranks.suite_rank, len(rows), rows, state, timeout=TIMEOUT)
    resumed = run_local(ranks.resume_rank, len(rows), rows, state, timeout=TIMEOUT)
    return rows, first, resumed


def _close(a, b, scale, tol=1e-12):
    return abs(a - b) <= tol * scale


# ------------------------------------------------------------------ 1. streams


def test_rank_seed_is_distinct_over_seeds_ranks_and_calls():
    seeds = {rank_seed(seed, r, n) for seed in range(3) for r in range(8) for n in range(50)}
    assert len(seeds) == 3 * 8 * 50
    with pytest.raises(ValueError, match="rank"):
        rank_seed(0, -1, 0)


@pytest.mark.parametrize("case", ["streams", "streams_gathered"])
def test_streams_differ_across_ranks_at_every_call(world, case):
    rows, res, _ = world
    W = len(rows)
    for s in range(W):
        assert res[s][case]["world"] == (s, W)
    n_calls = len(res[0][case]["steps"])
    for n in range(n_calls):
        for s in range(W):
            for s2 in range(s + 1, W):
                a, b = res[s][case]["steps"][n], res[s2][case]["steps"][n]
                m = min(rows[s], rows[s2])  # compare the rows both ranks have
                assert not np.array_equal(a["t"][:m], b["t"][:m]), (n, s, s2)
                assert not np.array_equal(a["eps"][:m], b["eps"][:m]), (n, s, s2)
                assert not np.any(a["eps"][:m] == b["eps"][:m]), (n, s, s2)
            if n:  # and a rank never repeats its own stream
                assert not np.any(res[s][case]["steps"][n]["eps"] == res[s][case]["steps"][n - 1]["eps"])


@pytest.mark.parametrize("case,config", [("streams", "streams"), ("streams_gathered", "streams"),
                                         ("global_", "global")])
def test_a_ranks_stream_at_call_n_is_a_fresh_generator_seeded_with_rank_seed(world, case, config):
    """Recomputed here: uniforms of the sampler (``global``: this rank's WorldStrata share), then
    the noise, from ``torch.Generator().manual_seed(rank_seed(seed, rank, n))``."""
    rows, res, _ = world
    cfg = ranks.CONFIGS[config]
    base = CARVGuidance(ranks.mixture(), GuidanceConfig(**{**cfg, "distributed": "off"})).sampler()
    for s, R in enumerate(rows):
        sampler = base.with_design(WorldStrata(rows, s)) if cfg["sampler"] == "global" else base
        for n, rec in enumerate(res[s][case]["steps"]):
            gen = torch.Generator().manual_seed(rank_seed(cfg["seed"], s, n))
            draw = sampler(R, cfg["K"], gen)
            eps = torch.randn((R, cfg["K"], *ranks.SHAPE), generator=gen, dtype=ranks.DT)
            assert np.array_equal(rec["t"], draw.t.numpy()), (s, n)
            assert np.array_equal(rec["w"], draw.w.numpy()), (s, n)
            assert np.array_equal(rec["eps"], eps.numpy()), (s, n)


def test_gathered_row_counts_give_the_same_draws_as_given_ones(world):
    rows, res, _ = world
    for s in range(len(rows)):
        for a, b in zip(res[s]["streams"]["steps"], res[s]["streams_gathered"]["steps"]):
            assert all(np.array_equal(a[k], b[k]) for k in ("t", "w", "eps"))


def test_world_rows_that_disagree_with_the_input_raise_on_every_rank(world):
    rows, res, _ = world
    for s in range(len(rows)):
        assert res[s]["bad_world_rows"] == f"world_rows[{s}] = {rows[s] + 1} but this rank's rgb has {rows[s]} rows"


# ------------------------------------------------------------------ 3. one q, one K


def _alone(rows, steps):
    # Rank 0's scenario run alone: this process, no group (a World of one).
    return ranks.sync(0, (rows[0],), 1, steps=steps)


def test_q_and_K_are_identical_on_every_rank_at_every_step(world):
    rows, res, _ = world
    recs = [r["sync"] for r in res]
    steps = len(recs[0])
    decisions = 0
    for n in range(steps):
        for s in range(1, len(rows)):
            assert np.array_equal(recs[s][n]["q"], recs[0][n]["q"]), (n, s)  # bit for bit
            assert recs[s][n]["K"] == recs[0][n]["K"], (n, s)
            assert recs[s][n]["decision"] == recs[0][n]["decision"], (n, s)
        decisions += recs[0][n]["decision"] is not None
    assert decisions >= 2
    Ks = [r["K"] for r in recs[0]]
    assert len(set(Ks)) > 1, f"K never changed ({Ks}): the check of one K is vacuous"
    # ... and they are not what a rank gets alone (so this test can fail)
    alone = _alone(rows, steps)
    assert all(not np.array_equal(a["q"], r["q"]) for a, r in zip(alone, recs[0]))
    assert [a["K"] for a in alone] != Ks


def test_the_shared_q_is_the_proposal_fed_every_ranks_draws(world):
    """One adaptive proposal in this process, fed the concatenated (t, ||f||^2) of all ranks at
    every step, gives the ranks' q (to rounding: bin sums are added in another order)."""
    rows, res, _ = world
    cfg = GuidanceConfig(**ranks.CONFIGS["sync"])
    ap = AdaptiveProposal(uniform_timesteps(ranks.T, cfg.min_step_percent, cfg.max_step_percent),
                          n_bins=cfg.adaptive_bins, decay=cfg.adaptive_decay, delta=cfg.delta)
    for n in range(len(res[0]["sync"])):
        ap.update(np.concatenate([r["sync"][n]["t"].ravel() for r in res]),
                  np.concatenate([r["sync"][n]["sq_norm"].ravel() for r in res]))
        q, got = ap.proposal(), res[0]["sync"][n]["q"]
        assert np.max(np.abs(got - q)) <= 1e-12 * q.max(), n


# ------------------------------------------------------------------ 4. variance components


def _jt(img, v):
    # J_r^T v for x_r = theta * img_r, theta of shape (3, 1, 1): sum over the pixels per channel.
    return (img * v).sum(axis=(-2, -1))


def _split_half(values, img):
    # parameter_space_components, recomputed in numpy: split-half components of (1/R) sum_r J_r^T Ybar_r.
    R, K = values.shape[:2]
    h = K // 2
    a, b = values[:, :h].mean(1), values[:, h:2 * h].mean(1)
    v_a, v_b = _jt(img, a / R).sum(0), _jt(img, b / R).sum(0)
    u = _jt(img, (a + b) / 2)
    sw = 0.5 * R * h * np.sum((v_a - v_b) ** 2)
    s2 = np.sum((u - u.mean(0)) ** 2) / (R - 1)
    return s2 - sw / (2 * h), sw, s2 + sw


def _anova(values, img=None):
    # variance_components, recomputed in numpy (input space).
    R, K = values.shape[:2]
    Y = values.reshape(R, K, -1)
    rm = Y.mean(1)
    ms_w = np.sum((Y - rm[:, None]) ** 2) / (R * (K - 1))
    ms_b = K * np.sum((rm - rm.mean(0)) ** 2) / (R - 1)
    return (ms_b - ms_w) / K, ms_w, ms_b + ms_w


@pytest.mark.parametrize("case,local", [("sync", _split_half), ("input", _anova)])
def test_the_all_reduced_components_are_the_row_weighted_mean_of_the_ranks(world, case, local):
    """At every probe step each rank's own components (g.last.probe) match a numpy
    recomputation from its draws; every rank's accountant then holds (first probe: replaces;
    later: the EMA of) the R-weighted mean of them over the ranks."""
    rows, res, _ = world
    W, n_rows = len(rows), sum(rows)
    decay = CARVGuidance(ranks.mixture(), GuidanceConfig(**ranks.CONFIGS[case])).accountant.decay
    ema, probes = None, 0
    for n in range(len(res[0][case])):
        recs = [r[case][n] for r in res]
        for s in range(1, W):
            assert (recs[s]["sb"], recs[s]["sw"]) == (recs[0]["sb"], recs[0]["sw"])  # bit for bit
        if recs[0]["probe"] is None:
            assert all(r["probe"] is None for r in recs)
            continue
        probes += 1
        mine = [local(r["values"], r["img"]) for r in recs]
        for r, (sb, sw, scale) in zip(recs, mine):
            assert _close(r["probe"][0], sb, scale) and _close(r["probe"][1], sw, scale), (n, r["probe"], sb, sw)
        reduced = [sum(R * r["probe"][i] for R, r in zip(rows, recs)) / n_rows for i in (0, 1)]
        ema = reduced if ema is None else [decay * e + (1 - decay) * v for e, v in zip(ema, reduced)]
        scale = max(abs(v) for v in ema) + max(m[2] for m in mine)
        assert _close(recs[0]["sb"], ema[0], scale) and _close(recs[0]["sw"], ema[1], scale), (n, recs[0]["sb"], ema)
        if probes == 1:  # the first observation replaces: exactly the reduced components
            assert _close(recs[0]["sb"], reduced[0], scale) and _close(recs[0]["sw"], reduced[1], scale)
        dec = recs[0]["decision"]
        if dec is not None:  # decided from the reduced components and the ranks' mean costs
            assert dec[1:] == (*GuidanceConfig(**ranks.CONFIGS[case]).fixed_costs, recs[0]["sb"], recs[0]["sw"])
    assert probes >= 2


# ------------------------------------------------------------------ 5. row weights


def test_averaged_rank_gradients_are_the_gradient_of_the_pooled_mean(world):
    """As DDP does, (sum of the ranks' gradients) / W equals the gradient of the mean over all
    sum(rows) rows, computed here from every rank's g_r (estimate.grad) and renders."""
    rows, res, _ = world
    W, n_rows = len(rows), sum(rows)
    for n in range(len(res[0]["sync"])):
        recs = [r["sync"][n] for r in res]
        pooled = sum(_jt(r["img"], r["grad"]).sum(0) for r in recs)[:, None, None] / n_rows
        averaged = sum(r["grad_local"] for r in recs) / W
        scale = np.abs(pooled).max()
        np.testing.assert_allclose(averaged, pooled, rtol=0, atol=1e-12 * scale)
        for s, r in enumerate(recs):
            assert np.array_equal(r["grad_avg"], recs[0]["grad_avg"])  # what every rank steps on
            np.testing.assert_allclose(r["grad_avg"], pooled, rtol=0, atol=1e-12 * scale)
            # rank s's own gradient: its row weight W R_s / n times its local mean's gradient
            weight = row_weight(World(s, W), rows)
            assert weight == res[s]["weight"] == W * rows[s] / n_rows
            local = _jt(r["img"], r["grad"]).sum(0)[:, None, None] / rows[s]
            np.testing.assert_allclose(r["grad_local"], weight * local, rtol=0, atol=1e-12 * scale)


# ------------------------------------------------------------------ 6. a DDP training loop


def test_a_ddp_loop_gives_the_parameters_of_the_single_process_run(world):
    """DistributedDataParallel on the tiny renderer, the tiny UNet teacher, 3 SGD steps, against
    one process that redraws every rank's draws (rank_seed and the WorldStrata shares) and steps
    on the mean over all rows (ranks.ddp_reference; it ran on rank 0 after the DDP loop, with
    no collective). Same draws bit for bit; parameters to 1e-12 relative (reduction order)."""
    rows, res, _ = world
    ref = res[0]["ddp_reference"]
    for n, step in enumerate(ref):
        for s in range(len(rows)):
            assert np.array_equal(res[s]["ddp"][n]["t"], step["t"][s]), (n, s)
            assert np.array_equal(res[s]["ddp"][n]["theta"], res[0]["ddp"][n]["theta"])  # DDP keeps them equal
        np.testing.assert_allclose(res[0]["ddp"][n]["theta"], step["theta"], rtol=1e-12, atol=0)
    moved = np.abs(ref[-1]["theta"] - 0.8).max()
    assert moved > 1e-6, "the parameters did not move: the comparison is vacuous"


# ------------------------------------------------------------------ 7. checkpoints


def test_resuming_fresh_ranks_from_per_rank_checkpoints_continues_bit_identically(world):
    """Run A: 6 steps. Run B: 2 steps, state_dict (and theta) saved per rank; then fresh ranks
    (a new spawn) load them and run steps 2 and 3, which equal run A's bit for bit."""
    rows, res, resumed = world
    keys = ("t", "w", "q", "theta", "grad_avg", "values")
    for s in range(len(rows)):
        full, first, rest = res[s]["sync"], res[s]["ckpt_first"], resumed[s]
        assert len(first) == 2 and len(rest) == 2
        for a, b in zip(full[:4], first + rest):
            assert a["step"] == b["step"]
            assert all(np.array_equal(a[k], b[k]) for k in keys), (s, a["step"])
            assert (a["K"], a["sb"], a["sw"], a["probe"], a["decision"], a["probes"]) == \
                (b["K"], b["sb"], b["sw"], b["probe"], b["decision"], b["probes"]), (s, a["step"])


# ------------------------------------------------------------------ 8. distributed="off"


def test_distributed_off_under_a_group_is_a_single_process(world):
    """Every rank, given the same inputs, draws the same stream and keeps the same q as this
    process (no group) does: no per-rank seeds, no reduced statistics."""
    rows, res, _ = world
    here = ranks.off(0)
    assert here["world"] == (0, 1)
    for s in range(len(rows)):
        got = res[s]["off"]
        assert got["world"] == (0, 1) and got["calls"] == here["calls"]
        for a, b in zip(got["steps"], here["steps"]):
            assert all(np.array_equal(a[k], b[k]) for k in ("t", "w", "eps", "q", "values"))


# ------------------------------------------------------------------ uneven rows: a rank with one row


# A mix of single-row and multi-row ranks must not probe on some ranks only (the ranks would
# issue different collectives): the probe rule reads every rank's rows.
def test_a_rank_with_a_single_row_keeps_one_K_and_one_q():
    rows = (3, 1)
    res = run_local(ranks.one_row_rank, len(rows), rows, timeout=60.0)
    for n in range(len(res[0])):
        assert res[1][n]["K"] == res[0][n]["K"]
        assert np.array_equal([res[1][n]["sb"], res[1][n]["sw"]], [res[0][n]["sb"], res[0][n]["sw"]],
                              equal_nan=True)
        assert np.array_equal(res[1][n]["q"], res[0][n]["q"])
