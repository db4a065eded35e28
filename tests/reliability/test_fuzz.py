"""The fuzz catalogue of the public API (``fuzz_catalogue.py``): no hang, no silent, no obscure case.

design.md §4, *Contracts*: bad input raises ``ValueError``/``TypeError`` naming the argument, the
value received and what was expected; valid-but-unwise input warns; a failed call or load leaves
every piece of state as it was. ``fuzz_catalogue.py`` (the entry point of the package ``fuzz/``
beside it) runs several hundred calls of the public API on bad and edge input and classes each
outcome: clear / obscure / silent / hang / too-large / ok (defined in ``fuzz/classify.py``).

No case may be obscure, silent or hang. ``KNOWN`` lists the ``too-large`` cases (a prompt
``MemoryError`` for an output that the spec declares, from the arguments, to exceed the memory
limit: the honest answer to a request for tens of GiB), so that they stay visible. The test
checks that the non-clear cases are *exactly* ``KNOWN`` (same ids, same categories): a new
problem fails it, and so does a fix, until the fixed case is removed from ``KNOWN``. Regenerate the list with::

    OMP_NUM_THREADS=1 .venv/bin/python tests/reliability/fuzz_catalogue.py --known

The catalogue runs in a subprocess of its own, because it limits that process's address space
(``RLIMIT_AS``, 4 GiB: a case that needs more is ``hang``, or ``too-large`` when its requested
output itself is over the limit) and arms ``SIGALRM`` for its per-case time limit; it takes
about 10-20 s on one core.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

CATALOGUE = Path(__file__).resolve().parent / "fuzz_catalogue.py"
# The only category a KNOWN entry may have: obscure, silent and hang cases are not tolerated.
NON_CLEAR = ("too-large",)

# case id -> "category: what it did when it was listed". The category is checked; the text is a note.
KNOWN = {
    'core.draw_uniforms/R=huge': 'too-large: the requested output is 29.8 GiB, over the 4 GiB memory limit (MemoryError: Unable to allocate 7.45 GiB for...',
    'core.find_breakpoints/n_timesteps=huge': 'too-large: the requested output is 7.45 GiB, over the 4 GiB memory limit (MemoryError: Unable to allocate 7.45 GiB for...',
    'core.gaussian_noise/K=huge': 'too-large: the requested output is 22.4 GiB, over the 4 GiB memory limit (MemoryError: Unable to allocate 22.4 GiB for...',
    'core.make_betas/num_train_timesteps=huge': 'too-large: the requested output is 7.45 GiB, over the 4 GiB memory limit (MemoryError: Unable to allocate 7.45 GiB for...',
    'core.stratum_pmfs/B=huge': 'too-large: the requested output is 22.4 GiB, over the 4 GiB memory limit (MemoryError: Unable to allocate 7.45 GiB for...',
    'core.tabulate_density/n_bins=huge': 'too-large: the requested output is 14.9 GiB, over the 4 GiB memory limit (MemoryError: Unable to allocate 7.45 GiB for...',
    'core.uniform_timesteps/num_train_timesteps=huge': 'too-large: the requested output is 7.45 GiB, over the 4 GiB memory limit (MemoryError: Unable to allocate 7.45 GiB for...',
    'torch.draw_uniforms/R=huge': 'too-large: the requested output is 29.8 GiB, over the 4 GiB memory limit (MemoryError: Unable to allocate 7.45 GiB for...',
}


def _run_catalogue(tmp_path) -> dict:
    out = tmp_path / "fuzz.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(CATALOGUE), "--json", str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and out.exists(), (
        f"the fuzz catalogue did not finish (exit {proc.returncode}):\n"
        f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def test_fuzz_catalogue_non_clear_cases_are_exactly_the_known_ones(tmp_path):
    data = _run_catalogue(tmp_path)
    categories = data["categories"]
    assert len(categories) >= 700, f"the catalogue shrank to {len(categories)} cases"
    found = data["non_clear"]  # id -> "category: detail"
    new = {k: v for k, v in found.items() if k not in KNOWN}
    changed = {k: (KNOWN[k].split(":", 1)[0], v) for k, v in found.items()
               if k in KNOWN and v.split(":", 1)[0] != KNOWN[k].split(":", 1)[0]}
    fixed = {k: categories.get(k, "(no such case any more)") for k in KNOWN if k not in found}
    lines = []
    if new:
        lines.append(f"{len(new)} new non-clear case(s) (fix them, or add them to KNOWN with a reason):")
        lines += [f"  {k}: {v}" for k, v in sorted(new.items())]
    if changed:
        lines.append(f"{len(changed)} known case(s) changed category (update KNOWN):")
        lines += [f"  {k}: was {was}, now {now}" for k, (was, now) in sorted(changed.items())]
    if fixed:
        lines.append(f"{len(fixed)} known case(s) are fixed: remove them from KNOWN (the ratchet):")
        lines += [f"  {k}: now {v}" for k, v in sorted(fixed.items())]
    counts = ", ".join(f"{c} {n}" for c, n in data["counts"].items())
    assert not lines, f"fuzz catalogue ({counts}; {data['runtime_s']} s):\n" + "\n".join(lines)


def test_known_cases_name_a_non_clear_category():
    bad = {k: v for k, v in KNOWN.items() if v.split(":", 1)[0] not in NON_CLEAR}
    assert not bad, f"KNOWN entries must start with {'/'.join(NON_CLEAR)}: {bad}"
