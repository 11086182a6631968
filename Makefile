# detoxops — the README's two commands are `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo pipeline test test-slow lint setup clean-runs gpu-bundle

setup: $(STAMP)

# One install of the project with its extras (torch / torchvision at the exact pins of pyproject.toml). By default
# uv, installed into the venv first, resolves and installs in parallel and byte-compiles like pip: a much cheaper
# `make demo` setup on a 2-core machine (docs/platform.md, "Choosing the demo's settings"). uv reads its own
# configuration (UV_INDEX_URL, UV_FIND_LINKS…), not pip.conf: where it cannot install, pip does it instead, and
# `make setup INSTALLER=pip` uses pip only (pip.conf's indexes / wheel stores).
INSTALLER ?= uv
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	if [ "$(INSTALLER)" = uv ] && $(BIN)/python -m pip install -q uv \
	    && $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -e '.[platform,dev]'; then :; \
	else $(BIN)/python -m pip install -q -e '.[platform,dev]'; fi
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m flows.demo

# the dvc.yaml pipeline (ingest → poison → victim → sanitize → detox_eval → report, + the sweep point); the `sweep`
# stage scores every point of params.sweep.grid (32 by default, each one sweep_point's cost): `dvc repro sweep`
pipeline: $(STAMP)
	$(BIN)/dvc repro report sweep_point

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check src tasks flows dashboards tests benchmarks

# what one lent-GPU call carries (docs/gpu.md): wheels + CIFAR-10 in gpu_bundle/ (git-ignored); prints the size
gpu-bundle: $(STAMP)
	$(BIN)/python benchmarks/gpu_bundle.py
