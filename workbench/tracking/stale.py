"""Runs left RUNNING by a process that is gone: find them, mark them KILLED with the reason.

Part of the tracking layer: it reaches MLflow through `workbench.tracking.store`. Used by
`dispo-wb train --resume` (the run to resume), by `dispo-wb runs clean` (the whole store);
a sweep's own recovery marks its trials' runs through `tracking.kill_running_trials`.
"""

from __future__ import annotations

from typing import NamedTuple

from workbench.tracking.store import open_client, search_runs, tag_run
from workbench.tracking.liveness import writer_gone
from workbench.names import KILLED, KIND_TRIAL, RUNNING, TAG_FAILURE, TAG_HOST, TAG_KIND, TAG_PID, TAG_STATE


class StaleRun(NamedTuple):
    run_id: str
    name: str
    experiment_id: str
    reason: str | None  # why its writer is known to be gone; None: alive or cannot be judged here
    note: str  # for a run that is left alone: why


def mark_killed(run_id: str, reason: str, tracking_uri: str | None = None) -> None:
    """End a RUNNING run KILLED, its reason in the `failure_reason` tag (a trial run's state: FAIL)."""
    client = open_client(tracking_uri)
    kind = client.get_run(run_id).data.tags.get(TAG_KIND)
    tag_run(client, run_id, {TAG_FAILURE: reason[:5000], **({TAG_STATE: "FAIL"} if kind == KIND_TRIAL else {})})
    client.set_terminated(run_id, status=KILLED)


def find_running(tracking_uri: str | None = None) -> list[StaleRun]:
    """Every RUNNING run of the store, with the verdict on its writer."""
    from mlflow.entities import ViewType

    client = open_client(tracking_uri)
    ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    if not ids:
        return []
    out = []
    for run in search_runs(client, f"attributes.status = '{RUNNING}'", ids):
        tags = dict(run.data.tags)
        reason = writer_gone(tags)
        if reason is not None:
            note = ""
        elif TAG_PID not in tags:
            note = "no writer recorded (another tool's run, or a sweep's from before writers were tagged)"
        elif tags.get(TAG_HOST) and tags[TAG_HOST] != _hostname():
            note = f"written on host {tags[TAG_HOST]}"
        else:
            note = f"its process {tags[TAG_PID]} is running"
        out.append(StaleRun(run.info.run_id, run.info.run_name or run.info.run_id, run.info.experiment_id,
                            reason, note))
    return out


def clean(tracking_uri: str | None = None, dry_run: bool = False) -> tuple[list[StaleRun], list[StaleRun]]:
    """Mark every RUNNING run whose writer is gone KILLED; returns (marked, left alone)."""
    found = find_running(tracking_uri)
    dead = [r for r in found if r.reason is not None]
    if not dry_run:
        for r in dead:
            mark_killed(r.run_id, f"found RUNNING but {r.reason}; marked KILLED by dispo-wb runs clean", tracking_uri)
    return dead, [r for r in found if r.reason is None]


def _hostname() -> str:
    import socket

    return socket.gethostname()
