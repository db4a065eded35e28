# Two commands: `make test` and `make demo`. Both create .venv if absent.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.carv-installed
# CPU build of torch, pinned (on local disk here), installed only when the venv has no
# torch: GPU users put their own CUDA torch in .venv first and it is kept (see README).
TORCH_CPU ?= torch==2.13.0

.PHONY: test demo demo-core venv docs serve clean browser figures

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_CPU)"
	$(PY) -m pip install -q -e ".[torch,dev,docs]"
	touch $(STAMP)

test: $(STAMP) browser
	$(PY) -m pytest -q

# Headless Chromium for the docs browser check (tests/docs): the Debian package,
# installed once when missing and we are root; otherwise that check skips (CI fails it).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium for the docs browser check"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: chromium not installed and not root; the docs browser check will skip"; fi

# Regenerate docs/figures/ (PNGs and the worked-example table) from carv_core.
figures: $(STAMP)
	MPLBACKEND=Agg $(PY) docs/scripts/make_figures.py

demo: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m benchmarks.text_to_3d.demo

demo-core: $(STAMP)
	$(PY) -m benchmarks.core_demo

docs: $(STAMP)
	$(PY) -m mkdocs build --strict

serve: $(STAMP)
	$(PY) -m mkdocs serve

clean:
	rm -rf $(VENV) site build *.egg-info
