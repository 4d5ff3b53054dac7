# Two entry points: `make deploy` (the dev stack, or STACK=...) and `make test` (every check and test).
SHELL := /bin/bash
.DEFAULT_GOAL := help
STACK ?= dev
PYTHON ?= python3
# The same virtualenv Pulumi.yaml's runtime options name, so `pulumi up` and the tests share it.
VENV := venv
BIN := $(VENV)/bin

.PHONY: help install deploy destroy test lint unit e2e mutation

help:
	@echo "make deploy [STACK=dev]   deploy a stack with pulumi up (local file backend unless you are logged in elsewhere)"
	@echo "make test                 every check: ruff, mypy, hadolint, shellcheck, workflow schema, zizmor, unit and end-to-end tests"
	@echo "make destroy [STACK=dev]  pulumi destroy (protected volumes in staging/prod are kept)"
	@echo "make mutation             mutation testing (mutmut) of components/, mlflow/prepare_db.py and policy/ against the fast tests"

$(BIN)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

install: $(BIN)/.installed

deploy: $(BIN)/.installed
	@command -v pulumi >/dev/null || { echo "error: the Pulumi CLI is not installed; see https://www.pulumi.com/docs/iac/download-install/" >&2; exit 1; }
	@docker info >/dev/null 2>&1 || { echo "error: no Docker engine answers; start Docker first" >&2; exit 1; }
	@pulumi whoami >/dev/null 2>&1 || pulumi login --local
	pulumi stack select --create $(STACK)
	pulumi up --stack $(STACK)
	@echo "tracking URI: $$(pulumi stack output tracking_uri --stack $(STACK))"

destroy: $(BIN)/.installed
	pulumi destroy --stack $(STACK)

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint mlflow/Dockerfile tests/standins/*/Dockerfile
	$(BIN)/shellcheck mlflow/entrypoint.sh tests/standins/*/*.sh .ci/run
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(BIN)/zizmor --offline .github/workflows

unit: $(BIN)/.installed
	$(BIN)/python -m pytest -m "not docker"

# Needs a Docker engine. First builds the stand-in images and the wheelhouse, or with
# LOCAL_DEPLOY_STANDINS=0 pulls the official images: idempotent, seconds when they are
# there. A missing prerequisite (engine, debootstrap, registry) stops here with one line
# naming the command that fixes it, instead of as one error per end-to-end test.
e2e: $(BIN)/.installed
	@$(BIN)/python -m tests.local_deploy prepare
	REQUIRE_DOCKER=1 $(BIN)/python -m pytest -m docker -s

# Not part of `make test` (minutes, not seconds); prints the score. See README "Mutation testing".
mutation: $(BIN)/.installed
	$(BIN)/python -m tests.mutation

test: lint unit e2e
