# musiclm_jax: `make demo` and `make test` on a fresh Debian/Ubuntu machine (root or sudo).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := fluidsynth fluid-soundfont-gm opus-tools libsndfile1
# Python 3.12 is required by the pinned JAX stack: python3.12 on PATH, else pyenv's newest 3.12.
PYTHON312 ?= $(shell for p in python3.12 $$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.12*/bin/python3.12 2>/dev/null | sort -V -r); do \
	  command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null && { command -v $$p; break; }; done)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?= -n 2
DEMO_DIR ?= demo_out

.PHONY: help setup apt test demo clean

help:
	@echo "make demo   build the synthetic corpus, train the tiny models, sample -> $(DEMO_DIR)/index.html"
	@echo "make test   run the test suite (CPU)"
	@echo "make setup  only install: Debian packages + $(VENV) with pinned requirements"

setup: .stamp-setup

apt: .stamp-apt

.stamp-apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
	@touch $@

.stamp-setup: .stamp-apt requirements.txt setup.py
	@if [ -z "$(PYTHON312)" ]; then \
	  echo "error: Python 3.12 not found (needed by jax 0.11.2). Install it (e.g. 'pyenv install 3.12' or 'apt-get install python3.12-venv') or run 'make PYTHON312=/path/to/python3.12 ...'." >&2; \
	  exit 1; \
	fi
	@[ -x $(PY) ] && $(PY) -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null || { \
	  echo "creating $(VENV) with $(PYTHON312)"; rm -rf $(VENV); $(PYTHON312) -m venv $(VENV); }
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $@

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup
	$(PY) -m musiclm_jax.demo --out $(DEMO_DIR)

clean:
	rm -rf $(VENV) .stamp-setup .stamp-apt $(DEMO_DIR) demo_work
