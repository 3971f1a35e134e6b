"""The report's "Where the time went" section: phase medians, "other", the cap, the notes, the page.

Runs are `RunRecord`s built in memory (no store) except for the page test, which logs one run
into a temporary MLflow store as tests/report_fixtures.py does.
Run: .venv/bin/python -m pytest tests/test_report_perf.py -q
"""

from __future__ import annotations

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from tests.report_fixtures import FakeRun, experiment, log_run
from workbench.report import page as report
from workbench.names import (ROLLOUT_POSITIONS_PER_S, ROLLOUT_TOKENS_PER_S, STEP_S, TRACKING_S, UPDATE_TOKENS_PER_S,
                             phase_key)
from workbench.report import perf
from workbench.tracking import MetricSeries, RunRecord, TargetRuns


def _run(name: str, series: dict[str, list[float]], tags: dict[str, str] | None = None) -> RunRecord:
    metrics = {k: MetricSeries(np.arange(1, len(v) + 1), np.asarray(v, float), np.arange(1, len(v) + 1) * 2.0)
               for k, v in series.items()}
    return RunRecord(run_id=f"{name:0<32}"[:32], name=name, experiment_id="0", status="FINISHED", start_ms=0,
                     end_ms=None, params={}, tags=tags or {}, metric_keys=tuple(metrics), metrics=metrics)


def _timed(name: str, step_s: list[float], **phases: list[float]) -> RunRecord:
    return _run(name, {STEP_S: step_s, **{phase_key(p): v for p, v in phases.items()}})


def _target(runs: list[RunRecord]) -> TargetRuns:
    return TargetRuns("experiment", "x", runs, None, "0")


def test_medians_leave_out_the_warm_up_step():
    # Step 1 pays the warm-up (30 s of generation); steps 2-5 are steady.
    run = _timed("warm", [40.0, 5.0, 6.0, 7.0, 5.5], generate=[30.0, 2.0, 3.0, 4.0, 2.5])
    p = perf.perf_info([run]).runs[0]
    assert p.steps_used == 4
    assert p.seconds["generate"] == pytest.approx(2.75)  # median of 2, 3, 4, 2.5; with step 1 it would be 3
    assert p.step_s == pytest.approx(5.75)
    # Two steps: nothing is left out (there would be one step left to take a median of).
    short = perf.perf_info([_timed("short", [40.0, 5.0], generate=[30.0, 2.0])]).runs[0]
    assert short.steps_used == 2 and short.seconds["generate"] == pytest.approx(16.0)


def test_other_is_step_time_minus_the_phases_inside_it_never_negative():
    run = _run("r", {
        STEP_S: [9.0, 10.0, 10.0, 4.0, 12.0],
        phase_key("generate"): [1.0, 4.0, 5.0, 3.0, 5.0],
        phase_key("reward"): [1.0, 1.0, 1.0, 1.0, 1.0],
        phase_key("old_logp"): [1.0, 1.0, 1.0, 1.0, 1.0],
        phase_key("update"): [1.0, 2.0, 2.0, 2.0, 2.0],
        # Timed after perf/step_s was taken: not part of it, so not taken out of "other".
        TRACKING_S: [0.5, 0.5, 0.5, 0.5, 0.5],
    })
    p = perf.perf_info([run]).runs[0]
    # Per step (2-5): 10-8=2, 10-9=1, 4-7 -> 0 (clipped: the clocks disagree by a little), 12-9=3.
    assert p.seconds["other"] == pytest.approx(1.5)
    assert p.seconds["tracking"] == pytest.approx(0.5)
    assert all(v >= 0 for v in p.seconds.values())
    # A run whose phases always exceed its step time: "other" is 0, not negative.
    over = perf.perf_info([_timed("over", [1.0, 1.0, 1.0], generate=[2.0, 2.0, 2.0])]).runs[0]
    assert over.seconds["other"] == 0.0


