"""Sweep engine on a fake trainer (tests/fake_trainer.py): real Optuna storage, real MLflow store.

Run: .venv/bin/python -m pytest tests/test_sweep.py -q
The fake trains in milliseconds; what costs time is starting worker and training processes.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState
from typer.testing import CliRunner

from tests import fake_trainer
from workbench import sweep, tracking
from workbench.cli.sweep import SweepHooks
from workbench.sweep.study_file import load_study_file

FAKE = fake_trainer.train


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    # One store for the module: creating an MLflow database costs seconds; experiments keep tests apart.
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def write_study(folder: Path, name: str, space: dict, **extra) -> Path:
    data = {"base": {"experiment": f"exp-{name}", "steps": 4, "model": {"name": "micro-0.5m"}, "eval": {"every": 2},
                     **extra.pop("base", {})},
            "space": space, "sampler": "grid", "pruner": "none", **extra}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def expected(params: dict, seed: int = 0) -> float:
    bounds = {"eps_pos_up": 0.2, "eps_pos_down": 0.2, "eps_neg_up": 0.2, "eps_neg_down": 0.2, **params}
    return fake_trainer.final_accuracy(bounds, seed)


def trials_of(path: Path) -> list[optuna.trial.FrozenTrial]:
    study = load_study_file(path)
    return optuna.load_study(study_name=study.name, storage=sweep.open_storage(sweep.storage_url(study))).trials


def test_grid_2x2_with_2_workers_runs_each_point_once_and_builds_the_mlflow_tree(tmp_path, tracking_uri):
    space = {"eps_neg_up": [0.1, 0.4], "eps_pos_up": [0.2, 1.0]}
    path = write_study(tmp_path, "grid", space, workers=2)
    result = sweep.run_study(load_study_file(path), tracking_uri=tracking_uri, train_fn=FAKE, echo=lambda s: None)

    trials = trials_of(path)
    assert result.complete and result.counts == {"COMPLETE": 4}
    points = sorted((t.params["eps_neg_up"], t.params["eps_pos_up"]) for t in trials)
    assert points == sorted(itertools.product(*space.values()))
    for t in trials:
        assert t.value == pytest.approx(expected(t.params))
    assert {t.user_attrs["worker"] for t in trials} == {0, 1}

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("exp-grid")
    parents = client.search_runs([exp.experiment_id], "tags.`dispo.kind` = 'study'")
    assert len(parents) == 1 and parents[0].info.run_id == result.parent_run_id
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["optuna.sampler"] == "grid"
    assert parent.data.tags["optuna.storage"].endswith("grid.journal")
    assert "grid.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}

    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 4
    by_trial = {int(c.data.tags["dispo.trial"]): c for c in children}
    for t in trials:
        child = by_trial[t.number]
        assert child.info.run_id == t.user_attrs["mlflow_run_id"]
        assert child.info.status == "FINISHED" and child.data.tags["dispo.state"] == "COMPLETE"
        assert child.data.tags["dispo.kind"] == "trial"
        assert float(child.data.params["eps_neg_up"]) == t.params["eps_neg_up"]
        assert child.data.params["seeds"] == "0"
        assert child.data.metrics["eval/micro/accuracy"] == pytest.approx(t.value)
        seed_runs = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{child.info.run_id}'")
        assert [r.data.tags["dispo.seed"] for r in seed_runs] == ["0"]
        assert seed_runs[0].data.tags["dispo.trial"] == str(t.number)


def test_resume_fails_the_running_trial_and_reruns_it_with_the_same_params(tmp_path, tracking_uri):
    path = write_study(tmp_path, "resume", {"eps_neg_up": [0.1, 0.4, 1.0]})
    study = load_study_file(path)
    # What a killed sweep leaves: one COMPLETE trial and one RUNNING trial with an open MLflow run.
    ostudy = sweep.open_study(study, sweep.storage_url(study))
    done = ostudy.ask()
    sweep.sample_params(done, study.space)
    ostudy.tell(done, expected(done.params))
    stuck = ostudy.ask()
    stuck_params = sweep.sample_params(stuck, study.space)
    parent = tracking.open_study_run(study_name=study.name, experiment=study.base.experiment, tags={
        "optuna.storage": sweep.storage_url(study)}, tracking_uri=tracking_uri)
    stuck_run = tracking.open_trial_run(parent_run_id=parent, study_name=study.name, trial_number=stuck.number,
                                              params=stuck_params, tracking_uri=tracking_uri)
    stuck.set_user_attr("mlflow_run_id", stuck_run)

    result = sweep.run_study(study, tracking_uri=tracking_uri, train_fn=FAKE, echo=lambda s: None)

    trials = trials_of(path)
    assert result.recovered == [stuck.number] and result.parent_run_id == parent
    assert trials[stuck.number].state == TrialState.FAIL
    retry = [t for t in trials if t.user_attrs.get("retry_of") == stuck.number]
    assert len(retry) == 1 and retry[0].params == stuck_params and retry[0].state == TrialState.COMPLETE
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["eps_neg_up"] for t in complete) == [0.1, 0.4, 1.0]  # each once, none lost
    assert MlflowClient(tracking_uri).get_run(stuck_run).info.status == "KILLED"


def test_collapse_prunes_the_trial_unless_collapse_is_an_objective(tmp_path, tracking_uri):
    path = write_study(tmp_path, "collapse", {"eps_neg_up": [0.01, 0.2]})
    sweep.run_study(load_study_file(path), tracking_uri=tracking_uri, train_fn=FAKE, echo=lambda s: None)
    states = {t.params["eps_neg_up"]: t for t in trials_of(path)}
    assert states[0.01].state == TrialState.PRUNED and states[0.2].state == TrialState.COMPLETE
    assert states[0.01].user_attrs["collapse"].startswith("repetition collapse at step 2")
    run = MlflowClient(tracking_uri).get_run(states[0.01].user_attrs["mlflow_run_id"])
    assert run.data.tags["dispo.state"] == "PRUNED" and run.data.tags["collapse"] == "repetition"

    path = write_study(tmp_path, "collapse_measured", {"eps_neg_up": [0.01, 0.2]},
                       directions=["maximize eval/micro/accuracy", "minimize collapse"])
    sweep.run_study(load_study_file(path), tracking_uri=tracking_uri, train_fn=FAKE, echo=lambda s: None)
    values = {t.params["eps_neg_up"]: (t.state, t.values) for t in trials_of(path)}
    assert values[0.01] == (TrialState.COMPLETE, [expected({"eps_neg_up": 0.01}), 1.0])
    assert values[0.2] == (TrialState.COMPLETE, [expected({"eps_neg_up": 0.2}), 0.0])


def test_value_is_the_mean_over_seeds_with_one_nested_run_per_seed(tmp_path, tracking_uri):
    path = write_study(tmp_path, "seeds", {"eps_pos_up": [0.5]}, seeds=[0, 3])
    sweep.run_study(load_study_file(path), tracking_uri=tracking_uri, train_fn=FAKE, echo=lambda s: None)
    (trial,) = trials_of(path)
    assert trial.value == pytest.approx((expected({"eps_pos_up": 0.5}, 0) + expected({"eps_pos_up": 0.5}, 3)) / 2)
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("exp-seeds").experiment_id],
                              f"tags.`mlflow.parentRunId` = '{trial.user_attrs['mlflow_run_id']}'")
    assert sorted(r.data.tags["dispo.seed"] for r in runs) == ["0", "3"]
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "3"]


def test_a_crashing_training_process_fails_one_trial_and_a_rerun_retries_it(tmp_path, tracking_uri):
    marker = tmp_path / "crashed-once"
    path = write_study(tmp_path, "crash", {"eps_neg_up": [0.1, 0.4]}, base={"run_name": f"fake:crash_once={marker}"})
    first = sweep.run_study(load_study_file(path), tracking_uri=tracking_uri, train_fn=FAKE, echo=lambda s: None)
    assert first.counts == {"COMPLETE": 1, "FAIL": 1} and not first.complete
    failed = next(t for t in trials_of(path) if t.state == TrialState.FAIL)
    assert "exit code 3" in failed.user_attrs["failure"]

    second = sweep.run_study(load_study_file(path), tracking_uri=tracking_uri, train_fn=FAKE, echo=lambda s: None)
    assert second.complete and second.recovered == [failed.number]
    complete = [t for t in trials_of(path) if t.state == TrialState.COMPLETE]
    assert sorted(t.params["eps_neg_up"] for t in complete) == [0.1, 0.4]


def test_intermediate_eval_accuracy_prunes_a_worse_trial(tmp_path, tracking_uri):
    # A finished reference trial at the best point (0.2) sets the median; every point drawn from
    # [2, 10] is worse at every eval, so the pruner stops it through the trainer's on_eval.
    path = write_study(tmp_path, "prune", {"eps_neg_up": {"low": 2.0, "high": 10.0}}, sampler="random", n_trials=2,
                       pruner={"name": "median", "n_startup_trials": 1})
    study = load_study_file(path)
    best = expected({})
    sweep.open_study(study, sweep.storage_url(study)).add_trial(optuna.trial.create_trial(
        value=best, intermediate_values={s: best * (s + 1) / 5 for s in (0, 2, 4)}))
    sweep.run_study(study, tracking_uri=tracking_uri, train_fn=FAKE, echo=lambda s: None)
    worse = trials_of(path)[1]
    assert worse.state == TrialState.PRUNED
    assert list(worse.intermediate_values) == [0]  # stopped at its first evaluation
    seed_run = MlflowClient(tracking_uri).get_run(worse.user_attrs["seeds"]["0"]["run_id"])
    assert seed_run.data.tags.get("stopped_early") == "true"
    assert worse.user_attrs["seeds"]["0"]["status"] == "STOPPED"


def test_cli_runs_a_study_by_default_and_shows_its_status(tmp_path, tracking_uri):
    import typer

    from workbench.cli import sweep as cli_sweep

    app = typer.Typer()
    app.command()(lambda: None)
    app.add_typer(cli_sweep.app, name="sweep")
    path = write_study(tmp_path, "cli", {"eps_neg_up": [0.01, 0.3]})
    runner = CliRunner()
    ran = runner.invoke(app, ["sweep", str(path), "--tracking-uri", tracking_uri], obj=SweepHooks(train_fn=FAKE))
    assert ran.exit_code == 0, ran.output
    assert "1 complete, 1 pruned" in ran.output

    shown = runner.invoke(app, ["sweep", "status", str(path)], env={"COLUMNS": "300"})
    assert shown.exit_code == 0, shown.output
    rows = {t.number: t for t in trials_of(path)}
    for t in rows.values():
        assert t.user_attrs["mlflow_run_id"] in shown.output
    assert "seed 0: repetition, step 2" in shown.output and "PRUNED" in shown.output
    best = next(t for t in rows.values() if t.state == TrialState.COMPLETE)
    assert f"best trial: #{best.number}" in shown.output

    missing = runner.invoke(app, ["sweep", "status", "nosuch", "--storage", str(tmp_path / "none.journal")])
    assert missing.exit_code == 2 and "no storage for study 'nosuch'" in missing.output


@pytest.mark.slow
def test_smoke_study_runs_on_the_real_trainer(tmp_path, tracking_uri):
    # studies/smoke.yaml as shipped (copied so that its journal lands in tmp_path).
    path = tmp_path / "smoke.yaml"
    path.write_text((Path(__file__).parents[1] / "studies" / "smoke.yaml").read_text())
    result = sweep.run_study(load_study_file(path), tracking_uri=tracking_uri, echo=lambda s: None)
    assert result.complete and result.counts == {"COMPLETE": 2}
    client = MlflowClient(tracking_uri)
    for t in trials_of(path):
        seed_run = client.get_run(t.user_attrs["seeds"]["0"]["run_id"])
        assert seed_run.info.status == "FINISHED"
        assert seed_run.data.tags["mlflow.parentRunId"] == t.user_attrs["mlflow_run_id"]
        assert seed_run.data.params["objective.params.eps_neg_up"] == str(t.params["eps_neg_up"])
        assert t.value == pytest.approx(seed_run.data.metrics["eval/micro/accuracy"])


def test_mlflow_tree_names_seed_runs_and_holds_the_space_and_the_best_trial(tmp_path, tracking_uri):
    path = write_study(tmp_path, "named", {"eps_neg_up": [0.01, 0.3]}, seeds=[0, 1])
    result = sweep.run_study(load_study_file(path), tracking_uri=tracking_uri, train_fn=FAKE, echo=lambda s: None)
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("exp-named")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on the runs table
    parent = client.get_run(result.parent_run_id)
    assert parent.data.params["space.eps_neg_up"] == "objective.params.eps_neg_up: 0.01, 0.3"
    assert parent.data.params["seeds"] == "0,1" and parent.data.params["n_trials"] == "2"
    best = next(t for t in trials_of(path) if t.state == TrialState.COMPLETE)
    assert parent.data.metrics["best/value"] == pytest.approx(best.value)
    assert parent.data.metrics["best/trial"] == best.number and parent.data.tags["dispo.best_trial"] == str(best.number)
    assert parent.data.tags["dispo.best_params"] == "eps_neg_up=0.3"
    for t in trials_of(path):
        trial_run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert trial_run.data.tags["collapse"] == ("repetition" if t.params["eps_neg_up"] == 0.01 else "none")
        for seed, info in t.user_attrs["seeds"].items():
            assert client.get_run(info["run_id"]).info.run_name == f"named-t{t.number:04d}-s{seed}"


def returns_a_dict(config, **kwargs):
    """A train function that breaks the contract: a dict instead of a RunResult."""
    return {"run_id": "r", "status": "FINISHED", "final_eval": {"eval/micro/accuracy": 1.0}}


def test_a_train_function_must_return_a_run_result(tmp_path):
    from workbench.sweep.trial import TrialCrashed, run_training

    config = load_study_file(write_study(tmp_path, "typed", {"eps_neg_up": [0.2]})).run_config({}, 0, 1)
    with pytest.raises(TrialCrashed, match="the train function returned a dict, not a RunResult"):
        run_training(returns_a_dict, config)
