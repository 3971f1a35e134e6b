"""Figures over training steps: exploration / distillation, collapse curves, learning curves.

Each is `_get_<name>_info(runs, acc_key) -> NamedTuple` then `_build_<name>(info) -> go.Figure`.
With several runs, the per-run figures hold every run's traces and a menu that shows one
run at a time; learning curves overlay configurations, each with its seeds' band.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.metrics.collapse import length_baseline
from workbench.names import (ENTROPY_MEAN, EVAL_PREFIX, LENGTH_CORRECT, LENGTH_INCORRECT, LENGTH_MEAN, REGIMES,
                             REPETITION_RATE, REWARD_MEAN, TRAIN_ACCURACY, TRUNCATED_FRAC, regime_key)
from workbench.report.runs import (Marker, Curve, aligned, bound_suffix, collapse_config, collapse_marker, curve,
                                      final_value, group_runs, length_cap, run_label, several_studies, varied_bounds)
from workbench.tracking import RunRecord

TOP_GROUPS = 8  # learning curves: configurations drawn at first; the rest one legend click away
COLORS = {ENTROPY_MEAN: "#222222", "pos_up": "#2ca02c", "pos_down": "#17becf", "neg_up": "#d62728",
          "neg_down": "#ff7f0e", REPETITION_RATE: "#9467bd", LENGTH_MEAN: "#222222",
          LENGTH_CORRECT: "#2ca02c", LENGTH_INCORRECT: "#d62728",
          TRUNCATED_FRAC: "#8c564b"}
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


class Row(NamedTuple):
    title: str
    keys: tuple[str, ...]
    labels: tuple[str, ...]
    unit: str = ""  # y-axis title
    share: bool = False  # a share in [0, 1]: fixed axis, so one truncated response in 128 is not a spike


class Guide(NamedTuple):
    row: int  # index into the figure's rows
    value: float
    text: str


class RunPanel(NamedTuple):
    label: str
    curves: dict[str, Curve]  # metric key -> its train-step series
    guides: tuple[Guide, ...]  # horizontal reference lines (collapse limits, the length cap)
    marker: Marker | None


class PanelsInfo(NamedTuple):
    title: str
    rows: tuple[Row, ...]
    runs: tuple[RunPanel, ...]
    default: int  # index of the run shown first
    missing: tuple[str, ...]  # keys of `rows` no run logged
    undefined: dict[str, float]  # key -> share of its logged steps that hold NaN (over all runs), where > 0


def _panels(title: str, rows: tuple[Row, ...], runs: Sequence[RunRecord], default: int,
            guides=lambda run: ()) -> PanelsInfo:
    panels, seen, with_study, varied = [], set(), several_studies(runs), varied_bounds(runs)
    for r in runs:
        found = {k: c for row in rows for k in row.keys if (c := curve(r, k)) is not None}
        seen |= set(found)
        panels.append(RunPanel(run_label(r, with_study) + bound_suffix(r, varied), found, guides(r), collapse_marker(r)))
    missing = tuple(k for row in rows for k in row.keys if k not in seen)
    undefined = {}
    for k in (k for row in rows for k in row.keys if k in seen):
        values = np.concatenate([p.curves[k].values for p in panels if k in p.curves])
        if np.isnan(values).any():
            undefined[k] = float(np.isnan(values).mean())
    return PanelsInfo(title, rows, tuple(panels), default, missing, undefined)


def exploration_info(runs: Sequence[RunRecord], acc_key: str | None) -> PanelsInfo:
    rows = (
        Row("token entropy", (ENTROPY_MEAN, *(regime_key(g, "entropy") for g in REGIMES)), ("all tokens", *REGIMES),
            "entropy (nats)"),
        Row("clip fraction", tuple(regime_key(g, "clip_frac") for g in REGIMES), REGIMES, "share clipped", True),
        Row("token share", tuple(regime_key(g, "token_frac") for g in REGIMES), REGIMES, "share of tokens", True),
    )
    return _panels("Exploration / distillation", rows, runs, _best_index(runs, acc_key))


def _best_index(runs: Sequence[RunRecord], acc_key: str | None) -> int:
    finals = np.array([final_value(r, acc_key) for r in runs])
    return int(np.nanargmax(finals)) if len(finals) and not np.isnan(finals).all() else 0


def collapse_info(runs: Sequence[RunRecord], acc_key: str | None) -> PanelsInfo:
    rows = (
        Row("repetition rate", (REPETITION_RATE,), ("repetition rate",), "repeated n-gram share", True),
        Row("response length", (LENGTH_MEAN, LENGTH_CORRECT, LENGTH_INCORRECT),
            ("all", "correct", "incorrect"), "tokens"),
        Row("truncated share", (TRUNCATED_FRAC,), ("truncated",), "share of responses", True),
    )

    def guides(run: RunRecord) -> tuple[Guide, ...]:
        cfg = collapse_config(run)
        _, (length,) = aligned(run, (LENGTH_MEAN,))
        base = length_baseline(length.tolist())
        out = [Guide(0, cfg.repetition_threshold, f"collapse limit {cfg.repetition_threshold:.3g}"),
               Guide(2, cfg.truncation_threshold, f"collapse limit {cfg.truncation_threshold:.3g}")]
        if base:
            out.append(Guide(1, cfg.length_ratio * base, f"collapse limit {cfg.length_ratio * base:.3g}"))
        cap = length_cap(run)
        if cap:
            out.append(Guide(1, cap, f"length cap {cap:g}"))
        return tuple(out)

    collapsed = [i for i, r in enumerate(runs) if collapse_marker(r)]
    default = collapsed[0] if collapsed else _best_index(runs, acc_key)  # a collapse is what this figure is for
    return _panels("Collapse", rows, runs, default, guides)


def _axis(name: str, row: int) -> str:
    return f"{name}{row if row > 1 else ''}"


def plot_panels(info: PanelsInfo) -> go.Figure:
    n = len(info.rows)
    fig = make_subplots(rows=n, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[row.title for row in info.rows])
    visible = []
    for i, run in enumerate(info.runs):
        for r, row in enumerate(info.rows, start=1):
            for key, label in zip(row.keys, row.labels):
                c = run.curves.get(key)
                if c is None:
                    continue
                color = COLORS.get(key) or COLORS.get(label) or PALETTE[row.keys.index(key) % len(PALETTE)]
                # Markers where NaNs cut the line: a value between two gaps would otherwise not show.
                # No line across a missing step: a regime statistic may be undefined for most steps.
                mode = "lines+markers" if np.isnan(c.values).any() else "lines"
                fig.add_trace(go.Scatter(
                    x=c.steps.astype(np.int32), y=c.values.astype(np.float32), name=label, mode=mode,
                    marker={"size": 4}, connectgaps=False,
                    line={"color": color, "width": 2.5 if label == "all tokens" else 1.5}, legendgroup=label,
                    showlegend=(r == 1 or label not in info.rows[0].labels), visible=i == info.default), row=r, col=1)
                visible.append(i)
    base_notes = list(fig.layout.annotations)
    layouts = [_panel_layout(info, run, base_notes) for run in info.runs]
    fig.update_layout(height=260 * n + 120, title=f"{info.title}: {info.runs[info.default].label}"
                      if info.runs else info.title, legend={"orientation": "h", "y": -0.08}, **layouts[info.default])
    fig.update_xaxes(title_text="training step", row=n, col=1)
    for r, row in enumerate(info.rows, start=1):
        fig.update_yaxes(title_text=row.unit or None, row=r, col=1, **({"range": [-0.02, 1.02]} if row.share else {}))
    if len(info.runs) > 1:
        buttons = [{"label": run.label, "method": "update",
                    "args": [{"visible": [v == i for v in visible]},
                             {**layouts[i], "title.text": f"{info.title}: {run.label}"}]}
                   for i, run in enumerate(info.runs)]
        # Top left, above the title: plotly's toolbar sits top right.
        fig.update_layout(margin={"t": 130}, updatemenus=[{"buttons": buttons, "active": info.default, "x": 0.0,
                                                           "xanchor": "left", "y": 1.0, "yanchor": "bottom",
                                                           "pad": {"b": 40}}])
    return fig


def _panel_layout(info: PanelsInfo, run: RunPanel, base_notes: list) -> dict:
    shapes, notes = [], list(base_notes)
    for g in run.guides:
        xref, yref = f"{_axis('x', g.row + 1)} domain", _axis("y", g.row + 1)
        cap = g.text.startswith("length cap")
        shapes.append({"type": "line", "xref": xref, "x0": 0, "x1": 1, "yref": yref, "y0": g.value, "y1": g.value,
                       "line": {"color": "#444" if cap else "#888", "dash": "dash" if cap else "dot", "width": 1}})
        notes.append({"x": 0 if cap else 1, "xref": xref, "xanchor": "left" if cap else "right", "y": g.value,
                      "yref": yref, "yanchor": "bottom", "showarrow": False, "text": g.text,
                      "font": {"color": "#666", "size": 10}})
    if run.marker:
        m = run.marker
        shapes.append({"type": "line", "xref": "x", "x0": m.step, "x1": m.step, "yref": "paper", "y0": 0, "y1": 1,
                       "line": {"color": "#9467bd", "dash": "dash", "width": 2}})
        notes.append({"x": m.step, "xref": "x", "xanchor": "left", "xshift": 4, "y": 1.0, "yref": "paper",
                      "yanchor": "top", "showarrow": False, "bgcolor": "rgba(255,255,255,0.8)",
                      "text": f"{m.kind} collapse at step {m.step} ({m.source})", "font": {"color": "#9467bd"}})
    return {"shapes": shapes, "annotations": notes}


# ---- learning curves with seed bands ----


class Band(NamedTuple):
    steps: np.ndarray  # (N,) int
    mean: np.ndarray  # (N,) mean over the group's runs at each step
    lo: np.ndarray  # (N,) min over runs
    hi: np.ndarray  # (N,) max over runs
    minutes: np.ndarray  # (N,) mean wall-clock minutes since each run's start


class GroupCurves(NamedTuple):
    label: str
    run_ids: tuple[str, ...]
    final: float  # mean final accuracy over the group's runs
    curves: dict[str, Band]


class LearningInfo(NamedTuple):
    keys: tuple[str, ...]
    groups: tuple[GroupCurves, ...]  # best final accuracy first
    shown: int  # the first `shown` groups are drawn; the rest are one legend click away
    missing: tuple[str, ...]


def seed_band(runs: Sequence[RunRecord], key: str) -> Band | None:
    series = [r.metrics[key] for r in runs if key in r.metrics and len(r.metrics[key].steps)]
    if not series:
        return None
    steps = np.unique(np.concatenate([s.steps for s in series]))
    vals = np.full((len(series), len(steps)), np.nan)
    mins = np.full_like(vals, np.nan)
    for i, s in enumerate(series):
        idx = np.searchsorted(steps, s.steps)
        vals[i, idx], mins[i, idx] = s.values, s.elapsed_s / 60
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        return Band(steps, np.nanmean(vals, 0), np.nanmin(vals, 0), np.nanmax(vals, 0), np.nanmean(mins, 0))


def with_se(band: Band, runs: Sequence[RunRecord], key: str) -> Band:
    """One seed has no spread to show: its band is the evaluation's standard error, where logged."""
    if len(runs) > 1 or not key.endswith("/accuracy") or f"{key}_se" not in runs[0].metrics:
        return band
    se = seed_band(runs, f"{key}_se")
    if se is None or not np.array_equal(se.steps, band.steps):
        return band
    return band._replace(lo=band.mean - se.mean, hi=band.mean + se.mean)