def test_the_slowest_runs_are_drawn_up_to_the_cap_and_the_note_says_so():
    runs = [_timed(f"run-{i:02d}", [float(i)] * 4, generate=[i / 2] * 4) for i in range(1, 16)]
    info = perf.perf_info(runs)
    assert info.total == 15 and len(info.runs) == perf.MAX_RUNS == 12
    assert [p.label for p in info.runs] == [f"run-{i:02d}" for i in range(15, 3, -1)]  # slowest first
    assert "the 12 slowest of 15 runs by median s/step are drawn" in perf.perf_note(info)
    # Below the cap: every run, no note.
    few = perf.perf_info(runs[:3])
    assert len(few.runs) == 3 and perf.perf_note(few) is None


def test_runs_without_perf_series_get_a_not_logged_note_and_no_figure():
    old = _run("old", {"reward/mean": [0.1, 0.2, 0.3]})
    info = perf.perf_info([old])
    assert info.total == 0 and info.missing == ("old",)
    section = next(s for s in report._sections(_target([old]), None) if s.name == "perf")
    assert section.figure is None and section.note.startswith("not logged: perf/*")
    # Mixed: the timed run is drawn, the other one named.
    info = perf.perf_info([old, _timed("new", [2.0, 2.0, 2.0], generate=[1.0, 1.0, 1.0])])
    assert [p.label for p in info.runs] == ["new"]
    assert perf.perf_note(info) == "not logged: perf/* in 1 run(s): old"


def test_a_step_time_without_phases_is_one_unsplit_bar():
    engine = _run("verl", {STEP_S: [9.0, 3.0, 3.0, 3.0]})
    info = perf.perf_info([engine])
    assert info.runs[0].seconds == {perf.UNSPLIT: 3.0} and info.unsplit == ("verl",)
    assert perf.perf_note(info) == "step time only, no phase split: verl"


def test_throughput_keeps_every_step_and_labels_follow_the_other_sections():
    tags = {"dispo.trial": "3", "dispo.seed": "1", "dispo.study": "s"}
    run = _run("t", {STEP_S: [3.0, 2.0, 2.0], ROLLOUT_TOKENS_PER_S: [50.0, 90.0, 95.0],
                     ROLLOUT_POSITIONS_PER_S: [80.0, 150.0, 160.0], UPDATE_TOKENS_PER_S: [10.0, 40.0, 44.0]}, tags)
    p = perf.perf_info([run, _run("u", {STEP_S: [1.0]})]).runs[0]
    assert p.label == "trial 3 seed 1"
    assert p.throughput[ROLLOUT_TOKENS_PER_S].values.tolist() == [50.0, 90.0, 95.0]
    assert p.throughput[ROLLOUT_POSITIONS_PER_S].steps.tolist() == [1, 2, 3]
    assert p.update_tokens_per_s == pytest.approx(42.0)
    fig = perf.plot_perf(perf.perf_info([run]))
    assert fig.layout.xaxis.title.text == "seconds per step (s)" and fig.layout.yaxis2.title.text == "tokens/s"


def test_two_runs_with_one_name_get_two_bars():
    a, b = _timed("same", [2.0] * 3, generate=[1.0] * 3), _timed("same", [3.0] * 3, generate=[1.0] * 3)
    b.run_id = "b" * 32
    labels = [p.label for p in perf.perf_info([a, b]).runs]
    assert len(set(labels)) == 2 and labels[0] == "same (bbbbbbbb)"


def test_the_section_is_in_a_built_report(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    rid = log_run(client, experiment(client), FakeRun("timed-run", steps=5, eval_every=5))
    phases = {"generate": 0.9, "reward": 0.2, "old_logp": 0.3, "update": 0.4, "tracking": 0.05}
    client.log_batch(rid, metrics=[Metric(phase_key(p), v, 0, s) for p, v in phases.items() for s in range(1, 6)],
                     synchronous=True)
    page = report.make_report("timed-run", tracking_uri=uri, out_dir=tmp_path, png=False,
                              log_artifact=False).read_text()
    assert '<section id="perf"><h2>Where the time went</h2>' in page and 'id="fig-perf"' in page
