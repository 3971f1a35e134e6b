"""The tracking layer: the only package that talks to MLflow.

One job per module:
- `store`: reaching a store (clients, experiments, the UI on it);
- `runs`: writing one run (`RunTracker`, `NullTracker`; the trainer and the engines);
- `child`: the same, written by a child process (`ChildTracker`), so a training process need not import MLflow;
- `lineage`: a sweep's run tree (study and trial runs, ending what a dead sweep left RUNNING);
- `queries`: what the store holds, as plain data (`resolve_target`, `RunRecord`, run info);
- `histories`: full metric series of many runs, the fastest way the store allows.

Everything else in the workbench passes plain dicts and floats here, so a change of tracking
backend touches this package only. MLflow is imported inside functions, never at import time.
The names below are the package's surface: `from workbench.tracking import X` and
`tracking.X` reach them; patch a function where it is read (`workbench.tracking.<module>`).
"""

from __future__ import annotations

import os

# MLflow's usage telemetry: a thread that fetches its config from the internet and, when that
# fails (no network, as on many lab hosts), removes an environment variable while requests on
# other threads read the environment: their calls then failed with KeyError
# ('_MLFLOW_TELEMETRY_SESSION_ID'), 27 times in a 1,000-trial sweep (benchmarks/sweep_load.py).
# Off before mlflow is imported (only this package imports it), unless the user says otherwise.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from workbench.tracking.child import ChildTracker
from workbench.tracking.location import DEFAULT_TRACKING_URI, first_use_lock, resolve_tracking_uri
from workbench.tracking.histories import load_histories
from workbench.tracking.lineage import (close_study_run, close_trial_run, kill_running_trials, kill_runs,
                                        open_study_run, open_trial_run)
from workbench.tracking.queries import (MetricSeries, RunRecord, TargetRuns, download_text, latest_study_storage,
                                        metric_histories, metric_keys, resolve_run, resolve_target, run_info, run_tags,
                                        runs_by_id)
from workbench.tracking.runs import NullTracker, RunTracker, git_commit, log_report, log_run_metrics, set_run_tags
from workbench.tracking.store import (EXPERIMENT_KIND, connect, experiment_id, require_store, run_url,
                                      ui_command)

__all__ = [
    "DEFAULT_TRACKING_URI", "first_use_lock", "resolve_tracking_uri",
    "connect", "experiment_id", "EXPERIMENT_KIND", "require_store", "run_url", "ui_command",
    "RunTracker", "NullTracker", "ChildTracker", "git_commit", "log_run_metrics", "set_run_tags", "log_report",
    "open_study_run", "close_study_run", "open_trial_run", "close_trial_run", "kill_runs", "kill_running_trials",
    "MetricSeries", "RunRecord", "TargetRuns", "resolve_target", "resolve_run", "run_tags", "run_info",
    "metric_histories", "metric_keys", "runs_by_id", "download_text", "latest_study_storage", "load_histories",
]
