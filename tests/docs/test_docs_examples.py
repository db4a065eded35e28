"""Every code example in the docs runs: fenced Python blocks in docs/ and the docstring examples of carv_core and carv_torch.

The ``python`` blocks of one page run in order, as one script, in a fresh
interpreter from the repository root. Put ``<!-- docs-test: skip -->`` on the
line before a block to leave it out (for code that needs a GPU, say).
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pathlib
import pkgutil

import pytest

import carv_core
import carv_torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# The runner the docs build uses to show each block's output (docs/scripts/examples.py).
_spec = importlib.util.spec_from_file_location("docs_examples", DOCS / "scripts" / "examples.py")
examples = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(examples)

PAGES = sorted(p for p in DOCS.rglob("*.md") if examples.python_blocks(p.read_text()))


def test_extractor():
    text = "a\n```python\nx = 1\n```\n<!-- docs-test: skip -->\n```python\nboom()\n```\n```bash\nls\n```\n"
    assert [b.code for b in examples.python_blocks(text)] == ["x = 1"]


def test_outputs_follow_their_blocks(tmp_path):
    text = "intro\n```python\nprint('one')\n```\nmiddle\n```python\nx = 2\n```\n```python\nprint(x + 1)\n```\nend\n"
    blocks = examples.python_blocks(text)
    outputs = examples.run_page(blocks, tmp=tmp_path, refresh=True)
    assert outputs == ["one", "", "3"]          # per block; the second printed nothing
    page = examples.with_outputs(text, blocks, outputs)
    assert page == ("intro\n```python\nprint('one')\n```\n\n```text title=\"Output\"\none\n```\nmiddle\n"
                    "```python\nx = 2\n```\n```python\nprint(x + 1)\n```\n\n```text title=\"Output\"\n3\n```\nend\n")
    with pytest.raises(examples.ExampleError, match="ZeroDivisionError"):
        examples.run_page(examples.python_blocks("```python\n1 / 0\n```\n"), tmp=tmp_path, refresh=True)


def test_docs_have_examples():
    names = {p.relative_to(DOCS).as_posix() for p in PAGES}
    assert {"index.md", "guides/testing-a-sampler.md", "guides/choosing-k.md", "guides/text-to-3d.md",
            "guides/dmd.md", "guides/gpu.md", "guides/distributed.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(DOCS).as_posix())
def test_page_examples_run(page, tmp_path):
    """Each page's blocks run (always, not from the cache); what they print is what the site shows."""
    blocks = examples.python_blocks(page.read_text())
    try:
        outputs = examples.run_page(blocks, tmp=tmp_path, refresh=True)
    except examples.ExampleError as e:
        pytest.fail(f"examples of {page.relative_to(ROOT)} failed: {e}")
    assert len(outputs) == len(blocks)


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
