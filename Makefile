# The two commands of this project: `make demo` and `make test`. Each creates or updates .venv first.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Environment that keeps Ray on loopback, quiet and fast on a small machine (see docs/infra.md).
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED := 0
export RAY_TRAIN_HEALTH_CHECK_INTERVAL_S ?= 0.1
export RAY_AIR_NEW_OUTPUT := 0
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: venv demo test clean
venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | { grep -v '^WARNING: Location' || true; }
	# torch first: 2.14.1 + torchvision 0.29.1 come from this machine's disk (see constraints.txt)
	$(PY) -m pip install -q -c constraints.txt torch torchvision 2>&1 | { grep -v '^WARNING: Location' || true; }
	$(PY) -m pip install -q -c constraints.txt -e '.[all]' 2>&1 | { grep -vE '^WARNING: Location|^ +|^\*+$$|!!|^$$' || true; }
	touch $(STAMP)

# The whole product, offline: build the stand-in (cached), sweep it on local Ray, tabulate and plot.
DEMO_SWEEP ?= configs/sweeps/standin.yaml
DEMO_NAME ?= standin-demo
demo: $(STAMP)
	$(PY) -m fair.standin --cache-root .cache/fair --size small
	$(VENV)/bin/fair sweep --config $(DEMO_SWEEP)
	$(VENV)/bin/fair results collect sweeps/$(DEMO_NAME) --store results_out
	$(VENV)/bin/fair results table --store results_out --sweep $(DEMO_NAME)
	$(VENV)/bin/fair results plot --store results_out --sweep $(DEMO_NAME) --out results_out/plots
	@echo "tables: results_out/ (parquet), plots: results_out/plots/"

# Layers first (pyproject.toml's [tool.importlinter] contracts; --no-cache: nothing written in the tree).
test: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache --no-logo
	$(PY) -m pytest --timeout=900 tests

clean:
	rm -rf runs sweeps results_out
