# Two commands on a fresh machine with only Python 3: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch/torchvision are pinned to releases that pip can take from this machine's disk;
# any torch >= 2.4 works (see pyproject.toml).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv test test-slow test-tflite test-onnx-only demo bench lint typecheck browser clean docs

# The web-page test drives Debian's Chromium; install it when we can (root + apt), else that
# test is skipped with its reason.
browser:
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	  >/dev/null 2>&1 || echo "chromium not installed: the browser test will be skipped"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS) || $(BIN)/pip install -q "torch>=2.4" torchvision
	$(BIN)/pip install -q -e ".[dev,bench]"
	$(BIN)/pip install -q -e ".[crf]" || echo "the CRF extra (pydensecrf2) could not be built: its test will be skipped"
	touch $(STAMP)

venv: $(STAMP)

test: venv browser
	$(BIN)/ruff check src tests bench docs
	$(MAKE) typecheck
	$(MAKE) docs
	$(BIN)/python -m pytest -q
	$(MAKE) test-tflite
	$(MAKE) test-onnx-only

test-slow: venv browser
	$(BIN)/python -m pytest -q -m slow

# TFLite export needs litert-torch, whose pins clash with FastAPI's (pydantic): an environment
# of its own, used only by this target.
TFLITE_VENV := .venv-tflite
$(TFLITE_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(TFLITE_VENV)
	$(TFLITE_VENV)/bin/pip install -q --upgrade pip
	$(TFLITE_VENV)/bin/pip install -q $(TORCH_PINS) || $(TFLITE_VENV)/bin/pip install -q "torch>=2.4" torchvision
	$(TFLITE_VENV)/bin/pip install -q $(TORCH_PINS) -e ".[tflite]" pytest pytest-timeout hypothesis httpx
	touch $@

test-tflite: $(TFLITE_VENV)/.installed
	$(TFLITE_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/export/test_export.py \
	  tests/infer/test_tflite_backend.py -k tflite

# Exported models run without PyTorch: an environment of requirements-onnx.txt alone (~0.5 GB,
# ~30 s to build) runs predict, evaluate and serve on an .onnx file (tests/test_torch_free.py).
ONNX_VENV := .venv-onnx
$(ONNX_VENV)/.installed: pyproject.toml requirements-onnx.txt
	$(PYTHON) -m venv $(ONNX_VENV)
	$(ONNX_VENV)/bin/pip install -q --upgrade pip
	$(ONNX_VENV)/bin/pip install -q -r requirements-onnx.txt
	$(ONNX_VENV)/bin/pip install -q --no-deps -e .
	touch $@

test-onnx-only: venv $(ONNX_VENV)/.installed
	DERMASEG_ONNX_PYTHON=$(ONNX_VENV)/bin/python $(BIN)/python -m pytest -q -p no:cacheprovider \
	  tests/test_torch_free.py -k onnx_only_env

demo: venv
	$(BIN)/dermaseg demo -o demo-out

bench: venv
	$(BIN)/python bench/run_all.py

lint: venv
	$(BIN)/ruff check src tests bench docs

# pyright over src/ in basic mode ([tool.pyright] in pyproject.toml). pyright[nodejs] brings
# its own Node.js and pyright itself: nothing is downloaded (no version check either).
typecheck: venv
	PYRIGHT_PYTHON_IGNORE_WARNINGS=1 $(BIN)/pyright --pythonpath $(BIN)/python

# The documentation site (MkDocs Material, mkdocs.yml): --strict fails on a broken link, a
# missing picture or a docstring mkdocstrings cannot read. Written to site/ (ignored).
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

clean:
	rm -rf $(VENV) $(TFLITE_VENV) $(ONNX_VENV) demo-out .pytest_cache site
