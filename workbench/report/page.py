"""HTML reports of runs and studies, read from the MLflow store and the Optuna storage.

`make_report(target)` writes `reports/<target>/index.html`: a page that opens offline, loading
the folder's one `plotly.min.js`; each figure also as its own HTML file (sharing that script)
and as a PNG where kaleido finds a Chrome. It logs the folder to the run or to the study's
parent run once per change: a report whose content digest the run already holds is not
uploaded again.

Every figure follows Optuna's visualization habit: its module's public `<name>_info(...)` turns runs
into a NamedTuple of plain arrays (what the tests check) and `plot_<name>(info)` draws it. The
summary is the exception: it is an HTML table, not a plotly figure, so that its run ids can be
selected and its links followed. How to read each figure: the README, "Reading reports".

Runs are grouped by configuration (the seeds of one sweep trial, or runs whose params differ
only in `seed`); learning curves show a group's mean with its min-max band.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import importlib.util
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from workbench import tracking
from workbench.errors import UserError
from workbench.services.stack import port_free
from workbench.report import claims as claims_report
from workbench.report import clip_space, curves, mechanism, perf, trials
from workbench.metrics.collapse import KINDS, TITLES, Criterion
from workbench.names import EVAL_PREFIX, REGIME_PREFIX
from workbench.report.runs import (BOUNDS, accuracy_key, best_value, collapse_criteria, collapse_marker,
                                      confounders, final_value, fmt_bound, run_bounds, run_label, run_wall_s, several_studies,
                                      start_value)
from workbench.tracking import TargetRuns

UI_BASE = "http://127.0.0.1:5000"


# ---- summary ---------------------------------------------------------------------------------


class SummaryRow(NamedTuple):
    label: str
    run_id: str
    url: str
    objective: str
    bounds: dict[str, float]
    start_acc: float  # the evaluation before the first update (step 0), e.g. after an SFT warm start
    final_acc: float
    final_se: float  # standard error of the last evaluation (NaN when not logged)
    best_acc: float
    collapse: str  # "" or "repetition at step 57"
    criteria: tuple[Criterion, ...]  # each collapse criterion's state, in workbench.metrics.collapse.KINDS order
    wall_s: float
    status: str

    @property
    def gain(self) -> float:
        return self.final_acc - self.start_acc


class SummaryInfo(NamedTuple):
    acc_key: str | None
    rows: tuple[SummaryRow, ...]
    anchor_url: str


def summary_info(target: TargetRuns, acc_key: str | None) -> SummaryInfo:
    rows, with_study = [], several_studies(target.runs)
    se_key = f"{acc_key}_se" if acc_key and acc_key.startswith(EVAL_PREFIX) else None
    for r in target.runs:
        m = collapse_marker(r)
        rows.append(SummaryRow(
            label=run_label(r, with_study), run_id=r.run_id, url=tracking.run_url(UI_BASE, r.experiment_id, r.run_id),
            objective=r.params.get("objective.name", "?"), bounds=run_bounds(r), start_acc=start_value(r, acc_key),
            final_acc=final_value(r, acc_key), final_se=final_value(r, se_key), best_acc=best_value(r, acc_key),
            collapse=f"{m.kind} at step {m.step}" if m else "", criteria=collapse_criteria(r), wall_s=run_wall_s(r),
            status=r.status))
    rows.sort(key=lambda row: -row.final_acc if not math.isnan(row.final_acc) else math.inf)
    anchor = (tracking.run_url(UI_BASE, target.experiment_id, target.anchor_run_id) if target.anchor_run_id
              else f"{UI_BASE}/#/experiments/{target.experiment_id}")
    return SummaryInfo(acc_key, tuple(rows), anchor)


def _criterion_cell(c: Criterion) -> str:
    """One collapse criterion of one run: its state, with the criterion and what was seen on hover."""
    seen = f"; worst {c.worst:.3g}, longest streak {c.longest} step(s)" if c.worst is not None else ""
    title = html.escape(f"{c.text}{seen}", quote=True)
    if c.state == "collapsed":
        return f'<span class="bad" title="{title}">step {c.onset_step}</span>'
    text = "ok" if c.state == "ok" else c.state
    if c.state == "ok" and c.longest:
        text = f"ok, {c.longest} step{'s' if c.longest > 1 else ''} past"
    return f'<span title="{title}">{html.escape(text)}</span>'


def summary_html(info: SummaryInfo) -> str:
    kinds = [TITLES[k] for k in KINDS]
    head = ["run", "objective", *(b.removeprefix("eps_") for b in BOUNDS), "start acc", "final acc", "gain",
            "best acc", "collapse", *kinds, "wall time", "status", "MLflow run id"]
    body = []
    for r in info.rows:
        se = f" &plusmn; {r.final_se:.3f}" if not math.isnan(r.final_se) else ""
        gain = "n/a" if math.isnan(r.gain) else f"{r.gain:+.3f}"
        cells = [html.escape(r.label), html.escape(r.objective), *(fmt_bound(r.bounds[b], b) for b in BOUNDS),
                 _fmt_num(r.start_acc), _fmt_num(r.final_acc) + se, gain, _fmt_num(r.best_acc),
                 f'<span class="bad">{html.escape(r.collapse)}</span>' if r.collapse else "none",
                 *(_criterion_cell(c) for c in r.criteria),
                 _fmt_time(r.wall_s), html.escape(r.status),
                 f'<a href="{html.escape(r.url)}"><code>{r.run_id}</code></a>']
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    criteria = info.rows[0].criteria if info.rows else ()
    stated = "".join(f"<li><b>{html.escape(TITLES[c.kind])}</b>: {html.escape(c.text)}</li>" for c in criteria)
    return (f'<p>MLflow: <a href="{html.escape(info.anchor_url)}">{html.escape(info.anchor_url)}</a> '
            f'(start the UI with <code>dispo-wb ui</code>). Accuracy: '
            f'<code>{html.escape(info.acc_key or "none logged")}</code>: at the start (step 0), last (&plusmn; its '
            f'standard error over problems), gain = last - start, and best evaluation; '
            f'bounds: offsets from 1, "off" where switched off.</p>'
            f'<div class="scroll"><table class="summary"><thead><tr>{"".join(f"<th>{h}</th>" for h in head)}'
            f'</tr></thead><tbody>{"".join(body)}</tbody></table></div>'
            f'<p class="how">Collapse criteria (a run is flagged by the first one met; a cell says "step N" at its '
            f'onset, "ok, k steps past" when the signal crossed its limit for fewer steps than needed, "no baseline" when the first '
            f'steps give nothing to fall from; hover for the worst value):</p><ul class="how">{stated}</ul>')


def _fmt_num(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.3f}"


def _fmt_time(s: float) -> str:
    if math.isnan(s):
        return "n/a"
    return f"{s / 60:.1f} min" if s >= 120 else f"{s:.0f} s"


# ---- page ------------------------------------------------------------------------------------


class Section(NamedTuple):
    name: str
    title: str
    how: str
    figure: go.Figure | None
    note: str | None = None
    html: str | None = None  # a table instead of (or besides) a figure


HOW = {
    "exploration": "Top: entropy of all tokens and per regime. Rising entropy is exploration (a loose eps_pos_up), "
                   "falling entropy is distillation (a loose eps_pos_down). Below: how often each regime's bound "
                   "clipped, and each regime's share of the tokens.",
    "collapse": "Repetition rate with its threshold, response length (correct vs incorrect) with the length-collapse "
                "limit, and truncation. The dashed line marks a detected collapse onset and its kind.",
    "mechanism": "Per step, the first-order entropy change each regime's tokens pushed (Cui et al., arXiv "
                 "2505.22617: minus the covariance of a token's log-probability with its weighted advantage, centred "
                 "over the step's regime tokens; > 0 pushes entropy up): solid for tokens the bound kept, dotted for "
                 "tokens it clipped. The parts add up to the whole step's push. Right: the entropy it moved.",
    "learning": "Reward, train accuracy and eval accuracy (avg@k, pass@k) per configuration: mean over seeds with "
                "a min-max band, over steps (left) and wall-clock time (right).",
    "trials": "One line per configuration (a trial's seeds averaged), labelled by the bound values that differ, "
              "so that entropy, clip fractions, length and repetition can be compared across the searched bounds.",
    "perf": "Median seconds per step in each phase (first step left out: it pays the warm-up): generate (sampling "
            "the rollout batch), reward (decoding and math-verify), old_logp (the no-gradient pass with the snapshot "
            "the rollouts came from), update (all updates_per_rollout forward/backward/AdamW steps), other (the rest "
            "of perf/step_s), tracking (that step's MLflow calls, timed after perf/step_s, so a bar is step_s + "
            "tracking_s). Below: rollout tokens/s, real response tokens vs padded positions decoded (responses x "
            "longest response); the gap is the share of decoding spent on padding.",
    "parallel": "Each line is a run through the four bounds (plus collapse); colour is final accuracy. Drag on an "
                "axis to select a range.",
    "pair": "Mean final accuracy over runs in each cell of a pair of bounds; a red x marks cells with collapsed runs.",
    "importance": "Share of the objective's variance each searched parameter explains (Optuna's fANOVA), over "
                  "complete trials and pruned ones at their last reported value; error bars: 5-95% over bootstrap "
                  "resamples of the trials; red: the same for collapsed or not.",
    "pareto": "Every complete trial on the first two objectives; red points are not dominated.",
    "claims": "The claims the study declared before it ran, each judged from the stored runs by paired seeds at the "
              "study's looks (reproduced, refuted, absent or undecided; the rule is under the table): the effect is "
              "the mean per-seed difference between the arms, with the interval of the look that decided it. The second "
              "table says how much each arm's bounds bound (median |r - 1| and clip fraction per regime). The same "
              "table is claims.csv in this folder.",
}


def _sections(target: TargetRuns, acc_key: str | None) -> list[Section]:
    runs, out = target.runs, []
    for name, title, get in (("exploration", "Exploration / distillation", curves.exploration_info),
                             ("collapse", "Collapse curves", curves.collapse_info)):
        info = get(runs, acc_key)
        has = any(p.curves for p in info.runs)
        notes = [f"not logged: {', '.join(info.missing)}"] if info.missing else []
        regime_nan = max((v for k, v in info.undefined.items() if k.startswith(REGIME_PREFIX)), default=0.0)
        if regime_nan:
            notes.append(f"regime statistics are undefined (NaN) at {regime_nan:.0%} of the logged steps: steps where "
                         "no token carried a nonzero advantage (every group had one reward; see "
                         "batch/zero_adv_group_frac)")
        out.append(Section(name, title, HOW[name], curves.plot_panels(info) if has else None,
                           "; ".join(notes) or None))
    mech = mechanism.mechanism_info(runs)
    out.append(Section("mechanism", "Entropy mechanism", HOW["mechanism"],
                       mechanism.plot_mechanism(mech) if mech.runs else None, mechanism.mechanism_note(mech)))
    learn = curves.learning_info(runs, acc_key)
    note = f"not logged: {', '.join(learn.missing)}" if learn.missing else None
    if len(learn.groups) > learn.shown:
        note = (note + "; " if note else "") + f"{len(learn.groups) - learn.shown} more configurations in the legend"
    out.append(Section("learning", "Learning curves", HOW["learning"],
                       curves.plot_learning(learn) if learn.keys else None, note))
    side = trials.trials_info(runs, acc_key)
    if len(side.lines) > 1:
        out.append(Section("trials", "Trials side by side", HOW["trials"],
                           trials.plot_trials(side) if side.panels else None,
                           None if side.panels else "no run logged entropy, clip, length or repetition series"))
    timing = perf.perf_info(runs)
    out.append(Section("perf", "Where the time went", HOW["perf"], perf.plot_perf(timing) if timing.runs else None,
                       perf.perf_note(timing)))
    if len(runs) < 2:
        return out
    parallel = clip_space.parallel_info(runs, acc_key)
    out.append(Section("parallel", "Clip space: parallel coordinates", HOW["parallel"],
                       clip_space.plot_parallel(parallel) if parallel else None,
                       None if parallel else "fewer than two runs with known bounds"))
    pair = clip_space.pair_info(runs, acc_key)
    out.append(Section("pair", "Clip space: pairs of bounds", HOW["pair"],
                       clip_space.plot_pair(pair) if pair.grids else None,
                       None if pair.grids else "fewer than two bounds vary across these runs"))
    if target.kind == "study":
        study, why = clip_space.open_study(target.study_storage, target.name)
        if study is not None:
            imp = clip_space.importance_info(study)
            out.append(Section("importance", "Parameter importances", HOW["importance"],
                               clip_space.plot_importance(imp) if imp.importances else None, imp.reason))
            pareto = clip_space.pareto_info(study)
            if pareto is not None:
                out.append(Section("pareto", "Pareto front", HOW["pareto"], clip_space.plot_pareto(pareto)))
        else:
            out.append(Section("importance", "Parameter importances", HOW["importance"], None, why))
    return out


# Summary cells wrap where they must and run ids show their first characters (the link, and a copy, keep
# the whole id), so that the summary fits 1400 px and scrolls inside its own box when it cannot; the panel
# figures' run menu sits top left at the title's height, so with a menu their title moves up out of its way
# (the pair heatmap's title must stay clear of plotly's toolbar, so its menu, top right, moves down instead).
_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1280px;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}p.how{color:#555}
p.note,li.note{color:#8a5300}.scroll{max-height:28em;max-width:100%;overflow:auto}
table.summary{border-collapse:collapse;font-size:.8em}
.summary td,.summary th{border:1px solid #ddd;padding:.2em .3em;text-align:right}
.summary th{background:#f4f4f4;position:sticky;top:0;vertical-align:bottom}
.summary td:first-child{text-align:left;min-width:10em}.bad{color:#b00}
.summary td:last-child{max-width:8ch;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
:is(#fig-exploration,#fig-collapse):has(.updatemenu-container) .g-gtitle{transform:translateY(-35px)}
#fig-pair .menulayer{transform:translateY(36px)}"""