def learning_info(runs: Sequence[RunRecord], acc_key: str | None) -> LearningInfo:
    present = {k for r in runs for k in r.metrics}
    evals = sorted(k for k in present if re.fullmatch(r"eval/[a-z0-9_.]+/(accuracy|pass_at_\d+)", k))
    wanted = (REWARD_MEAN, TRAIN_ACCURACY)
    keys = tuple(k for k in wanted if k in present) + tuple(evals)
    missing = tuple(k for k in wanted if k not in present) + (() if evals else (f"{EVAL_PREFIX}<benchmark>/accuracy",))
    if REWARD_MEAN in keys and TRAIN_ACCURACY in keys and _same_series(runs, REWARD_MEAN, TRAIN_ACCURACY):
        keys = tuple(k for k in keys if k != REWARD_MEAN)  # 0/1 rewards, no shaping: one panel, not two
    groups = []
    for g in group_runs(runs):
        curves = {k: with_se(b, g.runs, k) for k in keys if (b := seed_band(g.runs, k)) is not None}
        finals = [final_value(r, acc_key) for r in g.runs]
        final = float(np.nanmean(finals)) if not np.isnan(finals).all() else math.nan
        groups.append(GroupCurves(g.label, tuple(r.run_id for r in g.runs), final, curves))
    groups.sort(key=lambda g: -g.final if not math.isnan(g.final) else math.inf)
    return LearningInfo(keys, tuple(groups), min(TOP_GROUPS, len(groups)), missing)


def rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def plot_learning(info: LearningInfo) -> go.Figure:
    n = max(len(info.keys), 1)
    fig = make_subplots(rows=n, cols=2, shared_xaxes="columns", horizontal_spacing=0.08, vertical_spacing=0.05,
                        column_titles=["over training steps", "over wall-clock time"])
    for gi, g in enumerate(info.groups):
        color = PALETTE[gi % len(PALETTE)]
        visible: bool | str = True if gi < info.shown else "legendonly"
        first = True
        for r, key in enumerate(info.keys, start=1):
            b = g.curves.get(key)
            if b is None:
                continue
            mode = "lines+markers" if key.startswith(EVAL_PREFIX) else "lines"
            for col, x in ((1, b.steps.astype(np.int32)), (2, b.minutes.astype(np.float32))):
                if len(g.run_ids) > 1 or np.any(b.hi > b.lo):
                    ok = ~np.isnan(b.lo)
                    fig.add_trace(go.Scatter(
                        x=np.concatenate([x[ok], x[ok][::-1]]),
                        y=np.concatenate([b.hi[ok], b.lo[ok][::-1]]).astype(np.float32),
                        fill="toself", fillcolor=rgba(color, 0.18), line={"width": 0}, hoverinfo="skip",
                        legendgroup=g.label, showlegend=False, visible=visible), row=r, col=col)
                fig.add_trace(go.Scatter(x=x, y=b.mean.astype(np.float32), mode=mode, name=g.label,
                                         line={"color": color, "width": 1.5}, marker={"size": 4},
                                         legendgroup=g.label, showlegend=first, visible=visible), row=r, col=col)
                first = False
    for r, key in enumerate(info.keys, start=1):
        fig.update_yaxes(title_text=axis_title(key), row=r, col=1, range=[-0.02, 1.02] if _is_share(key) else None)
        fig.update_yaxes(range=[-0.02, 1.02] if _is_share(key) else None, row=r, col=2)
    fig.update_xaxes(title_text="training step", row=n, col=1)
    fig.update_xaxes(title_text="minutes since run start", row=n, col=2)
    fig.update_layout(height=230 * n + 200, title="Learning curves (mean over seeds; band: min-max over seeds, or +- the evaluation's standard error for one seed)",
                      legend={"orientation": "h", "y": -0.12, "font": {"size": 10}})
    return fig


def _same_series(runs: Sequence[RunRecord], a: str, b: str) -> bool:
    """Whether every run logged `a` and `b` with the same values (reward is accuracy when nothing shapes it)."""
    for r in runs:
        x, y = r.metrics.get(a), r.metrics.get(b)
        if x is None or y is None:
            continue
        if len(x.values) != len(y.values) or not np.allclose(x.values, y.values, equal_nan=True):
            return False
    return True


_TITLES = {REWARD_MEAN: "mean reward", TRAIN_ACCURACY: "train accuracy"}


def axis_title(key: str) -> str:
    """A y-axis title in words, with the metric key for reference."""
    if key in _TITLES:
        return _TITLES[key]
    m = re.fullmatch(r"eval/([a-z0-9_.]+)/(accuracy|pass_at_(\d+))", key)
    if m:
        return f"{'avg@k' if m.group(2) == 'accuracy' else 'pass@' + m.group(3)}, {m.group(1)}"
    return key


def _is_share(key: str) -> bool:
    return key == TRAIN_ACCURACY or bool(re.fullmatch(r"eval/[a-z0-9_.]+/(accuracy|pass_at_\d+)", key))
