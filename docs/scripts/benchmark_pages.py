"""Lay out the generated benchmark pages for reading: summary first, details collapsed.

A mkdocs hook (``hooks:`` in ``mkdocs.yml``). ``docs/benchmarks/text-to-3d.md`` is
written by ``python -m benchmarks.text_to_3d.study`` and is regenerated with every
study, so its layout is applied here, at build time, not by editing the file:

- the table of the study's headline numbers (the generator's ``## Targets (...)``
  section) moves to the top as ``## Summary``;
- every other ``##`` section except "End to end", the figures and "Reproduce"
  becomes a collapsed ``??? note`` block (pymdownx.details), its ``###`` headings
  bold lines, keeping its old anchor;
- each figure is shown full width with a caption (a ``<figure>``, md_in_html).

Sections the generator does not emit are left alone, so a change there degrades
the layout, never the content; ``tests/docs/test_docs_browser.py`` checks the
built page for internal references.
"""

from __future__ import annotations

import re

from markdown.extensions.toc import slugify

PAGES = {"benchmarks/text-to-3d.md"}
OPEN = ("End to end", "Figures", "Reproduce", "Summary")

CAPTIONS = {
    "variance_vs_compute": "Gradient variance (MSE to the reference gradient) against measured cost per "
                           "step, one point per configuration, at each checkpoint. Lower-left is better; "
                           "the baseline is \\((R, K) = (2, 1)\\) with uniform \\(t\\).",
    "ecm_vs_k": "Effective compute multiplier against \\(K\\) for each sampler, at each checkpoint "
                "(error bars: one standard error).",
    "ecm_vs_ratio": "Effective compute multiplier against the cost ratio \\(c_u/c_d\\), predicted from the "
                    "fitted variance components.",
    "quality_vs_wallclock": "Quality (PSNR, IoU, classifier p(prompt)) against training wall-clock, baseline "
                            "and CARV, mean over prompts and seeds.",
    "e2e_renders": "Renders at the end of the equal-wall-clock runs, baseline and CARV, per prompt.",
}

_SECTION = re.compile(r"^## (.+)$", re.M)
_FIGURE = re.compile(r"^!\[([^\]]*)\]\(([^)]*?([A-Za-z0-9_]+)\.png)\)\s*$", re.M)


def _split(markdown: str) -> tuple[str, list[tuple[str, str]]]:
    """(text before the first ``##``, [(title, body), ...])."""
    matches = list(_SECTION.finditer(markdown))
    if not matches:
        return markdown, []
    head = markdown[:matches[0].start()]
    sections = []
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(markdown)
        sections.append((m.group(1).strip(), markdown[m.end():end].strip("\n")))
    return head, sections


def _figure(match: re.Match) -> str:
    alt, src, stem = match.groups()
    key = stem.split("-", 2)[-1] if stem.startswith("text-to-3d") else stem
    for name, text in CAPTIONS.items():
        if key.endswith(name):
            caption = text
            break
    else:
        caption = alt.removesuffix(".png").replace("_", " ")
    alt_text = re.sub(r"\\[()]", "", caption).replace("\\", "")
    return (f'<figure markdown="span" style="width: 100%">\n  ![{alt_text}]({src}){{ width="100%" }}\n'
            f'  <figcaption markdown="span">{caption}</figcaption>\n</figure>')


def _collapse(title: str, body: str) -> str:
    body = re.sub(r"^### (.+)$", r"**\1**", body, flags=re.M)
    indented = "\n".join(("    " + line) if line.strip() else "" for line in body.split("\n"))
    # The anchor the heading had, so links into the section keep working.
    return f'<a id="{slugify(title, "-")}"></a>\n\n??? note "{title}"\n\n{indented}'


def layout(markdown: str) -> str:
    head, sections = _split(markdown)
    if not sections:
        return markdown
    renamed = [("Summary" if re.match(r"Targets\b", t) else t, b) for t, b in sections]
    summary = [s for s in renamed if s[0] == "Summary"]
    rest = [s for s in renamed if s[0] != "Summary"]
    parts = [head.rstrip("\n")]
    for title, body in summary:
        parts.append(f"## Summary\n\n{body}")
    details = [(t, b) for t, b in rest if t not in OPEN]
    if details:
        parts.append("## Details\n\nClick a block to open it.\n\n" + "\n\n".join(_collapse(t, b) for t, b in details))
    for title, body in rest:
        if title in OPEN:
            parts.append(f"## {title}\n\n{_FIGURE.sub(_figure, body)}")
    return "\n\n".join(parts) + "\n"


def on_page_markdown(markdown: str, page, config, files) -> str:  # mkdocs hook
    if page.file.src_uri in PAGES:
        return layout(markdown)
    return markdown
