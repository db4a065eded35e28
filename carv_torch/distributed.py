r"""Data-parallel runs: per-rank streams, one stratified draw across ranks, one $q$ and one $K$.

Under ``torch.distributed`` each rank runs its own :class:`~carv_torch.guidance.CARVGuidance`
on its own upstream samples, and DDP averages the parameter gradients. What the guidance
synchronises (:class:`World`, built from the default process group when one is initialised):

1. **Streams.** Rank $s$ draws call $n$'s $(u, \epsilon)$ from a generator seeded with
   :func:`rank_seed` $(\text{seed}, s, n)$: no two ranks and no two calls share a stream,
   and a resumed run needs only the call counter.
2. **Strata across ranks.** With the ``global`` design the world's $K\sum_s R_s$ draws are one
   stratified draw (:class:`carv_core.WorldStrata`); each rank draws its interleaved share
   with no communication beyond the row counts $R_s$ (gathered each call, one small
   collective, or passed as ``world_rows=``). Per-row designs stay per row.
3. **Row weights.** Rank $s$'s loss is scaled by $W R_s / \sum_{s'} R_{s'}$, so DDP's average of
   the ranks' gradients is the mean over *all* rows (it weights ranks by their row counts).
4. **One $q$.** The adaptive proposal's bin counts $n_b$ and sums $\sum \lVert f\rVert^2$
   ($2 \times$ ``n_bins`` numbers) are all-reduced; every rank folds the same sums into the
   same state, in float64, so $q$ is bit-identical on every rank; it is fixed before the
   next draw (unbiasedness is kept).
5. **One $K$.** At a probe call the variance components (weighted by $R_s$) and the costs are
   all-reduced (5 numbers) and every rank makes the same decision from the same numbers.
6. **Accumulation.** With ``accumulation_steps`` $A > 1$ the world's draws of a whole
   optimizer step ($A$ micro-steps on every rank) are one stratified draw (:class:`Cycle`:
   micro-step $a$ of rank $s$ is slot $aW + s$); $q$ and $K$ change only at a cycle's last
   micro-step, and probes take whole cycles.

Host reads per call on several ranks: one for the row counts (none with ``world_rows=``), one
for the adaptive proposal's reduced bins (at a cycle's end), one at a probe call; the
collectives move $W$ integers, $2\times$ ``n_bins`` and 5 float64 numbers.

Variance estimates: under per-row designs (``stratified``, ``iid``, ...) the rows on every
rank are i.i.d., so the within-rank ``variance`` and the row-weighted components are valid;
under strata across ranks a rank's rows are not i.i.d. (its strata are a comb) and its
``variance`` is not an estimate of anything: set ``strata_across_ranks=False`` (the
*replicated* mode: each rank runs its own full design, so ranks are i.i.d. replicates) when
the variance estimate matters more than the last bit of stratification.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from carv_core.world_designs import WorldStrata

__all__ = ["World", "current_world", "rank_seed", "all_reduce_sum", "gather_rows", "world_rows",
           "row_weight", "reduce_probe", "Cycle"]


class World(NamedTuple):
    """The process group a guidance synchronises over (``size = 1``: no synchronisation)."""

    rank: int = 0
    size: int = 1
    group: Any = None


def current_world(group=None) -> World:
    """The rank and size of ``group`` (default: the default group) when ``torch.distributed`` is
    initialised, else ``World(0, 1)``."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(group), dist.get_world_size(group), group)


def rank_seed(seed: int, rank: int, call: int) -> int:
    r"""The seed of rank ``rank``'s stream at call ``call``: a 64-bit hash of the triple
    (``numpy.random.SeedSequence``), so distinct triples give unrelated streams.

    Example:
        >>> rank_seed(0, 0, 0) != rank_seed(0, 1, 0) != rank_seed(0, 0, 1)
        True
    """
    for name, v in (("seed", seed), ("rank", rank), ("call", call)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
    state = np.random.SeedSequence([int(seed), int(rank), int(call)]).generate_state(2, np.uint32)
    return int(state[0]) << 32 | int(state[1])


def all_reduce_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Sum ``tensor`` over the world's ranks, in place (nothing to do for one rank)."""
    if world.size > 1:
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM, group=world.group)
    return tensor


def gather_rows(R: int, world: World, device) -> tuple[int, ...]:
    """Every rank's row count $R_s$, in rank order (one all-gather of one integer; one host read)."""
    if world.size == 1:
        return (int(R),)
    mine = torch.tensor([int(R)], dtype=torch.int64, device=device)
    out = [torch.zeros_like(mine) for _ in range(world.size)]
    torch.distributed.all_gather(out, mine, group=world.group)
    return tuple(torch.cat(out).tolist())


