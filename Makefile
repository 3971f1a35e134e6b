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

# The first run: two trials that differ in one bound (studies/demo.yaml), their report, where to look.
demo: install
	$(VENV)/bin/dispo-wb sweep studies/demo.yaml
	$(VENV)/bin/dispo-wb report demo --no-png
	@echo "look first: reports/demo/index.html (summary: final accuracy, gain and each collapse criterion per trial)"
	@echo "  open the report:  python3 -m webbrowser reports/demo/index.html"
	@echo "  open MLflow:      $(VENV)/bin/dispo-wb ui    # then http://127.0.0.1:5000, experiment dispo-wb-demo"

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .cache mlflow.db mlartifacts reports/*/
