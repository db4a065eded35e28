# Two commands: `make test` and `make demo`. Both create .venv if absent.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.carv-installed
# CPU build of torch, pinned (on local disk here), installed only when the venv has no
# torch: GPU users put their own CUDA torch in .venv first and it is kept (see README).
TORCH_CPU ?= torch==2.13.0

.PHONY: test demo venv docs serve clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_CPU)"
	$(PY) -m pip install -q -e ".[torch,dev,docs]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m benchmarks.core_demo

docs: $(STAMP)
	$(PY) -m mkdocs build --strict

serve: $(STAMP)
	$(PY) -m mkdocs serve

clean:
	rm -rf $(VENV) site build *.egg-info
