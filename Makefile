# Two commands: `make test` and `make demo`. Both create .venv if absent.
# `make test-min` checks the version floors of pyproject.toml in a second venv, .venv-min.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.carv-installed
# CPU build of torch, pinned (on local disk here), installed only when the venv has no
# torch: GPU users put their own CUDA torch in .venv first and it is kept (see README).
TORCH_CPU ?= torch==2.13.0
# The floors venv: every ">=" of pyproject.toml's dependencies and its torch and dev extras,
# installed as "==" (one source of truth: the floors are read from pyproject.toml).
VENV_MIN  ?= .venv-min
PY_MIN    := $(VENV_MIN)/bin/python
MIN_STAMP := $(VENV_MIN)/.carv-floors-installed
FLOORS_PY := import sys, importlib; toml = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli"); \
  p = toml.load(open("pyproject.toml", "rb"))["project"]; x = p["optional-dependencies"]; \
  reqs = p["dependencies"] + x["torch"] + x["dev"]; bad = [r for r in reqs if r.count(">=") != 1]; \
  sys.exit(f"every requirement needs one >= floor: {bad}") if bad else print(*[r.replace(">=", "==") for r in reqs])

.PHONY: test test-slow test-min demo demo-core venv docs serve clean browser figures

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_CPU)"
	$(PY) -m pip install -q -e ".[torch,dev,docs,benchmarks]"
	touch $(STAMP)

test: $(STAMP) browser
	$(PY) -m pytest -q

# The tests marked slow (deselected by `make test`): the 4-rank distributed tests.
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# The floors: the CPU torch wheel first (on local disk; torch's floor is that release, so the
# floors step then downloads no torch), then every floor exactly, then the package itself
# without dependencies, and pip check (e.g. transformers' own safetensors floor).
$(MIN_STAMP): pyproject.toml
	test -x $(PY_MIN) || $(PYTHON) -m venv $(VENV_MIN)
	$(PY_MIN) -m pip install -q --upgrade pip
	$(PY_MIN) -m pip install -q "$(TORCH_CPU)"
	floors="$$($(PYTHON) -c '$(FLOORS_PY)')" && echo "floors: $$floors" && $(PY_MIN) -m pip install -q $$floors
	$(PY_MIN) -m pip install -q -e . --no-deps
	$(PY_MIN) -m pip check
	touch $(MIN_STAMP)

# tests/core, tests/torch (about 2 min on 2 cores) and the shipped-teacher tests (they need
# diffusers 0.30's AutoencoderKL). Not tests/docs: it needs the docs extra and Chromium, and
# its doctests print numpy >= 2 reprs (np.True_). Not the other tests/benchmarks: matplotlib.
# The import line fails loudly where a broken diffusers or transformers would make the tests
# skip (pytest.importorskip) instead of fail.
test-min: $(MIN_STAMP)
	$(PY_MIN) -c "import numpy, scipy, torch, diffusers, transformers, safetensors, hypothesis, pytest; \
	  from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel, UNet2DModel; \
	  from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer; \
	  print(*(f'{m.__name__} {m.__version__}' for m in (numpy, scipy, torch, diffusers, transformers, safetensors, hypothesis, pytest)), sep=', ')"
	OMP_WAIT_POLICY=PASSIVE $(PY_MIN) -m pytest -q -p no:cacheprovider tests/core tests/torch \
	  tests/benchmarks/test_teacher_weights.py

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
	rm -rf $(VENV) $(VENV_MIN) site build *.egg-info
