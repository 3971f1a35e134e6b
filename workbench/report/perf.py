"""Where a run spends its time: seconds per step by phase, and rollout throughput with its padding.

`perf_info(runs) -> PerfInfo`, then `plot_perf(info) -> go.Figure`: a stacked horizontal
bar per run of the median seconds per step in each phase, and below it the per-step rollout
throughput, real response tokens/s against padded positions/s decoded.

The trainer times `generate`, `reward`, `old_logp` and `update` inside `perf/step_s`; "other"
is the rest of the step (step_s minus those four, per step, never below 0). `perf/tracking_s`
is timed after `perf/step_s` is taken (the step's own MLflow calls), so it is stacked after
"other" and a bar is step_s + tracking_s long, not step_s. A run that logged step_s but no
phase (verl, TRL) gets one "not split" bar. Medians leave out the first step when there are
at least 3: it pays the warm-up (allocator, kernels, first snapshot).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from workbench.names import (ROLLOUT_POSITIONS_PER_S, ROLLOUT_TOKENS_PER_S, STEP_S, TRACKING_S, UPDATE_TOKENS_PER_S,
                             phase_key)
from workbench.report.runs import Curve, curve, run_label, several_studies
from workbench.tracking import RunRecord

# 12 bars fit one screen beside their labels, and 24 throughput lines are still told apart by colour;
# the slowest are kept because they are the runs whose time a reader wants explained.
MAX_RUNS = 12
PHASES = ("generate", "reward", "old_logp", "update")  # timed inside perf/step_s
OTHER, TRACKING, UNSPLIT = "other", "tracking", "not split"
SEGMENTS = (*PHASES, OTHER, TRACKING, UNSPLIT)
RUN_COLORS = qualitative.Dark24  # MAX_RUNS runs without a colour repeating
COLORS = {"generate": "#1f77b4", "reward": "#2ca02c", "old_logp": "#9467bd", "update": "#ff7f0e",
          OTHER: "#7f7f7f", TRACKING: "#e377c2", UNSPLIT: "#c7c7c7"}
THROUGHPUT = (ROLLOUT_TOKENS_PER_S, ROLLOUT_POSITIONS_PER_S)
PERF_KEYS = (*(phase_key(p) for p in PHASES), TRACKING_S, STEP_S, *THROUGHPUT, UPDATE_TOKENS_PER_S)


class RunPerf(NamedTuple):
    label: str
    run_id: str
    step_s: float  # median perf/step_s over the steps used; NaN when not logged
    seconds: dict[str, float]  # segment (SEGMENTS) -> median seconds per step; only the segments it has
    steps_used: int  # steps the medians are taken over (first step left out when there are >= 3)
    update_tokens_per_s: float  # median; NaN when not logged
    throughput: dict[str, Curve]  # THROUGHPUT key -> its per-step series


class PerfInfo(NamedTuple):
    runs: tuple[RunPerf, ...]  # slowest median step first, at most MAX_RUNS
    total: int  # runs that logged any perf/* series
    unsplit: tuple[str, ...]  # labels of drawn runs with a step time but no phase split
    missing: tuple[str, ...]  # labels of runs with no perf/* series at all


def _frame(run: RunRecord) -> pd.DataFrame:
    """The run's perf series as columns over train steps (NaN where a key skipped a step)."""
    cols = {k: pd.Series(c.values, index=c.steps) for k in PERF_KEYS if (c := curve(run, k)) is not None}
    return pd.DataFrame(cols).sort_index()


def _steady(frame: pd.DataFrame) -> pd.DataFrame:
    """The steps medians are taken over: all but the first when there are at least 3 (it pays the warm-up)."""
    return frame.iloc[1:] if len(frame) >= 3 else frame


def _seconds(used: pd.DataFrame) -> dict[str, float]:
    """Median seconds per step of each segment the run logged (SEGMENTS order)."""
    phases = [phase_key(p) for p in PHASES if phase_key(p) in used]
    seconds = {p: used[phase_key(p)].median() for p in PHASES if phase_key(p) in used}
    if phases and STEP_S in used:
        # Per step, then the median: a step's phases and its total come from the same step.
        seconds[OTHER] = (used[STEP_S] - used[phases].sum(axis=1, min_count=1)).clip(lower=0).median()
    if phases and TRACKING_S in used:
        seconds[TRACKING] = used[TRACKING_S].median()
    if not phases and STEP_S in used:
        seconds[UNSPLIT] = used[STEP_S].median()
    return {k: float(v) for k, v in seconds.items() if not math.isnan(v)}


def _median(used: pd.DataFrame, key: str) -> float:
    return float(used[key].median()) if key in used else math.nan


def _labels(runs: Sequence[RunRecord]) -> list[str]:
    """The other sections' run labels, with a short run id where two runs would share one bar."""
    with_study = several_studies(runs)
    labels = [run_label(r, with_study) for r in runs]
    return [f"{lab} ({r.run_id[:8]})" if labels.count(lab) > 1 else lab for lab, r in zip(labels, runs)]


