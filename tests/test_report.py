"""Report figures (asserted on their info NamedTuples), target resolution, the page, the CLI and `ui`.

Runs are fabricated straight into a temporary MLflow store (tests/report_fixtures.py).
Run: .venv/bin/python -m pytest tests/test_report.py -q
"""

from __future__ import annotations

import dataclasses
import math
import socket
import time
import urllib.request

import numpy as np
import optuna
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric
from typer.testing import CliRunner

from tests.report_fixtures import BOUNDS, FakeRun, build_store, eval_series, log_run, series
from workbench import tracking
from workbench.report import page as report
from workbench.tracking import histories
from workbench.tracking.store import reading_client
from workbench.cli.app import app as dispo_wb
from workbench.metrics.collapse import BASELINE_STEPS
from workbench.errors import UserError
from workbench.names import REGIMES
from workbench.report import clip_space, curves, runs
from workbench.report.runs import Marker


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("store"))


def _runs(store, target):
    found = tracking.resolve_target(target, store.uri)
    tracking.load_histories(found.runs, store.uri)
    return found


def _one(store, name):
    return _runs(store, name).runs[0]


# ---- reading the store ----


def test_targets_resolve_by_id_name_study_and_experiment(store):
    by_id = tracking.resolve_target(store.runs["rep-run"], store.uri)
    by_name = tracking.resolve_target("rep-run", store.uri)
    assert (by_id.kind, by_name.kind) == ("run", "run")
    assert by_id.runs[0].run_id == by_name.runs[0].run_id == store.runs["rep-run"]
    study = tracking.resolve_target("clip-mini", store.uri)
    assert study.kind == "study" and study.anchor_run_id == store.study.parent_run_id
    # The seed runs, not the trial runs above them that hold only the trial's value.
    assert sorted(r.run_id for r in study.runs) == sorted(store.study.run_ids)
    assert study.study_storage == store.study.storage_url
    # The parent run's id names the study too.
    assert tracking.resolve_target(store.study.parent_run_id, store.uri).kind == "study"
    trial = tracking.resolve_target("clip-mini-t0003", store.uri)
    assert trial.kind == "trial" and sorted(r.run_id for r in trial.runs) == sorted(store.study.trial_runs[3])
    exp = tracking.resolve_target("dispo-wb", store.uri)
    assert exp.kind == "experiment" and exp.anchor_run_id is None
    assert set(store.runs.values()) | set(store.study.run_ids) | set(store.multi.run_ids) == {r.run_id for r in exp.runs}


def test_unknown_target_lists_the_closest_names(store):
    with pytest.raises(UserError, match=r"no run id, study, run name or experiment matches 'clip-mnii'; closest: clip-mini"):
        tracking.resolve_target("clip-mnii", store.uri)
    with pytest.raises(UserError, match="closest: .*normal-run"):
        tracking.resolve_target("normal-rn", store.uri)


def test_a_missing_store_is_a_user_error_and_is_not_created(tmp_path):
    with pytest.raises(UserError, match="no MLflow store at"):
        tracking.resolve_target("x", f"sqlite:///{tmp_path / 'nope.db'}")
    assert not (tmp_path / "nope.db").exists()


def test_histories_are_complete_and_the_sql_path_matches_the_client_path(store):
    run = _one(store, "normal-run")
    fake = FakeRun("normal-run", steps=40)
    expected = series(fake)
    assert set(run.metrics) == set(expected) | {"eval/micro/accuracy", "eval/micro/pass_at_4"}
    s = run.metrics["entropy/mean"]
    assert s.steps.tolist() == list(range(1, 41))
    np.testing.assert_allclose(s.values, expected["entropy/mean"])
    assert np.all(np.diff(s.elapsed_s) > 0) and s.elapsed_s[0] == pytest.approx(2.0)
    assert run.metrics["eval/micro/accuracy"].steps.tolist() == sorted(eval_series(fake, expected))
    client = reading_client(store.uri)
    fast = histories.sql_metric_rows(client, [run.run_id])
    slow = histories.client_metric_rows(client, [run])
    assert sorted(fast) == sorted(slow) and len(fast) == sum(len(m.steps) for m in run.metrics.values())


