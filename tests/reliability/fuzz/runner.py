"""Building the catalogue from the spec modules, running it, and summarising the results."""

from __future__ import annotations

from collections import Counter, defaultdict

from . import (specs_core_allocation, specs_core_distributions, specs_core_estimator, specs_core_sampling,
               specs_torch_accounting, specs_torch_distributions, specs_torch_estimator, specs_torch_guidance,
               specs_torch_objectives, specs_torch_proposals, specs_torch_sampling, specs_torch_teachers,
               specs_torch_text_to_3d)
from .cases import Case, Catalogue, Result
from .classify import CATEGORIES, DEFAULT_TIMEOUT, NON_CLEAR, run_case
from .values import _short

# (module, section) in the order the cases run.
SECTIONS = (
    ("carv_core", specs_core_allocation.allocation_cases),
    ("carv_core", specs_core_distributions.distributions_cases),
    ("carv_core", specs_core_sampling.sampling_cases),
    ("carv_core", specs_core_estimator.estimator_cases),
    ("carv_torch", specs_torch_distributions.torch_distributions_cases),
    ("carv_torch", specs_torch_sampling.torch_sampling_cases),
    ("carv_torch", specs_torch_estimator.torch_estimator_cases),
    ("carv_torch", specs_torch_accounting.accounting_cases),
    ("carv_torch", specs_torch_teachers.teacher_cases),
    ("carv_torch", specs_torch_objectives.objective_cases),
    ("carv_torch", specs_torch_proposals.proposal_object_cases),
    ("carv_torch", specs_torch_text_to_3d.text_to_3d_cases),
    ("carv_torch", specs_torch_guidance.guidance_cases),
)


def build_catalogue(modules=("carv_core", "carv_torch")) -> list[Case]:
    """All cases (the torch ones only when torch imports)."""
    cat = Catalogue()
    for module, section in SECTIONS:
        if module not in modules:
            continue
        try:
            section(cat)
        except Exception as err:  # noqa: BLE001 - a spec that no longer builds is itself a finding
            def fail(ctx, err=err, section=section):
                raise RuntimeError(f"building the {section.__name__} specs failed: {err!r}") from err
            cat.add(module, section.__name__, "setup", fail, "ok",
                    note="the section's later cases are missing from this run")
    return cat.cases


def run_catalogue(cases: list[Case] | None = None, *, timeout: float = DEFAULT_TIMEOUT,
                  filter: str | None = None, verbose: bool = False) -> list[Result]:
    """Run every case (those whose id contains ``filter``) and return their :class:`Result`\\ s."""
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is part of the test environment
        pass
    if cases is None:
        cases = build_catalogue()
    results = []
    for case in cases:
        if filter and filter not in case.id:
            continue
        res = run_case(case, timeout)
        results.append(res)
        if verbose:
            print(f"{res.category:9s} {res.seconds:7.3f}s {res.id}: {res.detail}", flush=True)
    return results


def summarise(results: list[Result]) -> dict:
    counts = Counter(r.category for r in results)
    by_module: dict = defaultdict(Counter)
    by_func: dict = defaultdict(Counter)
    for r in results:
        by_module[r.module][r.category] += 1
        by_func[f"{r.module}.{r.func}"][r.category] += 1
    return {
        "total": len(results),
        "counts": {c: counts.get(c, 0) for c in CATEGORIES},
        "by_module": {m: {c: v.get(c, 0) for c in CATEGORIES} for m, v in sorted(by_module.items())},
        "by_function": {f: {c: v[c] for c in CATEGORIES if v[c]} for f, v in sorted(by_func.items())},
    }


def known_literal(results: list[Result]) -> str:
    """A ``KNOWN = {...}`` literal (category: detail) of the non-clear cases, for test_fuzz.py."""
    lines = ["KNOWN = {"]
    for r in sorted(results, key=lambda r: r.id):
        if r.category in NON_CLEAR:
            lines.append(f"    {r.id!r}: {(r.category + ': ' + _short(r.detail, 110))!r},")
    lines.append("}")
    return "\n".join(lines)
