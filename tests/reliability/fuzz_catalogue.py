r"""Fuzz catalogue of the public API on bad and edge input (design.md §4, *Contracts*).

Each case is one call of a public function, class or method of ``carv_core.__all__`` /
``carv_torch.__all__`` (and the fields of ``GuidanceConfig``, the calls and checkpoints of
``CARVGuidance``, the state loads of ``Welford``/``AdaptiveProposal``/``Accountant``) with one
argument mutated from a valid base call: NaN, +-inf, negative, zero, huge (1e308; 10**9 for
sizes), bool, numpy scalar, string, None, wrong shape/length, empty, wrong dtype, another device
(``meta`` tensors), mismatched pairs. Cases are generated from small per-function specs (a valid
base call plus per-argument mutation lists), not written out one by one.

This file is the entry point; the catalogue is the package ``fuzz/`` beside it (its
``__init__`` lists the modules): what a case expects is in ``fuzz/cases.py``, the categories
(clear / obscure / silent / hang / too-large / ok) in ``fuzz/classify.py``, the limits in
``fuzz/limits.py``, the specs in ``fuzz/specs_core_*.py`` and ``fuzz/specs_torch_*.py``.

Run it::

    OMP_NUM_THREADS=1 .venv/bin/python tests/reliability/fuzz_catalogue.py --json OUT.json
    OMP_NUM_THREADS=1 .venv/bin/python tests/reliability/fuzz_catalogue.py --filter torch.sds --verbose
    OMP_NUM_THREADS=1 .venv/bin/python tests/reliability/fuzz_catalogue.py --known   # KNOWN dict for test_fuzz.py

The "before" measurement (the library at bfb9522, the catalogue of this checkout)::

    mkdir -p /tmp/carv-before && git -C /work/main archive bfb9522 | tar -x -C /tmp/carv-before
    cd /tmp && PYTHONPATH=/tmp/carv-before OMP_NUM_THREADS=1 /work/main/.venv/bin/python \
        /work/main/tests/reliability/fuzz_catalogue.py --json OUT.json --label before \
        --commit bfb95229580521fdfba9d3358520091aef499740

``run_catalogue()`` returns the list of :class:`Result` (case id, module, function, category, detail).
"""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # the fuzz package lies beside this file
    sys.path.insert(0, _HERE)

from fuzz.cases import Case, Result  # noqa: E402
from fuzz.classify import CATEGORIES, NON_CLEAR, run_case  # noqa: E402
from fuzz.cli import main  # noqa: E402
from fuzz.runner import build_catalogue, known_literal, run_catalogue, summarise  # noqa: E402

__all__ = ["CATEGORIES", "NON_CLEAR", "Case", "Result", "build_catalogue", "known_literal", "main",
           "run_case", "run_catalogue", "summarise"]

if __name__ == "__main__":
    sys.exit(main())