def test_a_step_logged_twice_keeps_the_later_value_and_nan_survives(store):
    client = MlflowClient(store.uri)
    rid = client.create_run(client.create_experiment("scratch"), run_name="resumed").info.run_id  # not in dispo-wb
    client.log_batch(rid, metrics=[Metric("reward/mean", 0.1, 1000, 1), Metric("reward/mean", 0.2, 2000, 2),
                                   Metric("reward/mean", 0.7, 3000, 2), Metric("reward/mean", math.nan, 4000, 3)])
    run = tracking.resolve_target(rid, store.uri).runs[0]
    tracking.load_histories([run], store.uri)
    s = run.metrics["reward/mean"]
    assert s.steps.tolist() == [1, 2, 3] and s.values[1] == 0.7 and math.isnan(s.values[2])


# ---- figures ----


def test_exploration_info_has_every_regime_over_every_step(store):
    run = _one(store, "normal-run")
    info = curves.exploration_info([run], "eval/micro/accuracy")
    assert info.rows[0].labels == ("all tokens", *REGIMES)
    assert [r.keys for r in info.rows[1:]] == [tuple(f"regime/{g}/{m}" for g in REGIMES)
                                               for m in ("clip_frac", "token_frac")]
    panel = info.runs[0]
    assert info.missing == ()
    assert {k: len(c.steps) for k, c in panel.curves.items()} == {k: 40 for row in info.rows for k in row.keys}
    assert panel.curves["regime/neg_up/clip_frac"].steps[0] == 1  # train steps only, from 1


@pytest.mark.parametrize("name,kind,onset", [("rep-run", "repetition", 20), ("len-run", "length", 25)])
def test_collapse_onset_and_kind_come_from_the_run(store, name, kind, onset):
    run = _one(store, name)
    info = curves.collapse_info([run], "eval/micro/accuracy")
    assert info.runs[0].marker == Marker(kind, onset, "run tag")
    # Without the tag the stored series give the same verdict.
    untagged = dataclasses.replace(run, tags={k: v for k, v in run.tags.items() if not k.startswith("collapse")})
    assert runs.collapse_marker(untagged) == Marker(kind, onset, "detected")
    length = run.metrics["response/length_mean"].values
    guides = {(g.row, g.text.split()[0]): g.value for g in info.runs[0].guides}
    assert guides == pytest.approx({(0, "collapse"): 0.5, (1, "collapse"): 0.35 * length[:BASELINE_STEPS].mean(),
                                    (2, "collapse"): 0.5})  # the fixtures log no rollout.max_new_tokens: no cap line


def test_a_healthy_run_has_no_collapse_marker(store):
    info = curves.collapse_info([_one(store, "normal-run")], None)
    assert info.runs[0].marker is None and len(info.runs[0].curves["response/repetition_rate"].steps) == 40


def test_a_run_without_regime_metrics_reports_what_it_has(store):
    run = _one(store, "other-tool")
    info = curves.exploration_info([run], "eval/micro/accuracy")
    assert info.runs[0].curves == {} and "entropy/mean" in info.missing and "regime/pos_up/clip_frac" in info.missing
    collapse = curves.collapse_info([run], None)
    assert set(collapse.runs[0].curves) == {"response/length_mean", "response/length_correct", "response/length_incorrect"}
    assert collapse.missing == ("response/repetition_rate", "response/truncated_frac")
    learning = curves.learning_info([run], "eval/micro/accuracy")
    # The fixtures' reward is their train accuracy (0/1 rewards, nothing shaped): one panel for both.
    assert learning.keys == ("train/accuracy", "eval/micro/accuracy", "eval/micro/pass_at_4")


