# Every target that runs code first makes .venv (once; again when pyproject.toml changes).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: help venv demo test test-fast lint clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

venv: $(STAMP)  ## create .venv and install hsi with its dev tools

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# -qq: errors only (not one warning per ignored local index location).
	$(BIN)/pip install -qq --upgrade pip
	# torch first: pip takes these two wheels from the machine's disk.
	$(BIN)/pip install -qq torch==2.14.1 torchvision==0.29.1
	# compat: the project root on sys.path, so Hydra's plugin scan (pkgutil) sees
	# hydra_plugins/hsi_launcher; the default editable finder hides it from the scan.
	$(BIN)/pip install -qq -e '.[dev]' --config-settings editable_mode=compat
	touch $@

demo: $(STAMP)  ## the main job on the embedded synthetic source, ending in the paper-style tables
	$(BIN)/python -m hsi.cli.study study=demo

test: $(STAMP)  ## the whole test suite, notebooks included
	$(BIN)/python -m pytest -q tests --nbmake notebooks

test-fast: $(STAMP)  ## tests not marked slow
	$(BIN)/python -m pytest -q tests -m 'not slow'

lint: $(STAMP)  ## ruff: the lint rules and the formatting
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:  ## remove outputs (keeps .venv)
	rm -rf outputs multirun .pytest_cache
