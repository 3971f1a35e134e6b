"""Clip-space figures of a study: parallel coordinates, pair heatmaps, importances, Pareto front.

The first two read the runs' bounds from MLflow params; the last two read the Optuna study.
Each is `_get_<name>_info(...) -> NamedTuple` then `_build_<name>(info) -> go.Figure`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import plotly.graph_objects as go

from workbench.metrics.collapse import KINDS, TITLES
from workbench.report.runs import BOUNDS, bound_off, collapse_marker, final_value, run_bounds, varied_bounds
from workbench.tracking import RunRecord

MIN_TRIALS_FOR_IMPORTANCE = 8
MAX_CELLS = 8  # a bound with more distinct values is binned in the pair heatmap


class Dim(NamedTuple):
    label: str
    values: np.ndarray  # (R,) plotted value per run (log10 for wide ranges; "off" placed above the rest)
    tickvals: tuple[float, ...]
    ticktext: tuple[str, ...]
    range: tuple[float, float] | None = None  # fixed axis range, so that every tick stays on the axis


class ParallelInfo(NamedTuple):
    dims: tuple[Dim, ...]
    color: np.ndarray  # (R,) final accuracy per run
    color_label: str
    run_ids: tuple[str, ...]


_COLLAPSE_CODE = {None: 0, **{k: i + 1 for i, k in enumerate(KINDS)}}
# Final accuracy from low (red) to high (blue): every colour stays visible on a white page.
ACCURACY_SCALE = [[0.0, "#d62728"], [0.5, "#9467bd"], [1.0, "#1f4e9c"]]


def parallel_info(runs: Sequence[RunRecord], acc_key: str | None) -> ParallelInfo | None:
    """One line per run with known bounds (runs of unknown objectives have none); None under two."""
    known = [(r, run_bounds(r)) for r in runs]
    known = [(r, b) for r, b in known if not any(np.isnan(v) for v in b.values())]
    if len(known) < 2:
        return None
    runs, bounds = [r for r, _ in known], [b for _, b in known]
    varied = varied_bounds(runs) or BOUNDS  # a bound nobody changed is no axis worth drawing
    dims = [_dim(b, np.array([x[b] for x in bounds])) for b in varied]
    objectives = sorted({r.params.get("objective.name", "?") for r in runs})
    if len(objectives) > 1:
        codes = np.array([objectives.index(r.params.get("objective.name", "?")) for r in runs], float)
        dims.insert(0, Dim("objective", codes, tuple(map(float, range(len(objectives)))), tuple(objectives)))
    kinds = [(m.kind if (m := collapse_marker(r)) else None) for r in runs]
    codes = tuple(float(v) for v in _COLLAPSE_CODE.values())
    dims.append(Dim("collapse", np.array([_COLLAPSE_CODE.get(k, 0) for k in kinds], float), codes,
                    ("none", *(TITLES[k] for k in KINDS)), (0.0, float(len(KINDS)))))
    acc = np.array([final_value(r, acc_key) for r in runs])
    return ParallelInfo(tuple(dims), acc, f"final {acc_key}", tuple(r.run_id for r in runs))


def _dim(name: str, raw: np.ndarray) -> Dim:
    """An axis for one bound: log10 when its values span 10x or more, "off" placed above the rest."""
    off = bound_off(name, raw)
    finite = raw[~off]
    use_log = bool(len(finite)) and finite.min() > 0 and finite.max() / finite.min() >= 10
    f = np.log10 if use_log else (lambda x: x)
    distinct = np.unique(finite)
    ticks = distinct if len(distinct) <= MAX_CELLS else np.unique(np.quantile(finite, [0, 0.25, 0.5, 0.75, 1]))
    tickvals, ticktext = [float(f(t)) for t in ticks], [f"{t:g}" for t in ticks]
    vals = f(np.where(off, 1.0, raw))
    if off.any():
        span = (max(tickvals) - min(tickvals)) if len(tickvals) > 1 else 1.0
        top = (max(tickvals) if tickvals else 0.0) + 0.25 * span
        vals = np.where(off, top, vals)
        tickvals.append(top)
        ticktext.append("off")
    span = (min(tickvals), max(tickvals)) if len(tickvals) > 1 else None
    return Dim(name.removeprefix("eps_") + (" (log)" if use_log else ""), vals, tuple(tickvals), tuple(ticktext), span)


def plot_parallel(info: ParallelInfo) -> go.Figure:
    color = np.nan_to_num(info.color, nan=np.nanmin(info.color) if not np.isnan(info.color).all() else 0.0)
    dims = [{"label": d.label, "values": d.values.astype(np.float32), "tickvals": d.tickvals, "ticktext": d.ticktext,
             **({"range": list(d.range)} if d.range else {})} for d in info.dims]
    fig = go.Figure(go.Parcoords(line={"color": color, "colorscale": ACCURACY_SCALE, "showscale": True,
                                       "colorbar": {"title": {"text": info.color_label, "side": "right"}}},
                                 dimensions=dims))
    fig.update_layout(height=460, title="Clip space: one line per run, coloured by final accuracy")
    return fig


class PairGrid(NamedTuple):
    x: str
    y: str
    x_labels: tuple[str, ...]
    y_labels: tuple[str, ...]
    mean: np.ndarray  # (ny, nx) mean final accuracy of the runs in each cell (NaN: none)
    count: np.ndarray  # (ny, nx) runs per cell
    collapsed: np.ndarray  # (ny, nx) collapsed runs per cell
    se: np.ndarray  # (ny, nx) noise of a cell's mean: spread of its runs / sqrt(n), or one run's eval standard error


class PairInfo(NamedTuple):
    metric: str
    grids: tuple[PairGrid, ...]  # one per pair of bounds that vary


def _cells(name: str, raw: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """Cell labels and each run's cell: one per distinct value, or quantile bins when there are many."""
    off = bound_off(name, raw)
    finite = np.unique(raw[~off & ~np.isnan(raw)])
    if len(finite) <= MAX_CELLS:
        labels = [f"{v:g}" for v in finite]
        idx = np.searchsorted(finite, np.where(off | np.isnan(raw), finite[0] if len(finite) else 0, raw))
    else:
        edges = np.unique(np.quantile(finite, np.linspace(0, 1, 6)))
        labels = [f"{a:.3g}-{b:.3g}" for a, b in zip(edges[:-1], edges[1:])]
        idx = np.clip(np.searchsorted(edges, raw, side="right") - 1, 0, len(labels) - 1)
    if off.any():
        idx = np.where(off, len(labels), idx)
        labels.append("off")
    return tuple(labels), np.where(np.isnan(raw) & ~off, -1, idx)


