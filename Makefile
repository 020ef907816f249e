# Set-up and entry points. Pins live in constraints.txt (one place).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= deploy.yaml

.PHONY: venv demo test test-all bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt scripts/setup_venv.sh
	bash scripts/setup_venv.sh $(VENV)
	touch $@

demo: venv
	$(PY) -m pipeline all --config $(CONFIG)

test: venv
	$(PY) -m pytest -q

test-all: venv
	$(PY) -m pytest -q -m ""

clean:
	rm -rf runs
