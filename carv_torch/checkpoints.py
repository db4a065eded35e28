r"""The checkpoint of a :class:`~carv_torch.guidance.CARVGuidance`: its format, and an all-or-nothing load.

A checkpoint (the module's ``get_extra_state()``, inside ``state_dict()``) holds

| field | what |
|---|---|
| ``format`` | :data:`FORMAT` (absent in the checkpoints written before it: read as format 0) |
| ``T`` | the objective's number of timesteps |
| ``config`` | the :class:`~carv_torch.guidance_config.GuidanceConfig` as a dict |
| ``calls``, ``probes``, ``global_step`` | counters |
| ``proposal`` | the proposal's state (e.g. the adaptive bins' $\hat m_b$ and counts) |
| ``single_render`` | the single-render probe's window |
| ``cycle`` | the accumulation cycle's row counts and held draws (:class:`~carv_torch.distributed.Cycle`) |
| ``accountant`` | $K$, the cost samples, the variance EMAs, the decisions |
| ``generator`` | the torch generator's state |

:func:`validated_state` checks *every* field into fresh objects — the config (same settings
as the module's but ``max_batch_size``), $T$, the counters, the proposal (loaded into a copy),
the probe window, the accountant (loaded into a fresh one with the config's settings, so a
checkpoint's $K = 1000$ cannot override a config's $K = 4$) and the generator state (set
on a fresh generator of the module's device, which checks its length) — and only then does
the module load them into its own objects (which keep their identity). A bad checkpoint raises ``ValueError``/``TypeError`` naming the
field (``checkpoint['accountant']: ...``) and leaves the module exactly as it was.
"""

from __future__ import annotations

import copy
import numbers
import warnings
from dataclasses import asdict
from typing import NamedTuple

import torch

from .accounting import Accountant
from .distributed import Cycle
from .guidance_config import GuidanceConfig
from .probes import SingleRenderProbe

__all__ = ["FORMAT", "GuidanceState", "accountant_for", "checkpoint", "validated_state"]

#: The checkpoint format written by this version (bumped when a field changes meaning).
FORMAT = 1

_FIELDS = ("config", "calls", "probes", "global_step", "proposal", "accountant", "generator")


class GuidanceState(NamedTuple):
    """A validated checkpoint: each part has loaded into a fresh twin of the module's object
    (same class and settings), so loading it into the module's own cannot fail."""

    calls: int
    probes: int
    global_step: int
    proposal: dict
    single_render: dict | None
    cycle: dict | None
    accountant: dict
    generator: torch.Tensor


def accountant_for(config: GuidanceConfig, device) -> Accountant:
    r"""The :class:`~carv_torch.accounting.Accountant` a config implies ($K$ fixed: $K_{\min} = K_{\max} = K$)."""
    auto = config.K == "auto"
    return Accountant(K=config.k_init if auto else config.K, k_min=config.k_min if auto else config.K,
                      k_max=config.k_max if auto else config.K, warmup=config.warmup, device=device,
                      fixed_costs=config.fixed_costs)


def checkpoint(guidance) -> dict:
    """The module's checkpoint (see the table above)."""
    return {
        "format": FORMAT,
        "T": guidance.T,
        "config": asdict(guidance.config),
        "calls": guidance.calls,
        "probes": guidance.probes,
        "global_step": guidance.global_step,
        "proposal": guidance.proposal.state_dict(),
        "single_render": guidance._single.state_dict(),
        "cycle": guidance._cycle.state_dict(),
        "accountant": guidance.accountant.state_dict(),
        "generator": guidance.generator.get_state().clone(),
    }


def _same(a, b) -> bool:
    try:
        return bool(a == b)
    except (TypeError, ValueError, RuntimeError):  # e.g. tensors or arrays inside a sampler
        return a is b or repr(a) == repr(b)


def _config(saved, current: GuidanceConfig) -> None:
    if not isinstance(saved, dict):
        raise TypeError(f"checkpoint['config'] must be a dict (asdict of a GuidanceConfig), got "
                        f"{type(saved).__name__}")
    try:
        saved = asdict(GuidanceConfig(**saved))  # normalised as the module's own was
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint['config'] is not a valid GuidanceConfig: {err}") from None
    mine = asdict(current)
    # Chunking does not change results; every other setting must match the checkpoint's.
    differ = sorted(k for k in mine if k != "max_batch_size" and not _same(saved[k], mine[k]))
    if differ:
        raise ValueError(
            "the checkpoint was written with another GuidanceConfig; differing fields: "
            + ", ".join(f"{k} (checkpoint {saved[k]!r}, now {mine[k]!r})" for k in differ))


def _counter(state: dict, key: str) -> int:
    v = state[key]
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
        raise ValueError(f"checkpoint[{key!r}] must be an integer >= 0, got {v!r}")
    return int(v)


def _part(key: str, load):
    # Run one component's own validating load, naming the checkpoint field on failure.
    try:
        return load()
    except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as err:
        kind = TypeError if isinstance(err, TypeError) else ValueError
        raise kind(f"checkpoint[{key!r}]: {err}") from None


def validated_state(guidance, state) -> GuidanceState:
    """Check a whole checkpoint against ``guidance`` into fresh objects; change nothing."""
    if not isinstance(state, dict):
        raise TypeError(f"checkpoint must be a dict from CARVGuidance.get_extra_state(), got "
                        f"{type(state).__name__}")
    state = copy.deepcopy(state)
    fmt = state.get("format", 0)
    if fmt not in (0, FORMAT):
        raise ValueError(f"checkpoint['format'] = {fmt!r}: this version reads formats 0 and {FORMAT}")
    missing = [k for k in _FIELDS + (("T",) if fmt else ()) if k not in state]
    if missing:
        raise ValueError(f"checkpoint is missing {', '.join(map(repr, missing))}")
    _config(state["config"], guidance.config)
    if fmt == 0:
        warnings.warn("a checkpoint without a format version (written before format 1): its T "
                      "cannot be checked against the objective's", UserWarning, stacklevel=4)
    elif state["T"] != guidance.T:
        raise ValueError(f"checkpoint['T'] = {state['T']!r}: it was written for a teacher with "
                         f"{state['T']} timesteps, this objective has T = {guidance.T}")
    calls, probes, step = (_counter(state, k) for k in ("calls", "probes", "global_step"))
    if probes > calls:
        raise ValueError(f"checkpoint['probes'] = {probes} exceeds checkpoint['calls'] = {calls}")
    prop_state = state["proposal"]
    if isinstance(prop_state, dict) and "p" in prop_state and len(prop_state["p"]) != guidance.T:
        raise ValueError(f"checkpoint['proposal']['p'] has {len(prop_state['p'])} entries: it was "
                         f"learnt for another teacher (this objective has T = {guidance.T})")
    proposal = copy.deepcopy(guidance.proposal)
    _part("proposal", lambda: proposal.load_state_dict(prop_state))
    single = SingleRenderProbe(order=guidance._single.order, spacing=guidance._single.spacing)
    if "single_render" in state:
        _part("single_render", lambda: single.load_state_dict(state["single_render"]))
    if "cycle" in state:
        _part("cycle", lambda: Cycle(guidance._cycle.steps).load_state_dict(state["cycle"]))
    accountant = accountant_for(guidance.config, guidance.device)
    _part("accountant", lambda: accountant.load_state_dict(state["accountant"]))
    gen = state["generator"]
    _part("generator", lambda: torch.Generator(device=guidance.device).set_state(gen))
    return GuidanceState(calls, probes, step, prop_state, state.get("single_render"),
                         state.get("cycle"), state["accountant"], gen)
