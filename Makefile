# Two commands set up a fresh machine: `make demo` (install + main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: install demo test clean

install: $(VENV)/.installed

# torch is pinned first: on CPU machines 2.13.0 is the CPU build; an unpinned torch pulls a CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,report,trl]'
	touch $@

demo: install
	$(VENV)/bin/dispo-wb sweep studies/smoke.yaml

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .cache mlflow.db mlartifacts reports/*/
