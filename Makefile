# The two commands of this project: `make demo` and `make test`. Each first creates or updates .venv and
# installs Fashion-MNIST when it is missing (the `fashion-mnist` target), saying what it does.
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

.PHONY: venv fashion-mnist demo test clean
venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@echo "make: setting up $(VENV) (pinned by constraints.txt; once, then again only when either file changes)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | { grep -v '^WARNING: Location' || true; }
	# torch first: 2.14.1 + torchvision 0.29.1 come from this machine's disk (see constraints.txt)
	$(PY) -m pip install -q -c constraints.txt torch torchvision 2>&1 | { grep -v '^WARNING: Location' || true; }
	$(PY) -m pip install -q -c constraints.txt -e '.[all]' 2>&1 | { grep -vE '^WARNING: Location|^ +|^\*+$$|!!|^$$' || true; }
	touch $(STAMP)

# Fashion-MNIST (the stand-in, the demo, some tests) is Debian's dataset-fashion-mnist: installed with apt-get
# (through sudo when not root) when its folder is missing; FASHION_MNIST_ROOT set means the files are elsewhere.
# If it cannot be installed, one line says what to run; tests that need it skip and the demo stops at once.
FASHION_MNIST := /usr/share/datasets/fashion-mnist
fashion-mnist: $(if $(FASHION_MNIST_ROOT),,$(FASHION_MNIST))

$(FASHION_MNIST):
	@sudo=; [ "$$(id -u)" = 0 ] || sudo="sudo "; \
	echo "make: Fashion-MNIST is not in $@; installing Debian's dataset-fashion-mnist: $${sudo}apt-get update && $${sudo}apt-get install dataset-fashion-mnist"; \
	apt="$$sudo env DEBIAN_FRONTEND=noninteractive apt-get -qq"; \
	{ command -v apt-get && { [ -z "$$sudo" ] || command -v sudo; } && $$apt update && \
	  $$apt install -y dataset-fashion-mnist; } >/dev/null 2>&1 \
	|| echo "make: could not install dataset-fashion-mnist here; run \`sudo apt-get install dataset-fashion-mnist\` (or set FASHION_MNIST_ROOT to a folder with its four idx .gz files)"

# The whole product, offline: build the stand-in (cached), sweep it on local Ray, tabulate and plot.
DEMO_SWEEP ?= configs/sweeps/standin.yaml
DEMO_NAME ?= standin-demo
demo: $(STAMP) fashion-mnist
	$(PY) -m fair.standin --cache-root .cache/fair --size small
	$(VENV)/bin/fair sweep --config $(DEMO_SWEEP)
	$(VENV)/bin/fair results collect sweeps/$(DEMO_NAME) --store results_out
	$(VENV)/bin/fair results table --store results_out --sweep $(DEMO_NAME)
	$(VENV)/bin/fair results plot --store results_out --sweep $(DEMO_NAME) --out results_out/plots
	@echo "tables: results_out/ (parquet), plots: results_out/plots/"

# Layers first (pyproject.toml's [tool.importlinter] contracts; --no-cache: nothing written in the tree).
# Two pytest-xdist workers, whole files each (a file's Ray and servers are module fixtures): the Ray tests
# spend much of their time waiting on processes, so two overlap well even on 2 cores. TEST_WORKERS=0: serial.
TEST_WORKERS ?= 2
test: $(STAMP) fashion-mnist
	$(VENV)/bin/lint-imports --no-cache --no-logo
	$(PY) -m pytest --timeout=900 -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=20 tests

clean:
	rm -rf runs sweeps results_out