def _div(fig: go.Figure, name: str) -> str:
    return pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=f"fig-{name}",
                       config={"displaylogo": False, "responsive": True})


def _page(title: str, subtitle: str, notes: list[str], summary: str, body: list[str], plotly_js: str) -> str:
    items = "".join(f'<li class="note">{html.escape(n)}</li>' for n in notes)
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style>{plotly_js}</head><body><h1>{html.escape(title)}</h1><p>{subtitle}</p>"
            f"{f'<ul>{items}</ul>' if items else ''}<h2>Summary</h2>{summary}{''.join(body)}</body></html>")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "report"


def make_report(target: str, compare: Sequence[str] | None = None, tracking_uri: str | None = None,
                out_dir: str | Path = "reports", *, png: bool = True, log_artifact: bool = True,
                looks: Sequence[int] | None = None) -> Path:
    """Write the report of `target` (run id, run name, study or experiment); returns its index.html.

    `compare` adds runs (ids or names) overlaid on the target's. `looks` judges a claims study at
    these looks instead of its declared ones. Raises UserError for an unknown target or one with no runs.
    """
    found = tracking.resolve_target(target, tracking_uri)
    title = found.name
    if compare:
        extra = [tracking.resolve_run(c, tracking_uri) for c in compare]
        seen = {r.run_id for r in found.runs}
        found = dataclasses.replace(found, runs=found.runs + [r for r in extra if r.run_id not in seen])
        title = f"{found.name} vs {' vs '.join(r.name for r in extra)}"
    if not found.runs:
        raise UserError(f"{found.kind} {found.name!r} has no runs with metrics yet; nothing to report")
    tracking.load_histories(found.runs, tracking_uri)
    acc_key = accuracy_key(found.runs)
    notes = list(found.notes)
    if acc_key is None:
        notes.append("no accuracy metric logged (eval/<benchmark>/accuracy or train/accuracy)")
    if log_artifact and not found.anchor_run_id:
        notes.append("not logged to MLflow: an experiment has no run of its own to hold the report")
    notes += _confounder_notes(found)
    sections = _sections(found, acc_key)
    claims = _claims(found, tracking_uri, looks)
    if looks and claims is None:
        raise UserError(f"looks: {title!r} is not a study that declared claims; looks judge claims only")
    folder = Path(out_dir) / slug(title)
    if (folder / "index.html").exists():
        shutil.rmtree(folder)  # an earlier report of the same target: no stale figure may survive
    folder.mkdir(parents=True)
    if claims is not None:
        claims_report.claims_frame(claims).to_csv(folder / CLAIMS_CSV, index=False)
        sections.insert(0, Section("claims", "Claims", HOW["claims"], None, None, claims_report.claims_html(claims)))
    drawn = [s for s in sections if s.figure is not None]
    if png:
        notes += _write_pngs([s.figure for s in drawn], [folder / f"{s.name}.png" for s in drawn])
    when = datetime.now().strftime("%Y-%m-%d %H:%M")
    subtitle = (f"{html.escape(found.kind)} report, {len(found.runs)} run(s), store "
                f"<code>{html.escape(tracking.resolve_tracking_uri(tracking_uri))}</code>, generated {when}")
    summary = summary_html(summary_info(found, acc_key))
    index = _write_pages(folder, f"dispo-wb report: {title}", subtitle, notes, summary, sections)
    if log_artifact and found.anchor_run_id:
        tracking.log_report(found.anchor_run_id, folder, tracking_uri, digest=_digest(notes, summary, sections))
    return index


