"""The distributed guide's ``train.py`` runs on two real gloo ranks and does what the guide says.

The block titled ``train.py`` in ``docs/guides/distributed.md`` (it carries a
``docs-test: skip`` mark, so ``test_docs_examples`` leaves it to this file) is written to a
temporary module; its ``main(rank, world_size)`` runs on 2 local ranks
(:func:`carv_torch.local_ranks.run_local`, spawn, file store). Checked: both ranks took the
same K at every step and hold a bit-identical proposal q, their timesteps differ at every
step (different streams), and DDP left them with the same parameters. The ``slow`` test
launches the file as the guide says, with ``torchrun --standalone`` and as ``python train.py``.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

import numpy as np  # noqa: E402

from carv_torch.local_ranks import run_local  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "guides" / "distributed.md"
BLOCK = re.compile(r'^```python title="train\.py"\n(?P<body>.*?)^```[ \t]*$', re.MULTILINE | re.DOTALL)


def train_py() -> str:
    """The guide's ``train.py`` block (exactly one)."""
    blocks = BLOCK.findall(GUIDE.read_text())
    assert len(blocks) == 1, f"expected one train.py block in {GUIDE.name}, found {len(blocks)}"
    return blocks[0]


@pytest.fixture
def guide_module(tmp_path, monkeypatch):
    """The block as an importable module (the spawned ranks inherit sys.path)."""
    name = "carv_distributed_guide_train"
    (tmp_path / f"{name}.py").write_text(train_py())
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    module = __import__(name)
    yield module
    sys.modules.pop(name, None)


def test_the_train_block_is_left_to_this_test():
    text = GUIDE.read_text()
    before = text[:text.index('```python title="train.py"')].rstrip().splitlines()
    assert before[-1].strip() == "<!-- docs-test: skip -->"


def test_guide_runs_on_two_ranks(guide_module):
    logs = run_local(guide_module.main, 2, timeout=240)
    a, b = logs
    steps = len(a["K"])
    assert steps == 6 and len(b["K"]) == steps
    assert a["K"] == b["K"], "the ranks took different K"
    assert all(2 <= k <= 16 for k in a["K"])
    assert a["q"].dtype == np.float64 and np.array_equal(a["q"], b["q"]), "q differs across ranks"
    assert abs(a["q"].sum() - 1) < 1e-12
    for s in range(steps):  # different streams: no step draws the same timesteps on both ranks
        assert a["t"][s].shape == b["t"][s].shape == (guide_module.R, a["K"][s])
        assert not np.array_equal(a["t"][s], b["t"][s]), f"both ranks drew the same t at step {s}"
    assert np.array_equal(a["params"], b["params"]), "DDP left the ranks with different parameters"


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "python"])
def test_guide_script_launches(launcher, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(train_py())
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script)] if launcher == "torchrun" else [sys.executable, str(script)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = sorted(re.findall(r"^rank (\d): K per step (\[.*\])$", proc.stdout, re.MULTILINE))
    assert [r for r, _ in lines] == ["0", "1"], proc.stdout
    assert lines[0][1] == lines[1][1]
