"""Collapse detection on synthetic histories.

Run: .venv/bin/python -m pytest tests/test_collapse.py -q
"""

import math

import pytest

from workbench.collapse import BASELINE_STEPS, CollapseVerdict, detect_collapse
from workbench.config import CollapseConfig

CFG = CollapseConfig(repetition_threshold=0.5, length_ratio=0.35, patience=3)


def _steps(n):
    return list(range(1, n + 1))


def _repetition_history(n=30, onset=12):
    return [0.05 + 0.01 * (i % 3) if s < onset else 0.85 for i, s in enumerate(_steps(n))]


def _length_history(n=30, onset=17, base=20.0):
    return [base + (i % 4) if s < onset else 3.0 for i, s in enumerate(_steps(n))]


def test_repetition_onset_is_first_step_of_the_streak():
    n = 30
    v = detect_collapse(_steps(n), _repetition_history(n, onset=12), [20.0] * n, CFG)
    assert v == CollapseVerdict("repetition", 12)


def test_length_onset_is_first_step_below_the_ratio():
    n = 30
    v = detect_collapse(_steps(n), [0.05] * n, _length_history(n, onset=17), CFG)
    assert v == CollapseVerdict("length", 17)


def test_steps_are_reported_as_given_not_as_indices():
    steps = [10 * s for s in _steps(30)]
    v = detect_collapse(steps, _repetition_history(30, onset=12), [], CFG)
    assert v.onset_step == 120


def test_healthy_run_is_not_flagged():
    n = 60
    rep = [0.05 + 0.4 * ((i * 7) % 5 == 0) for i in range(n)]  # isolated spikes up to 0.45
    length = [20.0 + 5 * math.sin(i) for i in range(n)]
    assert detect_collapse(_steps(n), rep, length, CFG) == CollapseVerdict(None, None)


def test_short_streaks_and_nans_do_not_count():
    rep = [0.1, 0.9, 0.9, 0.1, 0.9, math.nan, 0.9, 0.9, 0.1, 0.1]
    assert detect_collapse(_steps(10), rep, [], CFG).kind is None
    assert detect_collapse(_steps(10), rep, [], CFG.model_copy(update={"patience": 2})) == CollapseVerdict("repetition", 2)


def test_length_needs_a_full_baseline_window():
    # Short from the start: the baseline itself is short, so nothing is relative to it.
    assert detect_collapse(_steps(20), [], [2.0] * 20, CFG).kind is None
    # Collapse right after the window is caught at the first step after it.
    length = [20.0] * BASELINE_STEPS + [1.0] * 10
    assert detect_collapse(_steps(15), [], length, CFG) == CollapseVerdict("length", BASELINE_STEPS + 1)


def test_the_streak_that_completes_first_wins_and_repetition_wins_ties():
    n = 30
    rep = _repetition_history(n, onset=20)
    length = _length_history(n, onset=15)
    assert detect_collapse(_steps(n), rep, length, CFG) == CollapseVerdict("length", 15)
    assert detect_collapse(_steps(n), _repetition_history(n, onset=15), length, CFG) == CollapseVerdict("repetition", 15)


@pytest.mark.parametrize("rep_onset,len_onset", [(12, 40), (40, 9), (25, 26), (None, None)])
def test_online_verdict_equals_verdict_on_the_full_history(rep_onset, len_onset):
    """The trainer checks after every step and keeps its first verdict; the report sees it all."""
    n = 45
    rep = _repetition_history(n, onset=rep_onset or n + 1)
    length = _length_history(n, onset=len_onset or n + 1)
    online = CollapseVerdict(None, None)
    for t in range(1, n + 1):
        online = detect_collapse(_steps(t), rep[:t], length[:t], CFG)
        if online.kind:
            break
    assert detect_collapse(_steps(n), rep, length, CFG) == online


def test_series_of_the_wrong_length_are_rejected():
    with pytest.raises(ValueError, match="repetition_rate has 3 values but steps has 4"):
        detect_collapse(_steps(4), [0.1, 0.2, 0.3], [], CFG)
