"""The collapse detector on a real run's series, saved as a fixture, and what the report says about it.

tests/fixtures/unstable_run.json: micro-0.5m, lr 1e-4, eps_neg_up 0.01, 25 steps, seed 0 (its
command is in the file). Truncation went 0 -> 0.98, length to the 48-token cap, repetition
0.02 -> 0.93, train accuracy 0.28 -> 0 and held-out avg@2... 0.236 -> 0.000. The detector that
knew only repetition and falling length let the first 15 steps of this run pass as healthy.
Run: .venv/bin/python -m pytest tests/test_collapse_real.py -q
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from workbench import tracking
from workbench.report import page as report
from workbench.metrics.collapse import SIGNALS, CollapseVerdict, assess, detect_collapse
from workbench.config import CollapseConfig

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "unstable_run.json").read_text())


def _train_series(keys):
    steps = [s for s, _ in FIXTURE["series"]["train/accuracy"] if s >= 1]
    return steps, {k: [v for s, v in FIXTURE["series"][k] if s >= 1] for k in keys}


def test_the_unstable_run_is_flagged_as_the_trainer_tagged_it():
    steps, series = _train_series(SIGNALS.values())
    assert detect_collapse(steps, series, CollapseConfig()) == CollapseVerdict("accuracy", 6)
    assert FIXTURE["tags"] == {"collapse": "accuracy", "collapse_step": "6"}  # what the trainer wrote


def test_every_criterion_of_the_unstable_run():
    steps, series = _train_series(SIGNALS.values())
    state = {c.kind: (c.state, c.onset_step) for c in assess(steps, series, CollapseConfig())}
    assert state == {"repetition": ("collapsed", 16), "length": ("ok", None), "runaway": ("collapsed", 15),
                     "accuracy": ("collapsed", 6)}


def test_online_the_trainer_flags_it_at_the_same_step():
    steps, series = _train_series(SIGNALS.values())
    for t in range(1, len(steps) + 1):
        v = detect_collapse(steps[:t], {k: s[:t] for k, s in series.items()}, CollapseConfig())
        if v.kind:
            break
    assert v == CollapseVerdict("accuracy", 6) and t == 8  # known after the third step of the streak


def test_with_repetition_and_length_alone_it_would_pass_until_step_18():
    steps, series = _train_series(("response/repetition_rate", "response/length_mean"))
    assert detect_collapse(steps, series, CollapseConfig()) == CollapseVerdict("repetition", 16)
    assert detect_collapse(steps[:17], {k: s[:17] for k, s in series.items()}, CollapseConfig()).kind is None


@pytest.fixture()
def logged(tmp_path):
    """The fixture logged as the trainer logs it, without its collapse tag: the report must find it alone."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = tracking.experiment_id(client, "unstable")
    run = client.create_run(exp, run_name="unstable-s0", tags={"dispo.kind": "train"})
    t0 = int(time.time() * 1000)
    metrics = [Metric(k, float(v), t0 + 1000 * s, s) for k, vals in FIXTURE["series"].items() for s, v in vals]
    client.log_batch(run.info.run_id, metrics=metrics,
                     params=[Param(k, v) for k, v in {**FIXTURE["params"], "objective.name": "dispo"}.items()],
                     synchronous=True)
    client.set_terminated(run.info.run_id)
    return uri, run.info.run_id


def test_the_report_calls_it_collapsed_and_shows_each_criterion(logged, tmp_path):
    uri, run_id = logged
    found = tracking.resolve_target(run_id, uri)
    tracking.load_histories(found.runs, uri)
    (row,) = report.summary_info(found, "eval/micro/accuracy").rows
    assert row.collapse == "accuracy at step 6"
    assert [(c.kind, c.state, c.onset_step) for c in row.criteria] == [
        ("repetition", "collapsed", 16), ("length", "ok", None), ("runaway", "collapsed", 15),
        ("accuracy", "collapsed", 6)]
    assert row.start_acc == pytest.approx(0.236, abs=1e-3) and row.final_acc == 0.0
    assert row.gain == pytest.approx(-0.236, abs=1e-3)
    page = report.make_report(run_id, tracking_uri=uri, out_dir=tmp_path, png=False, log_artifact=False).read_text()
    assert "accuracy at step 6" in page and "truncated share &gt;= 0.5" in page
    assert "length cap 48" in (tmp_path / "unstable-s0" / "collapse.html").read_text()
    # The tag agrees with the report: an experiment the UI opens on its runs table.
    assert MlflowClient(uri).get_experiment_by_name("unstable").tags["mlflow.experimentKind"] == "custom_model_development"