def pair_info(runs: Sequence[RunRecord], acc_key: str | None) -> PairInfo:
    bounds = [run_bounds(r) for r in runs]
    raw = {b: np.array([x[b] for x in bounds]) for b in BOUNDS}
    varying = [b for b in BOUNDS if len(np.unique(raw[b][~np.isnan(raw[b])])) > 1]
    acc = np.array([final_value(r, acc_key) for r in runs])
    run_se = np.array([final_value(r, f"{acc_key}_se" if acc_key else None) for r in runs])
    collapsed = np.array([collapse_marker(r) is not None for r in runs])
    grids = []
    for i, bx in enumerate(varying):
        for by in varying[i + 1:]:
            (xl, xi), (yl, yi) = _cells(bx, raw[bx]), _cells(by, raw[by])
            total, count, bad = (np.zeros((len(yl), len(xl))) for _ in range(3))
            for j in range(len(runs)):
                if xi[j] < 0 or yi[j] < 0:
                    continue
                bad[yi[j], xi[j]] += collapsed[j]
                if not np.isnan(acc[j]):
                    total[yi[j], xi[j]] += acc[j]
                    count[yi[j], xi[j]] += 1
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(count > 0, total / count, np.nan)
            se = np.full(mean.shape, np.nan)
            for a, b in zip(*np.nonzero(count)):
                members = [j for j in range(len(runs)) if yi[j] == a and xi[j] == b and not np.isnan(acc[j])]
                se[a, b] = (np.std(acc[members], ddof=1) / np.sqrt(len(members)) if len(members) > 1
                            else run_se[members[0]])
            grids.append(PairGrid(bx, by, xl, yl, mean, count.astype(int), bad.astype(int), se))
    return PairInfo(f"mean final {acc_key}", tuple(grids))


