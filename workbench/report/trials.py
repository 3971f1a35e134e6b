"""Trials side by side: one small panel per signal, one line per configuration, labelled by its bounds.

The exploration and collapse figures show one run at a time; this one overlays every
configuration (a sweep trial, or runs differing only in seed) so that clip fractions, entropy,
length and repetition can be compared across the bounds that were searched. A line is the mean
over seeds, its band the min-max over seeds (or, for held-out accuracy of one seed, +- the
evaluation's standard error). `trials_info(runs, acc_key) -> TrialsInfo`, then
`plot_trials(info) -> go.Figure`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.names import (ENTROPY_MEAN, EVAL_PREFIX, LENGTH_MEAN, REGIMES, REPETITION_RATE, TAG_TRIAL,
                             TRUNCATED_FRAC, regime_key)
from workbench.report.curves import PALETTE, Band, seed_band, rgba, with_se, axis_title
from workbench.report.runs import (bound_suffix, final_value, group_runs, run_label, several_studies,
                                      varied_bounds)
from workbench.tracking import RunRecord

MAX_LINES = 10  # configurations drawn at first; the rest are one legend click away


class Panel(NamedTuple):
    key: str
    title: str
    unit: str
    share: bool  # a share in [0, 1]: fixed axis


PANELS = (
    Panel(ENTROPY_MEAN, "token entropy", "nats", False),
    *(Panel(regime_key(g, "clip_frac"), f"clip fraction {g}", "share clipped", True) for g in REGIMES),
    Panel(LENGTH_MEAN, "response length", "tokens", False),
    Panel(REPETITION_RATE, "repetition rate", "repeated n-gram share", True),
    Panel(TRUNCATED_FRAC, "truncated share", "share of responses", True),
)


class TrialLine(NamedTuple):
    label: str  # bound values first: "neg_up=0.01 neg_down=0.2 (trial 3, 2 seeds)"
    final: float  # mean final accuracy over its seeds
    curves: dict[str, Band]  # panel key -> band over its seeds


class TrialsInfo(NamedTuple):
    panels: tuple[Panel, ...]  # the panels some configuration logged
    lines: tuple[TrialLine, ...]  # best final accuracy first
    bounds: tuple[str, ...]  # the bounds that vary (what the labels name)


def trials_info(runs: Sequence[RunRecord], acc_key: str | None) -> TrialsInfo:
    varied = varied_bounds(runs)
    panels = list(PANELS)
    if acc_key:
        panels.append(Panel(acc_key, axis_title(acc_key), "share correct", True))
    lines, with_study = [], several_studies(runs)
    for g in group_runs(runs):
        head = g.runs[0]
        which = run_label(head, with_study).split(" seed ")[0] if TAG_TRIAL in head.tags else head.name
        seeds = f", {len(g.runs)} seeds" if len(g.runs) > 1 else ""
        bounds = bound_suffix(head, varied).removeprefix(": ")
        label = f"{bounds} ({which}{seeds})" if bounds else f"{which}{seeds}"
        curves = {p.key: with_se(b, g.runs, p.key) for p in panels if (b := seed_band(g.runs, p.key)) is not None}
        finals = [final_value(r, acc_key) for r in g.runs]
        final = float(np.nanmean(finals)) if not np.isnan(finals).all() else math.nan
        lines.append(TrialLine(label, final, curves))
    lines.sort(key=lambda t: -t.final if not math.isnan(t.final) else math.inf)
    drawn = tuple(p for p in panels if any(p.key in t.curves for t in lines))
    return TrialsInfo(drawn, tuple(lines), varied)


def plot_trials(info: TrialsInfo) -> go.Figure:
    cols = 2
    rows = max(math.ceil(len(info.panels) / cols), 1)
    fig = make_subplots(rows=rows, cols=cols, shared_xaxes=True, vertical_spacing=0.07, horizontal_spacing=0.09,
                        subplot_titles=[p.title for p in info.panels])
    for li, line in enumerate(info.lines):
        color = PALETTE[li % len(PALETTE)]
        visible: bool | str = True if li < MAX_LINES else "legendonly"
        first = True
        for pi, p in enumerate(info.panels):
            b = line.curves.get(p.key)
            if b is None:
                continue
            r, c = pi // cols + 1, pi % cols + 1
            x = b.steps.astype(np.int32)
            ok = ~np.isnan(b.lo)
            if np.any(b.hi[ok] > b.lo[ok]):
                fig.add_trace(go.Scatter(x=np.concatenate([x[ok], x[ok][::-1]]),
                                         y=np.concatenate([b.hi[ok], b.lo[ok][::-1]]).astype(np.float32),
                                         fill="toself", fillcolor=rgba(color, 0.15), line={"width": 0},
                                         hoverinfo="skip", legendgroup=line.label, showlegend=False, visible=visible),
                              row=r, col=c)
            mode = "lines+markers" if (p.key.startswith(EVAL_PREFIX) or np.isnan(b.mean).any()) else "lines"
            fig.add_trace(go.Scatter(x=x, y=b.mean.astype(np.float32), mode=mode, name=line.label, connectgaps=False,
                                     line={"color": color, "width": 1.5}, marker={"size": 4}, legendgroup=line.label,
                                     showlegend=first, visible=visible), row=r, col=c)
            first = False
    for pi, p in enumerate(info.panels):
        fig.update_yaxes(title_text=p.unit, row=pi // cols + 1, col=pi % cols + 1,
                         **({"range": [-0.02, 1.02]} if p.share else {}))
    fig.update_xaxes(title_text="training step", row=rows, col=1)
    fig.update_xaxes(title_text="training step", row=rows, col=2)
    what = ", ".join(b.removeprefix("eps_") for b in info.bounds) or "configuration"
    fig.update_layout(height=250 * rows + 220, legend={"orientation": "h", "y": -0.06, "font": {"size": 11}},
                      title=f"Trials side by side, labelled by {what} (mean over seeds; band: seed min-max)")
    return fig