CLAIMS_CSV = "claims.csv"


def _claims(target: TargetRuns, tracking_uri: str | None,
            looks: Sequence[int] | None = None) -> "claims_report.ClaimsInfo | None":
    """Verdicts on the claims a study declared (its parent run's tag); None for other targets."""
    if target.kind != "study" or not target.anchor_run_id:
        return None
    return claims_report.study_claims_info(target.runs, tracking.run_tags(target.anchor_run_id, tracking_uri), looks)


def _confounder_notes(target: TargetRuns) -> list[str]:
    """A warning when the runs shown differ in more than the searched bounds (and their seeds)."""
    if len(target.runs) < 2:
        return []
    searched: tuple[str, ...] = ()
    if target.kind == "study":
        study, _ = clip_space.open_study(target.study_storage, target.name)
        searched = tuple({k for t in study.trials for k in t.params}) if study is not None else ()
    differ = confounders(target.runs, searched)
    if not differ:
        return []
    what = "; ".join(f"{k} ({', '.join(v[:4])}{', ...' if len(v) > 4 else ''})" for k, v in differ.items())
    return [f"warning: these runs differ in more than the searched bounds: {what}. A difference in accuracy "
            "between them cannot be credited to the bounds alone."]


def _digest(notes: list[str], summary: str, sections: list[Section]) -> str:
    """What the report says, without when it was generated: the same runs give the same digest."""
    h = hashlib.sha256("\n".join(notes).encode() + summary.encode())
    for s in sections:
        h.update(f"{s.name}|{s.note}|{s.html}|".encode() + (s.figure.to_json().encode() if s.figure is not None else b""))
    return h.hexdigest()[:20]


