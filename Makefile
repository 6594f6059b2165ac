# Two entry points for a fresh machine: `make demo` and `make test`. Both set up .venv first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test setup clean-demo

# torch/torchvision come from this machine's local wheels through plain pip (not uv/poetry).
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	export PATH="$(CURDIR)/$(VENV)/bin:$$PATH"; \
	test -d .dvc || dvc init -q; \
	/usr/bin/time -f 'dvc repro wall time: %e s' dvc repro && \
	compress-cache report --metrics metrics --out metrics/summary.md

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q
