# Set-up and entry points. Pins live in constraints.txt (one place).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= deploy.yaml
PROPERTY_TESTS := tests/test_simulator.py tests/test_quantize.py tests/test_cuba_activation.py \
	tests/test_residual_hardware.py tests/test_fixed_point_time.py

.PHONY: venv data demo test test-all test-explore bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt scripts/setup_venv.sh
	bash scripts/setup_venv.sh $(VENV)
	touch $@

# Fashion-MNIST from Debian where this machine can install it; a loud warning where not.
data:
	bash scripts/setup_data.sh

demo: venv
	$(PY) -m pipeline all --config $(CONFIG)

test: venv data
	$(PY) -m pytest -q

test-all: venv data
	$(PY) -m pytest -q -m ""

# property tests with new random examples, 10x as many (tests/property_profiles.py)
test-explore: venv data
	HYPOTHESIS_PROFILE=explore $(PY) -m pytest -q -m "not lava" $(PROPERTY_TESTS)

clean:
	rm -rf runs
