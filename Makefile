# detoxops — the README's two commands are `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo pipeline test test-slow lint setup clean-runs gpu-bundle

setup: $(STAMP)

# torch / torchvision come from this machine's local wheel store at these exact pins (see pyproject.toml).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[platform,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m flows.demo

# the dvc.yaml pipeline (ingest → poison → victim → sanitize → detox_eval → report, + the sweep point)
pipeline: $(STAMP)
	$(BIN)/dvc repro report sweep

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check src tasks flows dashboards tests benchmarks

# what one lent-GPU call carries (docs/gpu.md): wheels + CIFAR-10 in gpu_bundle/ (git-ignored); prints the size
gpu-bundle: $(STAMP)
	$(BIN)/python benchmarks/gpu_bundle.py