def test_steps_without_regime_statistics_are_counted_and_noted(store, tmp_path):
    client = MlflowClient(store.uri)
    exp = client.create_experiment("zero-advantage")
    rid = log_run(client, exp, FakeRun("all-equal-rewards", steps=10))
    late = int(time.time() * 1000) + 10_000  # logged again later: these values replace the first ones
    keys = [k for k in series(FakeRun("x", steps=10)) if k.startswith("regime/")]
    client.log_batch(rid, metrics=[Metric(k, math.nan, late, s) for k in keys for s in (3, 4)])
    info = curves.exploration_info([_one(store, rid)], None)
    assert info.undefined == {k: pytest.approx(0.2) for k in keys if k in info.undefined} and len(info.undefined) == 12
    page = report.make_report(rid, tracking_uri=store.uri, out_dir=tmp_path, png=False, log_artifact=False).read_text()
    assert "regime statistics are undefined (NaN) at 20% of the logged steps" in page


def test_learning_bands_span_the_seeds_of_each_trial(store):
    study = _runs(store, "clip-mini")
    info = curves.learning_info(study.runs, "eval/micro/accuracy")
    assert len(info.groups) == len(store.study.trial_runs) and info.shown == curves.TOP_GROUPS
    assert {g.run_ids for g in info.groups} == {tuple(ids) for ids in store.study.trial_runs.values()}
    finals = [g.final for g in info.groups]
    assert finals == sorted(finals, reverse=True)
    two_seeds = next(g for g in info.groups if len(g.run_ids) == 2)
    band = two_seeds.curves["train/accuracy"]
    assert len(band.steps) == 30 and np.all(band.lo <= band.mean) and np.all(band.mean <= band.hi)
    by_id = {r.run_id: r for r in study.runs}
    per_seed = np.stack([by_id[i].metrics["train/accuracy"].values for i in two_seeds.run_ids])
    np.testing.assert_allclose(band.mean, per_seed.mean(0))
    np.testing.assert_allclose(band.hi, per_seed.max(0))
    assert np.all(np.diff(band.minutes) > 0)
    assert two_seeds.curves["eval/micro/accuracy"].steps.tolist() == [0, 10, 20, 30]


def test_runs_differing_only_in_seed_form_one_group(store):
    a = _one(store, "normal-run")
    b = dataclasses.replace(a, run_id="b" * 32, params={**a.params, "seed": "1"})
    c = dataclasses.replace(a, run_id="c" * 32, params={**a.params, "objective.params.eps_neg_up": "0.5"})
    groups = runs.group_runs([a, b, c])
    assert [len(g.runs) for g in groups] == [2, 1] and groups[0].label.endswith("(2 seeds)")


def test_pair_heatmap_means_and_collapse_marks(store):
    study = _runs(store, "clip-mini")
    info = clip_space.pair_info(study.runs, "eval/micro/accuracy")
    assert [(g.x, g.y) for g in info.grids] == [("eps_pos_up", "eps_neg_up"), ("eps_pos_up", "eps_neg_down"),
                                                 ("eps_neg_up", "eps_neg_down")]
    g = info.grids[2]
    assert g.x_labels == ("0.01", "0.2") and g.y_labels == ("0.05", "0.2", "off")  # eps_neg_down >= 1 is off
    assert g.count.sum() == len(study.runs)
    assert g.collapsed[:, 0].tolist() == [3, 3, 3] and g.collapsed[:, 1].tolist() == [0, 0, 0]
    cell = [r for r in study.runs if runs.run_bounds(r)["eps_neg_up"] == 0.2
            and runs.run_bounds(r)["eps_neg_down"] == 0.05]
    assert g.mean[0, 1] == pytest.approx(np.mean([runs.final_value(r, "eval/micro/accuracy") for r in cell]))


