# Tollgate — one command each: `make run` (the whole BSS locally) and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export XDG_RUNTIME_DIR ?= /tmp

##@ General

.PHONY: help
help: ## Show the targets
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} /^[a-zA-Z0-9_-]+:.*?##/ { printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python >= 3.11 needed (found $$($(PYTHON) --version))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

.PHONY: venv
venv: $(STAMP) ## Create or update the virtualenv with every dependency

.PHONY: run
run: $(STAMP) ## Run the whole BSS locally (PostgreSQL, NATS, demo catalog, charging, GraphQL)
	$(BIN)/tollgate dev

.PHONY: crds
crds: $(STAMP) ## Regenerate crds/ from the resource models, and the operator chart's copies
	$(BIN)/python -m tollgate_core.resources.crd crds
	rm -f charts/tollgate-operator/files/crds/*.yaml
	cp crds/*.yaml charts/tollgate-operator/files/crds/

.PHONY: schema
schema: $(STAMP) ## Regenerate api/schema.graphql from the code
	$(BIN)/python -m tollgate_api.export api/schema.graphql

##@ Quality

.PHONY: lint
lint: $(STAMP) ## ruff, mypy --strict and the import contracts
	$(BIN)/ruff check .
	$(BIN)/mypy core api operator tests bench
	$(BIN)/lint-imports

.PHONY: envtest
envtest: ## Build (once, cached in ~/.cache/tollgate) the test Kubernetes control plane from Go modules
	@hack/envtest/build.sh > /dev/null

.PHONY: test
test: lint envtest ## Lint, then every test against real PostgreSQL, NATS and kube-apiserver
	$(BIN)/pytest

.PHONY: bench
bench: $(STAMP) ## Benchmarks (figures beside same-run baselines), results in bench/RESULTS.md
	$(BIN)/python -m bench

##@ Clusters
IMAGE ?= tollgate:dev

.PHONY: image
image: $(STAMP) ## Build the container image $(IMAGE) from wheels made on the host (offline base when no registry)
	PYTHON=$(BIN)/python hack/build-image.sh $(IMAGE)

.PHONY: charts
charts: $(STAMP) ## Lint and render the Helm charts; dry-run them on the test API server
	$(BIN)/pytest tests/operator/test_charts.py

.PHONY: e2e-kind
e2e-kind: $(STAMP) ## End to end on a kind cluster (needs Docker and internet; not run in CI here)
	hack/e2e-kind.sh

.PHONY: clean
clean: ## Remove the venv and local data
	rm -rf $(VENV) .tollgate .mypy_cache .ruff_cache .pytest_cache dist
