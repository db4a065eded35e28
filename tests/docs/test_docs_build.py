"""The site builds strictly, has the pages the nav promises, and is configured to render offline."""

from __future__ import annotations

import hashlib
import html
import re

import yaml

MATHJAX_SHA256 = "07d778f72536a46d33129bb012a41fcfdee79085042c79b7fbaeabf6dc4dac14"

MATHS_PAGES = [
    "maths/notation", "maths/hierarchical", "maths/importance-sampling", "maths/stratification",
    "maths/variance-estimation", "maths/single-render-probes", "maths/figures-of-merit", "maths/not-the-bottleneck",
    "maths/upstream",
]
API_MODULES = ["schedules", "weighting", "distributions", "proposals", "designs", "world_designs", "quadrature", "sampling",
               "breakpoints", "estimator", "allocation", "diagnostics", "testing", "upstream"]
TORCH_API_MODULES = ["schedules", "weighting", "distributions", "proposals", "proposal_rules", "sampling", "layouts",
                     "breakpoints", "estimator", "allocation", "diagnostics", "teachers", "mixture_teacher", "integrands", "inner", "objectives",
                     "guidance", "guidance_config", "checkpoints", "distributed", "local_ranks", "threestudio", "prompts", "accounting", "probes", "renderers", "cameras", "control_variates", "attribution_features", "stable_diffusion"]


class _Loader(yaml.SafeLoader):
    """mkdocs.yml may hold !!python/name tags; ignore any unknown tag."""


_Loader.add_multi_constructor("", lambda loader, suffix, node: None)


def load_config(root):
    return yaml.load((root / "mkdocs.yml").read_text(), Loader=_Loader)


def nav_files(nav):
    for item in nav:
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            for value in item.values():
                yield from (nav_files(value) if isinstance(value, list) else [value])


def test_strict_build_has_every_nav_page(built_site, repo_root):
    files = list(nav_files(load_config(repo_root)["nav"]))
    assert len(files) >= 20, files
    for md in files:
        page = md[:-3]
        if page == "index" or page.endswith("/index"):
            page = page[:-len("index")]
        html = built_site / page / "index.html"
        assert html.is_file(), f"nav entry {md} was not built"


def test_maths_and_api_pages_exist(built_site):
    for page in MATHS_PAGES:
        text = (built_site / page / "index.html").read_text()
        assert 'class="arithmatex"' in text, f"{page} has no maths"
        assert "Proof" in text, f"{page} states no proof"
    for module in API_MODULES:
        text = (built_site / "api" / module / "index.html").read_text()
        assert f"carv_core.{module}" in text
        assert 'class="doc doc-object' in text, f"api/{module} has no generated entries"
    for module in TORCH_API_MODULES:
        text = (built_site / "api" / "torch" / module / "index.html").read_text()
        assert f"carv_torch.{module}" in text
        assert 'class="doc doc-object' in text, f"api/torch/{module} has no generated entries"
        assert 'class="arithmatex"' in text, f"api/torch/{module}: no maths rendered from the docstrings"


def test_docstring_examples_render_as_code(built_site):
    # The griffe extension turns carv_core's "Example:" sections into code blocks.
    for page in ("api/allocation", "api/torch/objectives", "api/torch/teachers", "api/torch/guidance"):
        text = (built_site / page / "index.html").read_text()
        # The collapsed "Source code in ..." blocks show the docstrings as written.
        text = re.sub(r'<details class="mkdocstrings-source">.*?</details>', " ", text, flags=re.S)
        assert "&gt;&gt;&gt; </span>" in text, page
        assert "<blockquote>" not in text, page
        assert not re.search(r":(func|mod|class|meth|data):`", text), page


def test_config_renders_offline(repo_root):
    cfg = load_config(repo_root)
    assert cfg["strict"] is True
    assert cfg["theme"]["name"] == "material"
    assert cfg["theme"]["font"] is False
    scripts = cfg["extra_javascript"]
    assert scripts == ["javascripts/mathjax-config.js", "javascripts/mathjax/tex-mml-svg.js"]
    for script in scripts:
        assert (repo_root / "docs" / script).is_file()
    arithmatex = [e for e in cfg["markdown_extensions"]
                  if isinstance(e, dict) and "pymdownx.arithmatex" in e]
    assert arithmatex and arithmatex[0]["pymdownx.arithmatex"]["generic"] is True


