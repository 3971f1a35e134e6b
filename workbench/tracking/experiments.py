"""Where a person finds a store's runs in the MLflow UI: one runs-table address per experiment.

MLflow 3's UI opens an experiment on its GenAI overview (traces, evaluations), where training runs
do not show; its runs table is the route `#/experiments/<id>/runs` (`experimentPageTabRuns` in
the UI's router, checked against the installed MLflow by tests/test_ui_address.py).
"""

from __future__ import annotations

from typing import NamedTuple

from workbench.tracking.store import reading_client

RUNS_ROUTE = "/#/experiments/{experiment_id}/runs"


class RunsTable(NamedTuple):
    experiment: str
    url: str


def runs_table_url(base: str, experiment_id: str) -> str:
    """The MLflow UI's runs table of one experiment, e.g. http://127.0.0.1:5000/#/experiments/1/runs."""
    return base.rstrip("/") + RUNS_ROUTE.format(experiment_id=experiment_id)


def runs_tables(base: str, tracking_uri: str | None = None) -> list[RunsTable]:
    """Each active experiment of the store that holds runs, the latest started first, with its runs table."""
    from mlflow.entities import ViewType

    client = reading_client(tracking_uri)
    latest = []
    for exp in client.search_experiments(view_type=ViewType.ACTIVE_ONLY):
        newest = client.search_runs([exp.experiment_id], max_results=1, order_by=["attributes.start_time DESC"])
        if newest:
            latest.append((newest[0].info.start_time or 0, exp.name, exp.experiment_id))
    return [RunsTable(name, runs_table_url(base, eid)) for _, name, eid in sorted(latest, reverse=True)]
