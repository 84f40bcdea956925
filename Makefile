# Every target delegates to dvc or pytest; the pipeline itself lives in dvc.yaml.
.DEFAULT_GOAL := help
SHELL := /bin/bash

VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
# Stage commands (`recap ...`) and dvc come from the project's virtual environment.
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: help setup lock repro compare ladder budget test test-all lint format clean

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-8s\033[0m %s\n", $$1, $$2}'

setup: ## Create .venv and install recaption with everything the pipeline and tests need
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --progress-bar off -c constraints.txt -e '.[dev,ray]'
	$(BIN)/dvc config --local core.analytics false 2>/dev/null || true
	@echo "ready: $(BIN)/recap --help"

lock: ## Pin every installed package's version in constraints.txt (make setup installs from it)
	$(BIN)/pip freeze --exclude-editable > constraints.txt

repro: ## Run the pipeline (dvc repro) on params.yaml
	$(BIN)/dvc repro

compare: ## Compare caption variants as DVC experiments: reports/compare.md (hours; commit first)
	$(BIN)/recap compare

ladder: ## A perfect captioner, ours, none and chance at the default budget: reports/ladder.md (two full trainings; commit first)
	$(BIN)/recap ladder

budget: ## What the annotation budget buys, as DVC experiments over sample.size: reports/budget.md (hours; commit first)
	$(BIN)/recap budget

test: ## The fast loop: every test but the slow end-to-end ones (offline, minutes)
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q -m "not slow"

test-all: ## Every test, the slow end-to-end ones too (dvc repro in temporary repos; what CI runs)
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q

lint: ## Check style with ruff
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

clean: ## Remove every output dvc.yaml declares, the resumable work and caches (keeps inputs, .venv, the DVC cache)
	$(BIN)/recap clean
	rm -rf .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path './.venv/*' -prune -exec rm -rf {} +
