// MathJax 3 configuration for pymdownx.arithmatex (generic mode).
// arithmatex wraps inline maths as \( ... \) and display maths as \[ ... \]
// inside elements of class "arithmatex"; only those elements are typeset.
// This file must load before the vendored MathJax build (see mkdocs.yml).
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
};

// mkdocs-material's instant navigation swaps the page body without a reload
// and announces it on the `document$` observable: re-typeset each new page.
// The first emission is the initial page, which MathJax's startup typesets by
// itself; typesetting it again would also typeset the MathML that MathJax adds
// for screen readers (this build reads MathML input), doubling every equation.
if (typeof document$ !== "undefined") {
  var carvFirstPage = true;
  document$.subscribe(function () {
    if (carvFirstPage) {
      carvFirstPage = false;
      return;
    }
    var mj = window.MathJax;
    if (!mj || !mj.startup || !mj.startup.promise) {
      return; // MathJax has not loaded yet; its own startup will typeset.
    }
    mj.startup.promise = mj.startup.promise.then(function () {
      var output = mj.startup.output;
      if (output && typeof output.clearFontCache === "function") {
        output.clearFontCache(); // SVG output: drop glyphs cached for the old page
      }
      mj.typesetClear();
      mj.texReset();
      return mj.typesetPromise();
    });
  });
}