def _write_pages(folder: Path, title: str, subtitle: str, notes: list[str], summary: str,
                 sections: list[Section]) -> Path:
    """index.html and each figure's own page load the folder's one plotly.min.js (offline, ~4.6 MB once)."""
    plotly_js = get_plotlyjs()
    (folder / "plotly.min.js").write_text(plotly_js, encoding="utf-8")
    body = []
    for s in sections:
        div = _div(s.figure, s.name) if s.figure is not None else ""
        note = f'<p class="note">{html.escape(s.note)}</p>' if s.note else ""
        body.append(f'<section id="{s.name}"><h2>{html.escape(s.title)}</h2><p class="how">{html.escape(s.how)}</p>'
                    f"{note}{s.html or ''}{div}</section>")
        if div:
            (folder / f"{s.name}.html").write_text(
                f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(s.title)}</title>'
                f'<style>{_CSS}</style><script src="plotly.min.js"></script></head><body>{div}</body></html>', encoding="utf-8")
    index = folder / "index.html"
    index.write_text(_page(title, subtitle, notes, summary, body, '<script src="plotly.min.js"></script>'),
                     encoding="utf-8")
    return index


def _write_pngs(figs: list[go.Figure], paths: list[Path]) -> list[str]:
    """PNG copies through kaleido (it drives a local Chrome); a note instead when it cannot."""
    if not figs:
        return []
    try:
        pio.write_images(figs, paths, width=[1200] * len(figs), height=[f.layout.height or 500 for f in figs])
    except Exception as e:  # noqa: BLE001 - kaleido raises various errors when no Chrome can start
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return [f"PNG images skipped: kaleido could not render ({type(e).__name__}: {first[:200]}); "
                "install Chrome or Chromium for them"]
    return []


