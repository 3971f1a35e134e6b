# Two commands set up a fresh machine: `make demo` (install + main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# verl 0.9.1 caps transformers below the version the workbench develops on: its own env.
VERL_VENV ?= .venv-verl
VERL_PY := $(VERL_VENV)/bin/python
PYTHON ?= python3

.PHONY: install install-core install-verl demo test clean

install: $(VENV)/.installed

install-core: $(VENV)/.installed-core

# torch is pinned first: on CPU machines 2.13.0 is the CPU build; an unpinned torch pulls a CUDA build.
# The core (what `make demo` needs: the package and its own requirements) is one stamp, the extras
# the tests use another, so a first run does not wait for TRL, kaleido and the PostgreSQL driver.
# --no-compile: byte-compiling all ~19,000 installed files took more CPU than the install itself;
# Python compiles the modules a run imports on first use (and caches them).
$(VENV)/.installed-core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile torch==2.13.0
	$(PY) -m pip install -q --no-compile -e .
	touch $@

$(VENV)/.installed: $(VENV)/.installed-core
	$(PY) -m pip install -q -e '.[dev,report,services,trl,docs]'
	touch $@

install-verl: $(VERL_VENV)/.installed

# About 2.4 GB (ray, verl's pins); torch first, CPU build, for the same reason as above.
# verl's Hydra needs omegaconf 2.3, which needs antlr4 4.9 while our math-verify extra pins 4.13:
# left to itself pip resolves that by installing hydra-core 0.11, which verl cannot import. So
# the workbench's requirements go in with math-verify's antlr 4.9 extra (same parser, older
# runtime), then the package itself without dependencies (for its verl.plugins entry point).
$(VERL_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VERL_VENV)
	$(VERL_PY) -m pip install -q --upgrade pip
	$(VERL_PY) -m pip install -q torch==2.13.0
	$(VERL_PY) -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
	  extra = p['optional-dependencies']; \
	  print('\n'.join(r for r in p['dependencies'] + extra['dev'] + extra['verl'] if not r.startswith('math-verify[antlr4_13')))" \
	  > $(VERL_VENV)/requirements.txt
	$(VERL_PY) -m pip install -q -r $(VERL_VENV)/requirements.txt
	$(VERL_PY) -m pip install -q --no-deps -e .
	touch $@

# The first run: a two-trial study where one bound decides whether the policy collapses (three seeds
# per trial, about 2-3 minutes of training on 2 idle cores after the core install), its report, where to look.
demo: $(VENV)/.installed-core
	$(VENV)/bin/dispo-wb sweep run studies/demo.yaml
	$(VENV)/bin/dispo-wb sweep status studies/demo.yaml
	$(VENV)/bin/dispo-wb report demo --no-png
	@echo "look first: reports/demo/index.html, the summary (collapse criteria per run: eps_neg_down 0.01 crashes, off does not),"
	@echo "  then 'Trials side by side' (the neg_down clip fraction, repetition and truncation rise only for the tight bound)"
	@echo "  open the report:  python3 -m webbrowser reports/demo/index.html"
	@echo "  open MLflow:      $(VENV)/bin/dispo-wb ui    # prints the address of the demo experiment's runs table"

# The verl tests run in verl's env (built here when missing); the main suite leaves them out by marker.
# The docs are built strictly (warnings are errors), so a broken link or anchor in docs/ fails the target.
test: install install-verl
	DISPO_REQUIRE_TRL=1 $(PY) -m pytest -q -m "not verl"
	DISPO_REQUIRE_VERL=1 $(VERL_PY) -m pytest -q -m verl
	$(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) $(VERL_VENV) .cache mlflow.db mlartifacts reports/*/ site
