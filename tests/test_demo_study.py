"""studies/demo.yaml, the study `make demo` runs, stays a first run: one bound on or off, every seed
run to the end, and small enough for a 2-core machine.

Run: .venv/bin/python -m pytest tests/test_demo_study.py -q
"""

from __future__ import annotations

import re
from pathlib import Path

from workbench.sweep.study_file import load_study_file

ROOT = Path(__file__).resolve().parents[1]

# Rollout-step budget of the whole demo: trials x seeds x steps. 2 x 3 x 16 = 96 steps took about
# 2-3 minutes on 2 cores; a study past this no longer fits a 5-minute first run with the install.
MAX_DEMO_STEPS = 100


def test_demo_varies_one_bound_tight_against_off():
    study = load_study_file(ROOT / "studies" / "demo.yaml")
    assert study.sampler == "grid" and list(study.space) == ["eps_neg_down"]
    values = sorted(study.space["eps_neg_down"].values)
    assert values[0] <= 0.05 and values[-1] >= 1.0  # tight against switched off (>= 1)


def test_demo_measures_collapse_on_every_seed_and_fits_two_cores():
    study = load_study_file(ROOT / "studies" / "demo.yaml")
    # With collapse as a direction a collapsed run does not prune its trial: all seeds of both arms
    # run, so the report shows the effect per seed rather than one pruned run.
    assert "collapse" in [d.metric for d in study.directions]
    assert len(study.seeds) >= 3
    assert study.base.threads == 1 and study.workers <= 2
    assert study.n_trials * len(study.seeds) * study.base.steps <= MAX_DEMO_STEPS
    assert study.base.model.name == "micro-0.5m"
    assert study.base.sft.seed is not None  # one warm start shared by every seed: built once


def test_make_demo_runs_the_demo_study_and_says_where_to_look():
    make = (ROOT / "Makefile").read_text()
    target = re.search(r"^demo:(.*?)\n\n", make, re.S | re.M).group(0)
    assert ".installed-core" in target.splitlines()[0]  # the demo waits for the core install only
    assert "sweep run studies/demo.yaml" in target and "report demo" in target
    assert "reports/demo/index.html" in target and "dispo-wb ui" in target