def test_vendored_mathjax_is_the_recorded_file(repo_root):
    folder = repo_root / "docs" / "javascripts" / "mathjax"
    digest = hashlib.sha256((folder / "tex-mml-svg.js").read_bytes()).hexdigest()
    assert digest == MATHJAX_SHA256
    notice = (folder / "README.md").read_text()
    assert MATHJAX_SHA256 in notice and "Apache" in notice and "NOTICE" in notice
    assert "Apache License" in (folder / "LICENSE").read_text()


def test_no_cdn_in_sources(repo_root):
    sources = [repo_root / "mkdocs.yml", *(repo_root / "docs").rglob("*.md"),
               repo_root / "docs" / "javascripts" / "mathjax-config.js"]
    for path in sources:
        text = path.read_text()
        for needle in ("cdn.jsdelivr", "cdnjs", "unpkg.com", "polyfill.io", "fonts.googleapis"):
            assert needle not in text, f"{path} mentions {needle}"


# Phrases a public page must not carry: internal issue numbers, the internal design
# notes, and results promised for later.
INTERNAL_REFERENCE = re.compile(
    r"\bissues?\s+#?\d+|\bdesign\.md\b"
    r"|\bwill\s+(?:hold|be\s+added|come|appear|land|fill|be\s+filled|be\s+reported|be\s+measured|be\s+published)\b",
    re.IGNORECASE)
# Pages owned elsewhere that still carry one (reported; remove the entry when fixed).
KNOWN_INTERNAL_REFERENCES: dict[str, str] = {}  # page -> why it is allowed (none now)


def page_text(page_html: str) -> str:
    """The page's own words: no scripts, styles, navigation, header or footer."""
    page_html = re.sub(r"<(script|style|nav|header|footer)\b[^>]*>.*?</\1>", " ", page_html, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page_html)).split())


def test_no_internal_references(built_site):
    found = []
    for path in sorted(built_site.rglob("index.html")):
        page = str(path.parent.relative_to(built_site)).replace("\\", "/").strip(".")
        if page in KNOWN_INTERNAL_REFERENCES:
            continue
        text = page_text(path.read_text())
        found += [f"/{page}: ...{text[max(0, m.start() - 50):m.end() + 30]}..."
                  for m in INTERNAL_REFERENCE.finditer(text)]
    assert not found, "internal references on public pages:\n" + "\n".join(found)


def test_api_reference_layout(built_site):
    guidance = (built_site / "api" / "torch" / "guidance_config" / "index.html").read_text()
    # Formatted signatures: one parameter per line (ruff), not one long line.
    signature = re.search(r'<div class="doc-signature highlight">(.*?)</div>', guidance, re.S).group(1)
    assert "\n    " in re.sub(r"<[^>]+>", "", signature), "signatures are not formatted (is ruff installed?)"
    for module in ("allocation", "estimator", "torch/guidance"):
        text = (built_site / "api" / module / "index.html").read_text()
        assert "doc-symbol-toc" in text, f"api/{module}: no member table of contents"
        assert re.search(r'doc-section-title">(Functions|Classes):', text), f"api/{module}: no member summary"
        assert "Source code in" in text, f"api/{module}: no source"
    # Grouped attributes ("k_min, k_max, k_init: ...") are one row per name.
    attrs = guidance[guidance.index("Attributes:</span>"):]
    attrs = attrs[:attrs.index("</table>")]
    names = [re.sub(r"<[^>]+>", "", c).strip()
             for c in re.findall(r"<tr[^>]*>\s*<td[^>]*>(.*?)</td>", attrs, re.S)]
    for name in ("min_step_percent", "max_step_percent", "weighting", "include_alpha", "guidance_scale",
                 "k_min", "k_max", "k_init"):
        assert name in names, f"GuidanceConfig attribute {name} has no row of its own: {names}"
    assert not [n for n in names if "," in n], names


