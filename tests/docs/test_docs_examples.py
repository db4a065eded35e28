"""Every code example in the docs runs: fenced Python blocks in docs/ and the docstring examples of carv_core and carv_torch.

The ``python`` blocks of one page run in order, as one script, in a fresh
interpreter from the repository root. Put ``<!-- docs-test: skip -->`` on the
line before a block to leave it out (for code that needs a GPU, say).
"""

from __future__ import annotations

import doctest
import importlib
import pathlib
import pkgutil
import re
import subprocess
import sys

import pytest

import carv_core
import carv_torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SKIP_MARK = "<!-- docs-test: skip -->"
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                   re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[str]:
    blocks = []
    for match in FENCE.finditer(text):
        info = match["info"].strip().lower()
        if not (info == "python" or info.startswith(("python ", "py ", "{.python")) or info == "py"):
            continue
        before = text[:match.start()].rstrip().splitlines()
        if before and before[-1].strip() == SKIP_MARK:
            continue
        indent = len(match["indent"])
        blocks.append("\n".join(line[indent:] for line in match["body"].splitlines()))
    return blocks


PAGES = sorted(p for p in DOCS.rglob("*.md") if python_blocks(p.read_text()))


def test_extractor():
    text = "a\n```python\nx = 1\n```\n<!-- docs-test: skip -->\n```python\nboom()\n```\n```bash\nls\n```\n"
    assert python_blocks(text) == ["x = 1"]


def test_docs_have_examples():
    names = {p.relative_to(DOCS).as_posix() for p in PAGES}
    assert {"index.md", "guides/testing-a-sampler.md", "guides/choosing-k.md", "guides/text-to-3d.md",
            "guides/dmd.md", "guides/gpu.md", "guides/distributed.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(DOCS).as_posix())
def test_page_examples_run(page, tmp_path):
    script = "\n\n".join(python_blocks(page.read_text()))
    path = tmp_path / (page.stem + ".py")
    path.write_text(script)
    env = {"PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path), "PYTHONHASHSEED": "0"}
    proc = subprocess.run([sys.executable, str(path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"examples of {page.relative_to(ROOT)} failed:\n{proc.stdout}\n{proc.stderr}"


MODULES = sorted(
    m.name for package in (carv_core, carv_torch)
    for m in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + ".")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS,
                             verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed (see output)"