def world_rows(world: World, R: int, given, device) -> tuple[int, ...]:
    """The row counts of every rank: ``given`` (checked: one per rank, this rank's equal to ``R``)
    or gathered (:func:`gather_rows`)."""
    if given is None:
        return gather_rows(R, world, device)
    rows = tuple(given)
    if len(rows) != world.size or any(isinstance(c, bool) or not isinstance(c, (int, np.integer))
                                      or c < 1 for c in rows):
        raise ValueError(f"world_rows must hold one row count >= 1 per rank ({world.size}), got {given!r}")
    if rows[world.rank] != R:
        raise ValueError(f"world_rows[{world.rank}] = {rows[world.rank]} but this rank's rgb has {R} rows")
    return tuple(int(c) for c in rows)


def row_weight(world: World, rows) -> float:
    r"""$W R_s / \sum_{s'} R_{s'}$: the factor on rank $s$'s loss that makes DDP's average of the
    ranks' gradients the mean over all rows."""
    return world.size * rows[world.rank] / sum(rows)


def reduce_probe(sigma_b2, sigma_w2, R: int, costs, world: World):
    r"""The world's variance components (each rank's weighted by its $R_s$) and mean costs, from
    one all-reduce of 5 numbers and one host read: ``(sigma_b2, sigma_w2, (c_u, c_d))``."""
    dev = sigma_b2.device
    vec = torch.stack([sigma_b2.to(torch.float64) * R, sigma_w2.to(torch.float64) * R,
                       torch.tensor(float(R), dtype=torch.float64, device=dev),
                       *torch.tensor([float(c) for c in costs], dtype=torch.float64, device=dev)])
    sb, sw, rows, c_u, c_d = all_reduce_sum(vec, world).tolist()
    return sb / rows, sw / rows, (c_u / world.size, c_d / world.size)


class Cycle:
    r"""One optimizer step's draws: ``steps`` accumulation micro-steps on every rank.

    The world's draws of a whole cycle are one stratified draw (with the ``global`` design):
    micro-step $a$ of rank $s$ is slot $aW + s$ of :class:`carv_core.WorldStrata` over the
    counts of every slot, so every micro-step of a cycle needs the row counts fixed at its
    first micro-step (gathered there, or ``world_rows``). An adaptive $q$ must not change
    inside a cycle (each slot's strata alone are a comb: the union is unbiased only under one
    transform), so the draws' $t$ and $\lVert f\rVert^2$ are held (:attr:`t`, :attr:`sq_norm`) and
    folded into the proposal at the cycle's last micro-step; $K$ is re-chosen only there too.
    """

    def __init__(self, steps: int = 1):
        self.steps = steps
        self.rows: tuple[int, ...] | None = None
        self.t: tuple[torch.Tensor, ...] = ()
        self.sq_norm: tuple[torch.Tensor, ...] = ()

    def micro(self, calls: int) -> int:
        """The micro-step index $a$ of call ``calls``."""
        return calls % self.steps

    def rows_for(self, world: World, R: int, given, device, calls: int) -> tuple[int, ...]:
        """The row counts of this call's micro-step (checked against the cycle's)."""
        if self.micro(calls) == 0 or self.rows is None:
            return world_rows(world, R, given, device) if world.size > 1 else (int(R),)
        if self.rows[world.rank] != R:
            raise ValueError(f"rgb has {R} rows but this accumulation cycle's micro-steps have "
                             f"{self.rows[world.rank]}: with accumulation_steps > 1 every micro-step "
                             f"of a cycle needs the same rows")
        return self.rows

    def design(self, world: World, rows, calls: int) -> WorldStrata:
        """This rank's share of the cycle's one stratified draw."""
        return WorldStrata(tuple(rows) * self.steps, self.micro(calls) * world.size + world.rank)

    def state_dict(self) -> dict:
        return {"rows": None if self.rows is None else list(self.rows),
                "t": [t.detach().clone() for t in self.t],
                "sq_norm": [s.detach().clone() for s in self.sq_norm]}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output, validated first (nothing changes on an error)."""
        if not isinstance(state, dict) or set(state) != {"rows", "t", "sq_norm"}:
            raise ValueError("state must be a Cycle.state_dict() with keys rows, t, sq_norm")
        rows, t, sq = state["rows"], list(state["t"]), list(state["sq_norm"])
        if rows is not None and (not isinstance(rows, (list, tuple)) or not all(
                isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in rows)):
            raise ValueError(f"state['rows'] must be None or row counts >= 1, got {rows!r}")
        if len(t) != len(sq) or len(t) >= self.steps or not all(
                isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and not a.is_floating_point() and bool(torch.isfinite(b).all()) and bool((b >= 0).all())
                for a, b in zip(t, sq)):
            raise ValueError(f"state['t'] and state['sq_norm'] must be < {self.steps} pairs of equal-shape "
                             f"integer and finite non-negative tensors (the cycle's held draws)")
        self.rows = None if rows is None else tuple(rows)
        self.t, self.sq_norm = tuple(t), tuple(sq)
