"""Collapse detection on synthetic histories.

Run: .venv/bin/python -m pytest tests/test_collapse.py -q
"""

import math

import pytest

from workbench.metrics.collapse import BASELINE_STEPS, KINDS, CollapseVerdict, assess, detect_collapse
from workbench.config import CollapseConfig

CFG = CollapseConfig(repetition_threshold=0.5, length_ratio=0.35, patience=3)
REP, LEN, TRUNC, ACC = "response/repetition_rate", "response/length_mean", "response/truncated_frac", "train/accuracy"


def _detect(steps, rep, length, cfg=CFG):
    return detect_collapse(steps, {REP: rep, LEN: length}, cfg)


def _steps(n):
    return list(range(1, n + 1))


def _repetition_history(n=30, onset=12):
    return [0.05 + 0.01 * (i % 3) if s < onset else 0.85 for i, s in enumerate(_steps(n))]


def _length_history(n=30, onset=17, base=20.0):
    return [base + (i % 4) if s < onset else 3.0 for i, s in enumerate(_steps(n))]


def test_repetition_onset_is_first_step_of_the_streak():
    n = 30
    v = _detect(_steps(n), _repetition_history(n, onset=12), [20.0] * n, CFG)
    assert v == CollapseVerdict("repetition", 12)


def test_length_onset_is_first_step_below_the_ratio():
    n = 30
    v = _detect(_steps(n), [0.05] * n, _length_history(n, onset=17), CFG)
    assert v == CollapseVerdict("length", 17)


def test_steps_are_reported_as_given_not_as_indices():
    steps = [10 * s for s in _steps(30)]
    v = _detect(steps, _repetition_history(30, onset=12), [], CFG)
    assert v.onset_step == 120


def test_healthy_run_is_not_flagged():
    n = 60
    rep = [0.05 + 0.4 * ((i * 7) % 5 == 0) for i in range(n)]  # isolated spikes up to 0.45
    length = [20.0 + 5 * math.sin(i) for i in range(n)]
    assert _detect(_steps(n), rep, length, CFG) == CollapseVerdict(None, None)


def test_short_streaks_and_nans_do_not_count():
    rep = [0.1, 0.9, 0.9, 0.1, 0.9, math.nan, 0.9, 0.9, 0.1, 0.1]
    assert _detect(_steps(10), rep, [], CFG).kind is None
    assert _detect(_steps(10), rep, [], CFG.model_copy(update={"patience": 2})) == CollapseVerdict("repetition", 2)


def test_length_needs_a_full_baseline_window():
    # Short from the start: the baseline itself is short, so nothing is relative to it.
    assert _detect(_steps(20), [], [2.0] * 20, CFG).kind is None
    # Collapse right after the window is caught at the first step after it.
    length = [20.0] * BASELINE_STEPS + [1.0] * 10
    assert _detect(_steps(15), [], length, CFG) == CollapseVerdict("length", BASELINE_STEPS + 1)


def test_the_streak_that_completes_first_wins_and_repetition_wins_ties():
    n = 30
    rep = _repetition_history(n, onset=20)
    length = _length_history(n, onset=15)
    assert _detect(_steps(n), rep, length, CFG) == CollapseVerdict("length", 15)
    assert _detect(_steps(n), _repetition_history(n, onset=15), length, CFG) == CollapseVerdict("repetition", 15)


@pytest.mark.parametrize("rep_onset,len_onset", [(12, 40), (40, 9), (25, 26), (None, None)])
def test_online_verdict_equals_verdict_on_the_full_history(rep_onset, len_onset):
    """The trainer checks after every step and keeps its first verdict; the report sees it all."""
    n = 45
    rep = _repetition_history(n, onset=rep_onset or n + 1)
    length = _length_history(n, onset=len_onset or n + 1)
    online = CollapseVerdict(None, None)
    for t in range(1, n + 1):
        online = _detect(_steps(t), rep[:t], length[:t], CFG)
        if online.kind:
            break
    assert _detect(_steps(n), rep, length, CFG) == online


def test_series_of_the_wrong_length_are_rejected():
    with pytest.raises(ValueError, match="repetition_rate has 3 values but steps has 4"):
        _detect(_steps(4), [0.1, 0.2, 0.3], [])


# ---- runaway length and accuracy crash; each criterion's state ----


def _flat(n, value):
    return [value] * n


def test_truncation_at_the_cap_is_a_runaway_collapse_without_any_repetition():
    n = 20
    trunc = [0.0] * 4 + [0.9] * 16  # the unstable run of issue 14: 0 -> 0.9 at step 5
    v = detect_collapse(_steps(n), {REP: _flat(n, 0.1), LEN: _flat(n, 20.0), TRUNC: trunc}, CFG)
    assert v == CollapseVerdict("runaway", 5)


def test_accuracy_crash_is_relative_to_the_first_steps():
    n = 20
    acc = [0.2, 0.25, 0.15, 0.2, 0.2] + [0.18, 0.02, 0.0, 0.01, 0.0] + _flat(10, 0.0)
    assert detect_collapse(_steps(n), {ACC: acc}, CFG) == CollapseVerdict("accuracy", 7)
    # Noise around the baseline (one step at 0.04) is no crash.
    noisy = [0.2] * 5 + [0.04, 0.2, 0.04, 0.15] + _flat(11, 0.2)
    assert detect_collapse(_steps(n), {ACC: noisy}, CFG).kind is None


def test_accuracy_that_was_never_there_cannot_crash():
    n = 20
    acc = [0.02, 0.0, 0.03, 0.0, 0.0] + _flat(15, 0.0)
    (crit,) = [c for c in assess(_steps(n), {ACC: acc}, CFG) if c.kind == "accuracy"]
    assert crit.state == "no baseline" and crit.onset_step is None


def test_every_criterion_has_a_state_and_a_stated_criterion():
    n = 12
    crits = assess(_steps(n), {REP: [0.1] * 10 + [0.6, 0.6], LEN: _flat(n, 20.0), TRUNC: []}, CFG)
    assert [c.kind for c in crits] == list(KINDS)
    state = {c.kind: c for c in crits}
    assert state["repetition"].state == "ok" and state["repetition"].longest == 2
    assert state["repetition"].worst == 0.6
    assert state["length"].state == "ok"
    assert state["runaway"].state == "not logged" and state["accuracy"].state == "not logged"
    assert "repetition rate >= 0.5 for 3 consecutive steps" == state["repetition"].text
    assert "0.5" in state["runaway"].text and "0.25 x" in state["accuracy"].text


@pytest.mark.parametrize("kind,series,onset", [
    ("repetition", {REP: [0.1] * 8 + [0.7] * 6}, 9),
    ("length", {LEN: [20.0] * 8 + [3.0] * 6}, 9),
    ("runaway", {TRUNC: [0.05] * 8 + [0.8] * 6}, 9),
    ("accuracy", {ACC: [0.3] * 8 + [0.0] * 6}, 9),
])
def test_each_kind_alone_is_flagged_at_its_onset_and_online_agrees(kind, series, onset):
    n = 14
    assert detect_collapse(_steps(n), series, CFG) == CollapseVerdict(kind, onset)
    online = next(v for t in range(1, n + 1)
                  if (v := detect_collapse(_steps(t), {k: s[:t] for k, s in series.items()}, CFG)).kind)
    assert online == CollapseVerdict(kind, onset)