# ---- dispo-wb ui -------------------------------------------------------------------------------


class UiProcess(NamedTuple):
    name: str
    url: str
    process: subprocess.Popen


def start_ui(port: int = 5000, host: str = "127.0.0.1", tracking_uri: str | None = None,
             optuna: bool = False, storage: str | None = None) -> tuple[list[UiProcess], list[str]]:
    """Start `mlflow ui` (and optuna-dashboard) on the stores the runs were logged to; returns them and notes."""
    uri = tracking.require_store(tracking_uri)
    served = uri.startswith(("http://", "https://"))  # an `mlflow server` is its own UI
    if not served and not port_free(host, port):
        raise UserError(f"port {port} on {host} is in use; pass --port with a free one")
    notes: list[str] = [f"MLflow UI: {uri} (the tracking server serves it)"] if served else []
    # Own sessions, so that stopping a UI also stops the server processes it forks.
    procs = [] if served else [UiProcess("MLflow UI", f"http://{host}:{port}", subprocess.Popen(
        tracking.ui_command(uri, host, port), start_new_session=True))]
    if optuna:
        here = str(Path(sys.executable).parent)  # the venv's bin, which need not be on PATH
        dash = shutil.which("optuna-dashboard", path=here) or shutil.which("optuna-dashboard")
        if importlib.util.find_spec("optuna_dashboard") is None or not dash:
            notes.append("optuna-dashboard is not installed (pip install optuna-dashboard); MLflow UI only")
        elif not (storage := storage or _latest_storage(uri)):
            notes.append("no study storage found (no parent run tagged optuna.storage); pass --storage")
        elif not port_free(host, port + 1):
            notes.append(f"port {port + 1} is in use; optuna-dashboard not started")
        else:
            procs.append(UiProcess("optuna-dashboard", f"http://{host}:{port + 1}", subprocess.Popen(
                [dash, storage, "--host", host, "--port", str(port + 1)], start_new_session=True)))
    return procs, notes