def perf_info(runs: Sequence[RunRecord]) -> PerfInfo:
    found, missing = [], []
    for run, label in zip(runs, _labels(runs)):
        frame = _frame(run)
        if frame.empty:
            missing.append(label)
            continue
        used = _steady(frame)
        lines = {k: c for k in THROUGHPUT if (c := curve(run, k)) is not None}
        found.append(RunPerf(label, run.run_id, _median(used, STEP_S), _seconds(used), len(used),
                             _median(used, UPDATE_TOKENS_PER_S), lines))
    found.sort(key=_slowness, reverse=True)
    shown = tuple(found[:MAX_RUNS])
    unsplit = tuple(p.label for p in shown if UNSPLIT in p.seconds)
    return PerfInfo(shown, len(found), unsplit, tuple(missing))


def _slowness(p: RunPerf) -> float:
    """Median s/step; without it the bar's length; a run with neither (throughput only) ranks last."""
    if not math.isnan(p.step_s):
        return p.step_s
    return sum(p.seconds.values()) if p.seconds else -math.inf


def perf_note(info: PerfInfo) -> str | None:
    """What the figure leaves out, for the section's note; "not logged" when no run has perf/* series."""
    if not info.total:
        return ("not logged: perf/* (no run here logged step timings: runs from before the phase timers, or "
                "from an engine that logs none)")
    notes = []
    if info.total > len(info.runs):
        notes.append(f"the {len(info.runs)} slowest of {info.total} runs by median s/step are drawn")
    if info.missing:
        notes.append(f"not logged: perf/* in {len(info.missing)} run(s): {_some(info.missing)}")
    if info.unsplit:
        notes.append(f"step time only, no phase split: {_some(info.unsplit)}")
    return "; ".join(notes) or None


def _some(labels: Sequence[str], n: int = 4) -> str:
    return ", ".join(labels[:n]) + (f", and {len(labels) - n} more" if len(labels) > n else "")


def _hover(p: RunPerf) -> str:
    """A run's totals beside each of its bar segments: median s/step and update throughput, where logged."""
    text = f"median {p.step_s:.3g} s/step" if not math.isnan(p.step_s) else "no perf/step_s"
    text += f" over {p.steps_used} steps"
    if not math.isnan(p.update_tokens_per_s):
        text += f"; update {p.update_tokens_per_s:.4g} tokens/s"
    return text


def plot_perf(info: PerfInfo) -> go.Figure:
    n = max(len(info.runs), 1)
    bar_h, line_h = 28 * n + 60, 320
    fig = make_subplots(rows=2, cols=1, row_heights=[bar_h, line_h], vertical_spacing=120 / (bar_h + line_h + 120),
                        subplot_titles=["seconds per step by phase (median over steps, first step left out)",
                                        "rollout throughput per step: real response tokens/s (solid) vs padded "
                                        "positions/s decoded (dotted)"])
    labels = [p.label for p in info.runs]
    hover = [_hover(p) for p in info.runs]
    for seg in SEGMENTS:
        x = [p.seconds.get(seg) for p in info.runs]
        if all(v is None for v in x):
            continue
        fig.add_trace(go.Bar(y=labels, x=x, orientation="h", name=seg, marker_color=COLORS[seg],
                             legendgroup="phases", legendgrouptitle_text="phase (s/step)", customdata=hover,
                             hovertemplate=f"%{{y}}<br>{seg}: %{{x:.3g}} s<br>%{{customdata}}<extra></extra>"),
                      row=1, col=1)
    titled = False
    for i, p in enumerate(info.runs):
        color, first = RUN_COLORS[i % len(RUN_COLORS)], True
        for key, dash, what in ((ROLLOUT_TOKENS_PER_S, "solid", "real tokens/s"),
                                (ROLLOUT_POSITIONS_PER_S, "dot", "padded positions/s")):
            c = p.throughput.get(key)
            if c is None:
                continue
            fig.add_trace(go.Scatter(x=c.steps, y=c.values, mode="lines", name=p.label, legendgroup=p.label,
                                     showlegend=first, legendgrouptitle_text=None if titled else "run (throughput)",
                                     line={"color": color, "dash": dash, "width": 1.5},
                                     hovertemplate=f"{p.label}<br>step %{{x}}: %{{y:.4g}} {what}<extra></extra>"),
                          row=2, col=1)
            first, titled = False, True
    # "grouped": plotly would list stacked bars' legend entries bottom-up, against the stacking order.
    fig.update_layout(barmode="stack", height=bar_h + line_h + 260, title="Where the time went",
                      legend={"traceorder": "grouped", "tracegroupgap": 4, "font": {"size": 11}})
    fig.update_yaxes(autorange="reversed", row=1, col=1)  # slowest on top
    fig.update_xaxes(title_text="seconds per step (s)", row=1, col=1)
    fig.update_xaxes(title_text="training step", row=2, col=1)
    fig.update_yaxes(title_text="tokens/s", rangemode="tozero", row=2, col=1)
    return fig