def test_parallel_coordinates_cover_the_four_bounds_and_collapse(store):
    study = _runs(store, "clip-mini")
    info = clip_space.parallel_info(study.runs, "eval/micro/accuracy")
    # pos_down is 0.2 in every trial: no axis for a bound that was never varied.
    assert [d.label for d in info.dims] == ["pos_up (log)", "neg_up (log)", "neg_down", "collapse"]
    assert info.dims[2].ticktext == ("0.05", "0.2", "off")
    assert info.dims[-1].range == (0.0, 4.0) and info.dims[-1].ticktext[1] == "repetition"
    assert len(info.color) == len(study.runs) == len(info.run_ids)
    collapse = dict(zip(info.run_ids, info.dims[-1].values))
    collapsed = {i for t in store.study.collapsed_trials for i in store.study.trial_runs[t]}
    assert {i for i, v in collapse.items() if v == 1} == collapsed  # 1: repetition


def test_parallel_coordinates_leave_out_runs_of_unknown_objectives(store):
    exp = _runs(store, "dispo-wb")
    info = clip_space.parallel_info(exp.runs, "eval/micro/accuracy")
    assert set(info.run_ids) == {r.run_id for r in exp.runs} - {store.runs["other-tool"]}
    assert all(not np.isnan(d.values).any() for d in info.dims)
    assert clip_space.parallel_info([r for r in exp.runs if r.run_id == store.runs["normal-run"]], None) is None


def test_importances_and_pareto_come_from_optuna(store):
    study, why = clip_space.open_study(store.study.storage_url, "clip-mini")
    assert why is None
    imp = clip_space.importance_info(study)
    # Pruned trials count at their last reported value; the collapsed (eps_neg_up=0.01) ones reported none here.
    assert imp.n_trials == 9 and set(imp.importances) == {"eps_pos_up", "eps_neg_down", "eps_neg_up"}
    assert imp.importances["eps_neg_up"] == pytest.approx(0.0, abs=1e-9)
    assert sum(imp.importances.values()) == pytest.approx(1.0)
    multi, _ = clip_space.open_study(store.multi.storage_url, "multi")
    assert clip_space.importance_info(multi).target == "maximize eval/micro/accuracy"
    small = optuna.create_study()
    for x in range(3):
        small.add_trial(optuna.trial.create_trial(params={"a": x, "b": -x}, value=float(x), distributions={
            "a": optuna.distributions.IntDistribution(0, 5), "b": optuna.distributions.IntDistribution(-5, 0)}))
    few = clip_space.importance_info(small)
    assert few.importances == {} and few.reason == "needs 8 complete or pruned trials over at least two searched parameters (has 3 over 2)"
    assert clip_space.pareto_info(study) is None
    pareto = clip_space.pareto_info(multi)
    assert pareto.names == ("maximize eval/micro/accuracy", "minimize collapse")
    acc, col = pareto.values[:, 0], pareto.values[:, 1]
    dominated = [any(acc[j] >= acc[i] and col[j] <= col[i] and (acc[j], col[j]) != (acc[i], col[i])
                     for j in range(len(acc))) for i in range(len(acc))]
    assert pareto.on_front.tolist() == [not d for d in dominated]


def test_missing_optuna_storage_becomes_a_note(tmp_path):
    study, why = clip_space.open_study(str(tmp_path / "gone.journal"), "s")
    assert study is None and "gone.journal not found" in why


def test_summary_rows(store):
    found = _runs(store, "dispo-wb")
    info = report.summary_info(found, "eval/micro/accuracy")
    rows = {r.run_id: r for r in info.rows}
    assert len(rows) == len(found.runs)
    assert rows[store.runs["rep-run"]].collapse == "repetition at step 20"
    assert rows[store.runs["normal-run"]].collapse == ""
    assert rows[store.runs["normal-run"]].url == f"http://127.0.0.1:5000/#/experiments/{store.experiment_id}/runs/{store.runs['normal-run']}"
    assert rows[store.runs["normal-run"]].bounds == dict.fromkeys(BOUNDS, 0.2)
    assert rows[store.runs["normal-run"]].wall_s == pytest.approx(81.0)
    # Two studies in one experiment: trial numbers alone would be ambiguous.
    first = store.study.trial_runs[1][0]
    assert rows[first].label == "clip-mini trial 1 seed 0"
    study_rows = report.summary_info(_runs(store, "clip-mini"), "eval/micro/accuracy").rows
    assert {r.label for r in study_rows if r.run_id == first} == {"trial 1 seed 0"}
    finals = [r.final_acc for r in info.rows if not math.isnan(r.final_acc)]
    assert finals == sorted(finals, reverse=True)


