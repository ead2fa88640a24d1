# Two commands on a fresh machine with only Python 3: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch/torchvision are pinned to releases that pip can take from this machine's disk;
# any torch >= 2.4 works (see pyproject.toml).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv test test-slow demo bench lint browser clean

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
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest -q

test-slow: venv browser
	$(BIN)/python -m pytest -q -m slow

demo: venv
	$(BIN)/dermaseg demo -o demo-out

bench: venv
	$(BIN)/python bench/run_all.py

lint: venv
	$(BIN)/ruff check src tests bench

clean:
	rm -rf $(VENV) demo-out .pytest_cache
