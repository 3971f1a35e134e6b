"""The entropy mechanism per run: which regime's tokens pushed entropy which way, beside the entropy.

`mechanism_info(runs) -> MechanismInfo` reads each run's per-step pushes
(`regime/<r>/entropy_push` and its clipped part `regime/<r>/entropy_push_clipped`; kept = the
difference; definitions in workbench.core.regimes) and its `entropy/mean`; `plot_mechanism`
draws one row per run: left the kept (solid) and clipped (dotted) push of each regime, right
the entropy curve. Tests assert on the info, as Optuna's visualization tests do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.names import ENTROPY_MEAN, ENTROPY_PUSH, ENTROPY_PUSH_CLIPPED, REGIMES, regime_key
from workbench.report.curves import COLORS
from workbench.report.runs import aligned, run_label, several_studies
from workbench.tracking import RunRecord

MAX_RUNS = 8  # rows drawn; the rest are counted in the note


class RunMechanism(NamedTuple):
    label: str
    steps: np.ndarray  # (N,) train steps
    entropy: np.ndarray  # (N,) entropy/mean, NaN where not logged
    kept: dict[str, np.ndarray]  # regime -> (N,) push of its kept tokens
    clipped: dict[str, np.ndarray]  # regime -> (N,) push of its clipped tokens


class MechanismInfo(NamedTuple):
    runs: tuple[RunMechanism, ...]  # runs that logged a push, in the order given
    without: tuple[str, ...]  # labels of runs that logged none (e.g. engines or versions without it)


def mechanism_info(runs: Sequence[RunRecord]) -> MechanismInfo:
    """Per-run push series (kept and clipped per regime) and entropy, aligned on train steps."""
    with_study = several_studies(runs)
    found, without = [], []
    for run in runs:
        label = run_label(run, with_study)
        keys = [regime_key(g, s) for g in REGIMES for s in (ENTROPY_PUSH, ENTROPY_PUSH_CLIPPED)]
        if not any(k in run.metrics for k in keys):
            without.append(label)
            continue
        steps, values = aligned(run, [ENTROPY_MEAN, *keys])
        entropy, rest = values[0], values[1:]
        kept, clipped = {}, {}
        for i, g in enumerate(REGIMES):
            total, clip = rest[2 * i], rest[2 * i + 1]
            kept[g], clipped[g] = total - clip, clip
        found.append(RunMechanism(label, steps, entropy, kept, clipped))
    return MechanismInfo(tuple(found), tuple(without))


def mechanism_note(info: MechanismInfo) -> str | None:
    notes = []
    if len(info.runs) > MAX_RUNS:
        notes.append(f"{len(info.runs) - MAX_RUNS} more runs not drawn")
    if info.without:
        who = ", ".join(info.without) if len(info.without) <= 3 else f"{len(info.without)} runs"
        notes.append(f"no entropy push logged by {who} (logged by workbench versions that compute it)")
    return "; ".join(notes) or None


def plot_mechanism(runs_or_info: Sequence[RunRecord] | MechanismInfo) -> go.Figure:
    """One row per run (at most MAX_RUNS): per-regime pushes, kept and clipped | entropy/mean."""
    info = runs_or_info if isinstance(runs_or_info, MechanismInfo) else mechanism_info(runs_or_info)
    shown = info.runs[:MAX_RUNS]
    rows = max(len(shown), 1)
    titles = [t for r in shown for t in (f"{r.label}: entropy push per regime", f"{r.label}: entropy")]
    fig = make_subplots(rows=rows, cols=2, column_widths=[0.62, 0.38], subplot_titles=titles or None,
                        vertical_spacing=min(0.08, 0.5 / rows))
    for i, r in enumerate(shown, start=1):
        for g in REGIMES:
            for part, dash in (("kept", "solid"), ("clipped", "dot")):
                y = (r.kept if part == "kept" else r.clipped)[g]
                fig.add_trace(go.Scatter(x=r.steps, y=y, mode="lines", name=f"{g} {part}", legendgroup=f"{g} {part}",
                                         showlegend=i == 1, line=dict(color=COLORS[g], dash=dash)), row=i, col=1)
        fig.add_hline(y=0, line=dict(color="#999999", width=1), row=i, col=1)
        fig.add_trace(go.Scatter(x=r.steps, y=r.entropy, mode="lines", name=ENTROPY_MEAN, legendgroup="entropy",
                                 showlegend=i == 1, line=dict(color=COLORS[ENTROPY_MEAN])), row=i, col=2)
        fig.update_yaxes(title_text="push (> 0: entropy up)", row=i, col=1)
        fig.update_yaxes(title_text="nats", row=i, col=2)
    fig.update_xaxes(title_text="step", row=rows, col=1)
    fig.update_xaxes(title_text="step", row=rows, col=2)
    fig.update_layout(height=260 * rows + 120, title="Entropy mechanism: first-order push per regime (kept, clipped)")
    return fig