def _latest_storage(uri: str) -> str | None:
    try:
        return tracking.latest_study_storage(uri)
    except Exception:  # noqa: BLE001 - only a convenience default
        return None


def serve_ui(port: int = 5000, host: str = "127.0.0.1", tracking_uri: str | None = None, optuna: bool = False,
             storage: str | None = None) -> None:
    """Run the UIs until Ctrl-C or SIGTERM; prints where they listen. Either signal stops the servers
    it started (their process groups) before it returns."""
    procs, notes = start_ui(port, host, tracking_uri, optuna, storage)
    # `kill PID` must not orphan the servers, nor SIGINT where the shell that started us ignores it
    # (a background job of a non-interactive shell starts with SIGINT ignored, and Python keeps that).
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    for p in procs:
        print(f"{p.name}: {p.url}", flush=True)
    for n in notes:
        print(n, flush=True)
    if not procs:
        return
    print("Ctrl-C stops.", flush=True)
    try:
        while all(p.process.poll() is None for p in procs):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for sig in previous:  # a second signal must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        stop_ui(procs)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def stop_ui(procs: Sequence[UiProcess], timeout_s: float = 10) -> None:
    """SIGTERM each UI's process group, SIGKILL what is left after `timeout_s`."""
    for p in procs:
        _signal_group(p.process, signal.SIGTERM)
    for p in procs:
        try:
            p.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _signal_group(p.process, signal.SIGKILL)
            p.process.wait()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the group start_new_session made; its id is the child's pid
    except ProcessLookupError:
        pass
