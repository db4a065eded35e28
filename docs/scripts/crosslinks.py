"""Cross-links between the maths pages and the API reference, generated from the maths pages' "*Code:*" lines.

A mkdocs hook (``hooks:`` in ``mkdocs.yml``). Each maths page opens with a
``*Code:*`` paragraph that links the modules implementing it, e.g.
``[`carv_core.allocation`](../api/allocation.md) (`cost`, `k_star`)``. At build time:

- on the maths page, each name in the parentheses after a module link becomes a link to
  that function's entry (``../api/allocation.md#carv_core.allocation.cost``) when the
  module has it; the strict build fails on a missing anchor, so a renamed function
  breaks the build instead of leaving a dead name;
- on each API page a maths page links to, a "Derivations" line under the title links
  back to every such maths page.

Nothing is typed twice: the back-links come from the forward links.
"""

from __future__ import annotations

import importlib
import pathlib
import posixpath
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
MATHS = DOCS / "maths"
CODE_PARAGRAPH = re.compile(r"^\*Code:\*.*?(?:\n\s*\n|\Z)", re.MULTILINE | re.DOTALL)
MODULE_LINK = re.compile(r"\[`(?P<module>[\w.]+)`\]\((?P<target>[^)#\s]+\.md)\)(?P<names>\s*\((?:`[\w.]+`[,\s]*"
                         r"(?:and\s+)?)+\))?")
NAME = re.compile(r"`(?P<name>[\w.]+)`")

__all__ = ["derivations", "link_names", "on_page_markdown"]


def _title(path: pathlib.Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return path.stem


def _anchor(dotted: str) -> str | None:
    """``dotted`` when it names an object defined in the module it is under (mkdocstrings' anchor), else ``None``.

    Modules themselves (page-level links) and re-exports (documented on the defining
    module's page) get no anchor.
    """
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        if cut == len(parts):
            return None
        top = obj
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return None
            obj = getattr(obj, attr)
        defined_in = getattr(getattr(top, parts[cut]), "__module__", None)
        return dotted if defined_in == top.__name__ else None
    return None


def link_names(markdown: str) -> str:
    """Turn the names after each module link of the "*Code:*" paragraph into links to their entries."""
    def one_paragraph(par: re.Match) -> str:
        def one_link(m: re.Match) -> str:
            own = _anchor(m["module"])
            head = f"[`{m['module']}`]({m['target']}{'#' + own if own else ''})"
            if not m["names"]:
                return head

            def one_name(n: re.Match) -> str:
                anchor = _anchor(f"{m['module']}.{n['name']}")
                return f"[`{n['name']}`]({m['target']}#{anchor})" if anchor else n[0]

            return head + NAME.sub(one_name, m["names"])

        return MODULE_LINK.sub(one_link, par[0])

    return CODE_PARAGRAPH.sub(one_paragraph, markdown)


def derivations() -> dict[str, list[tuple[str, str]]]:
    """``{api page (docs-relative): [(maths page (docs-relative), title), ...]}`` from the "*Code:*" lines."""
    out: dict[str, list[tuple[str, str]]] = {}
    for page in sorted(MATHS.glob("*.md")):
        src = page.relative_to(DOCS).as_posix()
        for par in CODE_PARAGRAPH.finditer(page.read_text()):
            for m in MODULE_LINK.finditer(par[0]):
                api = posixpath.normpath(posixpath.join(posixpath.dirname(src), m["target"]))
                entry = (src, _title(page))
                if entry not in out.setdefault(api, []):
                    out[api].append(entry)
    return out


def _backlinks(api_page: str, pages: list[tuple[str, str]]) -> str:
    here = posixpath.dirname(api_page)
    links = ", ".join(f"[{title}]({posixpath.relpath(src, here)})" for src, title in pages)
    return f"*Derivations:* {links}.\n"


def on_page_markdown(markdown: str, page, config, files) -> str:
    """mkdocs hook: function links on maths pages, back-links on API pages."""
    src = page.file.src_uri
    if src.startswith("maths/"):
        return link_names(markdown)
    pages = derivations().get(src)
    if not pages:
        return markdown
    lines = markdown.split("\n")
    at = next((i for i, line in enumerate(lines) if line.startswith("# ")), -1) + 1
    return "\n".join(lines[:at] + ["", _backlinks(src, pages)] + lines[at:])
