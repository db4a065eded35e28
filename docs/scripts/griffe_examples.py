"""Griffe extension: render carv_core's docstrings cleanly in mkdocstrings.

1. Treat a Google-style ``Example:`` section like ``Examples:``.

Griffe only recognises the plural title as an examples section (rendered as
highlighted ``pycon`` code); a singular ``Example:`` becomes an admonition and
its ``>>>`` lines are then read as Markdown block quotes. carv_core's docstrings
use the singular, so the documentation renames the title when loading them.

2. Turn Sphinx roles (``:func:`~carv_core.sds_weight```) into inline code
(``sds_weight``); Markdown has no such roles and would print them verbatim.

3. Split grouped entries (``R, K: ...`` or ``k_min, k_max, k_init: ...``) of an
``Args:``/``Attributes:`` section into one entry per name, each with the shared
description: griffe would otherwise read ``R, K`` as one name, or the names after
the first as a type, and the table would show one mis-parsed row.

4. Drop references to the project's internal design notes (``(design.md §4)``,
``of design.md §2.1``): the file is not part of the site, so a reader cannot follow
them. The docstrings themselves should lose them too; until then the rendered
page does not show them.

The source files are untouched. Loaded by mkdocs.yml (mkdocstrings options).
"""

from __future__ import annotations

import re

import griffe

_EXAMPLE_TITLE = re.compile(r"^(\s*)Example:[ \t]*$", flags=re.MULTILINE)
_SPHINX_ROLE = re.compile(r":(?:func|mod|class|meth|attr|data|obj|exc):`(~?)([^`]+)`")


_GROUP_SECTIONS = re.compile(r"^\s*(Args|Arguments|Parameters|Other Parameters|Attributes|Keyword Args):\s*$")
_GROUPED_ENTRY = re.compile(r"^(\s+)([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)+):(\s.*|)$")


_DESIGN_REF = re.compile(r"\s*\(design\.md(?:\s*§[\d.]+)?\)|\s+(?:of|in)\s+design\.md(?:\s*§[\d.]+)?")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def split_grouped_entries(text: str) -> str:
    """One docstring entry per name in the sections that list names (see 3. above)."""
    lines = text.split("\n")
    out: list[str] = []
    section_indent = None  # indent of the current Args/Attributes header, if inside one
    i = 0
    while i < len(lines):
        line = lines[i]
        if _GROUP_SECTIONS.match(line):
            section_indent = _indent(line)
            out.append(line)
            i += 1
            continue
        if section_indent is not None and line.strip() and _indent(line) <= section_indent:
            section_indent = None
        match = _GROUPED_ENTRY.match(line) if section_indent is not None else None
        if match is None or _indent(line) <= section_indent:
            out.append(line)
            i += 1
            continue
        indent, names, first = match.groups()
        body = [first]
        j = i + 1
        while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > len(indent)):
            body.append("\n" + lines[j])
            j += 1
        while body and not body[-1].strip():  # keep trailing blank lines outside the entry
            body.pop()
            j -= 1
        for name in (n.strip() for n in names.split(",")):
            out.append(f"{indent}{name}:{''.join(body)}")
        i = j
    return "\n".join(out)


def _role_to_code(match: re.Match) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


class ExampleSections(griffe.Extension):
    """Rewrite section titles and Sphinx roles before the docstring is parsed."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:  # noqa: D102
        doc = obj.docstring
        if doc is not None:
            value = _SPHINX_ROLE.sub(_role_to_code, _EXAMPLE_TITLE.sub(r"\1Examples:", doc.value))
            doc.value = split_grouped_entries(_DESIGN_REF.sub("", value))
