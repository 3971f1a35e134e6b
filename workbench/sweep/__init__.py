"""Optuna studies over the clip space: a trial trains once per seed, each run in its own process.

One module per job:
- `coordinator`: `run_study`, the `dispo-wb sweep` process (storage, MLflow parent run,
  recovery, workers, the parent run's counts and best trial);
- `storage`: storage URLs, opening the Optuna study, the sweep's file lock, recovery of the
  trials a killed sweep left behind;
- `workers`: the worker processes, each taking one unit of the trial budget at a time;
- `objective`: one trial (sample, one training run per seed, values, pruning, collapse);
- `status`: what the storage alone says about a study (`dispo-wb sweep status`).
Each seed trains in a child process (`workbench.sweep.trial`) through a `TrainFn`
(`workbench.train.results`), whose `RunResult` the trial reads back.
"""

from workbench.sweep.coordinator import SweepResult, best_of, run_study, space_params
from workbench.sweep.objective import TrialObjective, engine_train_fn, sample_params, seed_value
from workbench.sweep.status import DONE, StudyStatus, TrialRow, study_status
from workbench.sweep.storage import (exclusive, load_study, make_pruner, make_sampler, open_storage, open_study,
                                     recover, requeue, storage_url)

__all__ = ["DONE", "StudyStatus", "SweepResult", "TrialObjective", "TrialRow", "best_of", "engine_train_fn",
           "exclusive", "load_study", "make_pruner", "make_sampler", "open_storage", "open_study", "recover",
           "requeue", "run_study", "sample_params", "seed_value", "space_params", "storage_url",
           "study_status"]
