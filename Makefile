# Two commands set a fresh machine up (see README):  make demo [MODE=dra]   |   make test
SHELL := /bin/bash
PYTHON ?= python3
PACKAGES := neuronalloc neuroncli neuronlog plugin extender kubectl_neuron

.PHONY: deps deps-python deps-tools test lint unit demo bench

deps: deps-python deps-tools

# The image's lock constrains the test environment too, so tests run on the very versions the image ships.
deps-python:
	$(PYTHON) -m pip install --disable-pip-version-check -q -c deploy/image/requirements.txt -e '.[dev]'

# Each area's own idempotent installer (apt packages, Go builds) lives in scripts/install-*.sh.
deps-tools:
	@set -e; for script in scripts/install-*.sh; do [ -e "$$script" ] || continue; echo "== $$script"; bash "$$script"; done

lint:
	ruff check $(PACKAGES) tests bench
	mypy $(PACKAGES)
	lint-imports

# The project's test command: installs what it needs (idempotent, about 15 s once installed), static checks, then
# every tier (the cluster tier skips itself where it cannot run).
test: deps lint
	$(PYTHON) -m pytest

unit:
	$(PYTHON) -m pytest tests/core

# make demo MODE=dra: the same nodes and workload served by the DRA driver and the stock kube-scheduler.
MODE ?= device-plugin
demo: deps
	$(PYTHON) -m tests.cluster.demo --mode $(MODE)

bench:
	@set -e; for b in bench/*.py; do echo "== $$b"; $(PYTHON) "$$b"; done
