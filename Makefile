# Two entry points for a fresh machine: `make demo` and `make test`. Both create/update .venv first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: demo test setup

# torch/torchvision come from this machine's local wheels through plain pip (not uv/poetry).
$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch torchvision
	$(PY) -m pip install -q -c constraints.txt -e '.[cpu,dvc,plots,tensorboard,onnx,test]'
	touch $(STAMP)

setup: $(STAMP)

# The whole pipeline on the embedded digits data (dvc.yaml, params.yaml), then the metrics table.
demo: $(STAMP)
	time dvc repro
	compress-cache report --metrics metrics

test: $(STAMP)
	$(PY) -m pytest -q
