"""A sweep's run tree: the study's parent run, a child run per trial, and their endings.

Used by the sweep. The trainer's seed runs nest under the trial runs (`RunTracker` with
`parent_run_id`); when a sweep dies, `kill_running_trials` and `kill_runs` end what it left
RUNNING as KILLED with a reason.

Study and trial runs carry the writer tags of the process that opened them (pid, host, process
start), like training runs: when a coordinator or worker is SIGKILLed and no sweep comes back
to recover, `dispo-wb runs clean` (workbench.tracking.stale) tells they are orphans and ends them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from workbench.names import (FAILED, FINISHED, KILLED, KIND_STUDY, KIND_TRIAL, RUNNING, TAG_FAILURE, TAG_KIND,
                             TAG_OPTUNA_STORAGE, TAG_PARENT, TAG_STATE, TAG_STUDY, TAG_TRIAL)
from workbench.tracking.liveness import writer_tags
from workbench.tracking.store import MAX_PARAM_LEN, experiment_id, open_client, tag_run

_TRIAL_STATUS = {"COMPLETE": FINISHED, "PRUNED": FINISHED, "FAIL": FAILED}  # Optuna state -> run status


def open_study_run(*, study_name: str, experiment: str, tags: dict[str, str], texts: dict[str, str] | None = None,
                   files: list[str | Path] | None = None, tracking_uri: str | None = None,
                   params: dict[str, str] | None = None) -> str:
    """The study's parent run: the one tagged `dispo.study`=study_name is reopened, else one is created.

    Reopening (not duplicating) keeps one run tree per study however often a sweep resumes. A
    run of the same name on another Optuna storage (tag `optuna.storage`) is another study.
    """
    client = open_client(tracking_uri)
    exp_id = experiment_id(client, experiment)
    found = [r for r in client.search_runs([exp_id], f"tags.`{TAG_STUDY}` = '{study_name}' and tags.`{TAG_KIND}` = '{KIND_STUDY}'",
                                           order_by=["attributes.start_time ASC"])
             if r.data.tags.get(TAG_OPTUNA_STORAGE) == tags.get(TAG_OPTUNA_STORAGE)]
    all_tags = {**tags, **writer_tags(), TAG_KIND: KIND_STUDY, TAG_STUDY: study_name}
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status=RUNNING)
        tag_run(client, run_id, all_tags)
    else:
        run_id = client.create_run(exp_id, run_name=study_name, tags=all_tags).info.run_id
    if params and not found:  # a resumed study keeps the params it was opened with (MLflow params are immutable)
        from mlflow.entities import Param

        client.log_batch(run_id, params=[Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in params.items()],
                         synchronous=True)
    for name, text in (texts or {}).items():
        client.log_text(run_id, text, name)
    for path in files or []:
        client.log_artifact(run_id, str(path))
    return run_id


def close_study_run(run_id: str, *, status: str, metrics: dict[str, float] | None = None,
                    tags: dict[str, str] | None = None, tracking_uri: str | None = None) -> None:
    client = open_client(tracking_uri)
    _log_values(client, run_id, metrics or {}, tags or {})
    client.set_terminated(run_id, status=status)


def open_trial_run(*, parent_run_id: str, study_name: str, trial_number: int, params: dict[str, Any],
                   tags: dict[str, str] | None = None, tracking_uri: str | None = None) -> str:
    """A child run of the study run for one trial; the trainer's runs (one per seed) nest under it."""
    from mlflow.entities import Param

    client = open_client(tracking_uri)
    parent = client.get_run(parent_run_id)
    all_tags = {**(tags or {}), **writer_tags(), TAG_PARENT: parent_run_id, TAG_KIND: KIND_TRIAL,
                TAG_STUDY: study_name, TAG_TRIAL: str(trial_number), TAG_STATE: "RUNNING"}  # Optuna's state
    run = client.create_run(parent.info.experiment_id, run_name=f"{study_name}-t{trial_number:04d}", tags=all_tags)
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in params.items()],
                     synchronous=True)
    return run.info.run_id


def close_trial_run(run_id: str, *, state: str, metrics: dict[str, float] | None = None,
                    tags: dict[str, str] | None = None, tracking_uri: str | None = None,
                    killed: bool = False) -> None:
    """Write the trial's values and Optuna state back; COMPLETE and PRUNED end FINISHED, FAIL ends
    FAILED, or KILLED when the sweep was interrupted."""
    client = open_client(tracking_uri)
    _log_values(client, run_id, metrics or {}, {**(tags or {}), TAG_STATE: state})
    client.set_terminated(run_id, status=KILLED if killed else _TRIAL_STATUS.get(state, FAILED))


def kill_runs(run_ids: list[str], reason: str, tracking_uri: str | None = None) -> int:
    """Mark runs left RUNNING by a killed sweep, and their RUNNING children, KILLED; returns how many."""
    client = open_client(tracking_uri)
    killed = 0
    todo = list(run_ids)
    while todo:
        run_id = todo.pop()
        run = client.get_run(run_id)
        children = client.search_runs([run.info.experiment_id], f"tags.`{TAG_PARENT}` = '{run_id}'")
        todo += [c.info.run_id for c in children]
        if run.info.status == RUNNING:
            tag_run(client, run_id, {TAG_FAILURE: reason, TAG_STATE: "FAIL"} if
                    run.data.tags.get(TAG_KIND) == KIND_TRIAL else {TAG_FAILURE: reason})
            client.set_terminated(run_id, status=KILLED)
            killed += 1
    return killed


def kill_running_trials(parent_run_id: str, reason: str, tracking_uri: str | None = None) -> int:
    """After a sweep died: every RUNNING run beneath the study run (trials, seed runs) becomes KILLED."""
    client = open_client(tracking_uri)
    parent = client.get_run(parent_run_id)
    children = client.search_runs([parent.info.experiment_id], f"tags.`{TAG_PARENT}` = '{parent_run_id}'")
    return kill_runs([c.info.run_id for c in children], reason, tracking_uri)


def _log_values(client, run_id: str, metrics: dict[str, float], tags: dict[str, Any]) -> None:
    from mlflow.entities import Metric, RunTag

    ts = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()],
                     tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)