def test_bounds_of_ppo_family_runs_map_onto_both_signs(store):
    run = dataclasses.replace(_one(store, "normal-run"), params={"objective.name": "dapo"})
    assert runs.run_bounds(run) == {"eps_pos_up": 0.28, "eps_pos_down": 0.2, "eps_neg_up": 0.28, "eps_neg_down": 0.2}


# ---- the page ----


def test_study_report_is_one_page_plus_figure_files_with_one_plotly_js(store, tmp_path, monkeypatch):
    (tmp_path / "clip-mini").mkdir()
    (tmp_path / "clip-mini" / "index.html").write_text("an older report")
    (tmp_path / "clip-mini" / "pareto.html").write_text("a figure this study does not have")
    index = report.make_report("clip-mini", tracking_uri=store.uri, out_dir=tmp_path, png=False)
    page = index.read_text()
    assert not (index.parent / "pareto.html").exists()
    assert index == tmp_path / "clip-mini" / "index.html"
    head = report.get_plotlyjs()[:200]
    # One copy of plotly.js in the folder, loaded from beside the page (offline, nothing fetched).
    assert head not in page and page.count('<script src="plotly.min.js">') == 1
    assert sum(head in p.read_text() for p in index.parent.iterdir() if p.suffix in (".js", ".html")) == 1
    names = ["exploration", "collapse", "learning", "perf", "parallel", "pair", "importance"]
    for name in names:
        assert f'id="fig-{name}"' in page
        assert f'id="fig-{name}"' in (index.parent / f"{name}.html").read_text()
    assert (index.parent / "plotly.min.js").stat().st_size > 1_000_000
    client = MlflowClient(store.uri)
    artifacts = {a.path for a in client.list_artifacts(store.study.parent_run_id, "report")}
    assert "report/index.html" in artifacts and "report/learning.html" in artifacts
    # The same report again (a minute later, say): nothing new is uploaded.
    digest = client.get_run(store.study.parent_run_id).data.tags["dispo.report_digest"]
    uploads = []
    monkeypatch.setattr(MlflowClient, "log_artifacts", lambda self, *a, **k: uploads.append(a))
    report.make_report("clip-mini", tracking_uri=store.uri, out_dir=tmp_path, png=False)
    assert uploads == [] and client.get_run(store.study.parent_run_id).data.tags["dispo.report_digest"] == digest


def test_report_of_a_run_without_regime_metrics_says_what_is_missing(store, tmp_path):
    page = report.make_report("other-tool", tracking_uri=store.uri, out_dir=tmp_path, png=False).read_text()
    assert "not logged: entropy/mean" in page and 'id="fig-learning"' in page and 'id="fig-exploration"' not in page


def test_compare_overlays_runs_and_rejects_a_study(store, tmp_path):
    index = report.make_report("normal-run", compare=["rep-run", store.runs["len-run"]], tracking_uri=store.uri,
                               out_dir=tmp_path, png=False, log_artifact=False)
    assert index.parent.name == "normal-run_vs_rep-run_vs_len-run"
    page = index.read_text()
    assert all(f"<code>{rid}</code>" in page for rid in (store.runs["normal-run"], store.runs["rep-run"],
                                                           store.runs["len-run"]))
    assert 'id="fig-parallel"' in page  # several runs: the clip-space views too
    with pytest.raises(UserError, match="--compare takes runs; 'clip-mini' is a study"):
        report.make_report("normal-run", compare=["clip-mini"], tracking_uri=store.uri, out_dir=tmp_path)


