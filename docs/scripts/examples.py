"""The docs' example runner: extract a page's Python blocks, run them, and show their output.

One runner for two users, so a page's printed output cannot go stale:

- ``tests/docs/test_docs_examples.py`` runs every page's blocks with :func:`run_page`
  and fails when a block raises;
- as a mkdocs hook (``hooks:`` in ``mkdocs.yml``), :func:`on_page_markdown` runs the
  same blocks at build time and inserts, after each block that printed something, an
  "Output" block with exactly what it printed.

The blocks of one page run in order, as one script, in a fresh interpreter from the
repository root; a sentinel line printed between blocks splits the output per block.
Put ``<!-- docs-test: skip -->`` on the line before a block to leave it out (code that
needs a GPU, say). Results are cached under ``.cache/docs-examples/`` keyed by the
script, the interpreter and the dependency versions, and kept only while every
repository file the run imported is unchanged, so a rebuild re-runs a page only when its
code or the code it calls changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys
from importlib import metadata
from typing import NamedTuple

ROOT = pathlib.Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "docs-examples"
SKIP_MARK = "<!-- docs-test: skip -->"
SENTINEL = "----- carv-docs-block-end -----"
DEPENDENCIES = ("numpy", "scipy", "torch", "diffusers", "transformers", "hypothesis", "matplotlib")
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                   re.MULTILINE | re.DOTALL)

__all__ = ["Block", "ExampleError", "python_blocks", "run_page", "with_outputs", "on_page_markdown"]


class Block(NamedTuple):
    """A runnable fenced block: its code (dedented) and where its fence ends in the page."""

    code: str
    end: int
    indent: str


class ExampleError(RuntimeError):
    """A page's examples exited with an error (the message holds stdout and stderr)."""


def _is_python(info: str) -> bool:
    info = info.strip().lower()
    return info in ("python", "py") or info.startswith(("python ", "py ", "{.python"))


def python_blocks(text: str) -> list[Block]:
    """The page's Python blocks in order, without those marked ``<!-- docs-test: skip -->``."""
    blocks = []
    for match in FENCE.finditer(text):
        if not _is_python(match["info"]):
            continue
        before = text[:match.start()].rstrip().splitlines()
        if before and before[-1].strip() == SKIP_MARK:
            continue
        n = len(match["indent"])
        code = "\n".join(line[n:] for line in match["body"].splitlines())
        blocks.append(Block(code, match.end(), match["indent"]))
    return blocks


_FILES_REPORT = f"""
import sys as _sys, pathlib as _pathlib
print({SENTINEL!r}, flush=True)
for _m in list(_sys.modules.values()):
    _f = getattr(_m, "__file__", None)
    _p = _pathlib.Path(_f).resolve() if _f else None
    if _p and _p.is_relative_to({str(ROOT)!r}) and not _p.is_relative_to(_sys.prefix):
        print(_p.relative_to({str(ROOT)!r}).as_posix())
"""


def _script(blocks: list[Block]) -> str:
    # Each block, then a sentinel line; at the end, the repository files the blocks imported.
    end = f"\nprint({SENTINEL!r}, flush=True)\n"
    return end.join(b.code for b in blocks) + end + _FILES_REPORT


def _key(script: str) -> str:
    h = hashlib.sha256(script.encode())
    h.update(sys.version.encode() + sys.executable.encode())
    for dist in DEPENDENCIES:
        try:
            h.update(f"{dist}=={metadata.version(dist)}".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{dist} absent".encode())
    return h.hexdigest()


def _sha(rel: str) -> str | None:
    path = ROOT / rel
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _cached(path: pathlib.Path) -> list[str] | None:
    """The stored outputs when every repository file the run imported is unchanged, else ``None``."""
    if not path.is_file():
        return None
    entry = json.loads(path.read_text())
    fresh = all(_sha(rel) == digest for rel, digest in entry["files"].items())
    return entry["outputs"] if fresh else None


def run_page(blocks: list[Block], *, tmp: pathlib.Path, timeout: float = 300,
             refresh: bool = False) -> list[str]:
    """Run ``blocks`` as one script; returns each block's stdout. Raises :class:`ExampleError` on failure.

    A stored result for the same script, interpreter and dependency versions is returned
    without running when none of the repository files that run imported has changed,
    unless ``refresh`` (the docs test runs with it: it always runs, then stores what it saw).
    """
    if not blocks:
        return []
    script = _script(blocks)
    hit = CACHE / f"{_key(script)}.json"
    if not refresh and (outputs := _cached(hit)) is not None:
        return outputs
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "page_examples.py"
    path.write_text(script)
    env = {"PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin", "HOME": str(tmp),
           "PYTHONHASHSEED": "0", "OMP_WAIT_POLICY": "PASSIVE"}
    if "OMP_NUM_THREADS" in os.environ:
        env["OMP_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"]
    proc = subprocess.run([sys.executable, str(path)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise ExampleError(f"exit {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    parts = proc.stdout.split(SENTINEL + "\n")
    if len(parts) != len(blocks) + 2:
        raise ExampleError(f"expected {len(blocks)} block outputs, got {len(parts) - 2}:\n{proc.stdout}")
    outputs = [p.rstrip("\n") for p in parts[:len(blocks)]]
    files = {rel: _sha(rel) for rel in sorted(set(parts[-1].split()))}
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp_hit = hit.with_suffix(f".{os.getpid()}.tmp")
    tmp_hit.write_text(json.dumps({"files": files, "outputs": outputs}))
    tmp_hit.replace(hit)
    return outputs


def with_outputs(text: str, blocks: list[Block], outputs: list[str]) -> str:
    """``text`` with an "Output" block after each block whose output is not empty."""
    pieces, last = [], 0
    for block, out in zip(blocks, outputs):
        pieces.append(text[last:block.end])
        last = block.end
        if out.strip():
            body = "\n".join(block.indent + line for line in out.splitlines())
            pieces.append(f'\n\n{block.indent}```text title="Output"\n{body}\n{block.indent}```')
    pieces.append(text[last:])
    return "".join(pieces)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """mkdocs hook: run the page's examples (cached) and insert their outputs."""
    blocks = python_blocks(markdown)
    if not blocks:
        return markdown
    try:
        outputs = run_page(blocks, tmp=CACHE / "tmp" / page.file.src_uri.replace("/", "_"))
    except ExampleError as e:
        raise RuntimeError(f"the examples of {page.file.src_uri} failed: {e}") from None
    return with_outputs(markdown, blocks, outputs)
