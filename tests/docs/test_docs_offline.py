"""No built page loads a script, style sheet or font from outside the site."""

from __future__ import annotations

import html.parser
import re
from urllib.parse import urlparse

# <link rel=...> values that make the browser fetch something the page needs.
FETCHING_RELS = {"stylesheet", "preload", "modulepreload", "prefetch", "preconnect", "dns-prefetch",
                 "icon", "shortcut", "apple-touch-icon", "manifest", "font"}
CSS_URL = re.compile(r"""url\(\s*['"]?([^'")\s]+)""")
CSS_IMPORT = re.compile(r"""@import\s+(?:url\()?\s*['"]?([^'")\s;]+)""")


def is_external(url: str) -> bool:
    url = url.strip()
    if url.startswith("//"):
        return True
    scheme = urlparse(url).scheme.lower()
    return scheme not in ("", "data", "blob", "javascript", "about")


class ResourceCollector(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str]] = []
        self.inline_css: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        a = {k: (v or "") for k, v in attrs}
        if tag == "script" and a.get("src"):
            self.refs.append(("script src", a["src"]))
        elif tag == "link" and a.get("href"):
            rels = set(a.get("rel", "").lower().split())
            if rels & FETCHING_RELS or a.get("as") in ("script", "style", "font"):
                self.refs.append((f"link rel={a.get('rel')}", a["href"]))
        elif tag in ("img", "iframe", "source", "embed") and a.get("src"):
            self.refs.append((f"{tag} src", a["src"]))
        if a.get("style"):
            self.inline_css.append(a["style"])
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.inline_css.append(data)


def css_problems(css: str) -> list[str]:
    found = [f"url({u})" for u in CSS_URL.findall(css) if is_external(u)]
    found += [f"@import {u}" for u in CSS_IMPORT.findall(css) if is_external(u)]
    for block in re.findall(r"@font-face\s*\{[^}]*\}", css):
        found += [f"@font-face {u}" for u in CSS_URL.findall(block) if is_external(u)]
    return found


def test_helpers_catch_external_references():
    page = ResourceCollector()
    page.feed('<script src="https://cdn.example/x.js"></script><link rel="stylesheet" '
              'href="//fonts.example/css"><style>@import url("https://x/y.css");</style>'
              '<link rel="canonical" href="https://example.org/page/">')
    assert [kind for kind, url in page.refs if is_external(url)] == ["script src", "link rel=stylesheet"]
    assert css_problems("".join(page.inline_css)) == ["url(https://x/y.css)", "@import https://x/y.css"]
    assert css_problems("@font-face{font-family:A;src:url(https://f/a.woff2)}") == [
        "url(https://f/a.woff2)", "@font-face https://f/a.woff2"]
    assert css_problems("a{background:url(../img/x.svg)} b{src:url(data:font/woff2;base64,AA)}") == []


def test_no_page_loads_external_resources(built_site):
    pages = sorted(built_site.rglob("*.html"))
    assert len(pages) >= 20
    problems = []
    for page in pages:
        collector = ResourceCollector()
        collector.feed(page.read_text(errors="replace"))
        rel = page.relative_to(built_site)
        problems += [f"{rel}: {kind} {url}" for kind, url in collector.refs if is_external(url)]
        problems += [f"{rel}: inline CSS {p}" for p in css_problems("\n".join(collector.inline_css))]
    for sheet in sorted(built_site.rglob("*.css")):
        problems += [f"{sheet.relative_to(built_site)}: {p}" for p in css_problems(sheet.read_text(errors="replace"))]
    assert not problems, "external resources:\n" + "\n".join(problems)