def test_an_empty_study_says_so(store, tmp_path):
    with pytest.raises(UserError, match=r"^study 'empty-study' has no runs with metrics yet; nothing to report$"):
        report.make_report("empty-study", tracking_uri=store.uri, out_dir=tmp_path)


def test_pngs_or_a_note(store, tmp_path):
    index = report.make_report("rep-run", tracking_uri=store.uri, out_dir=tmp_path, log_artifact=False)
    pngs = sorted(p.name for p in index.parent.glob("*.png"))
    if pngs:
        assert pngs == ["collapse.png", "exploration.png", "learning.png", "perf.png"]
        assert all((index.parent / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    else:
        assert "PNG images skipped" in index.read_text()


def test_png_failure_becomes_a_note(monkeypatch):
    def no_chrome(*a, **k):
        raise RuntimeError("no chrome found\nmore detail")

    monkeypatch.setattr(report.pio, "write_images", no_chrome)
    notes = report._write_pngs([report.go.Figure()], ["/nonexistent/x.png"])
    assert notes == ["PNG images skipped: kaleido could not render (RuntimeError: no chrome found); "
                     "install Chrome or Chromium for them"]


# ---- CLI and ui ----


@pytest.fixture(scope="module")
def cli():
    return dispo_wb


def test_cli_report_prints_the_path_and_user_errors_exit_2(store, cli, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(cli, ["report", "normal-run", "--tracking-uri", store.uri, "--out-dir", str(tmp_path),
                             "--no-png", "--no-log-artifact"])
    assert ok.exit_code == 0 and ok.output.strip() == f"report: {tmp_path / 'normal-run' / 'index.html'}"
    bad = runner.invoke(cli, ["report", "nromal-run", "--tracking-uri", store.uri])
    assert bad.exit_code == 2
    assert len(bad.stderr.strip().splitlines()) == 1
    assert bad.stderr.startswith("error: no run id, study, run name or experiment matches 'nromal-run'; closest: normal-run")
    two = runner.invoke(cli, ["report", "normal-run", "rep-run", "--tracking-uri", store.uri])
    assert two.exit_code == 2 and "--compare" in two.stderr
    compared = runner.invoke(cli, ["report", "normal-run", "--compare", "rep-run", "--tracking-uri", store.uri,
                                   "--out-dir", str(tmp_path), "--no-png", "--no-log-artifact"])
    assert compared.exit_code == 0 and "normal-run_vs_rep-run" in compared.output


def test_ui_refuses_a_busy_port_and_a_missing_store(store, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.listen()
        with pytest.raises(UserError, match=f"port {port} on 127.0.0.1 is in use"):
            report.start_ui(port, tracking_uri=store.uri)
    with pytest.raises(UserError, match="no MLflow store at"):
        report.start_ui(port, tracking_uri=f"sqlite:///{tmp_path / 'none.db'}")


@pytest.mark.slow
def test_ui_serves_the_store_on_loopback(store):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs, notes = report.start_ui(port, tracking_uri=store.uri, optuna=True, storage=store.study.storage_url)
    try:
        assert procs[0].url == f"http://127.0.0.1:{port}"
        body = None
        for _ in range(720):  # `mlflow ui` takes over a minute to answer on a loaded 2-core machine
            try:
                body = urllib.request.urlopen(
                    f"{procs[0].url}/api/2.0/mlflow/runs/get?run_id={store.runs['normal-run']}", timeout=2).read()
                break
            except OSError:
                time.sleep(0.25)
        assert body is not None and b"normal-run" in body
        import importlib.util

        if importlib.util.find_spec("optuna_dashboard") is None:
            assert notes == ["optuna-dashboard is not installed (pip install optuna-dashboard); MLflow UI only"]
    finally:
        report.stop_ui(procs)
    assert all(p.process.poll() is not None for p in procs)
