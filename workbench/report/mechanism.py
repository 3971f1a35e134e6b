"""The entropy mechanism per run: which regime's tokens pushed entropy which way, beside the entropy.

`mechanism_info(runs) -> MechanismInfo` reads each run's per-step pushes
(`regime/<r>/entropy_push` and its clipped part `regime/<r>/entropy_push_clipped`; kept = the
difference; definitions in workbench.core.regimes) and its `entropy/mean` (runs of an arm study:
averaged per arm over seeds); `plot_mechanism` draws one row per run or arm: left the kept (solid) and clipped (dotted) push of each regime, right
the entropy curve. Tests assert on the info, as Optuna's visualization tests do.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.names import ENTROPY_MEAN, ENTROPY_PUSH, ENTROPY_PUSH_CLIPPED, REGIMES, TAG_ARM, regime_key
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
    """Per-run push series (kept and clipped per regime) and entropy, aligned on train steps.

    Runs of an arm study (every run tagged with its arm, e.g. a claims study) are averaged per
    arm over their seeds, step by step, so each row compares one arm's mechanism with the others'.
    """
    info = _per_run(runs)
    arms = [run.tags.get(TAG_ARM) for run in runs]
    if info.runs and all(arms):
        return MechanismInfo(_per_arm(info.runs, [a for run, a in zip(runs, arms) if _has_push(run)]), info.without)
    return info


def _has_push(run: RunRecord) -> bool:
    return any(regime_key(g, s) in run.metrics for g in REGIMES for s in (ENTROPY_PUSH, ENTROPY_PUSH_CLIPPED))


def _per_arm(found: Sequence[RunMechanism], arms: Sequence[str]) -> tuple[RunMechanism, ...]:
    """One mean row per arm, in the order the arms first appear: each series averaged over seeds per step."""
    out = []
    for arm in dict.fromkeys(arms):
        members = [r for r, a in zip(found, arms) if a == arm]
        steps = np.array(sorted({int(s) for r in members for s in r.steps}))

        def mean(get) -> np.ndarray:
            grid = np.full((len(members), len(steps)), np.nan)
            for i, r in enumerate(members):
                grid[i, np.searchsorted(steps, r.steps)] = get(r)
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a step no seed logged stays NaN
                return np.nanmean(grid, axis=0)

        out.append(RunMechanism(f"{arm} (mean of {len(members)} seeds)", steps, mean(lambda r: r.entropy),
                                {g: mean(lambda r, g=g: r.kept[g]) for g in REGIMES},
                                {g: mean(lambda r, g=g: r.clipped[g]) for g in REGIMES}))
    return tuple(out)


def _per_run(runs: Sequence[RunRecord]) -> MechanismInfo:
    with_study = several_studies(runs)
    found, without = [], []
    for run in runs:
        label = run_label(run, with_study)
        keys = [regime_key(g, s) for g in REGIMES for s in (ENTROPY_PUSH, ENTROPY_PUSH_CLIPPED)]
        if not _has_push(run):
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
