# metaland — the two commands: `make repro` (rebuild every result) and `make test`.
# Both create .venv and install the pinned requirements on first use; no manual step.

VENV ?= .venv
PYTHON_SYSTEM ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.metaland-installed
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PYTHONUNBUFFERED := 1

.PHONY: install ray browser repro test test-container bench lint ui doctor profile lock clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the pinned requirements

RAY_VERSION ?= 2.60.0
ray: $(STAMP) ## install the ray extra: `metaland launch --executor ray` and its test on a two-node Ray cluster
	$(PY) -m pip install -q "ray==$(RAY_VERSION)"

# Debian's Chromium and its WebDriver (no browser download) for tests/test_ui_browser.py, which
# is skipped without them; fonts-liberation makes the screenshots legible. Needs root (CI is).
browser: ## install Chromium + chromium-driver for the browser test (Debian, as root)
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
	  echo "Chromium: $$(chromium --version 2>/dev/null)"; \
	else \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    chromium chromium-driver fonts-liberation >/dev/null && echo "Chromium: $$(chromium --version 2>/dev/null)"; \
	fi

repro: $(STAMP) ## rebuild every result: dvc repro (set METALAND_DATA_MIRROR without internet)
	$(PY) -c "from metaland.tracking import ensure_store; ensure_store()"
	dvc repro

test: $(STAMP) ## run the test suite (includes the whole DAG on the ci profile)
	$(PY) -m pytest -n 2 --dist loadgroup --durations=30

# The image built and run for real (tests/test_container.py, about 15 min): needs a Docker engine,
# or root, as whom docker/engine.sh installs Debian's docker.io and starts one for the run. Apart
# from `make test`, which skips it, so the two never share the 2 cores.
test-container: $(STAMP) ## build the Docker image and run the ci pipeline in it (Docker engine or root)
	METALAND_CONTAINER_TESTS=1 $(PY) -m pytest -m container -s tests/test_container.py

bench: $(STAMP) ## time metaland against higher, PyHessian-style and per-point loops (docs/performance.md)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/run.py $(BENCH_ARGS)

lint: $(STAMP) ## ruff and hadolint
	$(VENV)/bin/ruff check metaland stages tests benchmarks
	$(VENV)/bin/hadolint Dockerfile

ui: $(STAMP) ## MLflow UI on http://127.0.0.1:5000
	$(PY) -m metaland ui

doctor: $(STAMP) ## check versions, device, params, datasets, tracking store
	$(PY) -m metaland doctor

profile: $(STAMP) ## make params.yaml a profile: make profile PROFILE=ci|default|long|paper
	$(PY) -m metaland profile $(PROFILE)

lock: ## regenerate requirements.txt from a fresh environment
	rm -rf .lock-venv && $(PYTHON_SYSTEM) -m venv .lock-venv
	.lock-venv/bin/pip install -q -e '.[test]'
	{ head -2 requirements.txt; .lock-venv/bin/pip freeze | grep -v '^-e \|^metaland'; } > requirements.txt.new
	mv requirements.txt.new requirements.txt && rm -rf .lock-venv

clean: ## remove pipeline outputs, the resume area, the probe cache and the tracking store (keeps .venv, DVC cache)
	rm -rf data runs checkpoints probes results figures report .metaland mlflow.db mlflow.db.lock mlartifacts
