# The two commands of the README. Everything else is DVC's job (dvc.yaml).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: repro test install data browser lint clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch/torchvision first and alone: pip takes the pinned wheels from this machine's disk.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Fashion-MNIST (the default dataset) from Debian, where apt is usable; otherwise say what to do.
data:
	@if [ -f $(FMNIST) ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	  || echo "make: could not install dataset-fashion-mnist; see README 'Data' for other sources" >&2; \
	else echo "make: Fashion-MNIST not at $(FMNIST); run 'sudo apt-get install dataset-fashion-mnist' or set dataset.fashion_mnist.source_dir (README 'Data')" >&2; fi

# Headless Chromium for the report's browser test (Debian package; no browser download).
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
	  || echo "make: could not install chromium; the browser test will fail in CI" >&2; \
	else echo "make: chromium missing; install Debian's chromium for the browser test" >&2; fi

# README's results block is copied from reports/RESULTS.md outside the DAG (README is hand-written around it)
repro: install data
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	$(BIN)/python -m stages.readme

test: install data browser
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -n 2 --dist loadgroup

lint: install
	$(BIN)/ruff check cnnvis stages tests benchmarks

clean-venv:
	rm -rf $(VENV)
