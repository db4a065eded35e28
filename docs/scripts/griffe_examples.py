"""Griffe extension: render carv_core's docstrings cleanly in mkdocstrings.

1. Treat a Google-style ``Example:`` section like ``Examples:``.

Griffe only recognises the plural title as an examples section (rendered as
highlighted ``pycon`` code); a singular ``Example:`` becomes an admonition and
its ``>>>`` lines are then read as Markdown block quotes. carv_core's docstrings
use the singular, so the documentation renames the title when loading them.

2. Turn Sphinx roles (``:func:`~carv_core.sds_weight```) into inline code
(``sds_weight``); Markdown has no such roles and would print them verbatim.

The source files are untouched. Loaded by mkdocs.yml (mkdocstrings options).
"""

from __future__ import annotations

import re

import griffe

_EXAMPLE_TITLE = re.compile(r"^(\s*)Example:[ \t]*$", flags=re.MULTILINE)
_SPHINX_ROLE = re.compile(r":(?:func|mod|class|meth|attr|data|obj|exc):`(~?)([^`]+)`")


def _role_to_code(match: re.Match) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


class ExampleSections(griffe.Extension):
    """Rewrite section titles and Sphinx roles before the docstring is parsed."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:  # noqa: D102
        doc = obj.docstring
        if doc is not None:
            doc.value = _SPHINX_ROLE.sub(_role_to_code, _EXAMPLE_TITLE.sub(r"\1Examples:", doc.value))