def plot_pair(info: PairInfo) -> go.Figure:
    """Cells on integer axes (labels as ticks) so that a collapse mark can sit in a cell's corner."""
    fig = go.Figure()
    zmin, zmax = _color_range(info.grids)
    for i, g in enumerate(info.grids):
        text = [[(f"{m:.3f}{'' if np.isnan(e) else f' ± {e:.3f}'}<br>n={c}" if c else "")
                 for m, c, e in zip(mr, cr, er)] for mr, cr, er in zip(g.mean, g.count, g.se)]
        hover = [[f"{g.x}={xl}<br>{g.y}={yl}<br>{info.metric}: {m:.3f}<br>runs: {c}, collapsed: {k}"
                  for xl, m, c, k in zip(g.x_labels, mr, cr, kr)]
                 for yl, mr, cr, kr in zip(g.y_labels, g.mean, g.count, g.collapsed)]
        fig.add_trace(go.Heatmap(z=g.mean, x=list(range(len(g.x_labels))), y=list(range(len(g.y_labels))), text=text,
                                 texttemplate="%{text}", customdata=hover, hovertemplate="%{customdata}<extra></extra>",
                                 colorscale=ACCURACY_SCALE, zmin=zmin, zmax=zmax, visible=i == 0,
                                 colorbar={"title": {"text": info.metric, "side": "right"}}))
        ys, xs = np.nonzero(g.collapsed)
        fig.add_trace(go.Scatter(
            x=xs + 0.38, y=ys + 0.32, mode="markers+text", visible=i == 0, showlegend=False, hoverinfo="skip",
            marker={"symbol": "x", "size": 14, "color": "#ff4040", "line": {"width": 1, "color": "white"}},
            text=[f"{g.collapsed[a, b]}/{g.count[a, b]}" for a, b in zip(ys, xs)], textposition="middle left",
            textfont={"color": "#ff4040", "size": 11}))
    axes = [{"xaxis": {"title": {"text": g.x}, "tickvals": list(range(len(g.x_labels))), "ticktext": list(g.x_labels)},
             "yaxis": {"title": {"text": g.y}, "tickvals": list(range(len(g.y_labels))), "ticktext": list(g.y_labels)}}
            for g in info.grids]
    if info.grids:
        fig.update_layout(**axes[0])
    if len(info.grids) > 1:
        fig.update_layout(updatemenus=[{"x": 1.0, "xanchor": "right", "y": 1.12, "yanchor": "bottom", "buttons": [
            {"label": f"{g.x} x {g.y}", "method": "update",
             "args": [{"visible": [k // 2 == i for k in range(2 * len(info.grids))]}, axes[i]]}
            for i, g in enumerate(info.grids)]}])
    fig.update_layout(height=520, title=f"Pairs of bounds: {info.metric} ± noise (red x: collapsed runs / runs in "
                                        "the cell; colours span at least 4 noise widths)")
    return fig


def _color_range(grids) -> tuple[float, float]:
    """The cells' range, widened to at least 4 typical noise widths around its middle: cells that differ
    by less than their noise get close colours instead of full contrast."""
    means = np.concatenate([g.mean[~np.isnan(g.mean)] for g in grids] or [np.array([])])
    if not len(means):
        return 0.0, 1.0
    lo, hi = float(means.min()), float(means.max())
    ses = np.concatenate([g.se[~np.isnan(g.se)] for g in grids] or [np.array([])])
    noise = float(np.median(ses)) if len(ses) else 0.0
    mid, half = (lo + hi) / 2, max((hi - lo) / 2, 2 * noise, 1e-6)
    return mid - half, mid + half


class ImportanceInfo(NamedTuple):
    target: str
    importances: dict[str, float]  # parameter -> share of the target's variance; empty when not computable
    n_trials: int  # trials the importances are computed over (complete + pruned with a value)
    reason: str | None  # why `importances` is empty
    n_pruned: int = 0  # of n_trials, pruned trials counted at their last reported value
    n_left_out: int = 0  # pruned trials with no reported value: not counted
    intervals: dict[str, tuple[float, float]] = {}  # 5-95% over bootstrap resamples of the trials
    first_share: dict[str, float] = {}  # share of resamples in which the parameter ranks first
    collapse: dict[str, float] = {}  # importances for collapsed-or-not (0/1) over the same trials; {} if none varies
    resamples: int = 0  # bootstrap resamples behind `intervals` and `first_share`


IMPORTANCE_RESAMPLES = 30  # one 16-tree fANOVA forest per resample
# A forest's cost grows with the trials it is fitted on (about 1.5 s for 1,000 trials on one core):
# the resamples together fit at most this many trials, so a 1,000-trial study's report stays
# under a minute; 30 resamples up to 200 trials, never fewer than MIN_RESAMPLES.
IMPORTANCE_WORK, MIN_RESAMPLES = 6000, 8


def resamples_for(n_trials: int, wanted: int = IMPORTANCE_RESAMPLES) -> int:
    """Bootstrap resamples for a study of `n_trials` trials: `wanted`, fewer for large studies (IMPORTANCE_WORK)."""
    if wanted <= 0:
        return 0
    return min(wanted, max(MIN_RESAMPLES, IMPORTANCE_WORK // max(n_trials, 1)))


class TrialRow(NamedTuple):
    params: dict
    distributions: dict
    value: float
    collapsed: bool
    pruned: bool


def importance_rows(study) -> tuple[list[TrialRow], int]:
    """The trials importances are computed over, and the number of pruned trials left out.

    COMPLETE trials count with their first objective. PRUNED trials (a collapsed run prunes its
    trial) count with their last reported intermediate value: leaving them out would rank the
    bounds without the runs where they mattered most. A pruned trial that reported nothing is left out.
    """
    import optuna

    rows, left_out = [], 0
    for t in study.trials:
        collapsed = "collapse" in t.user_attrs
        if t.state == optuna.trial.TrialState.COMPLETE:
            rows.append(TrialRow(t.params, t.distributions, float(t.values[0]), collapsed, False))
        elif t.state == optuna.trial.TrialState.PRUNED:
            if t.intermediate_values:
                last = t.intermediate_values[max(t.intermediate_values)]
                rows.append(TrialRow(t.params, t.distributions, float(last), collapsed, True))
            else:
                left_out += 1
    return rows, left_out


def fanova_importances(rows: Sequence[TrialRow], target: str = "value", seed: int = 0,
                       n_trees: int = 64) -> dict[str, float]:
    """fANOVA importances over `rows` (an in-memory study of them), for `value` or `collapsed` (0/1)."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line per resample
    try:
        study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    finally:
        optuna.logging.set_verbosity(level)
    for r in rows:
        study.add_trial(optuna.trial.create_trial(params=r.params, distributions=r.distributions,
                                                  value=float(getattr(r, target))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dict(optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(n_trees=n_trees, seed=seed)))


def bootstrap_importances(rows: Sequence[TrialRow], resamples: int = IMPORTANCE_RESAMPLES, seed: int = 0
                          ) -> tuple[dict[str, tuple[float, float]], dict[str, float]]:
    """How stable the ranking is: 5-95% of each importance over resamples of the trials (with replacement),
    and the share of resamples in which each parameter ranks first. Resamples whose target or every
    parameter is constant (nothing to explain) count as missing."""
    rng = np.random.default_rng(seed)
    draws: list[dict[str, float]] = []
    for _ in range(resamples):
        pick = [rows[i] for i in rng.integers(0, len(rows), len(rows))]
        try:
            # 16 trees a resample: the spread comes from resampling the trials, not from the forest
            draws.append(fanova_importances(pick, seed=int(rng.integers(1 << 31)), n_trees=16))
        except (RuntimeError, ValueError, ZeroDivisionError):
            continue
    names = {k for d in draws for k in d}
    if not draws:
        return {}, {}
    intervals = {k: tuple(float(x) for x in np.percentile([d.get(k, 0.0) for d in draws], [5, 95])) for k in names}
    firsts = [max(d, key=d.get) for d in draws if d]
    return intervals, {k: firsts.count(k) / len(firsts) for k in names}


def importance_info(study, resamples: int = IMPORTANCE_RESAMPLES) -> ImportanceInfo:
    """fANOVA parameter importances for the first objective, over COMPLETE and PRUNED trials.

    `resamples` bootstrap resamples, fewer on a large study (`resamples_for`).

    fANOVA (Optuna's long-time default; needs scikit-learn, which MLflow installs) first:
    on a few dozen trials it separates parameters where PED-ANOVA, Optuna 5's default,
    often reports them all equal. Pruned trials count at their last reported value (see
    `importance_rows`); the bootstrap over trials says how stable the ranking is; collapse
    (0/1 per trial) gets its own importances when it varies.
    """
    target_name = _objective_names(study)[0]
    rows, left_out = importance_rows(study)
    n_pruned = sum(r.pruned for r in rows)
    varied = {k for k in {p for r in rows for p in r.params} if len({repr(r.params.get(k)) for r in rows}) > 1}
    if len(rows) < MIN_TRIALS_FOR_IMPORTANCE or len(varied) < 2:
        return ImportanceInfo(target_name, {}, len(rows), f"needs {MIN_TRIALS_FOR_IMPORTANCE} complete or pruned "
                              f"trials over at least two searched parameters (has {len(rows)} over {len(varied)})",
                              n_pruned, left_out)
    if len({r.value for r in rows}) < 2:
        return ImportanceInfo(target_name, {}, len(rows), f"{target_name} is the same in every trial", n_pruned, left_out)
    try:
        imp = fanova_importances(rows)
    except (ImportError, RuntimeError) as e:  # no scikit-learn, or zero variance in every tree
        return ImportanceInfo(target_name, {}, len(rows), f"Optuna could not compute importances "
                              f"({type(e).__name__}: {e})", n_pruned, left_out)
    resamples = resamples_for(len(rows), resamples)
    intervals, first = bootstrap_importances(rows, resamples) if resamples else ({}, {})
    collapse = fanova_importances(rows, "collapsed") if len({r.collapsed for r in rows}) > 1 else {}
    return ImportanceInfo(target_name, imp, len(rows), None, n_pruned, left_out, intervals, first, collapse,
                          resamples)


def _objective_names(study) -> list[str]:
    names = study.user_attrs.get("directions") or study.metric_names
    return list(names) if names else [f"objective {i}" for i in range(len(study.directions))]


def plot_importance(info: ImportanceInfo) -> go.Figure:
    items = sorted(info.importances.items(), key=lambda kv: kv[1])
    names = [k for k, _ in items]
    lo = [v - info.intervals.get(k, (v, v))[0] for k, v in items]
    hi = [info.intervals.get(k, (v, v))[1] - v for k, v in items]
    text = [f"{v:.2f}" + (f", first in {info.first_share.get(k, 0):.0%}" if info.first_share else "") for k, v in items]
    fig = go.Figure(go.Bar(x=[v for _, v in items], y=names, orientation="h", name=info.target, text=text,
                           marker={"color": "#1f77b4"},
                           error_x={"type": "data", "symmetric": False, "array": hi, "arrayminus": lo}
                           if info.intervals else None))
    if info.collapse:
        fig.add_trace(go.Bar(x=[info.collapse.get(k, 0.0) for k in names], y=names, orientation="h",
                             name="collapsed (0/1)", marker={"color": "#d62728"},
                             text=[f"{info.collapse.get(k, 0.0):.2f}" for k in names]))
    pruned = f", {info.n_pruned} of them pruned, at their last reported value" if info.n_pruned else ""
    left = f"; {info.n_left_out} pruned before reporting left out" if info.n_left_out else ""
    boot = f"; bars: 5-95% over {info.resamples} bootstrap resamples of the trials" if info.intervals else ""
    fig.update_layout(height=160 + 50 * len(items), xaxis_title="importance (share of variance, fANOVA)",
                      barmode="group", title=f"Parameter importances for {info.target} ({info.n_trials} trials"
                                             f"{pruned}{left}){boot}")
    return fig


class ParetoInfo(NamedTuple):
    names: tuple[str, str]
    values: np.ndarray  # (n, 2) the first two objectives of each COMPLETE trial
    on_front: np.ndarray  # (n,) bool, Optuna's best_trials
    trials: tuple[int, ...]


def pareto_info(study) -> ParetoInfo | None:
    import optuna

    if len(study.directions) < 2:
        return None
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    front = {t.number for t in study.best_trials}
    names = _objective_names(study)
    return ParetoInfo((names[0], names[1]), np.array([t.values[:2] for t in done], float).reshape(-1, 2),
                      np.array([t.number in front for t in done], bool), tuple(t.number for t in done))


def plot_pareto(info: ParetoInfo) -> go.Figure:
    fig = go.Figure()
    for on, name, color in ((False, "dominated", "#bbbbbb"), (True, "Pareto front", "#d62728")):
        sel = info.on_front == on
        fig.add_trace(go.Scatter(x=info.values[sel, 0], y=info.values[sel, 1], mode="markers", name=name,
                                 marker={"color": color, "size": 10},
                                 text=[f"trial {n}" for n, s in zip(info.trials, sel) if s]))
    fig.update_layout(height=480, xaxis_title=info.names[0], yaxis_title=info.names[1], title="Pareto front")
    return fig


def open_study(storage: str | None, name: str):
    """The study in its storage (a URL with :// or a journal file path), read-only; (None, why) when it cannot be read."""
    from workbench.sweep import load_study

    if not storage:
        return None, "the study's parent run names no Optuna storage (tag optuna.storage)"
    if "://" not in storage and not Path(storage).exists():
        return None, f"Optuna storage {storage} not found (a relative path is taken from the working directory)"
    try:
        return load_study(name, storage)[0], None
    except Exception as e:  # noqa: BLE001 - any storage problem becomes a note, the rest of the report stands
        return None, f"could not read Optuna study {name} from {storage}: {type(e).__name__}: {e}"