def test_api_reference_is_one_nav_entry(built_site):
    home = (built_site / "index.html").read_text()
    primary = home[home.index('md-nav--primary'):]
    links = re.findall(r'<a href="([^"]*)"[^>]*>\s*<span class="md-ellipsis">\s*API reference\s*</span>', primary)
    assert len(links) == 1, links


def test_benchmark_pages_summary_first_details_collapsed(built_site):
    for page in ("benchmarks", "benchmarks/text-to-3d"):
        text = (built_site / page / "index.html").read_text()
        article = text[text.index("<article"):]
        first_h2 = re.search(r"<h2[^>]*>(.*?)</h2>", article, re.S)
        body = article[:first_h2.start()] if page == "benchmarks" else article[first_h2.start():]
        assert "<table>" in body[:20000], f"/{page}: no summary table first"
        assert "<details" in article, f"/{page}: no collapsible details"
        imgs = re.findall(r"<img [^>]*>", article)
        figures = re.findall(r"<figure[^>]*>.*?</figure>", article, re.S)
        assert imgs and len(figures) == len(imgs), f"/{page}: {len(imgs)} images, {len(figures)} figures"
        assert all("<figcaption" in f and 'width="100%"' in f for f in figures), f"/{page}: uncaptioned figure"
    t3d = (built_site / "benchmarks" / "text-to-3d" / "index.html").read_text()
    assert re.search(r"<h2[^>]*>Summary", t3d[t3d.index("<article"):]), "text-to-3D page: summary is not first"


def _examples_runner(repo_root):
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_examples", repo_root / "docs" / "scripts" / "examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _text(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


def test_code_blocks_show_their_output(built_site, repo_root, tmp_path):
    """After each block that prints, the built page shows an "Output" block with exactly that text."""
    examples = _examples_runner(repo_root)
    shown = 0
    for md in sorted((repo_root / "docs").rglob("*.md")):
        blocks = examples.python_blocks(md.read_text())
        if not blocks:
            continue
        outputs = examples.run_page(blocks, tmp=tmp_path / md.stem)   # the build's cached run
        rel = md.relative_to(repo_root / "docs").with_suffix("")
        page = built_site / (rel.parent if rel.name == "index" else rel) / "index.html"
        titled = re.findall(r'<span class="filename">Output</span>(.*?)</code></pre>', page.read_text(), re.S)
        printed = [o for o in outputs if o.strip()]
        assert [_text(t).strip("\n") for t in titled] == printed, f"{rel}: outputs shown differ from the run"
        shown += len(printed)
    assert shown >= 5


def test_repo_url_comes_from_the_environment(repo_root, monkeypatch):
    from mkdocs.config import load_config as mkdocs_config

    monkeypatch.setenv("CARV_REPO_URL", "https://example.org/carv")
    assert mkdocs_config(str(repo_root / "mkdocs.yml"))["repo_url"] == "https://example.org/carv"
    monkeypatch.delenv("CARV_REPO_URL")
    assert mkdocs_config(str(repo_root / "mkdocs.yml"))["repo_url"] is None


def test_maths_pages_link_functions_and_api_pages_link_back(built_site, repo_root):
    """Each maths page links the functions it names to their entries; each linked API page links back."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("crosslinks", repo_root / "docs" / "scripts" / "crosslinks.py")
    crosslinks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(crosslinks)
    linked = 0
    for page in MATHS_PAGES:
        text = (built_site / page / "index.html").read_text()
        for target, anchor in re.findall(r'href="\.\./\.\./(api/[\w/]+)/#(carv_(?:core|torch)\.[\w.]+)"', text):
            assert f'id="{anchor}"' in (built_site / target / "index.html").read_text(), (page, anchor)
            linked += 1
    assert linked >= 40
    back = crosslinks.derivations()
    assert {"api/estimator.md", "api/sampling.md", "api/torch/sampling.md", "api/torch/probes.md"} <= set(back)
    for api, pages in back.items():
        text = (built_site / api.removesuffix(".md") / "index.html").read_text()
        line = re.search(r"Derivations:</em>(.*?)</p>", text, re.S)
        assert line, f"{api} has no Derivations line"
        for src, title in pages:
            assert f'href="../../{"../" if api.count("/") == 2 else ""}{src.removesuffix(".md")}/">{title}</a>' \
                in line[1], (api, src)
